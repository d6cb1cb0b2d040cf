"""Password checks that cost the same for every username: one verification per hash setting in use.

Users whose hashes predate a parameter change (or are bcrypt) verify at their old cost until they log in, so a
check against only the user's own hash, or only a dummy with today's parameters for an unknown name, answers at
a speed that tells them apart. Here every check verifies exactly one hash of each setting still present among the
users: the user's own for its setting, a dummy for every other (an unknown name: dummies for all). The work, and
so the time, is the same whatever the name; it costs one extra verification per outdated setting only while such
hashes remain.
"""

import contextlib
import re
import threading
from collections.abc import Callable, Iterable

from passlib.context import CryptContext
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from shared.models import User

DUMMY_PASSWORD = "dummy password for unknown users"
# PostgreSQL names the distinct settings itself (one scan of users, once per process); elsewhere (SQLite, `make run`)
# the hashes are read and named here.
SETTINGS_IN_USE_SQL = text(
    "SELECT DISTINCT CASE WHEN password_hash LIKE '$argon2%' "
    r"THEN regexp_replace(password_hash, '\$[^$]*\$[^$]*$', '') ELSE left(password_hash, 7) END FROM users"
)
ARGON2_SETTINGS = re.compile(r"^\$argon2(?P<type>id|i|d)\$(?:v=\d+\$)?m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)$")
BCRYPT_SETTINGS = re.compile(r"^\$(?P<ident>2[abxy]?)\$(?P<rounds>\d{2})\$$")


def hash_settings(password_hash: str) -> str:
    """What sets a hash's cost: `$argon2id$v=19$m=..,t=..,p=..` without salt and digest, or bcrypt's `$2b$12$`."""
    if password_hash.startswith("$argon2"):
        return password_hash.rsplit("$", 2)[0]
    return password_hash[:7]


def hash_settings_in_use(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            return set(connection.execute(SETTINGS_IN_USE_SQL).scalars())
        return {hash_settings(found) for found in connection.execute(select(User.password_hash)).scalars()}


class EvenCostVerifier:
    """Verifies a password against one hash of every setting in use (`settings_in_use`, read once, on first use)."""

    def __init__(self, context: CryptContext, settings_in_use: Callable[[], Iterable[str]] | None = None) -> None:
        self._context = context
        current = context.hash(DUMMY_PASSWORD)
        self._dummies = {hash_settings(current): current}
        self._settings_in_use = settings_in_use
        self._learned = settings_in_use is None
        self._lock = threading.Lock()
        # At start-up, on a connection the pool then keeps for the first requests; with the database down, on the
        # first check instead.
        with contextlib.suppress(SQLAlchemyError):
            self.learn_settings_in_use()

    def learn_settings_in_use(self) -> None:
        """Adds a dummy for each setting the users' hashes use; retried on the next check if the database fails."""
        if self._learned:
            return
        with self._lock:
            if self._learned:
                return
            dummies = dict(self._dummies)
            for settings in self._settings_in_use():
                if settings not in dummies and (dummy := self._dummy_like(settings)) is not None:
                    dummies[settings] = dummy
            self._dummies, self._learned = dummies, True

    def _dummy_like(self, settings: str) -> str | None:
        if argon2_match := ARGON2_SETTINGS.match(settings):
            handler = self._context.handler("argon2").using(
                type=argon2_match["type"].upper(),
                memory_cost=int(argon2_match["m"]),
                rounds=int(argon2_match["t"]),
                parallelism=int(argon2_match["p"]),
            )
            return handler.hash(DUMMY_PASSWORD)
        if bcrypt_match := BCRYPT_SETTINGS.match(settings):
            ident = "2b" if bcrypt_match["ident"] in ("2", "2x") else bcrypt_match["ident"]
            return (
                self._context.handler("bcrypt")
                .using(rounds=int(bcrypt_match["rounds"]), ident=ident)
                .hash(DUMMY_PASSWORD)
            )
        return None

    def verify_and_update(self, context: CryptContext, password: str, password_hash: str) -> tuple[bool, str | None]:
        """`context.verify_and_update` on the user's hash, then a dummy of every other setting in use."""
        try:
            outcome = context.verify_and_update(password, password_hash)
        except ValueError:
            # bcrypt refuses secrets over 72 bytes at once, as its dummy does below: equal either way.
            outcome = (False, None)
        own = hash_settings(password_hash)
        self._verify_dummies(password, skip=own)
        if own not in self._dummies:
            # A setting that appeared after start-up (hashes imported since): from now on unknown names pay it too.
            self._add_dummy(own)
        return outcome

    def _add_dummy(self, settings: str) -> None:
        dummy = self._dummy_like(settings)
        with self._lock:
            self._dummies = {**self._dummies, settings: dummy or ""}

    def verify_dummies(self, password: str) -> None:
        """An unknown name: one dummy of every setting in use."""
        self._verify_dummies(password, skip=None)

    def _verify_dummies(self, password: str, *, skip: str | None) -> None:
        for settings, dummy in self._dummies.items():
            if settings == skip or not dummy:
                continue
            try:
                self._context.verify(password, dummy)
            except ValueError:
                continue
