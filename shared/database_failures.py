"""What the log says when the database fails: the driver's own message, passwords masked, once per cause.

Callers (`/readyz`, the 503 error handler) answer anonymous clients with a fixed text; the cause goes only here.
"""

import logging
import re
import threading
import time

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

logger = logging.getLogger("shared.database")

# A cause already logged is logged again after this long, so a long outage still shows in recent logs.
QUIET_SECONDS = 60.0
# Causes remembered at once; the oldest is forgotten first. Driver messages vary little (host, port, reason).
MAX_CAUSES = 64
MASK = "***"
_SECRET_PATTERNS = (
    # libpq's `password=...` in a connection string, quoted or not.
    re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)"),
    # A URL's `user:password@`.
    re.compile(r"(://[^:/?#@\s]*:)([^@\s]+)(?=@)"),
)


def mask_passwords(message: str, *, known: tuple[str, ...] = ()) -> str:
    """`message` with every password-shaped value, and each of the `known` secrets wherever it appears, masked."""
    for secret in known:
        if secret:
            message = message.replace(secret, MASK)
    for pattern in _SECRET_PATTERNS:
        message = pattern.sub(lambda match: match.group(1) + MASK, message)
    return message


def driver_message(error: BaseException) -> str:
    """The driver's own words for `error` (SQLAlchemy's wrapper adds the SQL and parameters, which are left out)."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class CauseLog:
    """Logs a warning the first time a cause is seen, and again only when it has been quiet for `quiet_seconds`.

    The line says how many times the cause recurred since it was last logged, so nothing is hidden but volume.
    """

    def __init__(self, *, quiet_seconds: float = QUIET_SECONDS, max_causes: int = MAX_CAUSES) -> None:
        self._quiet_seconds = quiet_seconds
        self._max_causes = max_causes
        self._lock = threading.Lock()
        # cause -> (monotonic time it was last logged, occurrences since)
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, *, cause: str, where: str) -> bool:
        """Logs `cause` seen at `where` unless it was logged less than `quiet_seconds` ago; True if it logged."""
        now = time.monotonic()
        with self._lock:
            last_logged, repeats = self._seen.pop(cause, (None, 0))
            if last_logged is not None and now - last_logged < self._quiet_seconds:
                self._seen[cause] = (last_logged, repeats + 1)
                return False
            self._seen[cause] = (now, 0)
            while len(self._seen) > self._max_causes:
                del self._seen[next(iter(self._seen))]
        suffix = f" (seen {repeats} more times since last logged)" if repeats else ""
        logger.warning("database unavailable on %s: %s%s", where, cause, suffix)
        return True


# One per process: /readyz and the error handler report the same outage once between them.
database_failures = CauseLog()


def log_database_failure(error: SQLAlchemyError, *, engine: Engine, where: str) -> None:
    """Logs why the database failed (driver message, the URL's password masked), once per cause."""
    cause = mask_passwords(driver_message(error), known=(engine.url.password or "",))
    database_failures.warning(cause=cause, where=where)


def log_database_timeout(*, seconds: float, where: str) -> None:
    database_failures.warning(cause=f"no answer within {seconds} s", where=where)
