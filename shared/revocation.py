"""Ending sessions and revoking refresh tokens, for both services; and the one lock order every writer follows.

Lock order (every transaction that writes `sessions` or `refresh_tokens` rows, in either service):

1. The owning user's `users` row, first of all: FOR NO KEY UPDATE (or FOR UPDATE) by anything that ends a session,
   retires or revokes a refresh token (a refresh, `/revoke`, refresh-token reuse, `DELETE /sessions...`, a
   password change or reset, deactivation); FOR SHARE by a login that stores a new session and its first token
   (logins of one user do not queue behind each other, but do behind all of the above); FOR UPDATE before the
   DELETE of the user (`delete_sessions_of_user`).
2. Then that user's `sessions` rows.
3. Then that user's `refresh_tokens` rows (a refresh locks its user and session rows in one statement before it
   touches a token).
4. `api_keys` rows last (deactivation deletes them).

Because every writer holds the user's row before it touches any of the user's other rows, two writers of one
user's rows wait for each other at step 1 and never hold rows the other one wants (tests/test_lock_order.py).

The writers: here, for the users service, `revoke_refresh_tokens_of_user`, `end_all_credentials_of_user` and
`delete_sessions_of_user` (run before a user's DELETE, whose own cascade would take the refresh tokens before the
sessions); in auth_service, `STORE_LOGIN` (`store_new_session` on SQLite), `refresh_token_pair` and
`revoke_refresh_token` (service.py), `end_session_of_caller` and `end_other_sessions_of_caller` (sessions.py). A new
writer of these tables takes the user's row first too.

The one exception, retention (shared/retention.py), deletes sessions past their keeping time without the user's
row: it takes them with SKIP LOCKED and waits for their tokens at most a short lock_timeout, and no writer holds
a session's tokens while it waits for that session (step 2 comes before step 3). SQLite (`make run`) locks the
whole database per write transaction instead, so the order is moot there.
"""

from datetime import datetime

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.orm import Session

from shared.models import ApiKey, RefreshToken, User, UserSession

SESSIONS = UserSession.__table__
REFRESH_TOKENS = RefreshToken.__table__

# Steps 2 and 3 for one session, under its user's row lock (step 1, the caller's).
END_SESSION = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("ended_session_id"), SESSIONS.c.ended_at.is_(None))
    .values(ended_at=bindparam("now"))
)
REVOKE_FAMILY = (
    update(REFRESH_TOKENS)
    .where(REFRESH_TOKENS.c.family_id == bindparam("ended_session_id"), REFRESH_TOKENS.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)


def end_session(*, connection: Connection | Session, session_id: str, now: datetime) -> None:
    """Ends one session and revokes its refresh tokens; the caller holds its user's row (lock order above) and
    commits. Its access tokens fail at the next request, which reads `sessions.ended_at`."""
    parameters = {"ended_session_id": session_id, "now": now}
    connection.execute(END_SESSION, parameters)
    connection.execute(REVOKE_FAMILY, parameters)


# Steps 2 and 3 for all of a user's sessions but one (`kept_session_id`; '' is no session's id, so none is kept).
END_SESSIONS_OF_USER = (
    update(SESSIONS)
    .where(
        SESSIONS.c.user_id == bindparam("ended_user_id"),
        SESSIONS.c.id != bindparam("kept_session_id"),
        SESSIONS.c.ended_at.is_(None),
    )
    .values(ended_at=bindparam("now"))
)
REVOKE_FAMILIES_OF_USER = (
    update(REFRESH_TOKENS)
    .where(
        REFRESH_TOKENS.c.user_id == bindparam("ended_user_id"),
        REFRESH_TOKENS.c.family_id != bindparam("kept_session_id"),
        REFRESH_TOKENS.c.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("now"))
)


def end_sessions_of_user(
    *, connection: Connection | Session, user_id: int, now: datetime, kept_session_id: str | None = None
) -> None:
    """Ends every session of the user but `kept_session_id` and revokes their refresh tokens; the caller holds the
    user's row (lock order above) and commits."""
    parameters = {"ended_user_id": user_id, "kept_session_id": kept_session_id or "", "now": now}
    connection.execute(END_SESSIONS_OF_USER, parameters)
    connection.execute(REVOKE_FAMILIES_OF_USER, parameters)


def revoke_refresh_tokens_of_user(*, session: Session, user_id: int, now: datetime) -> None:
    """Ends every session of the user and revokes all its refresh tokens; the caller commits, with the change that
    is the reason (a password change or reset, deactivation).

    The user's row is locked first (lock order above), as the auth service takes it before storing a session or a
    refresh token: a login or refresh at the same moment either stores its rows before this and has them ended
    here, or waits for the commit and then finds the user changed (a new token version, or inactive) and stores
    none.
    """
    session.execute(select(User.id).where(User.id == user_id).with_for_update())
    end_sessions_of_user(connection=session, user_id=user_id, now=now)


def end_all_credentials_of_user(*, session: Session, user_id: int, now: datetime) -> None:
    """Deactivation and a password reset: every session ends and every API key is deleted, for good (reactivation
    revives none)."""
    revoke_refresh_tokens_of_user(session=session, user_id=user_id, now=now)
    session.execute(delete(ApiKey).where(ApiKey.user_id == user_id))


def delete_sessions_of_user(*, session: Session, user_id: int) -> None:
    """Before the user's row is deleted: its sessions and, by their cascade, their refresh tokens, in the lock order
    above. The row's own cascade would take the refresh tokens before the sessions."""
    session.execute(select(User.id).where(User.id == user_id).with_for_update())
    session.execute(delete(UserSession).where(UserSession.user_id == user_id))
