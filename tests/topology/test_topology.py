"""What only the production topology can show: two replicas of each service behind nginx, on PgBouncer in
transaction mode with TLS and SCRAM on both legs (deploy/topology-check.sh starts it and sets TOPOLOGY_STACK).

The tests run in this file's order: the pooled connections are inspected first, right after the end-to-end suite,
and the disruptive ones (PgBouncer restarted, a replica killed) come last.
"""

import os
import secrets
import time
from collections import Counter

import psycopg2
import pytest
import requests

from tests.topology.support import (
    Topology,
    claims_of,
    client,
    direct_defaults,
    login,
    refresh,
    run_load,
    scan_server_connections,
    server_pids,
    sign_up,
)

pytestmark = pytest.mark.skipif(
    not os.environ.get("TOPOLOGY_STACK"), reason="run by deploy/topology-check.sh (`make topology-check`)"
)

# Each simulated client behind the proxy leaves from a loopback address of its own; nginx sees it as the peer.
ADDRESS_FLOODER = "127.0.0.2"
ADDRESS_BYSTANDER = "127.0.0.3"
ADDRESS_GUESSER = "127.0.0.4"


@pytest.fixture(scope="module")
def topology() -> Topology:
    return Topology.load(os.environ["TOPOLOGY_STACK"])


def psycopg2_url(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


def assert_no_session_state(topology: Topology) -> int:
    defaults = direct_defaults(topology)
    servers = scan_server_connections(topology)
    leaked = {pid: {k: v for k, v in values.items() if v != defaults[k]} for pid, values in servers.items()}
    leaked = {pid: values for pid, values in leaked.items() if values}
    assert not leaked, f"settings left on pooled server connections (defaults {defaults}): {leaked}"
    return len(servers)


def test_no_session_state_left_on_pooled_server_connections_after_the_suite(topology: Topology) -> None:
    count = assert_no_session_state(topology)
    print(f"\n  {count} pooled server connections inspected after the end-to-end suite: all settings at their defaults")


def test_every_link_to_the_database_is_tls(topology: Topology) -> None:
    """Without TLS neither PostgreSQL (hostssl only) nor PgBouncer (client_tls_sslmode=require) lets a client in;
    every server connection PgBouncer made (with the SCRAM secret of its auth_file) is TLS."""
    for url in (psycopg2_url(topology.direct_url), topology.pooled_url):
        plain = url.split("?")[0] + "?sslmode=disable"
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(plain).close()
    connection = psycopg2.connect(psycopg2_url(topology.direct_url))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.datname = 'topology' AND a.pid <> pg_backend_pid()"
            )
            links = cursor.fetchall()
    finally:
        connection.close()
    assert server_pids(topology), "PgBouncer holds no server connection after the suite"
    assert links and all(ssl for _name, ssl in links), links


def test_direct_url_as_pasted_from_neon_works_with_channel_binding(topology: Topology) -> None:
    """`postgres://...?sslmode=require&channel_binding=require` (Neon's console) on the direct URL: SCRAM-SHA-256-PLUS
    over TLS; the migrations ran through it too."""
    assert "channel_binding=require" in topology.direct_url and topology.direct_url.startswith("postgres://")
    connection = psycopg2.connect(psycopg2_url(topology.direct_url))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cursor.fetchone()[0] is True
            cursor.execute("SELECT version_num FROM alembic_version")
            assert cursor.fetchone()[0]
    finally:
        connection.close()


def test_channel_binding_through_pgbouncer_fails_and_the_log_says_why(topology: Topology, tmp_path) -> None:  # noqa: ANN001
    """PgBouncer 1.18 cannot do channel binding: a service given the pooled URL with `channel_binding=require` is not
    ready, tells the client nothing of the driver, and its log carries libpq's reason with the password masked."""
    from tests.processes import ServiceProcess, free_port

    env = {
        "DATABASE_URL": topology.pooled_url + "&channel_binding=require",
        "APP_ENV": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "MAIL_DIR": str(tmp_path / "mail"),
    }
    service = ServiceProcess("users", free_port(), env, tmp_path / "users.log", workers=1).start()
    try:
        for _ in range(5):
            ready = requests.get(f"{service.url}/readyz", timeout=15)
            assert ready.status_code == 503, ready.text
        assert ready.headers.get("Retry-After")
        for word in ("psycopg2", "OperationalError", "channel", "SCRAM"):
            assert word not in ready.text, ready.text
        deadline = time.monotonic() + 10
        while "channel binding" not in service.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        service.stop()
    log = service.log_text()
    assert "channel binding" in log, log[-2000:]
    assert topology.database_password not in log
    reasons = [line for line in log.splitlines() if "channel binding" in line]
    # Once per cause, not once per request (5 readiness checks, and the mail sender's attempts, one line).
    assert len(reasons) == 1, reasons
    print(f"\n  the service's log: {reasons[0][:300]}")


def test_failed_logins_over_both_auth_replicas_lock_at_the_same_count(topology: Topology) -> None:
    username, password = sign_up(topology)
    answered_by = []
    for _ in range(topology.per_username):
        # A new connection each time: nginx's round robin spreads the attempts over both replicas.
        failed = login(topology.auth_url, username, "wrong password", http=client(ADDRESS_GUESSER))
        assert failed.status_code == 401, failed.text
        answered_by.append(topology.replica_of_worker("auth", failed.headers.get("X-Worker", "")))
    assert {"auth-1", "auth-2"} <= set(answered_by), answered_by
    locked = login(topology.auth_url, username, password, http=client(ADDRESS_GUESSER))
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["Retry-After"]) > 0


def test_a_refresh_token_replayed_on_the_other_replica_is_reuse(topology: Topology) -> None:
    first, second = (replica.url for replica in topology.replicas["auth"])
    username, password = sign_up(topology)
    tokens = login(first, username, password).json()
    rotated = refresh(first, tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    replayed = refresh(second, tokens["refresh_token"])
    assert replayed.status_code == 401, replayed.text
    # Reuse ended the family: the token the first replica handed out is dead on both.
    assert refresh(first, rotated.json()["refresh_token"]).status_code == 401
    assert refresh(second, rotated.json()["refresh_token"]).status_code == 401


def test_a_session_ended_on_one_replica_is_401_on_the_other_at_once(topology: Topology) -> None:
    auth_1, auth_2 = (replica.url for replica in topology.replicas["auth"])
    users_2 = topology.replicas["users"][1].url
    username, password = sign_up(topology)
    tokens = login(auth_1, username, password).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    listed = requests.get(f"{auth_1}/sessions", headers=bearer, timeout=30)
    if listed.status_code == 404:
        pytest.skip("GET /sessions is not there (404): the sessions endpoints are not in this build")
    assert listed.status_code == 200, listed.text
    session_id = claims_of(tokens["access_token"])["sid"]
    assert requests.get(f"{users_2}/users/me", headers=bearer, timeout=30).status_code == 200
    ended = requests.delete(f"{auth_1}/sessions/{session_id}", headers=bearer, timeout=30)
    assert ended.status_code == 204, ended.text
    assert requests.get(f"{users_2}/users/me", headers=bearer, timeout=30).status_code == 401
    assert requests.get(f"{auth_2}/sessions", headers=bearer, timeout=30).status_code == 401
    assert refresh(auth_2, tokens["refresh_token"]).status_code == 401


def test_the_per_address_limit_counts_the_client_behind_the_proxy(topology: Topology) -> None:
    """One client (127.0.0.2) fails `per_address` logins through nginx and is locked out, whatever X-Forwarded-For
    it sends itself; another client behind the same proxy (127.0.0.3) is not, and the rows name the client, not
    the proxy."""
    flooder = client(ADDRESS_FLOODER)
    for attempt in range(topology.per_address):
        # A new username each time: only the per-address count can add up. A forged X-Forwarded-For changes nothing:
        # nginx appends the real peer, the first untrusted hop from the right.
        failed = flooder.post(
            f"{topology.auth_url}/token",
            data={"username": f"nobody_{secrets.token_hex(6)}", "password": "wrong"},
            headers={"X-Forwarded-For": f"203.0.113.{attempt + 1}"},
            timeout=30,
        )
        assert failed.status_code == 401, (attempt, failed.text)
    refused = login(topology.auth_url, f"nobody_{secrets.token_hex(6)}", "wrong", http=flooder)
    assert refused.status_code == 429, refused.text
    bystander = login(topology.auth_url, f"nobody_{secrets.token_hex(6)}", "wrong", http=client(ADDRESS_BYSTANDER))
    assert bystander.status_code == 401, bystander.text
    connection = psycopg2.connect(psycopg2_url(topology.direct_url))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT address, count(*) FROM login_failures WHERE address IN (%s, %s, '127.0.0.1') GROUP BY address",
                (ADDRESS_FLOODER, ADDRESS_BYSTANDER),
            )
            counts = dict(cursor.fetchall())
    finally:
        connection.close()
    assert counts.get(ADDRESS_FLOODER) == topology.per_address, counts
    assert counts.get(ADDRESS_BYSTANDER) == 1, counts


def test_pgbouncer_restarted_under_load_gives_503_with_retry_after_then_recovers(topology: Topology) -> None:
    """Logins and reads through nginx while PgBouncer goes away for 3 s: 503 with Retry-After meanwhile, nothing
    else, and then every request succeeds again without a restart of any service."""
    accounts = [sign_up(topology) for _ in range(2)]
    token = login(topology.auth_url, *accounts[0]).json()["access_token"]
    masters = {
        replica.name: (replica.pid, replica.worker_pids()) for rs in topology.replicas.values() for replica in rs
    }

    def read_me(http: requests.Session) -> requests.Response:
        return http.get(f"{topology.users_url}/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def log_in(account: tuple[str, str]):  # noqa: ANN202
        return lambda http: login(topology.auth_url, *account, http=http)

    outage_seconds = 3.0

    def script(mark) -> None:  # noqa: ANN001
        time.sleep(2)
        mark("pgbouncer stopping")
        topology.stop_pgbouncer()
        mark("pgbouncer gone")
        time.sleep(outage_seconds)
        mark("pgbouncer starting")
        topology.start_pgbouncer()
        mark("pgbouncer started")

    run = run_load(
        requests_of_thread=[read_me, read_me, read_me, log_in(accounts[0]), log_in(accounts[1])],
        seconds=15,
        script=script,
    )
    print("\n" + run.figures("PgBouncer restart"))
    stopped, started = run.events["pgbouncer stopping"], run.events["pgbouncer started"]
    failures = run.failures()
    assert {outcome.status for outcome in failures} <= {503}, Counter(outcome.status for outcome in failures)
    assert all(outcome.retry_after for outcome in failures), "a 503 without Retry-After"
    assert failures, "no request failed while PgBouncer was down: the outage did not happen"
    assert all(outcome.finished >= stopped for outcome in failures)
    last_failure = max(outcome.finished for outcome in failures)
    first_failure = min(outcome.started for outcome in failures)
    recovery = max(0.0, last_failure - started)
    print(
        f"  clients saw 503 from {first_failure:.2f} s to {last_failure:.2f} s ({last_failure - first_failure:.2f} s);"
        f" seconds to recover after PgBouncer was back: {recovery:.2f}"
    )
    assert recovery < 8, f"requests still failed {recovery:.1f} s after PgBouncer came back"
    late = [outcome for outcome in run.outcomes if outcome.started > last_failure]
    assert late and all(outcome.status == 200 for outcome in late)
    # No service was restarted: the same masters and workers.
    for replicas in topology.replicas.values():
        for replica in replicas:
            assert (replica.pid, replica.worker_pids()) == masters[replica.name]


def test_an_auth_replica_killed_under_load_costs_only_the_requests_it_held(topology: Topology) -> None:
    """SIGKILL of one auth replica (master and workers) under logins and reads through nginx: the requests it held
    fail with 502 (nginx never resends a POST) or are cut off mid-answer, nothing else does, and the other replica
    takes everything after."""
    accounts = [sign_up(topology) for _ in range(4)]
    victim, survivor = topology.replicas["auth"]
    victim_workers = victim.worker_pids()

    def jwks(http: requests.Session) -> requests.Response:
        return http.get(f"{topology.auth_url}/.well-known/jwks.json", timeout=30)

    def log_in(account: tuple[str, str]):  # noqa: ANN202
        return lambda http: login(topology.auth_url, *account, http=http)

    senders = [log_in(account) for account in accounts] + [jwks, jwks]

    def script(mark) -> None:  # noqa: ANN001
        time.sleep(3)
        mark("auth-1 killed")
        victim.kill()

    run = run_load(requests_of_thread=senders, seconds=9, script=script)
    print("\n" + run.figures(f"SIGKILL of {victim.name} (pid {victim.pid} and workers {sorted(victim_workers)})"))
    killed = run.events["auth-1 killed"]
    before = [o for o in run.outcomes if o.finished < killed]
    assert any(o.worker and int(o.worker) in victim_workers for o in before), "the victim served nothing before"
    failures = run.failures()
    # What the dead replica held: a 502, or no status at all (0) when it died between writing a response's head and
    # its body (nginx had passed the head on, so it can only close the client's connection), as the compose check
    # allows too (tests/compose/test_compose.py).
    assert {o.status for o in failures} <= {0, 502, 503}, Counter(o.status for o in failures)
    # Only what the dead replica held: at most one request per client thread, each sent before it died.
    assert len(failures) <= len(senders), failures
    assert all(o.started <= killed + 0.5 for o in failures), failures
    after = [o for o in run.outcomes if o.started > killed + 0.5]
    assert after and all(o.status == 200 for o in after), Counter(o.status for o in after)
    survivor_workers = {str(pid) for pid in survivor.worker_pids()}
    assert {o.worker for o in after} <= survivor_workers
    last_failure = max((o.finished for o in failures), default=killed)
    print(f"  seconds from the kill to the last failed request: {max(0.0, last_failure - killed):.2f}")
    assert not victim.alive()


def test_no_session_state_left_after_the_load_either(topology: Topology) -> None:
    assert_no_session_state(topology)


def test_the_session_state_check_sees_a_setting_left_on_a_server_connection(topology: Topology) -> None:
    """The check above can fail: a session-level SET through the pooler stays on a server connection, and the
    scan finds it (and resets it, so nothing is left behind)."""
    leaking = psycopg2.connect(topology.pooled_url)
    leaking.autocommit = True
    try:
        with leaking.cursor() as cursor:
            cursor.execute("SET statement_timeout = '4321ms'")
    finally:
        leaking.close()
    found = scan_server_connections(topology, reset=True)
    assert [pid for pid, values in found.items() if values["statement_timeout"] == "4321ms"], found
    assert_no_session_state(topology)
