"""Access-token checks: forged, expired or misdirected tokens get 401; HS256/EdDSA/RS256 keys are not confused."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi.testclient import TestClient

from shared.settings import Settings
from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import Account, assert_unauthorized, bearer

OTHER_SECRET = "another-secret-of-enough-length-0123456789abcdef"
LEEWAY_SECONDS = 30
DROP = object()  # a claim or header value meaning "leave this out"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hmac_token(header: dict, claims: dict, key: bytes, digest: Callable = hashlib.sha256) -> str:
    """Signs by hand, so any header and any key work, even ones PyJWT refuses to sign with (a PEM as HMAC secret)."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    return f"{signing_input}.{b64url(hmac.new(key, signing_input.encode(), digest).digest())}"


def unsigned_token(header: dict, claims: dict) -> str:
    return f"{b64url_json(header)}.{b64url_json(claims)}."


def without_dropped(values: dict) -> dict:
    return {name: value for name, value in values.items() if value is not DROP}


@dataclass
class TokenForge:
    """Builds tokens for one live user, as the auth service would, with any claim or header changed."""

    settings: Settings
    kid: str
    user_id: int

    def claims(self, **changes: object) -> dict:
        now = int(time.time())
        claims = {
            "sub": str(self.user_id),
            "iat": now,
            "exp": now + 300,
            "jti": "forged-jti",
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "type": "access",
            "ver": 0,
        }
        return without_dropped({**claims, **changes})

    def header(self, **changes: object) -> dict:
        return without_dropped({"alg": "HS256", "typ": "JWT", "kid": self.kid, **changes})

    def sign(self, *, claims: dict | None = None, header: dict | None = None, key: str | None = None) -> str:
        secret = (key or self.settings.jwt_secret).encode()
        return hmac_token(header or self.header(), self.claims() if claims is None else claims, secret)


def seconds_from_now(seconds: int) -> int:
    return int(time.time()) + seconds


@pytest.fixture
def forge(settings: Settings, make_account: Callable[..., Account]) -> TokenForge:
    account = make_account()
    return TokenForge(settings=settings, kid=jwt.get_unverified_header(account.token)["kid"], user_id=account.id)


REFUSED_TOKENS: dict[str, Callable[[TokenForge], str]] = {
    "alg none": lambda f: unsigned_token(f.header(alg="none"), f.claims()),
    "alg None": lambda f: unsigned_token(f.header(alg="None"), f.claims()),
    "alg missing": lambda f: f.sign(header=f.header(alg=DROP)),
    "HS512 with the right secret": lambda f: hmac_token(
        f.header(alg="HS512"), f.claims(), f.settings.jwt_secret.encode(), hashlib.sha512
    ),
    "signed with another secret": lambda f: f.sign(key=OTHER_SECRET),
    "signature stripped": lambda f: f.sign().rsplit(".", 1)[0] + ".",
    "payload swapped after signing": lambda f: ".".join(
        [f.sign().split(".")[0], b64url_json(f.claims(sub=str(f.user_id + 1))), f.sign().split(".")[2]]
    ),
    "no exp": lambda f: f.sign(claims=f.claims(exp=DROP)),
    "expired beyond the leeway": lambda f: f.sign(
        claims=f.claims(iat=seconds_from_now(-1000), exp=seconds_from_now(-LEEWAY_SECONDS - 30))
    ),
    "no iat": lambda f: f.sign(claims=f.claims(iat=DROP)),
    "iat in the future beyond the leeway": lambda f: f.sign(
        claims=f.claims(iat=seconds_from_now(LEEWAY_SECONDS + 90), exp=seconds_from_now(900))
    ),
    "nbf in the future beyond the leeway": lambda f: f.sign(claims=f.claims(nbf=seconds_from_now(LEEWAY_SECONDS + 90))),
    "no jti": lambda f: f.sign(claims=f.claims(jti=DROP)),
    "no iss": lambda f: f.sign(claims=f.claims(iss=DROP)),
    "wrong iss": lambda f: f.sign(claims=f.claims(iss="someone-else")),
    "no aud": lambda f: f.sign(claims=f.claims(aud=DROP)),
    "wrong aud": lambda f: f.sign(claims=f.claims(aud="another-service")),
    "aud list without ours": lambda f: f.sign(claims=f.claims(aud=["another-service"])),
    "no type": lambda f: f.sign(claims=f.claims(type=DROP)),
    "type refresh": lambda f: f.sign(claims=f.claims(type="refresh")),
    "type ACCESS in capitals": lambda f: f.sign(claims=f.claims(type="ACCESS")),
    "no kid": lambda f: f.sign(header=f.header(kid=DROP)),
    "unknown kid": lambda f: f.sign(header=f.header(kid="not-a-known-kid")),
    "kid not a string": lambda f: f.sign(header=f.header(kid=123)),
    "no sub": lambda f: f.sign(claims=f.claims(sub=DROP)),
    "sub not numeric": lambda f: f.sign(claims=f.claims(sub="alice")),
    "sub an integer, not a string": lambda f: f.sign(claims=f.claims(sub=f.user_id)),
    "sub zero": lambda f: f.sign(claims=f.claims(sub="0")),
    "sub negative": lambda f: f.sign(claims=f.claims(sub="-1")),
    "sub beyond 32 bits": lambda f: f.sign(claims=f.claims(sub=str(2**31))),
    "sub in non-ASCII digits": lambda f: f.sign(claims=f.claims(sub="\u0661\u0662")),
    "sub with padding": lambda f: f.sign(claims=f.claims(sub=f" {f.user_id}")),
    "ver not an integer": lambda f: f.sign(claims=f.claims(ver="0")),
    "ver of a later password": lambda f: f.sign(claims=f.claims(ver=1)),
}


@pytest.mark.parametrize("build", REFUSED_TOKENS.values(), ids=REFUSED_TOKENS.keys())
def test_forged_or_invalid_tokens_are_401(client: TestClient, forge: TokenForge, build: Callable) -> None:
    assert_unauthorized(client.get("/users/me", headers=bearer(build(forge))))


ACCEPTED_TOKENS: dict[str, Callable[[TokenForge], str]] = {
    "as the auth service signs it": lambda f: f.sign(),
    "expired within the leeway": lambda f: f.sign(
        claims=f.claims(iat=seconds_from_now(-900), exp=seconds_from_now(-LEEWAY_SECONDS + 20))
    ),
    "iat in the future within the leeway": lambda f: f.sign(claims=f.claims(iat=seconds_from_now(LEEWAY_SECONDS - 20))),
    "nbf in the future within the leeway": lambda f: f.sign(claims=f.claims(nbf=seconds_from_now(LEEWAY_SECONDS - 20))),
    "nbf in the past": lambda f: f.sign(claims=f.claims(nbf=seconds_from_now(-60))),
}


@pytest.mark.parametrize("build", ACCEPTED_TOKENS.values(), ids=ACCEPTED_TOKENS.keys())
def test_valid_tokens_are_accepted(client: TestClient, forge: TokenForge, build: Callable) -> None:
    # Without this, the refusals above could come from a forge that never makes a good token.
    response = client.get("/users/me", headers=bearer(build(forge)))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == forge.user_id


def test_a_token_of_a_deleted_user_is_401(client: TestClient, forge: TokenForge, admin: Account) -> None:
    token = forge.sign()
    assert client.delete(f"/users/{forge.user_id}", headers=admin.headers).status_code == 204

    assert_unauthorized(client.get("/users/me", headers=bearer(token)))


def _segment(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Headers the key lookup reads before any signature check: not JSON, not an object, not UTF-8, nested too deep.
UNREADABLE_HEADERS = {
    "not base64": "@@@@.e30.c2ln",
    "not json": f"{_segment(b'alg')}.e30.c2ln",
    "json list": f"{_segment(b'[1]')}.e30.c2ln",
    "not utf-8": f"{_segment(bytes([0xFF, 0xFE]))}.e30.c2ln",
    "nested 20000 deep": f"{_segment(b'[' * 20000 + b']' * 20000)}.e30.c2ln",
}


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer garbage",
        "Bearer ",
        "Bearer a.b.c",
        "Bearer .....",
        *(f"Bearer {token}" for token in UNREADABLE_HEADERS.values()),
    ],
    ids=["garbage", "empty", "a.b.c", "dots", *UNREADABLE_HEADERS.keys()],
)
def test_garbage_and_empty_bearers_are_401(client: TestClient, authorization: str) -> None:
    assert_unauthorized(client.get("/users/me", headers={"Authorization": authorization}))


@dataclass
class AsymmetricSetup:
    """A users-service app checking `algorithm` tokens with a public key file, and the matching issuer."""

    algorithm: str
    client: TestClient
    issuer: AccessTokenIssuer
    public_pem: bytes
    shared_secret: str


def new_private_key(algorithm: str) -> ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


def public_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module", params=["EdDSA", "RS256"])
def asymmetric(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AsymmetricSetup]:
    algorithm = request.param
    key = new_private_key(algorithm)
    folder: Path = tmp_path_factory.mktemp(algorithm)
    (folder / "private.pem").write_bytes(private_pem(key))
    (folder / "public.pem").write_bytes(public_pem(key))
    users = settings_for_tests(database_url, jwt_algorithm=algorithm, jwt_public_key_file=folder / "public.pem")
    auth = settings_for_tests(database_url, jwt_algorithm=algorithm, jwt_private_key_file=folder / "private.pem")
    with TestClient(create_app(users)) as client:
        yield AsymmetricSetup(algorithm, client, AccessTokenIssuer(auth), public_pem(key), users.jwt_secret)


def test_a_token_from_the_asymmetric_issuer_is_accepted(
    asymmetric: AsymmetricSetup, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    token = asymmetric.issuer.issue(user_id=account.id, token_version=0).token

    response = asymmetric.client.get("/users/me", headers=bearer(token))

    assert jwt.get_unverified_header(token)["alg"] == asymmetric.algorithm
    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id


def key_confusion(setup: AsymmetricSetup, header: dict, claims: dict) -> str:
    return hmac_token({**header, "alg": "HS256"}, claims, setup.public_pem)


def hs256_with_the_shared_secret(setup: AsymmetricSetup, header: dict, claims: dict) -> str:
    return hmac_token({**header, "alg": "HS256"}, claims, setup.shared_secret.encode())


def alg_none(setup: AsymmetricSetup, header: dict, claims: dict) -> str:
    return unsigned_token({**header, "alg": "none"}, claims)


def another_key_of_the_same_kind(setup: AsymmetricSetup, header: dict, claims: dict) -> str:
    stranger = new_private_key(setup.algorithm)
    return jwt.encode(claims, stranger, algorithm=setup.algorithm, headers={"kid": header["kid"]})


ASYMMETRIC_FORGERIES = {
    "HS256 signed with the public key PEM (key confusion)": key_confusion,
    "HS256 signed with the configured JWT_SECRET": hs256_with_the_shared_secret,
    "alg none": alg_none,
    "signed with another private key under the right kid": another_key_of_the_same_kind,
}


@pytest.mark.parametrize("forge_token", ASYMMETRIC_FORGERIES.values(), ids=ASYMMETRIC_FORGERIES.keys())
def test_forgeries_against_an_asymmetric_key_are_401(
    asymmetric: AsymmetricSetup, make_account: Callable[..., Account], forge_token: Callable
) -> None:
    account = make_account()
    genuine = asymmetric.issuer.issue(user_id=account.id, token_version=0).token
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})

    response = asymmetric.client.get("/users/me", headers=bearer(forge_token(asymmetric, header, claims)))

    assert_unauthorized(response)
