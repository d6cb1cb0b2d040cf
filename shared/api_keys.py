"""API key credentials: the `client_id` and secret formats, the scopes, and the stored hash of a secret.

The users service mints keys, the auth service checks them at the client-credentials grant: both use these.
"""

import hashlib
import hmac
import secrets

# Fixed prefixes let secret scanners (GitHub's, gitleaks) recognise a leaked key.
CLIENT_ID_PREFIX = "ak_"
CLIENT_SECRET_PREFIX = "aks_"
SECRET_BYTES = 32
SCOPE_READ = "users:read"
SCOPE_WRITE = "users:write"
SCOPES = (SCOPE_READ, SCOPE_WRITE)


def new_client_id() -> str:
    # Lower-case hex: the throttle lower-cases its keys, so two ids must never differ only in case.
    return CLIENT_ID_PREFIX + secrets.token_hex(16)


def new_client_secret() -> str:
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_client_secret(*, client_id: str, client_secret: str) -> str:
    """HMAC-SHA256 of the secret keyed by its client_id, hex.

    A fast hash is enough for 256 random bits (no guessing can reach them); keying it per key means one
    precomputed table cannot serve two keys. Argon2 would cost a slow hash on every grant for nothing.
    """
    return hmac.new(
        client_id.encode("utf-8", "surrogatepass"), client_secret.encode("utf-8", "surrogatepass"), hashlib.sha256
    ).hexdigest()


def secret_matches(*, client_id: str, client_secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_client_secret(client_id=client_id, client_secret=client_secret), secret_hash)


def scopes_of(stored: str) -> list[str]:
    """The stored space-separated scopes as a list, in the canonical order."""
    granted = set(stored.split())
    return [scope for scope in SCOPES if scope in granted]
