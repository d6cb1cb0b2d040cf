"""Login throttling: failed logins per username and per client address, counted in the database.

Kept in the database so every gunicorn worker and every replica sees the same counts.
"""

import hashlib
import ipaddress
import math
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, ScalarSelect, bindparam, delete, insert, select

from shared.database import run_statement
from shared.models import LoginFailure, as_utc
from shared.settings import Settings


class LoginThrottled(Exception):
    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(retry_after_seconds)
        self.retry_after_seconds = retry_after_seconds


def throttle_key_for_username(username: str) -> str:
    """The stored key: the lower-cased name, or a digest for anything that could not be a username.

    A digest keeps NUL bytes, over-long input and the like out of the table while still counting them.
    """
    lowered = username.lower()
    if len(lowered) <= 64 and lowered.isascii() and lowered.isprintable():
        return lowered
    return "#" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def client_address(*, socket_address: str | None, forwarded_for: str | None, trusted_proxies: list[str]) -> str:
    """The client's address: the socket peer, unless that peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right, skipping trusted hops; the first
    untrusted address is the client. Anything unparsable falls back to the socket peer.
    """
    peer = socket_address or "unknown"
    if not forwarded_for or not _is_trusted(peer, trusted_proxies):
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return peer


def _is_trusted(address: str, trusted_proxies: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in trusted_proxies:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


LOGIN_FAILURES = LoginFailure.__table__
RECORD_ATTEMPT = (
    insert(LOGIN_FAILURES)
    .values(username=bindparam("username_key"), address=bindparam("address"), occurred_at=bindparam("now"))
    .returning(LOGIN_FAILURES.c.id)
)
FORGET_ATTEMPT = delete(LOGIN_FAILURES).where(LOGIN_FAILURES.c.id == bindparam("attempt_id"))
FORGET_FAILURES_OUTSIDE_WINDOW = delete(LOGIN_FAILURES).where(LOGIN_FAILURES.c.occurred_at <= bindparam("window_start"))
CLEAR_FAILURES = delete(LOGIN_FAILURES).where(
    LOGIN_FAILURES.c.username == bindparam("username_key"), LOGIN_FAILURES.c.address == bindparam("address")
)


def _blocking_failure(condition: ColumnElement[bool], offset_name: str) -> ScalarSelect:
    """The time of the limit-th most recent other failure in the window matching `condition`, NULL while there are
    fewer: the count drops below the limit when that one leaves the window. Bind `offset_name` to limit - 1."""
    return (
        select(LOGIN_FAILURES.c.occurred_at)
        .where(
            condition,
            LOGIN_FAILURES.c.id != bindparam("attempt_id"),
            LOGIN_FAILURES.c.occurred_at > bindparam("window_start"),
        )
        .order_by(LOGIN_FAILURES.c.occurred_at.desc())
        .offset(bindparam(offset_name))
        .limit(1)
        .scalar_subquery()
    )


# Both limits in one round trip.
BLOCKING_FAILURES = select(
    _blocking_failure(LOGIN_FAILURES.c.username == bindparam("username_key"), "username_offset").label("by_username"),
    _blocking_failure(LOGIN_FAILURES.c.address == bindparam("address"), "address_offset").label("by_address"),
)


def begin_login_attempt(
    *, connection: Connection, settings: Settings, username_key: str, address: str, now: datetime
) -> int:
    """Records the attempt as a failure before the password is checked (committed), then counts.

    Counting after a committed insert is what makes the limit hold under parallel guesses: of N attempts
    racing, the k-th to commit sees k-1 others, so no more than the limit get a password checked. Past
    either limit the attempt is forgotten again (throttled attempts do not extend the lockout) and
    LoginThrottled is raised. Returns the attempt's id; a successful login deletes it.
    """
    window = timedelta(seconds=settings.login_failure_window_seconds)
    window_start = now - window
    throttle_keys = {"username_key": username_key, "address": address}
    # Old rows are useless to every check; trimming them here keeps the table the size of one window. First, so
    # that a trim that fails (a 503) leaves no attempt recorded whose password was never checked.
    run_statement(connection, FORGET_FAILURES_OUTSIDE_WINDOW, {"window_start": window_start})
    attempt_id = run_statement(connection, RECORD_ATTEMPT, {**throttle_keys, "now": now})[0].id
    blocking = run_statement(
        connection,
        BLOCKING_FAILURES,
        {
            **throttle_keys,
            "attempt_id": attempt_id,
            "window_start": window_start,
            "username_offset": settings.login_max_failures_per_username - 1,
            "address_offset": settings.login_max_failures_per_address - 1,
        },
    )[0]
    retry_after = max(
        (_seconds_until_outside(occurred_at, window=window, now=now) for occurred_at in blocking if occurred_at),
        default=0,
    )
    if retry_after:
        forget_login_attempt(connection=connection, attempt_id=attempt_id)
        raise LoginThrottled(retry_after)
    return attempt_id


def _seconds_until_outside(occurred_at: datetime, *, window: timedelta, now: datetime) -> int:
    return max(math.ceil((as_utc(occurred_at) + window - now).total_seconds()), 1)


def forget_login_attempt(*, connection: Connection, attempt_id: int) -> None:
    """Deletes an attempt whose password was never checked, so that it counts as no failure."""
    run_statement(connection, FORGET_ATTEMPT, {"attempt_id": attempt_id})


def clear_login_failures(*, connection: Connection, username_key: str, address: str) -> None:
    """After a successful login: forget this username's failures from this address only (this attempt's too).

    Failures from other addresses still count, so a login by the owner does not give an attacker
    elsewhere a fresh set of guesses.
    """
    run_statement(connection, CLEAR_FAILURES, {"username_key": username_key, "address": address})
