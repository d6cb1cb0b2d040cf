"""What only the compose stack can show: `docker compose up --scale auth=2 --scale users=2` behind the `proxy`
(nginx finding the replicas through Docker's DNS), TRUSTED_PROXIES at the proxy's fixed address, and a replica lost
under load. deploy/compose-check.sh starts the stack and sets COMPOSE_STACK.

The tests run in this file's order: the disruptive one (a replica killed, another stopped) comes after the ones that
need all four replicas, and restarts what it stopped.
"""

import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests

from shared.settings import Settings
from tests.topology.support import LoadRun, login, run_load

pytestmark = pytest.mark.skipif(not os.environ.get("COMPOSE_STACK"), reason="run by deploy/compose-check.sh")

# Clients on the compose network itself, each in a container of its own (its own address), as a second host behind
# the proxy would be. FORGED is what they claim to be in X-Forwarded-For; it must never be believed.
FORGED = "203.0.113.7"
CLIENT_SCRIPT = """
import json, secrets, socket, sys, urllib.error, urllib.parse, urllib.request
url, count, forged = sys.argv[1], int(sys.argv[2]), sys.argv[3]
codes = []
for _ in range(count):
    body = urllib.parse.urlencode({"username": "nobody_" + secrets.token_hex(6), "password": "wrong"}).encode()
    request = urllib.request.Request(url, data=body, headers={"X-Forwarded-For": forged})
    try:
        codes.append(urllib.request.urlopen(request, timeout=30).status)
    except urllib.error.HTTPError as error:
        codes.append(error.code)
print(json.dumps({"address": socket.gethostbyname(socket.gethostname()), "codes": codes}))
"""


@dataclass(frozen=True)
class ComposeStack:
    docker: str
    network: str
    subnet: str
    gateway: str
    proxy_address: str
    auth_url: str
    users_url: str
    replicas: dict[str, list[str]]
    client_image: str
    database_url: str

    @classmethod
    def load(cls, path: str) -> "ComposeStack":
        data = json.loads(Path(path).read_text())
        return cls(
            docker=data["docker"],
            network=data["network"]["name"],
            subnet=data["network"]["subnet"],
            gateway=data["network"]["gateway"],
            proxy_address=data["proxy"]["address"],
            auth_url=data["proxy"]["auth"],
            users_url=data["proxy"]["users"],
            replicas=data["replicas"],
            client_image=data["client_image"],
            database_url=data["database_url"],
        )

    def run(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"docker {' '.join(args[:2])}: {done.stderr[-2000:]}"
        return done.stdout

    def request_ids_logged_by(self, container: str) -> set[str]:
        """The request ids of every access-log line the container wrote (`docker logs`, JSON lines)."""
        done = subprocess.run([self.docker, "logs", container], capture_output=True, text=True, timeout=60)
        ids = set()
        for line in (done.stdout + done.stderr).splitlines():
            if '"request_id"' not in line:
                continue
            try:
                ids.add(json.loads(line)["request_id"])
            except (ValueError, KeyError):
                continue
        return ids

    def where_logged(self, service: str, request_ids: Iterable[str], wait: float = 10) -> dict[str, list[str]]:
        """For each of `request_ids`, the replicas of `service` whose log has it; waits for lines still buffered."""
        wanted = set(request_ids)
        deadline = time.monotonic() + wait
        while True:
            logged = {name: self.request_ids_logged_by(name) & wanted for name in self.replicas[service]}
            found = set().union(*logged.values())
            if found >= wanted or time.monotonic() > deadline:
                return {request_id: [name for name in logged if request_id in logged[name]] for request_id in wanted}
            time.sleep(0.3)

    def nginx_errors_since(self, since: float) -> list[str]:
        """The proxy's [error] lines since `since` (epoch seconds): why nginx failed a request."""
        done = subprocess.run(
            [self.docker, "logs", "--since", f"{since:.3f}", self.replicas["proxy"][0]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return [line for line in (done.stdout + done.stderr).splitlines() if "[error]" in line]

    def health(self, container: str) -> str:
        return self.run("inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", container).strip()

    def login_failures(self) -> Counter:
        connection = psycopg2.connect(self.database_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT address, count(*) FROM login_failures GROUP BY address")
                return Counter(dict(cursor.fetchall()))
        finally:
            connection.close()


@pytest.fixture(scope="module")
def stack() -> ComposeStack:
    return ComposeStack.load(os.environ["COMPOSE_STACK"])


def new_request_id(tag: str) -> str:
    return f"compose-{tag}-{secrets.token_hex(8)}"


def sign_up(stack: ComposeStack) -> tuple[str, str]:
    username, password = f"compose_{secrets.token_hex(5)}", f"pw-{secrets.token_hex(8)}"
    response = requests.post(f"{stack.users_url}/users", json={"username": username, "password": password}, timeout=30)
    assert response.status_code == 201, response.text
    return username, password


def test_requests_through_the_proxy_reach_both_replicas_of_each_service(stack: ComposeStack) -> None:
    """nginx resolves `auth` and `users` through Docker's DNS at request time: every scaled replica gets requests,
    each request is served by exactly one of them (found by its X-Request-ID in the replicas' own logs)."""
    assert [len(stack.replicas[service]) for service in ("auth", "users")] == [2, 2], stack.replicas
    for service, url in (("auth", stack.auth_url), ("users", stack.users_url)):
        sent = []
        for _ in range(30):
            request_id = new_request_id(service)
            # /readyz: each replica also shows it reaches the database.
            response = requests.get(f"{url}/readyz", headers={"X-Request-ID": request_id}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.headers["X-Request-ID"] == request_id
            sent.append(request_id)
        where = stack.where_logged(service, sent)
        assert all(len(replicas) == 1 for replicas in where.values()), where
        spread = Counter(replicas[0] for replicas in where.values())
        print(f"\n  {service}: {len(sent)} requests through the proxy, by replica {dict(sorted(spread.items()))}")
        assert set(spread) == set(stack.replicas[service]), spread


def test_the_services_see_the_client_behind_the_proxy_never_its_forged_address(stack: ComposeStack) -> None:
    """TRUSTED_PROXIES is the proxy's address only: a client on a published port is the network's gateway to the
    proxy, and the services record that address. Neither the proxy's address nor what the client writes into
    X-Forwarded-For itself."""
    username, password = sign_up(stack)
    forged = {"X-Forwarded-For": FORGED}
    tokens = requests.post(
        f"{stack.auth_url}/token", data={"username": username, "password": password}, headers=forged, timeout=30
    )
    assert tokens.status_code == 200, tokens.text
    listed = requests.get(
        f"{stack.auth_url}/sessions", headers={"Authorization": f"Bearer {tokens.json()['access_token']}"}, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert [item["ip_address"] for item in listed.json()["items"]] == [stack.gateway]

    before = stack.login_failures()
    failed = requests.post(
        f"{stack.auth_url}/token", data={"username": username, "password": "wrong"}, headers=forged, timeout=30
    )
    assert failed.status_code == 401, failed.text
    after = stack.login_failures()
    assert after[stack.gateway] == before[stack.gateway] + 1, (before, after)
    assert after[FORGED] == 0 and after[stack.proxy_address] == 0, after


def client_in_container(stack: ComposeStack, address: str, count: int) -> dict:
    """`count` failed logins (a new unknown username each) from a container of its own at `address` on the compose
    network, through the proxy by its service name, each with a forged X-Forwarded-For. Its address and statuses."""
    out = stack.run(
        "run", "--rm", "--network", stack.network, "--ip", address, stack.client_image,
        "python3", "-c", CLIENT_SCRIPT, "http://proxy:8001/token", str(count), FORGED,
        timeout=180,
    )  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def test_the_per_address_limit_counts_each_client_behind_the_proxy(stack: ComposeStack) -> None:
    """A client fails LOGIN_MAX_FAILURES_PER_ADDRESS logins through the proxy and is refused (429), whatever it
    claims in X-Forwarded-For; another client behind the same proxy is not. Counted per client, never as the proxy."""
    limit = Settings.model_fields["login_max_failures_per_address"].default
    # Fixed addresses at the top of the subnet, away from the stack's: Docker would give a container started after
    # another has gone the address that one had.
    *_, flooder_address, bystander_address, _last = ipaddress.ip_network(stack.subnet).hosts()
    flooder = client_in_container(stack, str(flooder_address), limit + 1)
    assert flooder["codes"][:limit] == [401] * limit, Counter(flooder["codes"])
    assert flooder["codes"][limit] == 429, flooder["codes"][limit]
    bystander = client_in_container(stack, str(bystander_address), 1)
    assert bystander["codes"] == [401], bystander
    counts = stack.login_failures()
    print(
        f"\n  flooder {flooder['address']}: {Counter(flooder['codes'])}; bystander {bystander['address']}:"
        f" {bystander['codes']}; rows per address {dict(counts)}"
    )
    assert (flooder["address"], bystander["address"]) == (str(flooder_address), str(bystander_address))
    assert counts[flooder["address"]] == limit, counts
    assert counts[bystander["address"]] == 1, counts
    assert counts[FORGED] == 0 and counts[stack.proxy_address] == 0, counts


def nginx_error_kinds(lines: list[str]) -> Counter:
    """nginx's error lines counted by what failed and for which request: `connect() failed (111: ...)`,
    `upstream prematurely closed connection` and the like, with the method and path."""
    kinds = Counter()
    for line in lines:
        # "... [error] 7#7: *851 upstream prematurely closed connection while reading ..., request: "POST /token ..."
        what = line.split("] ", 1)[-1].split(" while ", 1)[0].split(": ", 1)[-1].split(" ", 1)[-1]
        request = line.split('request: "', 1)[-1].split(" HTTP/", 1)[0]
        kinds[f"{what}, {request}"] += 1
    return kinds


def tagged(service: str, send: Callable[[requests.Session], requests.Response]):  # noqa: ANN201
    """`send` with its service's name in the outcome's `worker` (X-Worker is a pid inside a container, the same in
    every replica), so the figures can be told apart per service."""

    def send_tagged(http: requests.Session) -> requests.Response:
        response = send(http)
        response.headers["X-Worker"] = service
        return response

    return send_tagged


def test_a_replica_killed_and_another_stopped_under_load_cost_only_what_they_held(stack: ComposeStack) -> None:
    """Logins and reads through the proxy while one auth replica is killed (SIGKILL) and one users replica is stopped
    (SIGTERM, graceful): nothing but 502/503, only from requests the killed replica held; every later request is
    answered by the survivors; started again, both are back in nginx's pool without a reload (new DNS answers)."""
    auth_victim, auth_survivor = stack.replicas["auth"]
    users_survivor, users_victim = stack.replicas["users"]
    accounts = [sign_up(stack) for _ in range(3)]
    token = login(stack.auth_url, *accounts[0]).json()["access_token"]

    def log_in(account: tuple[str, str]):  # noqa: ANN202
        return tagged("auth", lambda http: login(stack.auth_url, *account, http=http))

    def jwks(http: requests.Session) -> requests.Response:
        return http.get(f"{stack.auth_url}/.well-known/jwks.json", timeout=30)

    def read_me(http: requests.Session) -> requests.Response:
        return http.get(f"{stack.users_url}/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    auth_senders = [log_in(account) for account in accounts] + [tagged("auth", jwks)]
    users_senders = [tagged("users", read_me), tagged("users", read_me)]

    def script(mark: Callable[[str], None]) -> None:
        time.sleep(3)
        mark("auth kill sent")
        stack.run("kill", auth_victim)
        # `docker kill` returns once the signal is sent, and the CLI takes a while itself: dead by now.
        mark("auth killed")
        mark("users stopping")
        stack.run("stop", "--time", "40", users_victim)
        mark("users stopped")

    load_started = time.time()
    run = run_load(requests_of_thread=auth_senders + users_senders, seconds=14, script=script)
    print("\n" + run.figures(f"docker kill {auth_victim}, docker stop {users_victim}"))
    print(f"  nginx's errors: {dict(nginx_error_kinds(stack.nginx_errors_since(load_started)))}")
    killed = run.events["auth killed"]
    by_service = {service: LoadRun([o for o in run.outcomes if o.worker == service]) for service in ("auth", "users")}
    for service, service_run in by_service.items():
        slow = [o for o in service_run.outcomes if o.started > killed and o.finished - o.started > 1.5]
        print(
            f"  {service}: {len(service_run.outcomes)} requests, by status {dict(service_run.statuses())},"
            f" {len(slow)} slower than 1.5 s after the kill (nginx's DNS answers, valid 10 s, still hold the lost"
            " replica: a connect timeout, then the other)"
        )
    failures = run.failures()
    # What the killed replica held: a 502, or no status at all (0) when it died between writing a response's head
    # and its body (nginx had passed the head on, so it can only close the client's connection). Only while it was
    # dying: `docker kill` returns a few tenths of a second after the signal, and a thread whose request failed may
    # have sent its next one to the dying replica too (once 5 failures from 4 auth threads), so the bound is the
    # time, not a count per thread; after that, nothing fails.
    assert {o.status for o in failures} <= {0, 502, 503}, Counter(o.status for o in failures)
    assert all(run.events["auth kill sent"] - 1.0 <= o.started <= killed + 0.5 for o in failures), failures
    assert not [o for o in by_service["users"].outcomes if o.status != 200], "the graceful stop failed a read"
    after = [o for o in run.outcomes if o.started > killed + 0.5]
    assert after and all(o.status == 200 for o in after), Counter(o.status for o in after)
    # Served by the survivors only (their logs hold every request id answered after the kill).
    for service, victim, survivor in (("auth", auth_victim, auth_survivor), ("users", users_victim, users_survivor)):
        ids = [o.request_id for o in after if o.worker == service and o.started > run.events["users stopped"]]
        where = stack.where_logged(service, ids)
        assert ids and all(replicas == [survivor] for replicas in where.values()), Counter(map(tuple, where.values()))

    # Back in: started again (perhaps at a new address), found by nginx through DNS once its answer expires.
    started = time.monotonic()
    for victim in (auth_victim, users_victim):
        stack.run("start", victim)
    for victim in (auth_victim, users_victim):
        deadline = time.monotonic() + 90
        while stack.health(victim) != "running healthy":
            assert time.monotonic() < deadline, f"{victim} not healthy 90 s after its start: {stack.health(victim)}"
            time.sleep(0.5)
    healthy = time.monotonic() - started
    for service, victim, url in (("auth", auth_victim, stack.auth_url), ("users", users_victim, stack.users_url)):
        deadline = time.monotonic() + 30
        while True:
            sent = [new_request_id(service) for _ in range(10)]
            for request_id in sent:
                response = requests.get(f"{url}/readyz", headers={"X-Request-ID": request_id}, timeout=30)
                assert response.status_code == 200, response.text
            if any(victim in replicas for replicas in stack.where_logged(service, sent, wait=2).values()):
                break
            assert time.monotonic() < deadline, f"the proxy sent nothing to {victim} in 30 s after it was healthy"
            time.sleep(1)
    back = time.monotonic() - started
    print(f"  both started again: healthy after {healthy:.1f} s, in the proxy's pool after {back:.1f} s")
