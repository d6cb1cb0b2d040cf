"""The auth service's logic: password login, refresh-token rotation with reuse detection, revocation.

Refresh tokens are opaque random strings; only their SHA-256 is stored. Every login starts a family,
every refresh retires the presented token and adds the next one to the family.
"""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, exists, func, insert, select, update

from auth_service.sessions import NEW_SESSION, TOUCH_SESSION, USER_AS_READ, new_session_row
from shared.database import run_statement
from shared.models import USERNAME_PATTERN, RefreshToken, User, UserSession
from shared.passwords import PasswordHasher, PasswordHashingBusy
from shared.revocation import end_session
from shared.settings import Settings
from shared.throttle import (
    begin_attempt_and_read,
    clear_failures,
    clearing_parameters,
    forget_attempt,
    login_limits,
    record_failure,
    throttle_key_for_username,
)
from shared.tokens import AccessTokenIssuer

USERNAME_REGEX = re.compile(USERNAME_PATTERN)
REFRESH_TOKEN_BYTES = 32


class InvalidCredentials(Exception):
    """Wrong username or password, or an inactive user: one answer for all, so nothing is enumerable."""


class InvalidRefreshToken(Exception):
    """Unknown, expired, revoked or reused refresh token."""

    def __init__(self, *, reuse_detected: bool = False) -> None:
        super().__init__("invalid refresh token")
        self.reuse_detected = reuse_detected


@dataclass(frozen=True)
class TokenPair:
    user_id: int
    access_token: str
    expires_in: int
    refresh_token: str


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


REFRESH_TOKENS = RefreshToken.__table__
USERS = User.__table__
SESSIONS = UserSession.__table__
# The refresh token is stored only while the user is still active and at the token version its access token
# carries. FOR SHARE on the user's row orders it against a concurrent password change or deactivation, which
# locks that row before it revokes the user's refresh tokens (shared.revocation): either this insert waits for
# that change and then finds the version moved (no row), or the change waits for it and revokes its token.
NEW_REFRESH_TOKEN = (
    insert(REFRESH_TOKENS)
    .from_select(
        ["token_hash", "family_id", "user_id", "issued_at", "expires_at"],
        select(
            bindparam("token_hash", type_=REFRESH_TOKENS.c.token_hash.type),
            bindparam("family_id", type_=REFRESH_TOKENS.c.family_id.type),
            USERS.c.id,
            bindparam("issued_at", type_=REFRESH_TOKENS.c.issued_at.type),
            bindparam("expires_at", type_=REFRESH_TOKENS.c.expires_at.type),
        )
        .where(*USER_AS_READ)
        .with_for_update(read=True),
    )
    .returning(REFRESH_TOKENS.c.id)
)
# PostgreSQL: a login's session, its first refresh token (expiring with it) and the clearing of its throttle
# failures, by one PL/pgSQL function (migration 0007): one round trip and one commit after the hash, all or nothing,
# with its statements prepared once per server connection. The token is stored only if the session was (the user
# unchanged, as `NEW_SESSION` checks), the failures cleared only if the token was; NULL when nothing was stored.
# SQLite (`make run`) has no stored functions: `store_new_session`, then `clear_failures`.
STORE_LOGIN = select(
    func.store_login(
        *(
            bindparam(name)
            for name in (
                "session_id",
                "user_id",
                "token_version",
                "now",
                "expires_at",
                "user_agent",
                "ip_address",
                "token_hash",
                "throttle_key",
                "address",
                "attempt_id",
                "stale_before",
            )
        )
    ).label("refresh_token_id")
)
USER_FOR_LOGIN = select(USERS.c.id, USERS.c.password_hash, USERS.c.is_active, USERS.c.token_version).where(
    USERS.c.username == bindparam("username")
)
# Only over the hash that was verified: a password changed meanwhile is not overwritten with the old one.
NEW_PASSWORD_HASH = (
    update(USERS)
    .where(USERS.c.id == bindparam("user_id"), USERS.c.password_hash == bindparam("verified_hash"))
    .values(password_hash=bindparam("new_hash"), updated_at=bindparam("now"))
)


def issue_token_pair(
    *,
    settings: Settings,
    issuer: AccessTokenIssuer,
    user_id: int,
    token_version: int,
    family_id: str,
    now: datetime,
) -> tuple[TokenPair, dict[str, object]]:
    """A new access token of session `family_id` and a new refresh token in that family, and the parameters of
    `NEW_REFRESH_TOKEN` that store the refresh token, for the caller to run: no row means the user changed
    meanwhile (no tokens then)."""
    access = issuer.issue(user_id=user_id, token_version=token_version, now=now.timestamp(), session_id=family_id)
    refresh_token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    row = {
        "token_hash": hash_refresh_token(refresh_token),
        "family_id": family_id,
        "user_id": user_id,
        "token_version": token_version,
        "issued_at": now,
        "expires_at": now + timedelta(seconds=settings.refresh_token_ttl_seconds),
    }
    pair = TokenPair(
        user_id=user_id, access_token=access.token, expires_in=access.expires_in, refresh_token=refresh_token
    )
    return pair, row


def login_with_password(
    *,
    connection: Connection,
    settings: Settings,
    hasher: PasswordHasher,
    issuer: AccessTokenIssuer,
    username: str,
    password: str,
    address: str,
    now: datetime,
    user_agent: str | None = None,
) -> TokenPair:
    """Checks the throttle, then the password (against a dummy hash for unknown users), then issues tokens.

    Every statement commits on its own (`run_statement`): no transaction, and behind Neon's pooler no server
    connection, is held while the password waits for and runs its hash. Before the hash, the pending attempt, its
    counts and the user are one statement on PostgreSQL (`begin_attempt_and_read`). After it, the session, its first
    refresh token and the clearing of the throttle's failures are one statement (`STORE_LOGIN`; on SQLite a short
    transaction, `store_new_session`, then `clear_failures`), stored only if the user has not changed since it was
    read. Nothing else needs another's atomicity: the attempt is committed (pending) before the hash, and a crash
    before the attempt is decided leaves a pending row that counts as a failure once it is stale (shared.throttle).
    """
    username_key = throttle_key_for_username(username)
    # A name no user can have reads nothing.
    attempt_id, user = begin_attempt_and_read(
        connection=connection,
        limits=login_limits(settings),
        key=username_key,
        address=address,
        now=now,
        read=USER_FOR_LOGIN if USERNAME_REGEX.fullmatch(username) else None,
        read_parameters={"username": username.lower()},
    )
    try:
        if user is None:
            hasher.verify_dummy(password=password)
            matches, new_hash = False, None
        else:
            matches, new_hash = hasher.verify_and_update(password=password, password_hash=user.password_hash)
    except PasswordHashingBusy:
        # Refused for a full hash queue (503): no password was checked, so a client retrying through an
        # overload does not lock itself out.
        forget_attempt(connection=connection, attempt_id=attempt_id)
        raise
    if not matches or user is None or not user.is_active:
        # An inactive user's right password counts too: whether it counted must not tell that it was right.
        record_failure(connection=connection, attempt_id=attempt_id, key=username_key, address=address, now=now)
        raise InvalidCredentials
    if new_hash is not None:
        run_statement(
            connection,
            NEW_PASSWORD_HASH,
            {"user_id": user.id, "verified_hash": user.password_hash, "new_hash": new_hash, "now": now},
        )
    session_row = new_session_row(
        user_id=user.id,
        token_version=user.token_version,
        expires_at=now + timedelta(seconds=settings.refresh_token_ttl_seconds),
        user_agent=user_agent,
        address=address,
        now=now,
    )
    pair, refresh_row = issue_token_pair(
        settings=settings,
        issuer=issuer,
        user_id=user.id,
        token_version=user.token_version,
        family_id=session_row["session_id"],
        now=now,
    )
    if connection.dialect.name == "postgresql":
        clearing = clearing_parameters(key=username_key, address=address, attempt_id=attempt_id, now=now)
        parameters = {**session_row, "token_hash": refresh_row["token_hash"], **clearing}
        stored = run_statement(connection, STORE_LOGIN, parameters)[0].refresh_token_id is not None
    else:
        stored = store_new_session(connection=connection, session_row=session_row, refresh_row=refresh_row)
        if stored:
            clear_failures(connection=connection, key=username_key, address=address, attempt_id=attempt_id, now=now)
    if not stored:
        # The password was changed (or the user deactivated) while this one was being checked.
        record_failure(connection=connection, attempt_id=attempt_id, key=username_key, address=address, now=now)
        raise InvalidCredentials
    return pair


def store_new_session(
    *, connection: Connection, session_row: dict[str, object], refresh_row: dict[str, object]
) -> bool:
    """Stores a login's session and its first refresh token together, or neither (False: the user changed since
    the password was checked). One short transaction, opened only after the hash: a session is never left without
    its token."""
    with connection.begin() as transaction:
        stored = connection.execute(NEW_SESSION, session_row).first() is not None
        if not stored or connection.execute(NEW_REFRESH_TOKEN, refresh_row).first() is None:
            transaction.rollback()
            return False
    return True


# The refresh grant's statements, built once at import: built per request (and run through the ORM), they cost
# more than the rest of the grant (docs/performance.md, "Where the reads' time goes").
REFRESH_TOKEN_IS_PRESENTED = REFRESH_TOKENS.c.token_hash == bindparam("presented_hash")
# Steps 1 and 2 of the lock order (shared/revocation.py) in one statement: the user's row, then the session's
# (a join locks in FROM order). FOR NO KEY UPDATE queues one user's refreshes here yet leaves other inserts'
# foreign-key checks alone (docs/architecture.md#lock-order; SQLite, `make run`, locks nothing).
USER_AND_SESSION_OF_PRESENTED_TOKEN = (
    select(USERS.c.id, USERS.c.is_active, USERS.c.token_version, SESSIONS.c.id.label("session_id"))
    .select_from(USERS.join(SESSIONS, SESSIONS.c.user_id == USERS.c.id))
    .where(SESSIONS.c.id == select(REFRESH_TOKENS.c.family_id).where(REFRESH_TOKEN_IS_PRESENTED).scalar_subquery())
    .with_for_update(key_share=True)
)
# One conditional UPDATE decides: the token is live and no token of its family was revoked (revocation marks
# every row of a family, so a row created while a revocation ran is caught here).
_REVOKED_SIBLING = REFRESH_TOKENS.alias("revoked_sibling")
RETIRE_PRESENTED_TOKEN = (
    update(REFRESH_TOKENS)
    .where(
        REFRESH_TOKEN_IS_PRESENTED,
        REFRESH_TOKENS.c.used_at.is_(None),
        REFRESH_TOKENS.c.revoked_at.is_(None),
        REFRESH_TOKENS.c.expires_at > bindparam("now"),
        ~exists().where(
            _REVOKED_SIBLING.c.family_id == REFRESH_TOKENS.c.family_id, _REVOKED_SIBLING.c.revoked_at.is_not(None)
        ),
    )
    .values(used_at=bindparam("now"))
    .returning(REFRESH_TOKENS.c.family_id)
)
FAMILY_OF_REUSED_TOKEN = select(REFRESH_TOKENS.c.family_id).where(
    REFRESH_TOKEN_IS_PRESENTED, REFRESH_TOKENS.c.used_at.is_not(None)
)


def refresh_token_pair(
    *, connection: Connection, settings: Settings, issuer: AccessTokenIssuer, refresh_token: str, now: datetime
) -> TokenPair:
    """Exchanges a live refresh token for a new pair; a second use of a retired token ends its session.

    One transaction: the presented token is retired only together with storing the next one and moving its
    session's last use and expiry. A refused token's session end is committed before InvalidRefreshToken is raised.
    """
    presented = {"presented_hash": hash_refresh_token(refresh_token)}
    with connection.begin():
        user = connection.execute(USER_AND_SESSION_OF_PRESENTED_TOKEN, presented).first()
        family_id = connection.scalar(RETIRE_PRESENTED_TOKEN, {**presented, "now": now})
        if family_id is None:
            reused_family_id = connection.scalar(FAMILY_OF_REUSED_TOKEN, presented)
            if reused_family_id is not None:
                end_session(connection=connection, session_id=reused_family_id, now=now)
            refusal = InvalidRefreshToken(reuse_detected=reused_family_id is not None)
        elif user is None or not user.is_active:
            end_session(connection=connection, session_id=family_id, now=now)
            refusal = InvalidRefreshToken()
        else:
            pair, refresh_row = issue_token_pair(
                settings=settings,
                issuer=issuer,
                user_id=user.id,
                token_version=user.token_version,
                family_id=family_id,
                now=now,
            )
            if connection.execute(NEW_REFRESH_TOKEN, refresh_row).first() is None:
                # The password was changed (or the user deactivated) meanwhile: raised inside the transaction,
                # so it rolls back and the presented token is not retired either.
                raise InvalidRefreshToken
            connection.execute(
                TOUCH_SESSION, {"touched_session_id": family_id, "now": now, "expires_at": refresh_row["expires_at"]}
            )
            return pair
    raise refusal


def revoke_refresh_token(*, connection: Connection, token: str, now: datetime) -> None:
    """RFC 7009: ends the token's session (its whole family) if it is a refresh token we know; silent otherwise."""
    with connection.begin():
        found = connection.execute(
            USER_AND_SESSION_OF_PRESENTED_TOKEN, {"presented_hash": hash_refresh_token(token)}
        ).first()
        if found is not None:
            end_session(connection=connection, session_id=found.session_id, now=now)
