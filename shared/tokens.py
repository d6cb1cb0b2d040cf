"""Access-token signing (auth service) and checking (users service): keys, `kid`s, JWKS, claims.

Access tokens are JWTs; refresh tokens are opaque and live in the auth service, not here.
"""

import base64
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from shared.settings import Settings

ACCESS_TOKEN_TYPE = "access"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti", "type"]
_JWK_ALGORITHM_FOR_KEY = {"EdDSA": jwt.algorithms.OKPAlgorithm, "RS256": jwt.algorithms.RSAAlgorithm}


class InvalidAccessToken(Exception):
    """The bearer token is not one this service accepts; the reason is for logs, never for clients."""


class SigningKeysUnavailable(Exception):
    """No key set could be fetched from JWKS_URL, so no token can be checked; the caller answers 503."""


@dataclass(frozen=True)
class AccessClaims:
    """What a checked access token says: a login's token carries its session (`sid`) and the user's token version;
    an API key's carries the key's `client_id` and its scopes instead (a password change leaves those alone)."""

    user_id: int
    # None for an API key's token.
    token_version: int | None
    jti: str
    issued_at: int
    session_id: str | None = None
    client_id: str | None = None
    # None: a login's token, limited only by the user's rights; a set: an API key's token, limited to its scopes.
    scopes: frozenset[str] | None = None


@dataclass(frozen=True)
class IssuedAccessToken:
    token: str
    expires_in: int
    jti: str


def _hs256_kid(secret: str) -> str:
    # Derived from the secret so both services agree without configuration; one-way, so it reveals nothing.
    return hashlib.sha256(b"kid:" + secret.encode()).hexdigest()[:16]


def public_jwk(public_key: Any, algorithm: str) -> dict[str, str]:
    """The JWK of a public key, with an RFC 7638 thumbprint as its `kid`."""
    jwk = _JWK_ALGORITHM_FOR_KEY[algorithm].to_jwk(public_key, as_dict=True)
    required = {name: jwk[name] for name in ("crv", "e", "kty", "n", "x") if name in jwk}
    digest = hashlib.sha256(json.dumps(required, sort_keys=True, separators=(",", ":")).encode()).digest()
    kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    # `use` says what `key_ops` would; one of the two is enough, and some clients choke on both.
    jwk.pop("key_ops", None)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


def _load_public_key(path: Path, algorithm: str) -> Any:
    """A PEM file's public key; a private key file gives its public half."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    else:
        key = serialization.load_pem_public_key(data)
    expected = ed25519.Ed25519PublicKey if algorithm == "EdDSA" else rsa.RSAPublicKey
    if not isinstance(key, expected):
        raise ValueError(f"{path} does not hold a key for {algorithm}")
    return key


def _static_public_keys(settings: Settings, paths: list[Path]) -> dict[str, Any]:
    keys = {}
    for path in paths:
        key = _load_public_key(Path(path), settings.jwt_algorithm)
        keys[public_jwk(key, settings.jwt_algorithm)["kid"]] = key
    return keys


class AccessTokenIssuer:
    """Signs access tokens with the configured key and publishes the public keys as a JWKS."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._algorithm = settings.jwt_algorithm
        if self._algorithm == "HS256":
            self._signing_key: Any = settings.jwt_secret
            self._kid = _hs256_kid(settings.jwt_secret)
            self._jwks: dict[str, list[dict[str, str]]] = {"keys": []}
            return
        if settings.jwt_private_key_file is None:
            raise ValueError(f"JWT_PRIVATE_KEY_FILE is required with JWT_ALGORITHM={self._algorithm}")
        self._signing_key = serialization.load_pem_private_key(settings.jwt_private_key_file.read_bytes(), None)
        current = public_jwk(_load_public_key(settings.jwt_private_key_file, self._algorithm), self._algorithm)
        self._kid = current["kid"]
        previous = [
            public_jwk(key, self._algorithm)
            for key in _static_public_keys(settings, settings.jwt_previous_key_files).values()
        ]
        self._jwks = {"keys": [current, *[jwk for jwk in previous if jwk["kid"] != self._kid]]}

    @property
    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self._jwks

    def issue(
        self,
        *,
        user_id: int,
        token_version: int | None = None,
        now: float | None = None,
        session_id: str | None = None,
        client_id: str | None = None,
        scopes: list[str] | None = None,
    ) -> IssuedAccessToken:
        """A login's token (`token_version`, `session_id`) or an API key's (`client_id`, `scopes`)."""
        issued_at = int(now if now is not None else time.time())
        ttl = self._settings.access_token_ttl_seconds
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "iat": issued_at,
            "exp": issued_at + ttl,
            "jti": jti,
            "iss": self._settings.jwt_issuer,
            "aud": self._settings.jwt_audience,
            "type": ACCESS_TOKEN_TYPE,
        }
        if client_id is not None:
            claims["client_id"] = client_id
            claims["scope"] = " ".join(scopes or [])
        else:
            claims["ver"] = token_version or 0
            if session_id is not None:
                claims["sid"] = session_id
        token = jwt.encode(claims, self._signing_key, algorithm=self._algorithm, headers={"kid": self._kid})
        return IssuedAccessToken(token=token, expires_in=ttl, jti=jti)


class JwksKeySource:
    """Public keys fetched from the auth service's JWKS with `requests`, cached.

    Cached keys are always served at once: when they are stale, one fetch runs on a thread of its own while
    requests go on with them. Only a request whose `kid` is not cached waits, and only for the one fetch in
    flight, at most FETCH_TIMEOUT_SECONDS. A fetch starts at most once per `min_refetch_seconds`, so a flood
    of tokens with made-up `kid`s cannot turn into a flood of requests to the auth service.
    """

    FETCH_TIMEOUT_SECONDS = 5.0

    def __init__(self, *, url: str, algorithm: str, cache_seconds: float, min_refetch_seconds: float) -> None:
        self._url = url
        self._algorithm = algorithm
        self._cache_seconds = cache_seconds
        self._min_refetch_seconds = min_refetch_seconds
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._last_attempt_at = float("-inf")
        # Held only to start or finish a fetch, never across one.
        self._lock = threading.Lock()
        self._fetch_done: threading.Event | None = None
        self.fetch_count = 0

    def sole_key(self) -> None:
        # A JWKS may gain a key at any time: the token's `kid` always picks the key.
        return None

    def key_for(self, kid: str) -> Any | None:
        now = time.monotonic()
        key = self._keys.get(kid)
        if key is not None:
            if now - self._fetched_at > self._cache_seconds:
                self._start_fetch(now)
            return key
        fetch_done = self._start_fetch(now)
        if fetch_done is not None:
            fetch_done.wait(self.FETCH_TIMEOUT_SECONDS)
        if not self._keys:
            raise SigningKeysUnavailable
        return self._keys.get(kid)

    def _start_fetch(self, now: float) -> threading.Event | None:
        """The fetch in flight, or a new one unless the last began under `min_refetch_seconds` ago (then None)."""
        with self._lock:
            if self._fetch_done is not None:
                return self._fetch_done
            if now - self._last_attempt_at < self._min_refetch_seconds:
                return None
            self._last_attempt_at = now
            self.fetch_count += 1
            fetch_done = self._fetch_done = threading.Event()
        threading.Thread(target=self._fetch, args=(fetch_done,), name="jwks-fetch", daemon=True).start()
        return fetch_done

    def _fetch(self, fetch_done: threading.Event) -> None:
        try:
            response = requests.get(self._url, timeout=self.FETCH_TIMEOUT_SECONDS)
            response.raise_for_status()
            # One assignment: a request reads either the old key set or the new one, never a mix.
            self._keys = self._parse(response.json())
            self._fetched_at = time.monotonic()
        except (requests.RequestException, ValueError, KeyError, TypeError):
            # Keep serving the keys we had: an auth service restart must not log everybody out.
            pass
        finally:
            with self._lock:
                self._fetch_done = None
            fetch_done.set()

    def _parse(self, document: dict[str, Any]) -> dict[str, Any]:
        keys = {}
        for entry in document["keys"]:
            if entry.get("alg", self._algorithm) != self._algorithm or "kid" not in entry:
                continue
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm=self._algorithm).key
        return keys


class StaticKeySource:
    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = keys
        self._sole_key = next(iter(keys.items())) if len(keys) == 1 else None

    def key_for(self, kid: str) -> Any | None:
        return self._keys.get(kid)

    def sole_key(self) -> tuple[str, Any] | None:
        """(kid, key) when this is the only key: a shared secret, or a public key with no previous one."""
        return self._sole_key


def build_key_source(settings: Settings) -> StaticKeySource | JwksKeySource:
    """Where the users service finds the keys it checks signatures with."""
    if settings.jwt_algorithm == "HS256":
        return StaticKeySource({_hs256_kid(settings.jwt_secret): settings.jwt_secret})
    if settings.jwks_url:
        return JwksKeySource(
            url=settings.jwks_url,
            algorithm=settings.jwt_algorithm,
            cache_seconds=settings.jwks_cache_seconds,
            min_refetch_seconds=settings.jwks_min_refetch_seconds,
        )
    if settings.jwt_public_key_file is None:
        raise ValueError(f"JWT_PUBLIC_KEY_FILE or JWKS_URL is required with JWT_ALGORITHM={settings.jwt_algorithm}")
    return StaticKeySource(
        _static_public_keys(settings, [settings.jwt_public_key_file, *settings.jwt_previous_key_files])
    )


def signing_key_source(settings: Settings) -> StaticKeySource:
    """The keys the auth service checks its own access tokens with: the shared secret (HS256), or the public half
    of its signing key and of the previous keys it still publishes."""
    if settings.jwt_algorithm == "HS256":
        return StaticKeySource({_hs256_kid(settings.jwt_secret): settings.jwt_secret})
    if settings.jwt_private_key_file is None:
        raise ValueError(f"JWT_PRIVATE_KEY_FILE is required with JWT_ALGORITHM={settings.jwt_algorithm}")
    return StaticKeySource(
        _static_public_keys(settings, [settings.jwt_private_key_file, *settings.jwt_previous_key_files])
    )


MAX_DATABASE_ID = 2**31 - 1


def _is_database_id(subject: object) -> bool:
    return isinstance(subject, str) and subject.isascii() and subject.isdigit() and 0 < int(subject) <= MAX_DATABASE_ID


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick the key; `jwt.decode` then checks the whole token again.

    `jwt.get_unverified_header` would decode the payload and signature too: a third of a check's time.
    """
    encoded = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, RecursionError):
        # RecursionError: a header of thousands of nested arrays.
        raise InvalidAccessToken("unreadable header") from None
    if not isinstance(header, dict):
        raise InvalidAccessToken("unreadable header")
    return header


class AccessTokenVerifier:
    """Checks an access token strictly: exactly the configured algorithm, a known `kid`, every claim."""

    def __init__(self, settings: Settings, key_source: StaticKeySource | JwksKeySource) -> None:
        self._settings = settings
        self._key_source = key_source

    def _key_named_in(self, token: str) -> Any:
        """The key of the token's `kid`, from a source of several keys (a JWKS, previous keys being retired)."""
        header = _unverified_header(token)
        # Checked before any key is looked up: `none` and HS256-with-a-public-key never get that far.
        if header.get("alg") != self._settings.jwt_algorithm:
            raise InvalidAccessToken("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidAccessToken("no kid")
        key = self._key_source.key_for(kid)
        if key is None:
            raise InvalidAccessToken("unknown kid")
        return key

    def verify(self, token: str) -> AccessClaims:
        settings = self._settings
        sole_key = self._key_source.sole_key()
        if sole_key is None:
            expected_kid, key = None, self._key_named_in(token)
        else:
            # One key to try: its `kid` is compared once the signature holds, and the header is parsed only once,
            # by PyJWT. `algorithms` still refuses `none` and HS256-with-a-public-key before any signature check.
            expected_kid, key = sole_key
        try:
            decoded = jwt.decode_complete(
                token,
                key,
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway_seconds,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as error:
            raise InvalidAccessToken(f"rejected: {type(error).__name__}") from None
        if expected_kid is not None and decoded["header"].get("kid") != expected_kid:
            raise InvalidAccessToken("unknown kid")
        claims = decoded["payload"]
        if claims["type"] != ACCESS_TOKEN_TYPE:
            raise InvalidAccessToken("not an access token")
        subject = claims["sub"]
        if not _is_database_id(subject):
            raise InvalidAccessToken("malformed subject")
        client_id = claims.get("client_id")
        if client_id is not None:
            scope = claims.get("scope")
            if not isinstance(client_id, str) or not isinstance(scope, str) or "ver" in claims or "sid" in claims:
                raise InvalidAccessToken("malformed client claims")
            return AccessClaims(
                user_id=int(subject),
                token_version=None,
                jti=str(claims["jti"]),
                issued_at=int(claims["iat"]),
                client_id=client_id,
                scopes=frozenset(scope.split()),
            )
        version, session_id = claims.get("ver", 0), claims.get("sid")
        if not isinstance(version, int) or not (session_id is None or isinstance(session_id, str)):
            raise InvalidAccessToken("malformed subject")
        return AccessClaims(
            user_id=int(subject),
            token_version=version,
            jti=str(claims["jti"]),
            issued_at=int(claims["iat"]),
            session_id=session_id,
        )
