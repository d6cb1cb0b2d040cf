"""Password hashing through passlib (the libpass fork): Argon2id for new hashes, bcrypt still verified.

Argon2 hashes are memory-hard, so the number running at once in a process is bounded here.
"""

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from passlib.context import CryptContext

from shared.dummy_hashes import EvenCostVerifier
from shared.settings import Settings


class PasswordHashingBusy(Exception):
    """Too many password hashes queued in this process; the caller should answer 503."""


Result = TypeVar("Result")


class PasswordHasher:
    """Hashes and verifies passwords on `concurrency` threads of its own, so at most that many at once.

    Only those threads ever hold an Argon2 buffer. glibc keeps a freed buffer in the malloc arena of the thread
    that used it, so hashing on the request threads themselves left one buffer per request thread in memory
    (docs/performance.md, "Logins and hashing").
    """

    def __init__(self, settings: Settings, *, settings_in_use: Callable[[], Iterable[str]] | None = None) -> None:
        """`settings_in_use` names the hash settings among the users (shared.dummy_hashes.hash_settings_in_use),
        so that every check costs the same whatever the username; read on the first check."""
        self._context = CryptContext(
            schemes=["argon2", "bcrypt"],
            default="argon2",
            # Any bcrypt hash (and any argon2 hash with other parameters) is upgraded on the next login.
            deprecated=["bcrypt"],
            argon2__type="ID",
            argon2__memory_cost=settings.argon2_memory_kib,
            argon2__rounds=settings.argon2_time_cost,
            argon2__parallelism=settings.argon2_parallelism,
        )
        self._hash_threads = ThreadPoolExecutor(settings.password_hash_concurrency, thread_name_prefix="password-hash")
        self._queue_timeout = settings.password_hash_queue_timeout_seconds
        self._even = EvenCostVerifier(self._context, settings_in_use)

    def _on_hash_thread(self, work: Callable[..., Result], *arguments: object) -> Result:
        """`work(*arguments)` on a hash thread, if one takes it from the queue within the queue timeout.

        The pool's own queue, not a semaphore in front of it: a finished hash's thread takes the next one itself,
        and only the thread that waits for a result is woken.
        """
        queued = self._hash_threads.submit(work, *arguments)
        try:
            return queued.result(timeout=self._queue_timeout)
        except TimeoutError:
            # Not started yet: withdrawn from the queue, it never runs. Started: it runs to the end, and answers.
            if queued.cancel():
                raise PasswordHashingBusy from None
            return queued.result()

    def hash(self, password: str) -> str:
        return self._on_hash_thread(self._context.hash, password)

    def verify_and_update(self, *, password: str, password_hash: str) -> tuple[bool, str | None]:
        """(matches, new hash or None): a new hash when the stored one uses outdated parameters."""
        try:
            self._even.learn_settings_in_use()
            return self._on_hash_thread(self._even.verify_and_update, self._context, password, password_hash)
        except ValueError:
            # bcrypt refuses secrets over 72 bytes; such a password never matched a bcrypt hash.
            return False, None

    def verify(self, *, password: str, password_hash: str) -> bool:
        matches, _ = self.verify_and_update(password=password, password_hash=password_hash)
        return matches

    def verify_dummy(self, *, password: str) -> None:
        """Spends the time of a real check (shared.dummy_hashes): unknown usernames answer as slowly as known ones."""
        self._even.learn_settings_in_use()
        self._on_hash_thread(self._even.verify_dummies, password)
