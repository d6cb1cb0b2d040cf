"""End to end with EdDSA and RS256: the users service checks tokens through the auth service's JWKS.

Across a key rotation: tokens signed before it stay valid, tokens signed after it are accepted too.
"""

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.conftest import service_env
from tests.processes import ServiceProcess, free_port


def write_private_key(path: Path, algorithm: str) -> Path:
    key = ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else rsa.generate_private_key(65537, 2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def hs256_token(claims: dict, secret: bytes, *, kid: str) -> str:
    """Signs by hand: PyJWT itself refuses a PEM key as an HMAC secret."""

    def encode(part: bytes) -> bytes:
        return base64.urlsafe_b64encode(part).rstrip(b"=")

    header = encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = encode(json.dumps(claims).encode())
    signature = encode(hmac.new(secret, header + b"." + payload, hashlib.sha256).digest())
    return b".".join((header, payload, signature)).decode()


def token_for(auth_url: str, username: str, password: str) -> str:
    response = requests.post(f"{auth_url}/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_jwks_verification_across_key_rotation(algorithm: str, database_url: str, tmp_path: Path) -> None:
    old_key = write_private_key(tmp_path / "old.pem", algorithm)
    new_key = write_private_key(tmp_path / "new.pem", algorithm)
    auth_port = free_port()
    common = service_env(database_url, JWT_ALGORITHM=algorithm)
    common.pop("JWT_SECRET")
    auth_env = {**common, "JWT_PRIVATE_KEY_FILE": str(old_key)}
    users_env = {
        **common,
        "JWKS_URL": f"http://127.0.0.1:{auth_port}/.well-known/jwks.json",
        "JWKS_MIN_REFETCH_SECONDS": "0",
    }
    auth = ServiceProcess("auth", auth_port, auth_env, tmp_path / "auth.log", workers=1).start()
    users = ServiceProcess("users", free_port(), users_env, tmp_path / "users.log", workers=1).start()
    try:
        signed_up = requests.post(
            f"{users.url}/users", json={"username": f"jwks_{secrets.token_hex(5)}", "password": "password123"}
        )
        assert signed_up.status_code == 201
        username = signed_up.json()["username"]
        before = token_for(auth.url, username, "password123")
        assert requests.get(f"{users.url}/users/me", headers={"Authorization": f"Bearer {before}"}).status_code == 200

        # Rotate: the new key signs, the old one is still published until its tokens expire.
        auth.stop()
        rotated_env = {**common, "JWT_PRIVATE_KEY_FILE": str(new_key), "JWT_PREVIOUS_KEY_FILES": str(old_key)}
        auth = ServiceProcess("auth", auth_port, rotated_env, tmp_path / "auth2.log", workers=1).start()
        kids = {key["kid"] for key in requests.get(f"{auth.url}/.well-known/jwks.json").json()["keys"]}
        assert len(kids) == 2
        after = token_for(auth.url, username, "password123")
        for token in (before, after):
            me = requests.get(f"{users.url}/users/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["username"] == username
        # Key confusion: an HS256 token whose HMAC key is the published public key must not pass.
        public_pem = (
            serialization.load_pem_private_key(new_key.read_bytes(), None)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        claims = jwt.decode(after, options={"verify_signature": False})
        forged = hs256_token(claims, public_pem, kid=jwt.get_unverified_header(after)["kid"])
        assert requests.get(f"{users.url}/users/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    finally:
        users.stop()
        auth.stop()
