"""The auth service's logic: password login, refresh-token rotation with reuse detection, revocation.

Refresh tokens are opaque random strings; only their SHA-256 is stored. Every login starts a family,
every refresh retires the presented token and adds the next one to the family.
"""

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, exists, insert, select, update

from auth_service.throttle import (
    begin_login_attempt,
    clear_login_failures,
    forget_login_attempt,
    throttle_key_for_username,
)
from shared.database import run_statement
from shared.models import USERNAME_PATTERN, RefreshToken, User
from shared.passwords import PasswordHasher, PasswordHashingBusy
from shared.settings import Settings
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
        .where(
            USERS.c.id == bindparam("user_id"),
            USERS.c.token_version == bindparam("token_version"),
            USERS.c.is_active.is_(True),
        )
        .with_for_update(read=True),
    )
    .returning(REFRESH_TOKENS.c.id)
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
    """A new access token and a new refresh token in `family_id`, and the parameters of `NEW_REFRESH_TOKEN` that
    store the refresh token, for the caller to run: no row means the user changed meanwhile (no tokens then)."""
    access = issuer.issue(user_id=user_id, token_version=token_version, now=now.timestamp())
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
) -> TokenPair:
    """Checks the throttle, then the password (against a dummy hash for unknown users), then issues tokens.

    Every statement commits on its own (`run_statement`): no transaction, and behind Neon's pooler no server
    connection, is held while the password waits for and runs its hash. None needs another's atomicity: the
    attempt is committed before the counts that must see it, the refresh token is stored only if the user has
    not changed since it was read (`NEW_REFRESH_TOKEN`), and a crash before the failures are cleared leaves one
    more failure counted.
    """
    username_key = throttle_key_for_username(username)
    attempt_id = begin_login_attempt(
        connection=connection, settings=settings, username_key=username_key, address=address, now=now
    )
    user = None
    if USERNAME_REGEX.fullmatch(username):
        found = run_statement(connection, USER_FOR_LOGIN, {"username": username.lower()})
        user = found[0] if found else None
    try:
        if user is None:
            hasher.verify_dummy(password=password)
            matches, new_hash = False, None
        else:
            matches, new_hash = hasher.verify_and_update(password=password, password_hash=user.password_hash)
    except PasswordHashingBusy:
        # Refused for a full hash queue (503): no password was checked, so a client retrying through an
        # overload does not lock itself out.
        forget_login_attempt(connection=connection, attempt_id=attempt_id)
        raise
    if not matches or user is None or not user.is_active:
        # The attempt is already recorded as a failure.
        raise InvalidCredentials
    if new_hash is not None:
        run_statement(
            connection,
            NEW_PASSWORD_HASH,
            {"user_id": user.id, "verified_hash": user.password_hash, "new_hash": new_hash, "now": now},
        )
    pair, refresh_row = issue_token_pair(
        settings=settings,
        issuer=issuer,
        user_id=user.id,
        token_version=user.token_version,
        family_id=str(uuid.uuid4()),
        now=now,
    )
    if not run_statement(connection, NEW_REFRESH_TOKEN, refresh_row):
        # The password was changed (or the user deactivated) while this one was being checked.
        raise InvalidCredentials
    clear_login_failures(connection=connection, username_key=username_key, address=address)
    return pair


# The refresh grant's statements, built once: built per request (and run through the ORM), they cost a refresh
# more Python time than everything else it does (py-spy: SQLAlchemy 60 % of the worker's time, 6.8 ms a refresh).
REFRESH_TOKEN_IS_PRESENTED = REFRESH_TOKENS.c.token_hash == bindparam("presented_hash")
# The user's row first, as every writer of refresh tokens takes it before their rows: a password change or
# deactivation (shared.revocation) then either waits for this refresh or is seen by it. Exclusive (FOR NO KEY
# UPDATE, which leaves the foreign-key checks of other inserts alone): the refreshes of one user queue here,
# so racers presenting one token, or old tokens of one family replayed at once, run one after the other; a
# token row locked first, then the family's in id order, deadlocked in both races (tested). On PostgreSQL the
# lock lasts until the commit, so the user read here is the user the new tokens are issued for. (SQLite, `make
# run`, locks nothing and reads it outside the write transaction; the conditional insert of the new token
# still refuses a user changed meanwhile.)
USER_OF_PRESENTED_TOKEN = (
    select(USERS.c.id, USERS.c.is_active, USERS.c.token_version)
    .where(USERS.c.id == select(REFRESH_TOKENS.c.user_id).where(REFRESH_TOKEN_IS_PRESENTED).scalar_subquery())
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
FAMILY_OF_PRESENTED_TOKEN = select(REFRESH_TOKENS.c.family_id).where(REFRESH_TOKEN_IS_PRESENTED)
# Rows locked in id order, so two revocations of one family (POST /revoke takes no user row) wait for each other
# instead of deadlocking.
LOCK_FAMILY = (
    select(REFRESH_TOKENS.c.id)
    .where(REFRESH_TOKENS.c.family_id == bindparam("revoked_family_id"))
    .order_by(REFRESH_TOKENS.c.id)
    .with_for_update()
)
REVOKE_FAMILY = (
    update(REFRESH_TOKENS)
    .where(REFRESH_TOKENS.c.family_id == bindparam("revoked_family_id"), REFRESH_TOKENS.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)


def refresh_token_pair(
    *, connection: Connection, settings: Settings, issuer: AccessTokenIssuer, refresh_token: str, now: datetime
) -> TokenPair:
    """Exchanges a live refresh token for a new pair; a second use of a retired token revokes its family.

    One transaction: the presented token is retired only together with storing the next one. A refused token's
    revocation is committed before InvalidRefreshToken is raised.
    """
    presented = {"presented_hash": hash_refresh_token(refresh_token)}
    with connection.begin():
        user = connection.execute(USER_OF_PRESENTED_TOKEN, presented).first()
        family_id = connection.scalar(RETIRE_PRESENTED_TOKEN, {**presented, "now": now})
        if family_id is None:
            reused_family_id = connection.scalar(FAMILY_OF_REUSED_TOKEN, presented)
            if reused_family_id is not None:
                revoke_family(connection=connection, family_id=reused_family_id, now=now)
            refusal = InvalidRefreshToken(reuse_detected=reused_family_id is not None)
        elif user is None or not user.is_active:
            revoke_family(connection=connection, family_id=family_id, now=now)
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
            return pair
    raise refusal


def revoke_family(*, connection: Connection, family_id: str, now: datetime) -> None:
    connection.execute(LOCK_FAMILY, {"revoked_family_id": family_id})
    connection.execute(REVOKE_FAMILY, {"revoked_family_id": family_id, "now": now})


def revoke_refresh_token(*, connection: Connection, token: str, now: datetime) -> None:
    """RFC 7009: revokes the token's whole family if it is a refresh token we know; silent otherwise."""
    with connection.begin():
        family_id = connection.scalar(FAMILY_OF_PRESENTED_TOKEN, {"presented_hash": hash_refresh_token(token)})
        if family_id is not None:
            revoke_family(connection=connection, family_id=family_id, now=now)
