"""JWKS_URL: cached keys are served while a slow refetch runs, and tokens of both asymmetric algorithms are accepted."""

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi.testclient import TestClient

from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer, AccessTokenVerifier, JwksKeySource
from users_service.app import create_app
from users_service.tests.support import assert_unauthorized, bearer
from users_service.tests.test_jwks import JwksServer

CONCURRENT_CHECKS = 20
SLOW_FETCH_SECONDS = 3.0


def write_private_key(folder: Path, algorithm: str) -> Path:
    key = ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else rsa.generate_private_key(65537, 2048)
    path = folder / f"{algorithm}-{secrets.token_hex(4)}.pem"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    return path


def issuer_for(database_url: str, key_file: Path, algorithm: str) -> AccessTokenIssuer:
    return AccessTokenIssuer(settings_for_tests(database_url, jwt_algorithm=algorithm, jwt_private_key_file=key_file))


def timed_checks(verifier: AccessTokenVerifier, token: str, count: int) -> list[float]:
    def check(_: int) -> float:
        started = time.monotonic()
        verifier.verify(token)
        return time.monotonic() - started

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(check, range(count)))


def test_stale_cached_keys_are_served_while_a_slow_refetch_runs(database_url: str, tmp_path: Path) -> None:
    issuer = issuer_for(database_url, write_private_key(tmp_path, "EdDSA"), "EdDSA")
    token = issuer.issue(user_id=1, token_version=0).token
    settings = settings_for_tests(database_url, jwt_algorithm="EdDSA", jwks_url="unused")
    with JwksServer(issuer.jwks) as jwks:
        source = JwksKeySource(url=jwks.url, algorithm="EdDSA", cache_seconds=0.5, min_refetch_seconds=0.5)
        verifier = AccessTokenVerifier(settings, source)
        verifier.verify(token)  # cached
        jwks.delay = SLOW_FETCH_SECONDS
        time.sleep(0.6)  # and stale

        started = time.monotonic()
        durations = timed_checks(verifier, token, CONCURRENT_CHECKS)
        elapsed = time.monotonic() - started
        fetches_started = source.fetch_count

    # All twenty answered from the cache while the refetch was still on its way (it takes 3 s).
    assert elapsed < 1.0 and max(durations) < 1.0, (elapsed, max(durations))
    # One refetch started for all of them, not one each.
    assert fetches_started == 2, fetches_started


def test_an_unknown_kid_waits_for_the_fetch_in_flight_and_finds_a_rotated_key(
    database_url: str, tmp_path: Path
) -> None:
    old = issuer_for(database_url, write_private_key(tmp_path, "EdDSA"), "EdDSA")
    new = issuer_for(database_url, write_private_key(tmp_path, "EdDSA"), "EdDSA")
    settings = settings_for_tests(database_url, jwt_algorithm="EdDSA", jwks_url="unused")
    with JwksServer(old.jwks) as jwks:
        source = JwksKeySource(url=jwks.url, algorithm="EdDSA", cache_seconds=300, min_refetch_seconds=0)
        verifier = AccessTokenVerifier(settings, source)
        verifier.verify(old.issue(user_id=1, token_version=0).token)
        jwks.jwks = {"keys": [*new.jwks["keys"], *old.jwks["keys"]]}
        jwks.delay = 1.0
        new_token = new.issue(user_id=1, token_version=0).token

        durations = timed_checks(verifier, new_token, 5)

    # Each waited for the one fetch (about 1 s), none for a fetch of its own after it.
    assert max(durations) < 1.9, durations
    assert jwks.fetches == 2, jwks.fetches


@contextmanager
def users_app_on(database_url: str, jwks_url: str, algorithm: str) -> Iterator[TestClient]:
    settings = settings_for_tests(database_url, jwt_algorithm=algorithm, jwks_url=jwks_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_tokens_checked_against_jwks_url_for_each_algorithm(
    database_url: str, tmp_path: Path, make_account, algorithm: str
) -> None:
    account = make_account()
    issuer = issuer_for(database_url, write_private_key(tmp_path, algorithm), algorithm)
    stranger = issuer_for(database_url, write_private_key(tmp_path, algorithm), algorithm)

    with JwksServer(issuer.jwks) as jwks, users_app_on(database_url, jwks.url, algorithm) as client:
        accepted = client.get("/users/me", headers=bearer(issuer.issue(user_id=account.id, token_version=0).token))
        refused = client.get("/users/me", headers=bearer(stranger.issue(user_id=account.id, token_version=0).token))

    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["id"] == account.id
    assert jwks.jwks["keys"][0]["alg"] == algorithm
    assert_unauthorized(refused)
