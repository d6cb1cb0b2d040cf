"""Load shedding in front of password hashing: at most PASSWORD_HASH_MAX_IN_FLIGHT such requests per worker.

The hash queue (shared/passwords.py) bounds only requests that already hold a thread; the ones waiting for a
thread, each with its body in memory, had no bound. A request that would hash is counted here, on the event
loop before it takes a thread, and refused at once (503 with Retry-After) past the limit.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, Request

from shared.passwords import PasswordHashingBusy


class HashingAdmission:
    """A per-worker count of requests that will hash a password; only the event loop touches it, so no lock."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


@asynccontextmanager
async def password_hashing_slot(request: Request, *, hashes: bool = True) -> AsyncIterator[None]:
    """Holds one of the worker's slots while a request that hashes a password runs (nothing when `hashes` is false).

    Raises PasswordHashingBusy (503, Retry-After) when every slot is taken. For routes that hash only sometimes
    (a PATCH that may change the password); routes that always hash use the `HashesPassword` dependency.
    """
    if not hashes:
        yield
        return
    admission: HashingAdmission = request.app.state.hashing_admission
    if not admission.try_enter():
        raise PasswordHashingBusy
    try:
        yield
    finally:
        admission.leave()


async def _hashing_slot(request: Request) -> AsyncIterator[None]:
    async with password_hashing_slot(request):
        yield


# `dependencies=[HashesPassword]` on a route that always hashes (sign-up, a password-reset confirm).
HashesPassword = Depends(_hashing_slot)
