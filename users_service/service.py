"""The users service's logic: sign-up, the caller's identity and rights, updates, deletion, listing.

Rights are read from the database on every request; the token only says who is calling.
"""

import logging
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import ApiError
from shared.models import User
from shared.passwords import PasswordHasher
from shared.revocation import revoke_refresh_tokens_of_user
from shared.tokens import AccessClaims
from users_service.deps import unauthorized
from users_service.schemas import UserCreate, UserUpdate, UserUpdateMe

logger = logging.getLogger("users_service")


def authenticated_user(*, session: Session, claims: AccessClaims) -> User:
    """The caller, if its token is still good: the user exists, is active, and has not changed its password since."""
    user = session.get(User, claims.user_id)
    if user is None or not user.is_active or user.token_version != claims.token_version:
        raise unauthorized("Invalid or expired token")
    return user


def authorized_target(*, session: Session, actor: User, user_id: int) -> User:
    """The user `actor` asks about: itself, or anyone when `actor` is an admin."""
    if actor.id == user_id:
        return actor
    if not actor.is_admin:
        raise ApiError(403, "Not allowed to act on another user", error="forbidden")
    user = session.get(User, user_id)
    if user is None:
        raise ApiError(404, "User not found", error="not_found")
    return user


def require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise ApiError(403, "Admin rights required", error="forbidden")


def _conflict(error: IntegrityError) -> ApiError:
    # Which unique constraint fired; the database decides, so concurrent sign-ups cannot both win.
    if "email" in str(error.orig).lower():
        return ApiError(409, "Email already registered", error="email_taken")
    return ApiError(409, "Username already taken", error="username_taken")


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
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise _conflict(error) from None
    return user


def update_user(
    *, session: Session, hasher: PasswordHasher, actor: User, target: User, data: UserUpdate | UserUpdateMe
) -> User:
    """Applies the fields the client sent; `null` clears `email` and `full_name`."""
    fields = data.model_fields_set
    admin_fields = fields & {"is_active", "is_admin"}
    if admin_fields and not actor.is_admin:
        raise ApiError(403, "Only an admin may set is_active or is_admin", error="forbidden")
    if "password" in fields and data.password is not None:
        if actor.id != target.id:
            raise ApiError(403, "Only the user itself may change its password", error="forbidden")
        if data.current_password is None or not hasher.verify(
            password=data.current_password, password_hash=target.password_hash
        ):
            raise ApiError(400, "current_password is missing or wrong", error="invalid_current_password")
        target.password_hash = hasher.hash(data.password)
        _end_sessions(session=session, user=target)
    for name in fields & {"email", "full_name"}:
        setattr(target, name, getattr(data, name))
    for name in admin_fields:
        value = getattr(data, name)
        if value is None:
            raise ApiError(422, f"{name} must be true or false", error="invalid")
        setattr(target, name, value)
    if data.model_fields_set & {"is_active"} and not target.is_active:
        revoke_refresh_tokens_of_user(session=session, user_id=target.id, now=datetime.now(UTC))
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise _conflict(error) from None
    return target


def _end_sessions(*, session: Session, user: User) -> None:
    """A password change: access tokens carrying the old version and every refresh token stop working."""
    user.token_version += 1
    revoke_refresh_tokens_of_user(session=session, user_id=user.id, now=datetime.now(UTC))


def delete_user(*, session: Session, user: User) -> None:
    # Refresh tokens go with the row (ON DELETE CASCADE); access tokens fail on the missing user.
    session.delete(user)
    session.commit()


def list_users(*, session: Session, limit: int, offset: int) -> tuple[list[User], int]:
    total = session.scalar(select(func.count()).select_from(User))
    users = list(session.scalars(select(User).order_by(User.id).limit(limit).offset(offset)))
    return users, total or 0


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
