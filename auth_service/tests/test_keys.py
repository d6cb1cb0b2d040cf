"""Access tokens signed with EdDSA and RS256 keys, and the JWKS that publishes their public halves."""

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from auth_service.tests.conftest import login, refresh
from shared.testing import new_test_secret, settings_for_tests
from shared.tokens import AccessTokenVerifier, build_key_source

NEW_PRIVATE_KEY = {
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def write_pem(path: Path, private_key, *, public_only: bool = False) -> Path:
    if public_only:
        pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(pem)
    return path


def der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def published_keys(client) -> list[dict]:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return response.json()["keys"]


@pytest.fixture(params=list(NEW_PRIVATE_KEY))
def algorithm(request) -> str:
    return request.param


@pytest.mark.parametrize("grant", ["password", "refresh_token"])
def test_tokens_carry_the_configured_alg_and_a_published_kid(make_client, make_user, tmp_path, algorithm, grant):
    key = NEW_PRIVATE_KEY[algorithm]()
    keyed = make_client(jwt_algorithm=algorithm, jwt_private_key_file=write_pem(tmp_path / "current.pem", key))
    user = make_user()
    pair = login(keyed, user.username, user.password).json()
    if grant == "refresh_token":
        pair = refresh(keyed, pair["refresh_token"]).json()
    token = pair["access_token"]

    header = jwt.get_unverified_header(token)
    jwks_by_kid = {jwk["kid"]: jwk for jwk in published_keys(keyed)}

    assert header["alg"] == algorithm
    assert header["kid"] in jwks_by_kid
    public_key = jwt.PyJWK(jwks_by_kid[header["kid"]]).key
    assert der(public_key) == der(key.public_key())
    claims = jwt.decode(token, public_key, algorithms=[algorithm], audience="users-service", issuer="auth-service")
    assert claims["sub"] == str(user.id)
    assert claims["type"] == "access"


@pytest.mark.parametrize("previous_as", ["private-pem", "public-pem"])
def test_jwks_lists_the_current_and_the_previous_key(make_client, make_user, tmp_path, algorithm, previous_as):
    current, previous = NEW_PRIVATE_KEY[algorithm](), NEW_PRIVATE_KEY[algorithm]()
    previous_file = write_pem(tmp_path / "previous.pem", previous, public_only=previous_as == "public-pem")
    keyed = make_client(
        jwt_algorithm=algorithm,
        jwt_private_key_file=write_pem(tmp_path / "current.pem", current),
        jwt_previous_key_files=[str(previous_file)],
    )

    keys = published_keys(keyed)

    assert len(keys) == 2
    assert len({jwk["kid"] for jwk in keys}) == 2
    for jwk in keys:
        assert jwk["alg"] == algorithm
        assert jwk.get("use", "sig") == "sig"
        assert not PRIVATE_JWK_MEMBERS & set(jwk), f"private key material published: {sorted(jwk)}"
    kid_by_der = {der(jwt.PyJWK(jwk).key): jwk["kid"] for jwk in keys}
    assert set(kid_by_der) == {der(current.public_key()), der(previous.public_key())}
    user = make_user()
    token = login(keyed, user.username, user.password).json()["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == kid_by_der[der(current.public_key())]


def test_tokens_signed_before_a_key_rotation_still_verify_with_the_jwks(make_client, make_user, tmp_path, algorithm):
    old, new = NEW_PRIVATE_KEY[algorithm](), NEW_PRIVATE_KEY[algorithm]()
    old_file = write_pem(tmp_path / "old.pem", old)
    before = make_client(jwt_algorithm=algorithm, jwt_private_key_file=old_file)
    user = make_user()
    token = login(before, user.username, user.password).json()["access_token"]

    after = make_client(
        jwt_algorithm=algorithm,
        jwt_private_key_file=write_pem(tmp_path / "new.pem", new),
        jwt_previous_key_files=[str(old_file)],
    )
    jwks_by_kid = {jwk["kid"]: jwk for jwk in published_keys(after)}

    kid = jwt.get_unverified_header(token)["kid"]
    assert kid in jwks_by_kid
    claims = jwt.decode(token, jwt.PyJWK(jwks_by_kid[kid]).key, algorithms=[algorithm], audience="users-service")
    assert claims["sub"] == str(user.id)


@pytest.mark.parametrize("users_side_algorithm", ["HS256", "EdDSA", "RS256"])
def test_the_users_service_verifier_accepts_the_tokens(
    make_client, make_user, tmp_path, database_url, users_side_algorithm
):
    secret = new_test_secret()
    extra = {}
    if users_side_algorithm != "HS256":
        key = NEW_PRIVATE_KEY[users_side_algorithm]()
        extra = {
            "auth": {"jwt_private_key_file": write_pem(tmp_path / "private.pem", key)},
            "users": {"jwt_public_key_file": write_pem(tmp_path / "public.pem", key, public_only=True)},
        }
    auth = make_client(jwt_algorithm=users_side_algorithm, jwt_secret=secret, **extra.get("auth", {}))
    users_settings = settings_for_tests(
        database_url, jwt_algorithm=users_side_algorithm, jwt_secret=secret, **extra.get("users", {})
    )
    user = make_user()
    token = login(auth, user.username, user.password).json()["access_token"]

    claims = AccessTokenVerifier(users_settings, build_key_source(users_settings)).verify(token)

    assert claims.user_id == user.id


def test_jwks_is_empty_with_hs256(client):
    response = client.get("/.well-known/jwks.json")

    assert response.status_code == 200
    assert response.json() == {"keys": []}
