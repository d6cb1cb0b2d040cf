"""Keys from JWKS_URL: tokens accepted, a rotated key picked up, made-up `kid`s refetch rarely, no keys is 503."""

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.testclient import TestClient

from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import Account, assert_retry_later, assert_unauthorized, bearer

ALGORITHM = "EdDSA"
MADE_UP_KIDS = 20


class JwksServer:
    """Serves `jwks` as the auth service's /.well-known/jwks.json would, and counts the fetches."""

    def __init__(self, jwks: dict) -> None:
        self.jwks = jwks
        self.fetches = 0
        # Seconds each answer takes: an auth service that is slow to answer.
        self.delay = 0.0

    def __enter__(self) -> "JwksServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (the http.server name)
                server.fetches += 1
                time.sleep(server.delay)
                body = json.dumps(server.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._http.server_port}/.well-known/jwks.json"
        return self

    def __exit__(self, *_: object) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def write_key(tmp_path: Path) -> Callable[[], Path]:
    """Writes a new Ed25519 private key as PEM and returns its path."""

    def write() -> Path:
        key = ed25519.Ed25519PrivateKey.generate()
        path = tmp_path / f"{secrets.token_hex(4)}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return path

    return write


def auth_issuer(database_url: str, key_file: Path, previous: list[Path] | None = None) -> AccessTokenIssuer:
    return AccessTokenIssuer(
        settings_for_tests(
            database_url,
            jwt_algorithm=ALGORITHM,
            jwt_private_key_file=key_file,
            jwt_previous_key_files=[str(path) for path in previous or []],
        )
    )


@contextmanager
def users_app_on_jwks(database_url: str, jwks_url: str, **overrides: object) -> Iterator[TestClient]:
    settings = settings_for_tests(database_url, jwt_algorithm=ALGORITHM, jwks_url=jwks_url, **overrides)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_token_signed_with_a_published_key_is_accepted(
    database_url: str, make_account: Callable[..., Account], write_key: Callable[[], Path]
) -> None:
    account = make_account()
    issuer = auth_issuer(database_url, write_key())

    with JwksServer(issuer.jwks) as jwks, users_app_on_jwks(database_url, jwks.url) as client:
        response = client.get("/users/me", headers=bearer(issuer.issue(user_id=account.id, token_version=0).token))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id


def test_a_token_signed_with_an_unpublished_key_under_a_published_kid_is_401(
    database_url: str, make_account: Callable[..., Account], write_key: Callable[[], Path]
) -> None:
    account = make_account()
    published = auth_issuer(database_url, write_key())
    genuine = published.issue(user_id=account.id, token_version=0).token
    stranger = serialization.load_pem_private_key(write_key().read_bytes(), None)
    forged = jwt.encode(
        jwt.decode(genuine, options={"verify_signature": False}),
        stranger,
        algorithm=ALGORITHM,
        headers={"kid": jwt.get_unverified_header(genuine)["kid"]},
    )

    with JwksServer(published.jwks) as jwks, users_app_on_jwks(database_url, jwks.url) as client:
        assert_unauthorized(client.get("/users/me", headers=bearer(forged)))


def test_a_rotated_key_is_fetched_when_its_kid_first_appears(
    database_url: str, make_account: Callable[..., Account], write_key: Callable[[], Path]
) -> None:
    account = make_account()
    old_key, new_key = write_key(), write_key()
    before, after = auth_issuer(database_url, old_key), auth_issuer(database_url, new_key, previous=[old_key])

    with (
        JwksServer(before.jwks) as jwks,
        users_app_on_jwks(database_url, jwks.url, jwks_min_refetch_seconds=0) as client,
    ):
        old_token = bearer(before.issue(user_id=account.id, token_version=0).token)
        assert client.get("/users/me", headers=old_token).status_code == 200
        jwks.jwks = after.jwks  # the auth service restarted with the new key, the old one still published

        new_token = bearer(after.issue(user_id=account.id, token_version=0).token)
        assert client.get("/users/me", headers=new_token).status_code == 200
        assert client.get("/users/me", headers=old_token).status_code == 200


def with_made_up_kid(token: str) -> str:
    """The same token under a `kid` nobody published; the signature no longer matters."""
    header = jwt.utils.base64url_encode(json.dumps({"alg": ALGORITHM, "kid": secrets.token_hex(8)}).encode())
    return ".".join([header.decode(), *token.split(".")[1:]])


def test_made_up_kids_do_not_turn_into_a_flood_of_jwks_fetches(
    database_url: str, make_account: Callable[..., Account], write_key: Callable[[], Path]
) -> None:
    account = make_account()
    issuer = auth_issuer(database_url, write_key())
    token = issuer.issue(user_id=account.id, token_version=0).token

    with JwksServer(issuer.jwks) as jwks, users_app_on_jwks(database_url, jwks.url) as client:
        assert client.get("/users/me", headers=bearer(token)).status_code == 200
        for _ in range(MADE_UP_KIDS):
            assert_unauthorized(client.get("/users/me", headers=bearer(with_made_up_kid(token))))

    # One fetch for the first token; made-up kids within JWKS_MIN_REFETCH_SECONDS (10 s) add at most one more.
    assert jwks.fetches <= 2, jwks.fetches


def test_no_reachable_jwks_is_503_with_retry_after(
    database_url: str, make_account: Callable[..., Account], write_key: Callable[[], Path]
) -> None:
    account = make_account()
    token = bearer(auth_issuer(database_url, write_key()).issue(user_id=account.id, token_version=0).token)

    with users_app_on_jwks(database_url, "http://127.0.0.1:1/.well-known/jwks.json") as client:
        assert_retry_later(client.get("/users/me", headers=token))
