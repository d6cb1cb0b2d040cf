"""The users service's logic: sign-up, the caller's identity and rights, updates, deletion, listing.

Rights are read from the database on every request; the token only says who is calling.
"""

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shared.database import run_statement
from shared.errors import ApiError
from shared.models import EMAIL_UNIQUE_INDEX, User
from shared.passwords import PasswordHasher
from shared.revocation import revoke_refresh_tokens_of_user
from shared.tokens import AccessClaims
from users_service.deps import unauthorized
from users_service.schemas import UserCreate, UserPublic, UserUpdate, UserUpdateMe

logger = logging.getLogger("users_service")

# A user as the rights checks see it: an ORM `User` when writing, a row (named tuple) when reading.
UserRecord = TypeVar("UserRecord", User, tuple)


USERS = User.__table__
# What the read routes load: the public fields and the token version the rights checks need, never the hash.
USER_ROWS = select(*(USERS.c[name] for name in [*UserPublic.model_fields, "token_version"]))
USER_BY_ID = USER_ROWS.where(USERS.c.id == bindparam("user_id"))
# Two fixed parameters rather than an expanding IN list, whose SQL would be rendered anew for every request.
CALLER_AND_USER_IDS = USERS.c.id.in_([bindparam("caller_id"), bindparam("user_id")])
CALLER_AND_USER_BY_ID = USER_ROWS.where(CALLER_AND_USER_IDS)
CALLER_AND_USER_OBJECTS_BY_ID = select(User).where(CALLER_AND_USER_IDS)
USER_PAGE = USER_ROWS.order_by(USERS.c.id).limit(bindparam("limit")).offset(bindparam("offset"))
USER_COUNT = select(func.count().label("total")).select_from(USERS)


def checked_caller(user: UserRecord | None, *, claims: AccessClaims) -> UserRecord:
    """The caller, if its token is still good: the user exists, is active, and has not changed its password since."""
    if user is None or not user.is_active or user.token_version != claims.token_version:
        raise unauthorized("Invalid or expired token")
    return user


def authorized_target(*, actor: UserRecord, target: UserRecord | None, user_id: int) -> UserRecord:
    """The user `actor` asks about (`target`, loaded by id): itself, or anyone when `actor` is an admin."""
    if actor.id == user_id:
        return actor
    if not actor.is_admin:
        raise ApiError(403, "Not allowed to act on another user", error="forbidden")
    if target is None:
        raise ApiError(404, "User not found", error="not_found")
    return target


# Reads: rows of Core selects on a connection (`run_on_connection`, `run_statement`), no ORM objects. Rights are read on
# every request.


def read_caller(*, connection: Connection, claims: AccessClaims) -> tuple:
    found = run_statement(connection, USER_BY_ID, {"user_id": claims.user_id})
    return checked_caller(found[0] if found else None, claims=claims)


def read_user(*, connection: Connection, claims: AccessClaims, user_id: int) -> tuple:
    """One user, for itself or an admin; the caller's and the target's rows come in one round trip."""
    found = run_statement(connection, CALLER_AND_USER_BY_ID, {"caller_id": claims.user_id, "user_id": user_id})
    return _caller_and_target_of(found, claims=claims, user_id=user_id)[1]


def list_users_for_admin(*, connection: Connection, claims: AccessClaims, limit: int, offset: int) -> tuple[list, int]:
    require_admin(read_caller(connection=connection, claims=claims))
    total = run_statement(connection, USER_COUNT)[0].total
    return run_statement(connection, USER_PAGE, {"limit": limit, "offset": offset}), total


# Writes: ORM objects in a session (`run_in_session`), committed or rolled back as a whole.


def authenticated_user(*, session: Session, claims: AccessClaims) -> User:
    return checked_caller(session.get(User, claims.user_id), claims=claims)


def caller_and_target(*, session: Session, claims: AccessClaims, user_id: int) -> tuple[User, User]:
    """The caller and the user it asks about, rights checked; both rows come in one round trip."""
    found = session.scalars(CALLER_AND_USER_OBJECTS_BY_ID, {"caller_id": claims.user_id, "user_id": user_id})
    return _caller_and_target_of(found, claims=claims, user_id=user_id)


def _caller_and_target_of(
    users: Iterable[UserRecord], *, claims: AccessClaims, user_id: int
) -> tuple[UserRecord, UserRecord]:
    """Rights checked on the rows of one query for both ids (one row when the caller asks about itself)."""
    by_id = {user.id: user for user in users}
    actor = checked_caller(by_id.get(claims.user_id), claims=claims)
    return actor, authorized_target(actor=actor, target=by_id.get(user_id), user_id=user_id)


def update_caller(*, session: Session, hasher: PasswordHasher, claims: AccessClaims, data: UserUpdateMe) -> User:
    actor = authenticated_user(session=session, claims=claims)
    return update_user(session=session, hasher=hasher, actor=actor, target=actor, data=data)


def update_user_by_id(
    *, session: Session, hasher: PasswordHasher, claims: AccessClaims, user_id: int, data: UserUpdate
) -> User:
    actor, target = caller_and_target(session=session, claims=claims, user_id=user_id)
    return update_user(session=session, hasher=hasher, actor=actor, target=target, data=data)


def delete_caller(*, session: Session, claims: AccessClaims) -> None:
    delete_user(session=session, user=authenticated_user(session=session, claims=claims))


def delete_user_by_id(*, session: Session, claims: AccessClaims, user_id: int) -> None:
    _, target = caller_and_target(session=session, claims=claims, user_id=user_id)
    delete_user(session=session, user=target)


def require_admin(actor: User | tuple) -> None:
    if not actor.is_admin:
        raise ApiError(403, "Admin rights required", error="forbidden")


def _commit_or_conflict(session: Session) -> None:
    """Commits; a unique constraint that fires becomes a 409. The database decides, so races have one winner.

    A row deleted by a concurrent request between our read and our write is a 404, not a 500.
    """
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        if _violated_constraint(error) == EMAIL_UNIQUE_INDEX:
            raise ApiError(409, "Email already registered", error="email_taken") from None
        raise ApiError(409, "Username already taken", error="username_taken") from None
    except StaleDataError:
        session.rollback()
        raise ApiError(404, "User not found", error="not_found") from None


def _violated_constraint(error: IntegrityError) -> str:
    # PostgreSQL names the constraint; SQLite's first message line does ("index 'uq_users_email_lower'" or
    # "users.username"). Never the whole message: its DETAIL line quotes the value, which may say "email".
    constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
    if constraint:
        return constraint
    first_line = str(error.orig).splitlines()[0] if str(error.orig) else ""
    return EMAIL_UNIQUE_INDEX if EMAIL_UNIQUE_INDEX in first_line else "uq_users_username"


def create_user(*, session: Session, hasher: PasswordHasher, data: UserCreate, is_admin: bool = False) -> User:
    user = User(
        username=data.username,
        email=data.email,
        full_name=data.full_name,
        password_hash=hasher.hash(data.password),
        is_admin=is_admin,
        is_active=True,
        token_version=0,
    )
    session.add(user)
    _commit_or_conflict(session)
    return user


def update_user(
    *, session: Session, hasher: PasswordHasher, actor: User, target: User, data: UserUpdate | UserUpdateMe
) -> User:
    """Applies the fields the client sent; `null` clears `email` and `full_name`."""
    fields = data.model_fields_set
    admin_fields = fields & {"is_active", "is_admin"}
    if admin_fields and not actor.is_admin:
        raise ApiError(403, "Only an admin may set is_active or is_admin", error="forbidden")
    if any(getattr(data, name) is None for name in admin_fields):
        raise ApiError(422, "is_active and is_admin must be true or false", error="invalid")
    if "password" in fields and data.password is not None:
        if actor.id != target.id:
            raise ApiError(403, "Only the user itself may change its password", error="forbidden")
        if data.current_password is None or not hasher.verify(
            password=data.current_password, password_hash=target.password_hash
        ):
            raise ApiError(400, "current_password is missing or wrong", error="invalid_current_password")
        target.password_hash = hasher.hash(data.password)
        _end_sessions(session=session, user=target)
    for name in fields & {"email", "full_name", "is_active", "is_admin"}:
        setattr(target, name, getattr(data, name))
    if "is_active" in admin_fields and not target.is_active:
        revoke_refresh_tokens_of_user(session=session, user_id=target.id, now=datetime.now(UTC))
    _commit_or_conflict(session)
    return target


def _end_sessions(*, session: Session, user: User) -> None:
    """A password change: access tokens carrying the old version and every refresh token stop working."""
    user.token_version += 1
    revoke_refresh_tokens_of_user(session=session, user_id=user.id, now=datetime.now(UTC))


def delete_user(*, session: Session, user: User) -> None:
    # Refresh tokens go with the row (ON DELETE CASCADE); access tokens fail on the missing user.
    session.delete(user)
    _commit_or_conflict(session)


def ensure_admin(*, session: Session, hasher: PasswordHasher, username: str, password: str) -> None:
    """Makes sure an active admin with these credentials exists; safe when several workers run it at once."""
    username = username.lower()
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        try:
            create_user(
                session=session, hasher=hasher, data=UserCreate(username=username, password=password), is_admin=True
            )
            logger.info("created the admin user from ADMIN_USERNAME")
            return
        except ApiError:
            # Another worker created it first.
            user = session.scalar(select(User).where(User.username == username))
    if user is None:
        return
    changed = not user.is_admin or not user.is_active
    user.is_admin = user.is_active = True
    if not hasher.verify(password=password, password_hash=user.password_hash):
        user.password_hash = hasher.hash(password)
        _end_sessions(session=session, user=user)
        changed = True
    if changed:
        session.commit()
        logger.info("updated the admin user from ADMIN_USERNAME/ADMIN_PASSWORD")
