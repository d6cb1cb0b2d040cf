"""The users service's logic: sign-up, the caller's identity and rights, updates, deletion, listing.

Rights are read from the database on every request; the token only says who is calling.
"""

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from shared.database import run_statement
from shared.errors import ApiError
from shared.liveness import (
    CREDENTIAL_KINDS,
    LEGACY_TOKEN,
    OWNER_COLUMN,
    credential_kind,
    credential_owner,
    credential_parameters,
    token_still_good,
)
from shared.models import EMAIL_UNIQUE_INDEX, User
from shared.passwords import PasswordHasher
from shared.revocation import (
    delete_sessions_of_user,
    end_all_credentials_of_user,
    revoke_refresh_tokens_of_user,
)
from shared.settings import Settings
from shared.tokens import AccessClaims
from users_service.deps import unauthorized
from users_service.email_verification import verify_new_email
from users_service.listing import UserListing, user_page
from users_service.password_change import change_password
from users_service.schemas import UserCreate, UserPublic, UserUpdate, UserUpdateMe

logger = logging.getLogger("users_service")

# A user as the rights checks see it: an ORM `User` when writing, a row (named tuple) when reading.
UserRecord = TypeVar("UserRecord", User, tuple)


USERS = User.__table__
# What the read routes load: the public fields and the token version the rights checks need, never the hash.
USER_ROWS = select(*(USERS.c[name] for name in [*UserPublic.model_fields, "token_version"]))
# The caller's row comes with the owner of its token's live session or API key (`credential_owner`): one
# statement per kind of token, each built and compiled once (shared.liveness).
_LIVE = {kind: credential_owner(kind).label(OWNER_COLUMN) for kind in CREDENTIAL_KINDS}
USERS_BY_ID = {
    kind: USER_ROWS.add_columns(live).where(USERS.c.id == bindparam("user_id")) for kind, live in _LIVE.items()
}
USER_BY_ID = USERS_BY_ID[LEGACY_TOKEN]
# Two fixed parameters rather than an expanding IN list, whose SQL would be rendered anew for every request.
CALLER_AND_USER_IDS = USERS.c.id.in_([bindparam("caller_id"), bindparam("user_id")])
CALLERS_AND_USERS_BY_ID = {kind: USER_ROWS.add_columns(live).where(CALLER_AND_USER_IDS) for kind, live in _LIVE.items()}
CALLER_AND_USER_BY_ID = CALLERS_AND_USERS_BY_ID[LEGACY_TOKEN]
CALLER_OBJECTS_BY_ID = {
    kind: select(User, live).where(USERS.c.id == bindparam("user_id")) for kind, live in _LIVE.items()
}
CALLER_AND_USER_OBJECTS_BY_ID = {kind: select(User, live).where(CALLER_AND_USER_IDS) for kind, live in _LIVE.items()}


def checked_caller(user: UserRecord | None, *, claims: AccessClaims, owner: int | None) -> UserRecord:
    """The caller, if its token is still good: the user exists and is active, the token's session or API key is live
    and the caller's (`owner`), and a login's token was issued since the user's last password change."""
    if not token_still_good(user, claims=claims, owner=owner):
        raise unauthorized("Invalid or expired token")
    return user


def _credential(claims: AccessClaims) -> tuple[str, dict[str, object]]:
    """Which prebuilt statement checks this token, and the liveness parameters it takes."""
    return credential_kind(claims), credential_parameters(claims, now=datetime.now(UTC))


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
    kind, liveness = _credential(claims)
    found = run_statement(connection, USERS_BY_ID[kind], {"user_id": claims.user_id, **liveness})
    user = found[0] if found else None
    return checked_caller(user, claims=claims, owner=user.credential_owner if user is not None else None)


def read_user(*, connection: Connection, claims: AccessClaims, user_id: int) -> tuple:
    """One user, for itself or an admin; the caller's and the target's rows come in one round trip."""
    kind, liveness = _credential(claims)
    found = run_statement(
        connection, CALLERS_AND_USERS_BY_ID[kind], {"caller_id": claims.user_id, "user_id": user_id, **liveness}
    )
    return _caller_and_target_of([(row, row.credential_owner) for row in found], claims=claims, user_id=user_id)[1]


def list_users_for_admin(
    *, connection: Connection, claims: AccessClaims, limit: int, offset: int, after: int | None
) -> UserListing:
    require_admin(read_caller(connection=connection, claims=claims))
    return user_page(connection=connection, limit=limit, offset=offset, after=after)


# Writes: ORM objects in a session (`run_in_session`), committed or rolled back as a whole.


def authenticated_user(*, session: Session, claims: AccessClaims) -> User:
    kind, liveness = _credential(claims)
    found = session.execute(CALLER_OBJECTS_BY_ID[kind], {"user_id": claims.user_id, **liveness}).first()
    user, owner = found if found is not None else (None, None)
    return checked_caller(user, claims=claims, owner=owner)


def caller_and_target(*, session: Session, claims: AccessClaims, user_id: int) -> tuple[User, User]:
    """The caller and the user it asks about, rights checked; both rows come in one round trip."""
    kind, liveness = _credential(claims)
    found = session.execute(
        CALLER_AND_USER_OBJECTS_BY_ID[kind], {"caller_id": claims.user_id, "user_id": user_id, **liveness}
    )
    return _caller_and_target_of([(user, owner) for user, owner in found], claims=claims, user_id=user_id)


def _caller_and_target_of(
    users: Iterable[tuple[UserRecord, int | None]], *, claims: AccessClaims, user_id: int
) -> tuple[UserRecord, UserRecord]:
    """Rights checked on the rows of one query for both ids (one row when the caller asks about itself), each with
    its token's `credential_owner` column."""
    by_id = {user.id: (user, owner) for user, owner in users}
    caller, owner = by_id.get(claims.user_id, (None, None))
    actor = checked_caller(caller, claims=claims, owner=owner)
    target = by_id.get(user_id, (None, None))[0]
    return actor, authorized_target(actor=actor, target=target, user_id=user_id)


def update_caller(
    *,
    session: Session,
    hasher: PasswordHasher,
    settings: Settings,
    address: str,
    claims: AccessClaims,
    data: UserUpdateMe,
) -> User:
    actor = authenticated_user(session=session, claims=claims)
    return update_user(
        session=session, hasher=hasher, settings=settings, address=address, actor=actor, target=actor, data=data
    )


def update_user_by_id(
    *,
    session: Session,
    hasher: PasswordHasher,
    settings: Settings,
    address: str,
    claims: AccessClaims,
    user_id: int,
    data: UserUpdate,
) -> User:
    actor, target = caller_and_target(session=session, claims=claims, user_id=user_id)
    return update_user(
        session=session, hasher=hasher, settings=settings, address=address, actor=actor, target=target, data=data
    )


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
    verify_new_email(session=session, user=user)
    _commit_or_conflict(session)
    return user


def update_user(
    *,
    session: Session,
    hasher: PasswordHasher,
    settings: Settings,
    address: str,
    actor: User,
    target: User,
    data: UserUpdate | UserUpdateMe,
) -> User:
    """Applies the fields the client sent; `null` clears `email` and `full_name`. `settings` and the client's
    `address` throttle wrong current_password guesses as failed logins."""
    fields = data.model_fields_set
    admin_fields = fields & {"is_active", "is_admin"}
    if admin_fields and not actor.is_admin:
        raise ApiError(403, "Only an admin may set is_active or is_admin", error="forbidden")
    if any(getattr(data, name) is None for name in admin_fields):
        raise ApiError(422, "is_active and is_admin must be true or false", error="invalid")
    if "password" in fields and data.password is not None:
        if actor.id != target.id:
            raise ApiError(403, "Only the user itself may change its password", error="forbidden")
        change_password(
            session=session,
            hasher=hasher,
            settings=settings,
            address=address,
            user=target,
            current_password=data.current_password,
            new_password=data.password,
        )
    for name in fields & {"email", "full_name", "is_active", "is_admin"}:
        setattr(target, name, getattr(data, name))
    verify_new_email(session=session, user=target)
    if "is_active" in admin_fields and not target.is_active:
        # Deactivation ends every access token issued before it for good: reactivation revives none.
        target.token_version = User.token_version + 1
        end_all_credentials_of_user(session=session, user_id=target.id, now=datetime.now(UTC))
    _commit_or_conflict(session)
    return target


def _end_sessions(*, session: Session, user: User) -> None:
    """A password change: access tokens carrying the old version and every refresh token stop working."""
    # In SQL: two workers at once each move it, rather than both write the same value.
    user.token_version = User.token_version + 1
    revoke_refresh_tokens_of_user(session=session, user_id=user.id, now=datetime.now(UTC))


def delete_user(*, session: Session, user: User) -> None:
    # Sessions (with their refresh tokens) go first, in the lock order of shared/revocation.py, then the row with
    # what else cascades; access tokens fail on the missing user.
    delete_sessions_of_user(session=session, user_id=user.id)
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
    reactivated = not user.is_active
    changed = not user.is_admin or reactivated
    verified_hash = user.password_hash
    # Nothing written yet: the read transaction ends here, so none is held while the passwords hash.
    session.commit()
    new_hash = None if hasher.verify(password=password, password_hash=verified_hash) else hasher.hash(password)
    user.is_admin = user.is_active = True
    if new_hash is not None:
        user.password_hash = new_hash
        _end_sessions(session=session, user=user)
        changed = True
    elif reactivated:
        # A deactivation now moves the version itself; one written by older code did not, so its tokens end here.
        user.token_version = User.token_version + 1
    if changed:
        session.commit()
        logger.info("updated the admin user from ADMIN_USERNAME/ADMIN_PASSWORD")
