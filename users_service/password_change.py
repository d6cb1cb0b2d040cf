"""A password change with the current password: throttled like a login, hashed outside any transaction, then
applied in one short transaction only if no other change of the user's credentials came first."""

from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from shared.errors import ApiError
from shared.models import User
from shared.passwords import PasswordHasher, PasswordHashingBusy
from shared.revocation import revoke_refresh_tokens_of_user
from shared.settings import Settings
from shared.throttle import (
    Throttled,
    begin_login_attempt,
    clear_failures,
    forget_attempt,
    record_failure,
    throttle_key_for_username,
)
from users_service.deps import unauthorized

USERS = User.__table__
# Every write of another password moves token_version (a change, a reset, a deactivation does too); only a login's
# rehash of the same password does not. So the version the caller's token carries, still in the row, says that
# the password verified is still the current one: of two changes at once, exactly one matches.
NEW_PASSWORD = (
    update(USERS)
    .where(USERS.c.id == bindparam("user_id"), USERS.c.token_version == bindparam("verified_version"))
    .values(password_hash=bindparam("new_hash"), token_version=USERS.c.token_version + 1, updated_at=bindparam("now"))
    .returning(USERS.c.token_version)
)


def change_password(
    *,
    session: Session,
    hasher: PasswordHasher,
    settings: Settings,
    address: str,
    user: User,
    current_password: str | None,
    new_password: str,
) -> None:
    """Sets `user`'s password to `new_password` if `current_password` is right, and ends all its sessions.

    The caller has checked the rights and changed nothing yet; this commits the read transaction first, so no
    transaction (and behind a transaction-mode pooler, no server connection) is held while the passwords hash.
    A wrong current_password counts as a failed login for the username (429 past the limit, as POST /token). A
    change that lost the race to another change of the user (or a deactivation) is a 401: the winner moved the
    token version, so the caller's token is no longer valid, exactly as on its next request.
    """
    if current_password is None:
        raise ApiError(400, "current_password is missing or wrong", error="invalid_current_password")
    verified_version, verified_hash = user.token_version, user.password_hash
    session.commit()
    engine = session.get_bind()
    with engine.connect() as connection:
        _check_current_password(
            connection=connection,
            hasher=hasher,
            settings=settings,
            address=address,
            username=user.username,
            current_password=current_password,
            password_hash=verified_hash,
        )
    new_hash = hasher.hash(new_password)
    now = datetime.now(UTC)
    new_version = session.scalar(
        NEW_PASSWORD, {"user_id": user.id, "verified_version": verified_version, "new_hash": new_hash, "now": now}
    )
    if new_version is None:
        session.rollback()
        raise unauthorized("Invalid or expired token")
    revoke_refresh_tokens_of_user(session=session, user_id=user.id, now=now)
    # Written by the statement above: the ORM must neither write them again nor keep the old values.
    set_committed_value(user, "password_hash", new_hash)
    set_committed_value(user, "token_version", new_version)


def _check_current_password(
    *,
    connection: Connection,
    hasher: PasswordHasher,
    settings: Settings,
    address: str,
    username: str,
    current_password: str,
    password_hash: str,
) -> None:
    """The login throttle around one verification: 429 past the limit, 400 (a failure counted) when wrong."""
    username_key = throttle_key_for_username(username)
    now = datetime.now(UTC)
    try:
        attempt_id = begin_login_attempt(
            connection=connection, settings=settings, username_key=username_key, address=address, now=now
        )
    except Throttled as throttled:
        raise throttled.api_error("Too many failed login attempts; try again later") from None
    try:
        matches = hasher.verify(password=current_password, password_hash=password_hash)
    except PasswordHashingBusy:
        forget_attempt(connection=connection, attempt_id=attempt_id)
        raise
    if not matches:
        record_failure(connection=connection, attempt_id=attempt_id, key=username_key, address=address, now=now)
        raise ApiError(400, "current_password is missing or wrong", error="invalid_current_password")
    clear_failures(connection=connection, key=username_key, address=address, attempt_id=attempt_id, now=now)
