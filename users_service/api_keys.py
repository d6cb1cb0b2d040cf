"""API keys, as their owner and admins manage them: create (the secret shown once), list, delete.

Only `shared.api_keys.hash_client_secret` of a secret is stored; the auth service checks secrets at its
client-credentials grant. Whether a key's access tokens are still good is read per request with the user row.
"""

from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from shared.api_keys import hash_client_secret, new_client_id, new_client_secret
from shared.errors import ApiError
from shared.models import ApiKey, User
from shared.settings import Settings
from shared.tokens import AccessClaims
from users_service.api_key_schemas import ApiKeyCreate
from users_service.service import authenticated_user, caller_and_target

KEY_NOT_FOUND = "API key not found"


def _live_key_count(*, session: Session, user_id: int, now: datetime) -> int:
    return session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.user_id == user_id, or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    )


def create_api_key(
    *, session: Session, settings: Settings, claims: AccessClaims, data: ApiKeyCreate, now: datetime
) -> tuple[ApiKey, str]:
    """A new key of the caller and its secret, refused (409) past API_KEY_MAX_PER_USER live keys.

    The caller's row is locked (FOR NO KEY UPDATE) before counting, so concurrent creations of one user count
    one after the other and the limit holds; it is the lock a deactivation takes before it deletes the user's
    keys, so no key is created for a user being deactivated. (SQLite, `make run`, locks nothing.)
    """
    session.execute(select(User.id).where(User.id == claims.user_id).with_for_update(key_share=True))
    user = authenticated_user(session=session, claims=claims)
    if _live_key_count(session=session, user_id=user.id, now=now) >= settings.api_key_max_per_user:
        raise ApiError(
            409,
            f"At most {settings.api_key_max_per_user} live API keys per user; delete one first",
            error="too_many_api_keys",
        )
    client_id, client_secret = new_client_id(), new_client_secret()
    key = ApiKey(
        user_id=user.id,
        name=data.name,
        client_id=client_id,
        secret_hash=hash_client_secret(client_id=client_id, client_secret=client_secret),
        scopes=" ".join(data.scopes),
        created_at=now,
        expires_at=None if data.expires_in_days is None else now + timedelta(days=data.expires_in_days),
    )
    session.add(key)
    session.commit()
    return key, client_secret


def _keys_of(*, session: Session, user_id: int) -> list[ApiKey]:
    # Expired keys are listed too (their expires_at says so), so their owner can see and delete them.
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        )
    )


def _delete_key(*, session: Session, user_id: int, key_id: int) -> None:
    # Scoped by owner: another user's key id is "not found", never "forbidden" (no existence oracle).
    deleted = session.execute(delete(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id))
    if deleted.rowcount != 1:
        session.rollback()
        raise ApiError(404, KEY_NOT_FOUND, error="not_found")
    session.commit()


def list_own_api_keys(*, session: Session, claims: AccessClaims) -> list[ApiKey]:
    return _keys_of(session=session, user_id=authenticated_user(session=session, claims=claims).id)


def delete_own_api_key(*, session: Session, claims: AccessClaims, key_id: int) -> None:
    _delete_key(session=session, user_id=authenticated_user(session=session, claims=claims).id, key_id=key_id)


def list_api_keys_of_user(*, session: Session, claims: AccessClaims, user_id: int) -> list[ApiKey]:
    """Any user's keys, for an admin (or the user itself); 404 for an unknown user."""
    _, target = caller_and_target(session=session, claims=claims, user_id=user_id)
    return _keys_of(session=session, user_id=target.id)


def delete_api_key_of_user(*, session: Session, claims: AccessClaims, user_id: int, key_id: int) -> None:
    _, target = caller_and_target(session=session, claims=claims, user_id=user_id)
    _delete_key(session=session, user_id=target.id, key_id=key_id)
