"""Sessions (one login each, the family of its refresh tokens): starting one at login, listing and ending them.

Every statement that writes a session or a refresh token follows the lock order of shared/revocation.py: the
user's row first. The caller's token is checked in the same query that reads or locks its user's row.
"""

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, DateTime, and_, bindparam, insert, select, update

from auth_service.schemas import SessionPublic
from shared.database import run_statement
from shared.liveness import LEGACY_TOKEN, SESSION_TOKEN, credential_kind, credential_owner, credential_parameters
from shared.models import User, UserSession, as_utc
from shared.revocation import end_session, end_sessions_of_user
from shared.tokens import AccessClaims

USERS = User.__table__
SESSIONS = UserSession.__table__
USER_AGENT_MAX = SESSIONS.c.user_agent.type.length
IP_ADDRESS_MAX = SESSIONS.c.ip_address.type.length
# A login's token (sid) or one minted by older code (no sid: the `ver` check only); API key tokens never get here.
CALLER_KINDS = (SESSION_TOKEN, LEGACY_TOKEN)
_NOW = bindparam("now", type_=DateTime(timezone=True))


class SessionsRefused(Exception):
    """The caller's token is no longer good: the user is gone or inactive, or the token's session ended."""


class SessionNotFound(Exception):
    """No live session with that id belongs to the caller (another user's is not found either)."""


# The user as a login or refresh read it: still active, at the token version its access token carries. With FOR
# SHARE on the row (step 1 of the lock order, shared/revocation.py), a session or token is stored only for it.
USER_AS_READ = (
    USERS.c.id == bindparam("user_id"),
    USERS.c.token_version == bindparam("token_version"),
    USERS.c.is_active.is_(True),
)
NEW_SESSION = (
    insert(SESSIONS)
    .from_select(
        ["id", "user_id", "created_at", "last_used_at", "expires_at", "user_agent", "ip_address"],
        select(
            bindparam("session_id", type_=SESSIONS.c.id.type),
            USERS.c.id,
            _NOW,
            _NOW,
            bindparam("expires_at", type_=SESSIONS.c.expires_at.type),
            bindparam("user_agent", type_=SESSIONS.c.user_agent.type),
            bindparam("ip_address", type_=SESSIONS.c.ip_address.type),
        )
        .where(*USER_AS_READ)
        .with_for_update(read=True),
    )
    .returning(SESSIONS.c.id, SESSIONS.c.user_id, SESSIONS.c.created_at, SESSIONS.c.expires_at)
)
# A refresh: its session was used now and lives as long as its newest refresh token.
TOUCH_SESSION = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("touched_session_id"))
    .values(last_used_at=_NOW, expires_at=bindparam("expires_at", type_=SESSIONS.c.expires_at.type))
)


def new_session_row(
    *, user_id: int, token_version: int, expires_at: datetime, user_agent: str | None, address: str, now: datetime
) -> dict[str, object]:
    """The parameters of `NEW_SESSION` for a login; its id is the new family's (the tokens' `sid`)."""
    return {
        "session_id": str(uuid.uuid4()),
        "user_id": user_id,
        "token_version": token_version,
        "now": now,
        "expires_at": expires_at,
        # NUL is the one character PostgreSQL refuses in text.
        "user_agent": user_agent.replace("\x00", "")[:USER_AGENT_MAX] if user_agent else None,
        "ip_address": address[:IP_ADDRESS_MAX],
    }


def _caller_is_good(kind: str) -> ColumnElement[bool]:
    """The caller's user row, active and at the token's version, with the token's session live and its own."""
    return and_(*USER_AS_READ, credential_owner(kind) == USERS.c.id)


# One round trip checks the caller and lists its live sessions: no row at all means the token is no longer good;
# one row without a session id, a good caller without live sessions (a token without sid).
SESSIONS_OF_CALLER = {
    kind: select(
        SESSIONS.c.id,
        SESSIONS.c.created_at,
        SESSIONS.c.last_used_at,
        SESSIONS.c.expires_at,
        SESSIONS.c.user_agent,
        SESSIONS.c.ip_address,
    )
    .select_from(
        USERS.outerjoin(
            SESSIONS,
            and_(SESSIONS.c.user_id == USERS.c.id, SESSIONS.c.ended_at.is_(None), SESSIONS.c.expires_at > _NOW),
        )
    )
    .where(_caller_is_good(kind))
    .order_by(SESSIONS.c.created_at.desc(), SESSIONS.c.id.desc())
    for kind in CALLER_KINDS
}
# Steps 1 and 2 of the lock order in the statement that checks the caller: its user's row, then (FROM order) its
# own session's. Locking the session row too means a session ended by a request this one waited for is seen
# ended (PostgreSQL rechecks a row that changed while it waited for it): 401, not an answer in its name.
_CALLER_SESSION = SESSIONS.alias("caller_session")
LOCK_CALLER = {
    SESSION_TOKEN: select(USERS.c.id)
    .select_from(USERS.join(_CALLER_SESSION, _CALLER_SESSION.c.user_id == USERS.c.id))
    .where(
        *USER_AS_READ,
        _CALLER_SESSION.c.id == bindparam("credential_sid", type_=SESSIONS.c.id.type),
        _CALLER_SESSION.c.ended_at.is_(None),
        _CALLER_SESSION.c.expires_at > _NOW,
    )
    .with_for_update(key_share=True),
    LEGACY_TOKEN: select(USERS.c.id).where(*USER_AS_READ).with_for_update(key_share=True),
}
LIVE_SESSION_OF_USER = select(SESSIONS.c.id).where(
    SESSIONS.c.id == bindparam("target_session_id"),
    SESSIONS.c.user_id == bindparam("user_id"),
    SESSIONS.c.ended_at.is_(None),
    SESSIONS.c.expires_at > _NOW,
)


def _caller_parameters(claims: AccessClaims, now: datetime) -> dict[str, object]:
    return {
        "user_id": claims.user_id,
        "token_version": claims.token_version,
        "now": now,
        **credential_parameters(claims, now=now),
    }


def list_sessions(*, connection: Connection, claims: AccessClaims, now: datetime) -> list[SessionPublic]:
    """The caller's live sessions, newest first; `current` marks the one its token belongs to."""
    rows = run_statement(connection, SESSIONS_OF_CALLER[credential_kind(claims)], _caller_parameters(claims, now))
    if not rows:
        raise SessionsRefused
    return [
        SessionPublic(
            id=row.id,
            created_at=as_utc(row.created_at),
            last_used_at=as_utc(row.last_used_at),
            expires_at=as_utc(row.expires_at),
            user_agent=row.user_agent,
            ip_address=row.ip_address,
            current=row.id == claims.session_id,
        )
        for row in rows
        if row.id is not None
    ]


def _lock_caller(connection: Connection, claims: AccessClaims, now: datetime) -> None:
    parameters = {"user_id": claims.user_id, "token_version": claims.token_version, "now": now}
    if claims.session_id is not None:
        parameters["credential_sid"] = claims.session_id
    if connection.execute(LOCK_CALLER[credential_kind(claims)], parameters).first() is None:
        raise SessionsRefused


def end_session_of_caller(*, connection: Connection, claims: AccessClaims, session_id: str, now: datetime) -> None:
    """Ends one of the caller's live sessions (its own current one included: a logout)."""
    with connection.begin():
        _lock_caller(connection, claims, now)
        # NUL is the one character PostgreSQL refuses in text, and no session id holds one.
        target = "" if "\x00" in session_id else session_id
        found = connection.execute(
            LIVE_SESSION_OF_USER, {"target_session_id": target, "user_id": claims.user_id, "now": now}
        ).first()
        if found is None:
            raise SessionNotFound
        end_session(connection=connection, session_id=found.id, now=now)


def end_other_sessions_of_caller(*, connection: Connection, claims: AccessClaims, now: datetime) -> None:
    """Logs out other devices: ends every session of the caller but the one its token belongs to."""
    with connection.begin():
        _lock_caller(connection, claims, now)
        end_sessions_of_user(connection=connection, user_id=claims.user_id, now=now, kept_session_id=claims.session_id)
