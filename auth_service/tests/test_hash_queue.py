"""Password hashes in flight are bounded per worker; the rest queue, and a login that waits too long gets 503."""

import threading
import time

import pytest

from auth_service.tests.conftest import login
from shared.passwords import PasswordHasher, PasswordHashingBusy
from shared.settings import Settings

HASH_SECONDS = 0.1


class SlowCountingContext:
    """Stands in for passlib's CryptContext: each verification takes HASH_SECONDS and counts how many overlap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def verify_and_update(self, password: str, password_hash: str) -> tuple[bool, None]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(HASH_SECONDS)
        with self._lock:
            self.running -= 1
        return True, None


def hasher_with(
    settings: Settings, *, concurrency: int, queue_timeout: float
) -> tuple[PasswordHasher, SlowCountingContext]:
    hasher = PasswordHasher(
        settings.model_copy(
            update={"password_hash_concurrency": concurrency, "password_hash_queue_timeout_seconds": queue_timeout}
        )
    )
    context = SlowCountingContext()
    hasher._context = context  # noqa: SLF001  (the Argon2 work itself is not what is tested here)
    return hasher, context


def verify_from_threads(hasher: PasswordHasher, count: int) -> list[str]:
    outcomes: list[str] = []

    def verify() -> None:
        try:
            hasher.verify(password="pw", password_hash="stored")
            outcomes.append("verified")
        except PasswordHashingBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=verify) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.mark.parametrize("concurrency", [1, 2])
def test_no_more_hashes_run_at_once_than_the_setting_allows(settings: Settings, concurrency: int) -> None:
    hasher, context = hasher_with(settings, concurrency=concurrency, queue_timeout=10)
    outcomes = verify_from_threads(hasher, 8)
    # All queued and all verified, never more than `concurrency` at a time.
    assert outcomes == ["verified"] * 8
    assert context.most_at_once == concurrency


class HeldContext:
    """Stands in for passlib's CryptContext: a verification runs until the test lets it finish."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finish = threading.Event()
        self.calls = 0

    def verify_and_update(self, password: str, password_hash: str) -> tuple[bool, None]:
        self.calls += 1
        self.started.set()
        assert self.finish.wait(30), "the test never let the verification finish"
        return True, None


def test_a_hash_that_waits_past_the_queue_timeout_is_refused(settings: Settings) -> None:
    """No sleep decides the outcome: the only hash thread is held until every waiter has given up."""
    queue_timeout = 0.2
    hasher, _ = hasher_with(settings, concurrency=1, queue_timeout=queue_timeout)
    held = HeldContext()
    hasher._context = held  # noqa: SLF001
    first: list[str] = []
    holder = threading.Thread(target=lambda: first.extend(verify_from_threads(hasher, 1)))
    holder.start()
    assert held.started.wait(10), "the first verification never started"
    started = time.monotonic()

    waiters = verify_from_threads(hasher, 7)
    waited = time.monotonic() - started
    held.finish.set()
    holder.join(10)

    assert waiters == ["busy"] * 7
    assert first == ["verified"]
    # Each waiter gave up after the queue timeout, not at once and not only when the hash thread came free.
    assert queue_timeout <= waited < 10
    # And its check left the queue unrun: the queue is first in, first out, so once work queued after them has
    # run, none of theirs is left to run.
    hasher._hash_threads.submit(lambda: None).result(timeout=10)  # noqa: SLF001
    assert held.calls == 1


def test_a_hash_that_a_hash_thread_takes_within_the_queue_timeout_runs(settings: Settings) -> None:
    hasher, _ = hasher_with(settings, concurrency=1, queue_timeout=30)
    held = HeldContext()
    hasher._context = held  # noqa: SLF001
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.extend(verify_from_threads(hasher, 1))) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert held.started.wait(10)
    held.finish.set()
    for thread in threads:
        thread.join(30)

    assert outcomes == ["verified"] * 3


def test_a_login_refused_for_a_full_hash_queue_is_503_and_counts_as_no_failure(make_client, make_user) -> None:
    client = make_client(password_hash_concurrency=1, password_hash_queue_timeout_seconds=0.2)
    user = make_user()
    limit = client.app.state.settings.login_max_failures_per_username
    hasher: PasswordHasher = client.app.state.hasher
    # The worker's only hash thread is busy while the client retries, more often than the failure limit.
    held = HeldContext()
    holding = hasher._hash_threads.submit(held.verify_and_update, "pw", "stored")  # noqa: SLF001
    assert held.started.wait(10), "the hash thread never took the held work"
    try:
        refused = [login(client, user.username, user.password) for _ in range(limit + 1)]
    finally:
        held.finish.set()
    # The hash thread is free again before the last login, whose check then waits only for the refused ones to be
    # skipped, not for a thread to wake within the 0.2 s queue timeout.
    holding.result(timeout=10)
    for response in refused:
        assert response.status_code == 503, response.text
        assert response.json()["detail"]
        assert int(response.headers["Retry-After"]) >= 1
    # No password was checked, so none of them was a failed guess: the user is not locked out.
    assert login(client, user.username, user.password).status_code == 200
