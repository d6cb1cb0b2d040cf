"""Only failures count: parallel logins with the right password never refuse each other, while parallel wrong
guesses still get no more passwords checked than the limit. Real parallelism on the suite's database: several
replicas of the app (each with its own hash thread and pool), many threads each sending one login."""

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial

from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from auth_service.tests.conftest import login, unique_address
from auth_service.tests.test_throttle import WRONG, assert_throttled, ghost_username
from shared.models import LoginFailure
from shared.testing import at_once as run_at_once
from shared.throttle import PENDING_ATTEMPT_LIFETIME

PER_USERNAME = 3
PER_ADDRESS = 6
LIMITS = {
    "login_max_failures_per_username": PER_USERNAME,
    "login_max_failures_per_address": PER_ADDRESS,
    "login_failure_window_seconds": 600,
    # Room for every attempt to wait its turn behind the hashes ahead of it on a loaded machine.
    "password_hash_queue_timeout_seconds": 30.0,
}
REPLICAS = 3


def replicas(make_client, *, address: str | None = None) -> list[TestClient]:  # noqa: ANN001
    return [make_client(address=address, **LIMITS) for _ in range(REPLICAS)]


def at_once(attempts: list[tuple[TestClient, str, str]]) -> list[int]:
    """Sends every (client, username, password) login on its own thread, all released together; the statuses."""
    return [response.status_code for response in run_at_once([partial(login, *each) for each in attempts])]


def attempt_rows(client: TestClient, username: str) -> Counter:
    """The username's throttle rows: how many are failures (pending false) and how many pending."""
    with client.app.state.session_factory() as session:
        rows = session.execute(
            select(LoginFailure.pending, func.count()).where(LoginFailure.username == username).group_by("pending")
        )
        return Counter({"pending" if pending else "failures": count for pending, count in rows})


def test_ten_parallel_logins_with_the_right_password_all_succeed(make_client, make_user):
    # One address too, so neither limit may refuse them: more logins at once than either limit.
    clients = replicas(make_client, address=unique_address())
    user = make_user()

    statuses = at_once([(clients[index % REPLICAS], user.username, user.password) for index in range(10)])

    assert statuses == [200] * 10
    assert attempt_rows(clients[0], user.username) == Counter()


def test_twenty_parallel_wrong_guesses_get_exactly_the_limit_of_passwords_checked(make_client, make_user):
    clients = replicas(make_client)
    user = make_user()

    statuses = at_once([(clients[index % REPLICAS], user.username, WRONG) for index in range(20)])

    assert Counter(statuses) == {401: PER_USERNAME, 429: 20 - PER_USERNAME}, statuses
    assert attempt_rows(clients[0], user.username) == Counter({"failures": PER_USERNAME})
    assert_throttled(login(clients[0], user.username, user.password), window=LIMITS["login_failure_window_seconds"])


def test_parallel_wrong_guesses_from_one_address_get_exactly_its_limit_checked(make_client):
    clients = replicas(make_client, address=unique_address())

    statuses = at_once([(clients[index % REPLICAS], ghost_username(), WRONG) for index in range(20)])

    assert Counter(statuses) == {401: PER_ADDRESS, 429: 20 - PER_ADDRESS}, statuses


def test_right_and_wrong_passwords_at_once_still_check_no_more_wrong_ones_than_the_limit(make_client, make_user):
    # The owner's clients at other addresses than the guesser's: a success forgets its own address's failures.
    guessers, owners = replicas(make_client), replicas(make_client)
    user = make_user()
    attempts = [
        (owners[index % REPLICAS], user.username, user.password)
        if index % 2
        else (guessers[index % REPLICAS], user.username, WRONG)
        for index in range(20)
    ]

    statuses = at_once(attempts)

    wrong = Counter(status for status, (_, _, password) in zip(statuses, attempts, strict=True) if password == WRONG)
    right = Counter(status for status, (_, _, password) in zip(statuses, attempts, strict=True) if password != WRONG)
    assert wrong == {401: PER_USERNAME, 429: 10 - PER_USERNAME}, statuses
    # A right password is refused only once the wrong ones have used up the limit, never by the other right ones.
    assert set(right) <= {200, 429}, statuses
    assert attempt_rows(guessers[0], user.username) == Counter({"failures": PER_USERNAME})


def add_attempt(client: TestClient, username: str, *, pending: bool, age_seconds: float = 0) -> int:
    with client.app.state.session_factory() as session:
        row = LoginFailure(
            username=username,
            address=unique_address(),
            occurred_at=datetime.now(UTC) - timedelta(seconds=age_seconds),
            pending=pending,
        )
        session.add(row)
        session.commit()
        return row.id


def login_behind_a_pending_attempt(client: TestClient, user, *, decided_after: float, failed: bool):  # noqa: ANN001
    """A login while the limit - 1 failures and one pending attempt (another worker checking a password) stand; that
    attempt is decided (a failure, or deleted as a success) `decided_after` seconds in. The response and its time."""
    for _ in range(PER_USERNAME - 1):
        add_attempt(client, user.username, pending=False)
    ahead = add_attempt(client, user.username, pending=True)

    def decide() -> None:
        time.sleep(decided_after)
        with client.app.state.session_factory() as session:
            if failed:
                session.get(LoginFailure, ahead).pending = False
            else:
                session.execute(delete(LoginFailure).where(LoginFailure.id == ahead))
            session.commit()

    deciding = threading.Thread(target=decide)
    started = time.monotonic()
    deciding.start()
    response = login(client, user.username, user.password)
    deciding.join()
    return response, time.monotonic() - started


def test_a_login_waits_for_the_attempts_ahead_of_it_and_goes_ahead_once_they_are_decided(make_client, make_user):
    response, took = login_behind_a_pending_attempt(make_client(**LIMITS), make_user(), decided_after=0.5, failed=False)

    assert response.status_code == 200, response.text
    assert took >= 0.5


def test_a_login_waits_for_an_attempt_ahead_that_fails_and_is_then_throttled(make_client, make_user):
    response, _ = login_behind_a_pending_attempt(make_client(**LIMITS), make_user(), decided_after=0.3, failed=True)

    assert_throttled(response, window=LIMITS["login_failure_window_seconds"])


def test_an_attempt_ahead_that_is_never_decided_gives_a_503_after_the_wait_and_counts_nothing(make_client, make_user):
    client = make_client(**{**LIMITS, "password_hash_queue_timeout_seconds": 0.5})
    user = make_user()
    for _ in range(PER_USERNAME - 1):
        add_attempt(client, user.username, pending=False)
    add_attempt(client, user.username, pending=True)

    response = login(client, user.username, user.password)

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert attempt_rows(client, user.username) == Counter({"failures": PER_USERNAME - 1, "pending": 1})


def test_a_pending_attempt_of_a_process_that_died_counts_as_a_failure_once_stale(make_client, make_user):
    client = make_client(**LIMITS)
    user = make_user()
    stale = PENDING_ATTEMPT_LIFETIME.total_seconds() + 1
    for _ in range(PER_USERNAME):
        add_attempt(client, user.username, pending=True, age_seconds=stale)

    assert_throttled(login(client, user.username, user.password), window=LIMITS["login_failure_window_seconds"])
