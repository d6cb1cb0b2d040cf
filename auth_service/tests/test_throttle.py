"""Login throttling per username and per client address, its window, and which address counts (X-Forwarded-For)."""

import secrets
import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, insert, select, text, update

from auth_service.service import USER_FOR_LOGIN
from auth_service.tests.conftest import login, unique_address
from shared.client_address import client_address
from shared.database import run_statement
from shared.models import LoginFailure, User, as_utc
from shared.throttle import (
    ATTEMPT_COUNTS,
    ATTEMPT_COUNTS_BY_FUNCTION,
    BEGIN_ATTEMPT_BY_FUNCTION,
    PENDING_ATTEMPT_LIFETIME,
    begin_attempt,
    begin_attempt_and_read,
    login_limits,
    record_failure,
    throttle_key_for_username,
)

WINDOW_SECONDS = 60
LIMITS = {
    "login_max_failures_per_username": 3,
    "login_max_failures_per_address": 6,
    "login_failure_window_seconds": WINDOW_SECONDS,
}
WRONG = "definitely wrong password"


def from_address(client: TestClient, address: str) -> TestClient:
    """The same app (the same replica) as seen from another client address."""
    return TestClient(client.app, client=(address, 50000))


def ghost_username() -> str:
    return f"ghost_{secrets.token_hex(5)}"


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def assert_throttled(response, *, window: int = WINDOW_SECONDS) -> None:
    assert response.status_code == 429, response.text
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= window
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def attempts_until_throttled(client: TestClient, username: str, *, at_most: int = 10) -> int:
    for attempt in range(1, at_most + 1):
        response = login(client, username, WRONG)
        if response.status_code == 429:
            return attempt
        assert response.status_code == 401, response.text
    raise AssertionError(f"{username} not throttled after {at_most} attempts")


@pytest.mark.parametrize("known", [True, False], ids=["real-user", "unknown-username"])
def test_after_three_failures_the_fourth_attempt_is_429_even_with_the_right_password(make_client, make_user, known):
    throttled = make_client(**LIMITS)
    user = make_user()
    username = user.username if known else ghost_username()

    statuses = [login(throttled, username, WRONG).status_code for _ in range(3)]

    assert statuses == [401, 401, 401]
    assert_throttled(login(throttled, username, user.password))


def test_unknown_username_is_throttled_at_the_same_attempt_as_a_real_one(make_client, make_user):
    real = attempts_until_throttled(make_client(**LIMITS), make_user().username)
    unknown = attempts_until_throttled(make_client(**LIMITS), ghost_username())

    assert real == unknown == 4


def test_failures_count_per_username_whatever_its_spelling_case(make_client, make_user):
    throttled = make_client(**LIMITS)
    user = make_user()

    for spelling in (str.upper, str.title, str.swapcase):
        assert login(throttled, spelling(user.username), WRONG).status_code == 401

    assert_throttled(login(throttled, user.username, user.password))


def test_a_burst_of_concurrent_failures_gets_no_more_password_checks_than_the_limit(make_client, make_user):
    # The state is in the database so it holds across workers: a parallel burst must not outrun it.
    throttled = make_client(**LIMITS)
    user = make_user()
    burst = 8
    start = threading.Barrier(burst)
    statuses: list[int] = []

    def guess() -> None:
        start.wait()
        statuses.append(login(throttled, user.username, WRONG).status_code)

    threads = [threading.Thread(target=guess) for _ in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(statuses) == burst and set(statuses) <= {401, 429}, statuses
    checked = statuses.count(401)
    assert checked <= LIMITS["login_max_failures_per_username"], sorted(statuses)
    # Throttled attempts checked no password and do not count; the checked ones do.
    for _ in range(LIMITS["login_max_failures_per_username"] - checked):
        assert login(throttled, user.username, WRONG).status_code == 401
    assert_throttled(login(throttled, user.username, user.password))


def test_username_failures_from_several_addresses_add_up(make_client, make_user):
    throttled = make_client(**LIMITS)
    user = make_user()

    for _ in range(3):
        assert login(from_address(throttled, unique_address()), user.username, WRONG).status_code == 401

    assert_throttled(login(from_address(throttled, unique_address()), user.username, user.password))


def test_username_failures_count_across_replicas(make_client, make_user):
    user = make_user()
    replicas = [make_client(**LIMITS) for _ in range(3)]

    for replica in replicas:
        assert login(replica, user.username, WRONG).status_code == 401

    assert_throttled(login(make_client(**LIMITS), user.username, user.password))


def test_failures_across_usernames_lock_out_the_address_but_not_the_accounts(make_client, make_user):
    throttled = make_client(**LIMITS)
    user = make_user()

    assert login(throttled, user.username, WRONG).status_code == 401
    for _ in range(5):
        assert login(throttled, ghost_username(), WRONG).status_code == 401

    assert_throttled(login(throttled, make_user().username, "any password"))
    assert_throttled(login(throttled, user.username, user.password))
    assert login(from_address(throttled, unique_address()), user.username, user.password).status_code == 200


@pytest.mark.parametrize("peer_is_trusted", [True, False], ids=["trusted-proxy", "untrusted-peer"])
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(make_client, make_user, peer_is_trusted):
    peer = "10.%d.%d.%d" % tuple(secrets.randbelow(254) + 1 for _ in range(3)) if peer_is_trusted else unique_address()
    proxy = make_client(address=peer, trusted_proxies=["10.0.0.0/8"], **LIMITS)
    attacker, bystander = unique_address(), unique_address()
    user = make_user()

    for _ in range(6):
        assert login(proxy, ghost_username(), WRONG, **xff(attacker)).status_code == 401

    assert_throttled(login(proxy, ghost_username(), WRONG, **xff(attacker)))
    bystanders_login = login(proxy, user.username, user.password, **xff(bystander))
    if peer_is_trusted:
        assert bystanders_login.status_code == 200, bystanders_login.text
    else:
        assert_throttled(bystanders_login)


def test_a_success_from_one_address_keeps_the_failures_from_another(make_client, make_user):
    attacker = make_client(**LIMITS)
    owner = from_address(attacker, unique_address())
    user = make_user()

    assert [login(attacker, user.username, WRONG).status_code for _ in range(2)] == [401, 401]
    assert login(owner, user.username, user.password).status_code == 200
    assert login(attacker, user.username, WRONG).status_code == 401

    assert_throttled(login(owner, user.username, user.password))


def test_logins_work_again_once_the_window_has_passed(make_client, make_user):
    window = 60
    throttled = make_client(**{**LIMITS, "login_failure_window_seconds": window})
    user = make_user()
    for _ in range(3):
        assert login(throttled, user.username, WRONG).status_code == 401
    assert_throttled(login(throttled, user.username, user.password), window=window)
    # Still throttled just inside the window.
    move_failures_back(throttled, user.username, seconds=window - 5)
    assert_throttled(login(throttled, user.username, user.password), window=window)

    # The window has passed: the failures are moved into the past instead of the test sleeping through it.
    move_failures_back(throttled, user.username, seconds=10)

    assert login(throttled, user.username, user.password).status_code == 200


def move_failures_back(client: TestClient, username: str, *, seconds: float) -> None:
    """Computed in Python: SQLite cannot subtract an interval from a stored time."""
    with client.app.state.session_factory() as session:
        for failure in session.scalars(select(LoginFailure).where(LoginFailure.username == username)):
            failure.occurred_at = as_utc(failure.occurred_at) - timedelta(seconds=seconds)
        session.commit()


TRUSTED = ["10.0.0.0/8", "192.0.2.10", "fd00::/8"]
CLIENT_ADDRESS_CASES = {
    "untrusted-peer-ignores-xff": ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
    "no-xff": ("10.0.0.1", None, "10.0.0.1"),
    "empty-xff": ("10.0.0.1", "", "10.0.0.1"),
    "trusted-peer-one-hop": ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
    "trusted-peer-rightmost-untrusted-hop": ("10.0.0.1", "198.51.100.1, 203.0.113.5", "203.0.113.5"),
    "trusted-hops-are-skipped": ("10.0.0.1", "198.51.100.1, 203.0.113.5, 10.9.9.9, 192.0.2.10", "203.0.113.5"),
    "spaces-around-hops": ("10.0.0.1", "  198.51.100.1  ,203.0.113.5 ", "203.0.113.5"),
    "single-trusted-address": ("192.0.2.10", "198.51.100.1", "198.51.100.1"),
    "ipv6": ("fd00::1", "2001:db8::5", "2001:db8::5"),
    "garbage-xff": ("10.0.0.1", "garbage", "10.0.0.1"),
    "garbage-rightmost-hop": ("10.0.0.1", "198.51.100.1, not-an-address", "10.0.0.1"),
    "garbage-behind-trusted-hop": ("10.0.0.1", "198.51.100.1, ???, 10.9.9.9", "10.0.0.1"),
    "non-ip-peer-is-not-trusted": ("testclient", "198.51.100.1", "testclient"),
}


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"), list(CLIENT_ADDRESS_CASES.values()), ids=list(CLIENT_ADDRESS_CASES)
)
def test_client_address_rules(peer, forwarded_for, expected):
    trusted = [*TRUSTED, "testclient"]

    assert client_address(socket_address=peer, forwarded_for=forwarded_for, trusted_proxies=trusted) == expected


def test_retry_after_is_when_the_limit_th_most_recent_failure_leaves_the_window(make_client):
    client = make_client(**LIMITS)
    username = ghost_username()
    now = datetime.now(UTC)
    with client.app.state.session_factory() as session:
        session.add_all(
            LoginFailure(username=username, address=unique_address(), occurred_at=now - timedelta(seconds=age))
            for age in (10, 20, 30, 40)
        )
        session.commit()
    response = login(client, username, WRONG)
    assert_throttled(response)
    # The limit is 3: the third most recent failure (30 s old) leaves the 60 s window in 30 s.
    assert 28 <= int(response.headers["retry-after"]) <= 30


def test_the_asynchronous_commit_of_an_attempt_ends_with_its_own_transaction(make_client):
    """The attempt's insert turns `synchronous_commit` off for its own transaction: the connection, pooled and reused
    by every later statement (and behind PgBouncer by other clients), keeps the server's setting."""
    client = make_client(**LIMITS)
    engine = client.app.state.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("asynchronous commit is PostgreSQL's")
    parameters = begin_parameters(ghost_username(), unique_address())
    with engine.connect() as connection:
        before = connection.exec_driver_sql("SHOW synchronous_commit").scalar()
        connection.rollback()
        with connection.begin():
            connection.execute(BEGIN_ATTEMPT_BY_FUNCTION, parameters)
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == before != "off"


def begin_parameters(key: str, address: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "throttle_key": key,
        "address": address,
        "now": now,
        "window_start": now - timedelta(seconds=WINDOW_SECONDS),
        "stale_before": now - PENDING_ATTEMPT_LIFETIME,
    }


def test_an_attempt_counts_the_one_ahead_that_committed_while_it_waited_for_the_lock(make_client):
    """The attempt is recorded and counted by one function call: its counts must still see an attempt of the same key
    with a smaller id that committed while this one waited for the key's lock (a single statement's snapshot, taken
    before the wait, would not, and both would be let through)."""
    engine = make_client(**LIMITS).app.state.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("the function and its locks are PostgreSQL's")
    key = ghost_username()
    begun: list = []
    with engine.connect() as ahead, engine.connect() as behind:
        behind_pid = behind.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        behind.rollback()
        ahead.exec_driver_sql("SELECT pg_advisory_xact_lock(1, hashtext(%(key)s))", {"key": key})
        ahead.execute(
            insert(LoginFailure).values(
                username=key, address=unique_address(), occurred_at=datetime.now(UTC), pending=True
            )
        )
        waiting = threading.Thread(
            target=lambda: begun.extend(
                run_statement(behind, BEGIN_ATTEMPT_BY_FUNCTION, begin_parameters(key, unique_address()))
            )
        )
        waiting.start()
        blocked = text("SELECT cardinality(pg_blocking_pids(:pid)) > 0").bindparams(pid=behind_pid)
        assert wait_until_true(engine, blocked), "the second attempt never waited for the key's lock"
        assert not begun
        ahead.commit()
        waiting.join(timeout=10)
    (attempt,) = begun
    assert (attempt.key_failures, attempt.key_ahead, attempt.address_ahead) == (0, 1, 0)


def wait_until_true(engine, query, *, seconds: float = 5.0) -> bool:  # noqa: ANN001
    """True once `query`'s one value is true, read every 20 ms on a connection of its own; False after `seconds`."""
    with engine.connect() as observer:
        for _ in range(int(seconds / 0.02)):
            value = observer.execute(query).scalar()
            observer.rollback()
            if value:
                return True
            threading.Event().wait(0.02)
    return False


def test_an_attempt_that_waited_for_its_turn_reads_its_row_again(make_client, make_user):
    """The user comes with the attempt's first counts; an attempt that then waits for those ahead of it reads the user
    again, so what its password is checked against is never older than its turn."""
    client = make_client(**LIMITS)
    engine = client.app.state.engine
    user = make_user()
    key, address, now = ghost_username(), unique_address(), datetime.now(UTC)
    with engine.connect() as connection:
        # Two failures and one attempt ahead: the third check of this key must wait for that one.
        for pending in (False, False, True):
            ahead_id = connection.execute(
                insert(LoginFailure)
                .values(username=key, address=unique_address(), occurred_at=now, pending=pending)
                .returning(LoginFailure.id)
            ).scalar_one()
        connection.commit()

    recorded: list[bool] = []

    def decide_the_attempt_ahead_after_changing_the_user() -> None:
        # Once the attempt below is recorded (and the user read with it), the user changes and the one ahead ends.
        both_pending = select(func.count() == 2).where(LoginFailure.username == key, LoginFailure.pending)
        recorded.append(wait_until_true(engine, both_pending))
        with engine.begin() as connection:
            connection.execute(update(User).where(User.id == user.id).values(token_version=User.token_version + 1))
            connection.execute(delete(LoginFailure).where(LoginFailure.id == ahead_id))

    deciding = threading.Thread(target=decide_the_attempt_ahead_after_changing_the_user)
    deciding.start()
    with engine.connect() as connection:
        attempt_id, found = begin_attempt_and_read(
            connection=connection,
            limits=login_limits(client.app.state.settings),
            key=key,
            address=address,
            now=now,
            read=USER_FOR_LOGIN,
            read_parameters={"username": user.username},
        )
    deciding.join()
    assert recorded == [True], "the attempt was never recorded beside the one ahead"
    assert attempt_id > ahead_id
    assert (found.id, found.token_version) == (user.id, 1)


def test_a_wrong_secret_counts_even_if_its_pending_row_was_lost(make_client):
    """A server crash can lose an attempt's asynchronous commit while a pooler keeps the client's connection: the
    failure is then recorded anew, so every checked secret counts."""
    client = make_client(**LIMITS)
    engine = client.app.state.engine
    settings = client.app.state.settings
    key, address, now = ghost_username(), unique_address(), datetime.now(UTC)
    with engine.connect() as connection:
        attempt_id = begin_attempt(
            connection=connection, limits=login_limits(settings), key=key, address=address, now=now
        )
        connection.execute(delete(LoginFailure).where(LoginFailure.id == attempt_id))
        connection.commit()
        record_failure(connection=connection, attempt_id=attempt_id, key=key, address=address, now=now)
        failures = connection.execute(
            select(LoginFailure.pending).where(LoginFailure.username == key, LoginFailure.address == address)
        ).all()
    assert [row.pending for row in failures] == [False]


def test_a_success_clears_the_failures_from_its_own_address(make_client, make_user):
    throttled = make_client(**LIMITS)
    user = make_user()
    assert [login(throttled, user.username, WRONG).status_code for _ in range(2)] == [401, 401]

    assert login(throttled, user.username, user.password).status_code == 200

    # The count starts again: three more failures before the limit, as for a user with none.
    assert attempts_until_throttled(throttled, user.username) == 4


def test_a_success_clears_its_name_and_addresss_stale_pending_attempts_too_and_no_other_addresss(
    make_client, make_user
):
    """What a successful login clears: on PostgreSQL `store_login` (migration 0007) repeats `CLEAR_FAILURES`."""
    throttled = make_client(**LIMITS)
    user = make_user()
    key, here, elsewhere = throttle_key_for_username(user.username), unique_address(), unique_address()
    stale = datetime.now(UTC) - PENDING_ATTEMPT_LIFETIME - timedelta(minutes=1)
    rows = [
        {"username": key, "address": here, "occurred_at": stale, "pending": True},
        {"username": key, "address": here, "occurred_at": datetime.now(UTC), "pending": False},
        {"username": key, "address": elsewhere, "occurred_at": datetime.now(UTC), "pending": False},
    ]
    engine = throttled.app.state.engine
    with engine.begin() as connection:
        connection.execute(insert(LoginFailure), rows)

    assert login(from_address(throttled, here), user.username, user.password).status_code == 200

    with engine.connect() as connection:
        left = connection.execute(select(LoginFailure.address).where(LoginFailure.username == key)).scalars().all()
    assert left == [elsewhere]


def test_the_counts_function_counts_what_the_statement_counts(make_client):
    """PostgreSQL counts through the function of migrations 0003 and 0004, SQLite through ATTEMPT_COUNTS: the same
    four counts, over failures and pending attempts inside and outside the window, ahead and behind, stale or not."""
    client = make_client(**LIMITS)
    engine = client.app.state.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("the function is PostgreSQL's")
    key, address, now = ghost_username(), unique_address(), datetime.now(UTC)
    # A window longer than a pending attempt's lifetime, as the default (900 s), so that stale attempts are in it.
    window = timedelta(seconds=900)
    window_start, stale_before = now - window, now - PENDING_ATTEMPT_LIFETIME
    rows = [
        # (key, address, seconds ago, pending)
        (key, address, 10, False),  # a failure of both
        (key, "192.0.2.1", 20, False),  # a failure of the key only
        ("someone else", address, 30, False),  # a failure of the address only
        (key, address, window.total_seconds() + 5, False),  # outside the window
        (key, address, 5, True),  # pending, ahead of the attempt below
        (key, address, PENDING_ATTEMPT_LIFETIME.total_seconds() + 1, True),  # stale pending: a failure
        (key, address, window.total_seconds(), False),  # on the window's start: outside
        (key, address, PENDING_ATTEMPT_LIFETIME.total_seconds(), True),  # pending exactly that long: stale
        ("someone else", address, 4, True),  # pending, ahead, address only
    ]
    with engine.connect() as connection:
        server_setting = connection.exec_driver_sql("SHOW enable_bitmapscan").scalar()
        connection.rollback()
        for row_key, row_address, seconds_ago, pending in rows:
            connection.execute(
                insert(LoginFailure).values(
                    username=row_key,
                    address=row_address,
                    occurred_at=now - timedelta(seconds=seconds_ago),
                    pending=pending,
                )
            )
        attempt_id = connection.execute(
            insert(LoginFailure)
            .values(username=key, address=address, occurred_at=now, pending=True)
            .returning(LoginFailure.id)
        ).scalar_one()
        # Pending behind the attempt (a larger id): not ahead of it.
        connection.execute(insert(LoginFailure).values(username=key, address=address, occurred_at=now, pending=True))
        connection.commit()
        parameters = {
            "throttle_key": key,
            "address": address,
            "attempt_id": attempt_id,
            "window_start": window_start,
            "stale_before": stale_before,
        }
        by_statement = run_statement(connection, ATTEMPT_COUNTS, parameters)[0]
        by_function = run_statement(connection, ATTEMPT_COUNTS_BY_FUNCTION, parameters)[0]
        # The function plans without bitmap scans only while it runs: the connection keeps the server's setting.
        assert connection.exec_driver_sql("SHOW enable_bitmapscan").scalar() == server_setting
    assert tuple(by_function) == tuple(by_statement) == (4, 1, 4, 2)
    assert by_function._fields == ("key_failures", "key_ahead", "address_failures", "address_ahead")


def test_the_counts_function_is_plpgsql_with_bitmap_scans_off(make_client):
    """Every login and key grant calls the counts function. PostgreSQL parses and plans a SQL-language function that
    has a SET clause anew on each call, several times the cost of running these counts; PL/pgSQL keeps its prepared
    query per connection. The SET that keeps bitmap scans out of it stays."""
    engine = make_client(**LIMITS).app.state.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("the function is PostgreSQL's")
    with engine.connect() as connection:
        language, settings = connection.exec_driver_sql(
            "SELECT l.lanname, p.proconfig FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang"
            " WHERE p.oid = 'throttle_attempt_counts'::regproc"
        ).one()
    assert (language, settings) == ("plpgsql", ["enable_bitmapscan=off"])
