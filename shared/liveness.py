"""Whether an access token's credential is still live: its session (`sid`) or its API key (`client_id`).

Both services read the caller's user row on every request; these columns ride in that same query, so ending a
session or deleting a key ends its access tokens at the next request without an extra round trip. Each kind of
token gets its own prebuilt statement (a dict keyed by `credential_kind`), so each stays one compiled statement.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, bindparam, or_, select

from shared.models import ApiKey, User, UserSession
from shared.tokens import AccessClaims

# Aliases: a query that lists sessions or keys itself must not correlate these subqueries with its own rows.
SESSIONS = UserSession.__table__.alias("live_session")
API_KEYS = ApiKey.__table__.alias("live_api_key")
USERS = User.__table__

# A token from a login (sid), an API key (client_id), or older code (neither: the `ver` check alone).
SESSION_TOKEN, KEY_TOKEN, LEGACY_TOKEN = "session", "key", "legacy"
CREDENTIAL_KINDS = (SESSION_TOKEN, KEY_TOKEN, LEGACY_TOKEN)
OWNER_COLUMN = "credential_owner"

_NOW = bindparam("credential_now", type_=DateTime(timezone=True))
# Uncorrelated subqueries that name the live credential's owner (NULL when it ended, expired or is unknown): the
# caller's check compares it with the token's user. Uncorrelated, as a correlated `EXISTS (... AND user_id =
# users.id)` costs the server more planning on every request (docs/architecture.md, "What ends what").
LIVE_SESSION_OWNER = (
    select(SESSIONS.c.user_id)
    .where(
        SESSIONS.c.id == bindparam("credential_sid", type_=SESSIONS.c.id.type),
        SESSIONS.c.ended_at.is_(None),
        SESSIONS.c.expires_at > _NOW,
    )
    .scalar_subquery()
)
LIVE_API_KEY_OWNER = (
    select(API_KEYS.c.user_id)
    .where(
        API_KEYS.c.client_id == bindparam("credential_client_id", type_=API_KEYS.c.client_id.type),
        or_(API_KEYS.c.expires_at.is_(None), API_KEYS.c.expires_at > _NOW),
    )
    .scalar_subquery()
)


def credential_owner(kind: str) -> ColumnElement[Any]:
    """The id of the user whose live session or key the token names; for a token with neither, the user read
    itself (nothing to check beyond the version)."""
    if kind == SESSION_TOKEN:
        return LIVE_SESSION_OWNER
    if kind == KEY_TOKEN:
        return LIVE_API_KEY_OWNER
    return USERS.c.id


def credential_kind(claims: AccessClaims) -> str:
    if claims.client_id is not None:
        return KEY_TOKEN
    if claims.session_id is not None:
        return SESSION_TOKEN
    return LEGACY_TOKEN


def credential_parameters(claims: AccessClaims, *, now: datetime) -> dict[str, object]:
    """The bind values `credential_owner(credential_kind(claims))` needs."""
    if claims.client_id is not None:
        return {"credential_client_id": claims.client_id, "credential_now": now}
    if claims.session_id is not None:
        return {"credential_sid": claims.session_id, "credential_now": now}
    return {}


def token_still_good(user: Any, *, claims: AccessClaims, owner: int | None) -> bool:
    """The user exists and is active, the token's session or key is live and the user's (`owner`, read with the
    user), and a login's token carries the user's current token version (a key's has none: a password change
    leaves keys alone)."""
    if user is None or not user.is_active or owner is None or owner != claims.user_id:
        return False
    return claims.client_id is not None or user.token_version == claims.token_version
