"""Login throttling: failed logins per username and per client address, counted in the database.

Kept in the database so every gunicorn worker and every replica sees the same counts.
"""

import hashlib
import ipaddress
import math
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select
from sqlalchemy.orm import Session

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


def begin_login_attempt(*, session: Session, settings: Settings, username_key: str, address: str, now: datetime) -> int:
    """Records the attempt as a failure before the password is checked, commits, then counts.

    Counting after a committed insert is what makes the limit hold under parallel guesses: of N attempts
    racing, the k-th to commit sees k-1 others, so no more than the limit get a password checked. Past
    either limit the attempt is forgotten again (throttled attempts do not extend the lockout) and
    LoginThrottled is raised. Returns the attempt's id; a successful login deletes it.
    """
    attempt = LoginFailure(username=username_key, address=address, occurred_at=now)
    session.add(attempt)
    # Old rows are useless to every check; trimming them here keeps the table the size of one window.
    window = timedelta(seconds=settings.login_failure_window_seconds)
    session.execute(delete(LoginFailure).where(LoginFailure.occurred_at <= now - window))
    session.commit()
    retry_after = _seconds_until_allowed(
        session=session, settings=settings, username_key=username_key, address=address, now=now, attempt_id=attempt.id
    )
    if retry_after:
        forget_login_attempt(session=session, attempt_id=attempt.id)
        raise LoginThrottled(retry_after)
    return attempt.id


def forget_login_attempt(*, session: Session, attempt_id: int) -> None:
    """Deletes and commits an attempt whose password was never checked, so that it counts as no failure."""
    session.execute(delete(LoginFailure).where(LoginFailure.id == attempt_id))
    session.commit()


def _seconds_until_allowed(
    *, session: Session, settings: Settings, username_key: str, address: str, now: datetime, attempt_id: int
) -> int:
    """0 when both counts of other failures in the window are below their limits, else the wait in seconds."""
    window = timedelta(seconds=settings.login_failure_window_seconds)
    limits = (
        (LoginFailure.username == username_key, settings.login_max_failures_per_username),
        (LoginFailure.address == address, settings.login_max_failures_per_address),
    )
    retry_after = 0
    for condition, limit in limits:
        # The limit-th most recent other failure: the count drops below the limit when it leaves the window.
        blocking = session.scalar(
            select(LoginFailure.occurred_at)
            .where(and_(condition, LoginFailure.id != attempt_id, LoginFailure.occurred_at > now - window))
            .order_by(LoginFailure.occurred_at.desc())
            .offset(limit - 1)
            .limit(1)
        )
        if blocking is not None:
            remaining = (as_utc(blocking) + window - now).total_seconds()
            retry_after = max(retry_after, math.ceil(remaining), 1)
    return retry_after


def clear_login_failures(*, session: Session, username_key: str, address: str) -> None:
    """After a successful login: forget this username's failures from this address only (this attempt's too).

    Failures from other addresses still count, so a login by the owner does not give an attacker
    elsewhere a fresh set of guesses.
    """
    session.execute(delete(LoginFailure).where(LoginFailure.username == username_key, LoginFailure.address == address))
