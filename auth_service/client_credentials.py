"""The client-credentials grant (RFC 6749 section 4.4): an API key's `client_id` and secret for an access token.

The key is read with its owner in one query and checked against the stored HMAC of its secret (shared.api_keys).
Failures are throttled like logins, per `client_id` and per client address. No refresh token is issued.
"""

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import unquote_plus

from sqlalchemy import Connection, bindparam, or_, select, update

from shared.api_keys import scopes_of, secret_matches
from shared.database import run_statement
from shared.models import ApiKey, User, as_utc
from shared.settings import Settings
from shared.throttle import (
    begin_attempt_and_read,
    clear_failures,
    forget_attempt,
    login_limits,
    record_failure,
    throttle_key_for_username,
)
from shared.tokens import AccessTokenIssuer

API_KEYS = ApiKey.__table__
USERS = User.__table__
# last_used_at lags by at most this much: a busy key is written once a minute, not on every grant.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# Throttle rows share the login_failures table with usernames; ":" cannot occur in a username, so no key's
# failures ever count against a user of the same name.
THROTTLE_KEY_PREFIX = "client:"

KEY_WITH_OWNER = (
    select(
        API_KEYS.c.id,
        API_KEYS.c.user_id,
        API_KEYS.c.secret_hash,
        API_KEYS.c.scopes,
        API_KEYS.c.expires_at,
        API_KEYS.c.last_used_at,
        USERS.c.is_active,
    )
    .join(USERS, USERS.c.id == API_KEYS.c.user_id)
    .where(API_KEYS.c.client_id == bindparam("client_id"))
)
# Conditional, so racing grants of one key write it once a minute between them.
MARK_KEY_USED = (
    update(API_KEYS)
    .where(
        API_KEYS.c.id == bindparam("key_id"),
        or_(API_KEYS.c.last_used_at.is_(None), API_KEYS.c.last_used_at < bindparam("stale_before")),
    )
    .values(last_used_at=bindparam("now"))
)


class InvalidClient(Exception):
    """Unknown, wrong, expired or deleted key, or an owner inactive or deleted: one answer for all."""


class MalformedClientAuthentication(Exception):
    """An `Authorization: Basic` header that does not decode to `client_id:client_secret`."""


class InvalidScope(Exception):
    """The `scope` asked for is not a subset of the key's scopes."""


@dataclass(frozen=True)
class ClientToken:
    user_id: int
    access_token: str
    expires_in: int
    scope: str


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """`(client_id, client_secret)` from an `Authorization: Basic` header; None without one.

    RFC 6749 section 2.3.1: both parts are form-urlencoded before base64 (libraries that skip it agree with us on
    keys we mint, whose characters need no encoding). Anything else raises MalformedClientAuthentication.
    """
    if authorization is None:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        client_id, colon, client_secret = decoded.partition(":")
        if not colon:
            raise MalformedClientAuthentication
        return unquote_plus(client_id, errors="strict"), unquote_plus(client_secret, errors="strict")
    except ValueError:
        # binascii.Error (bad base64), UnicodeDecodeError, and the ValueError of a non-ASCII character in the header.
        raise MalformedClientAuthentication from None


def throttle_key_for_client(client_id: str) -> str:
    return throttle_key_for_username(THROTTLE_KEY_PREFIX + client_id)


def _could_be_client_id(client_id: str) -> bool:
    # Anything else is no key of ours, and a NUL byte would not even reach the database.
    return len(client_id) <= API_KEYS.c.client_id.type.length and client_id.isascii() and client_id.isprintable()


def granted_scopes(*, key_scopes: str, requested: str | None) -> list[str]:
    """The key's scopes, or the subset `requested` names (space-separated); InvalidScope if it asks for more."""
    allowed = scopes_of(key_scopes)
    if requested is None or not requested.strip():
        return allowed
    asked = set(requested.split())
    if not asked <= set(allowed):
        raise InvalidScope
    return [scope for scope in allowed if scope in asked]


def client_credentials_token(
    *,
    connection: Connection,
    settings: Settings,
    issuer: AccessTokenIssuer,
    client_id: str,
    client_secret: str,
    scope: str | None,
    address: str,
    now: datetime,
) -> ClientToken:
    """Checks the throttle, then the key and its owner, then issues an access token carrying client_id and scope.

    Every statement commits on its own, as a login's do (auth_service.service.login_with_password). A key deleted
    or an owner deactivated after the check is caught by the liveness check on each request the token makes.
    """
    throttle_key = throttle_key_for_client(client_id)
    # A client id no key can have reads nothing.
    attempt_id, key = begin_attempt_and_read(
        connection=connection,
        limits=login_limits(settings),
        key=throttle_key,
        address=address,
        now=now,
        read=KEY_WITH_OWNER if _could_be_client_id(client_id) else None,
        read_parameters={"client_id": client_id},
    )
    if (
        key is None
        or not secret_matches(client_id=client_id, client_secret=client_secret, secret_hash=key.secret_hash)
        or (key.expires_at is not None and as_utc(key.expires_at) <= now)
        or not key.is_active
    ):
        record_failure(connection=connection, attempt_id=attempt_id, key=throttle_key, address=address, now=now)
        raise InvalidClient
    try:
        scopes = granted_scopes(key_scopes=key.scopes, requested=scope)
    except InvalidScope:
        # The key was right: a bad scope is no guess at a secret.
        forget_attempt(connection=connection, attempt_id=attempt_id)
        raise
    if key.last_used_at is None or as_utc(key.last_used_at) < now - LAST_USED_RESOLUTION:
        run_statement(
            connection, MARK_KEY_USED, {"key_id": key.id, "stale_before": now - LAST_USED_RESOLUTION, "now": now}
        )
    clear_failures(connection=connection, key=throttle_key, address=address, attempt_id=attempt_id, now=now)
    access = issuer.issue(user_id=key.user_id, client_id=client_id, scopes=scopes, now=now.timestamp())
    return ClientToken(
        user_id=key.user_id, access_token=access.token, expires_in=access.expires_in, scope=" ".join(scopes)
    )
