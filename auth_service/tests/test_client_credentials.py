"""The client-credentials grant (`POST /token`, `grant_type=client_credentials`): an API key for an access token.

Keys are inserted as the users service stores them (the auth service only reads them).
"""

import base64
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from auth_service.tests.conftest import Credentials, assert_invalid_grant, refresh, set_user_active, unique_address
from shared.api_keys import hash_client_secret, new_client_id, new_client_secret
from shared.models import ApiKey, User, as_utc
from shared.tokens import AccessTokenVerifier, build_key_source

LIMITS = {
    "login_max_failures_per_username": 3,
    "login_max_failures_per_address": 6,
    "login_failure_window_seconds": 60,
}


@dataclass
class Key:
    id: int
    user_id: int
    client_id: str
    client_secret: str

    @property
    def basic(self) -> dict[str, str]:
        return basic_header(f"{self.client_id}:{self.client_secret}".encode())

    @property
    def form(self) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret}


def basic_header(credentials: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")}


GRANT = {"grant_type": "client_credentials"}


@pytest.fixture
def make_key(client: TestClient, make_user: Callable[..., Credentials]) -> Callable[..., Key]:
    def make(*, user: Credentials | None = None, scopes: str = "users:read", expires_at: datetime | None = None) -> Key:
        owner = user or make_user()
        client_id, client_secret = new_client_id(), new_client_secret()
        with client.app.state.session_factory() as session:
            row = ApiKey(
                user_id=owner.id,
                name="test key",
                client_id=client_id,
                secret_hash=hash_client_secret(client_id=client_id, client_secret=client_secret),
                scopes=scopes,
                expires_at=expires_at,
            )
            session.add(row)
            session.commit()
            return Key(id=row.id, user_id=owner.id, client_id=client_id, client_secret=client_secret)

    return make


def stored_key(client: TestClient, key_id: int) -> ApiKey | None:
    with client.app.state.session_factory() as session:
        return session.get(ApiKey, key_id)


def stored_last_used(client: TestClient, key_id: int) -> datetime | None:
    """The key's last_used_at, aware on SQLite too (which returns naive datetimes)."""
    moment = stored_key(client, key_id).last_used_at
    return None if moment is None else as_utc(moment)


def set_last_used(client: TestClient, key_id: int, moment: datetime | None) -> None:
    with client.app.state.session_factory() as session:
        session.get(ApiKey, key_id).last_used_at = moment
        session.commit()


def assert_invalid_client(response) -> None:  # noqa: ANN001
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Basic"), response.headers
    body = response.json()
    assert body["error"] == "invalid_client" and isinstance(body["detail"], str) and body["detail"], body
    assert "access_token" not in body


def assert_key_token(client: TestClient, response, key: Key, scopes: set[str]) -> dict:  # noqa: ANN001
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}, body
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    assert set(body["scope"].split()) == scopes
    settings = client.app.state.settings
    claims = AccessTokenVerifier(settings, build_key_source(settings)).verify(body["access_token"])
    assert claims.user_id == key.user_id and claims.client_id == key.client_id
    assert claims.scopes == scopes and claims.token_version is None and claims.session_id is None
    return body


# Success


def test_http_basic_gets_an_access_token_with_client_id_and_scope_and_no_refresh_token(
    client: TestClient, make_key: Callable[..., Key]
) -> None:
    key = make_key(scopes="users:read users:write")

    response = client.post("/token", data=GRANT, headers=key.basic)

    assert_key_token(client, response, key, {"users:read", "users:write"})


def test_form_fields_get_an_access_token(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()

    assert_key_token(client, client.post("/token", data=key.form), key, {"users:read"})


def test_basic_parts_are_form_urlencoded_as_rfc_6749_says(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()
    # "%61" is "a": a client that encodes every character is understood.
    encoded_id = "%61" + key.client_id[1:]

    response = client.post("/token", data=GRANT, headers=basic_header(f"{encoded_id}:{key.client_secret}".encode()))

    assert_key_token(client, response, key, {"users:read"})


def test_a_form_client_id_beside_basic_naming_the_same_client_is_accepted(
    client: TestClient, make_key: Callable[..., Key]
) -> None:
    key = make_key()

    response = client.post("/token", data={**GRANT, "client_id": key.client_id}, headers=key.basic)

    assert_key_token(client, response, key, {"users:read"})


def test_scope_narrows_the_token_and_asking_for_more_is_invalid_scope(
    client: TestClient, make_key: Callable[..., Key]
) -> None:
    both, read_only = make_key(scopes="users:read users:write"), make_key(scopes="users:read")

    narrowed = client.post("/token", data={**GRANT, "scope": "users:read"}, headers=both.basic)
    wider = client.post("/token", data={**GRANT, "scope": "users:read users:write"}, headers=read_only.basic)
    unknown = client.post("/token", data={**GRANT, "scope": "admin"}, headers=both.basic)

    assert_key_token(client, narrowed, both, {"users:read"})
    for refused in (wider, unknown):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_scope"


# Refusals


def test_a_wrong_secret_is_invalid_client_with_basic_and_with_the_form(
    client: TestClient, make_key: Callable[..., Key]
) -> None:
    key = make_key()
    wrong = new_client_secret()

    assert_invalid_client(client.post("/token", data=GRANT, headers=basic_header(f"{key.client_id}:{wrong}".encode())))
    assert_invalid_client(client.post("/token", data={**key.form, "client_secret": wrong}))


def test_an_unknown_client_id_is_invalid_client(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()

    for client_id in (new_client_id(), "ak_", "x" * 65, "not a key\x00", "ключ"):
        assert_invalid_client(client.post("/token", data={**key.form, "client_id": client_id}))
    assert_invalid_client(client.post("/token", data=GRANT, headers=basic_header(f":{key.client_secret}".encode())))


MALFORMED_BASIC = {
    "bad base64": "Basic !!!not-base64!!!",
    "no colon": "Basic " + base64.b64encode(b"ak_0123456789").decode(),
    "non-UTF-8": "Basic " + base64.b64encode(b"ak_\xff\xfe:secret").decode(),
    "non-UTF-8 after percent-decoding": "Basic " + base64.b64encode(b"ak_%ff:secret").decode(),
    "empty": "Basic ",
    # A byte HTTP allows but base64 does not (the header arrives as latin-1 text).
    "non-ASCII": "Basic \xe9t\xe9".encode("latin-1"),
}


@pytest.mark.parametrize("authorization", MALFORMED_BASIC.values(), ids=MALFORMED_BASIC.keys())
def test_a_malformed_basic_header_is_invalid_client_never_5xx(client: TestClient, authorization: str | bytes) -> None:
    assert_invalid_client(client.post("/token", data=GRANT, headers={"Authorization": authorization}))


def test_basic_and_form_credentials_at_once_are_invalid_request(
    client: TestClient, make_key: Callable[..., Key]
) -> None:
    key, other = make_key(), make_key()

    for form in (key.form, {**GRANT, "client_secret": key.client_secret}, {**GRANT, "client_id": other.client_id}):
        response = client.post("/token", data=form, headers=key.basic)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"


def test_no_client_authentication_is_invalid_client_and_half_a_form_is_422(client: TestClient) -> None:
    assert_invalid_client(client.post("/token", data=GRANT))
    assert client.post("/token", data={**GRANT, "client_id": new_client_id()}).status_code == 422
    assert client.post("/token", data={**GRANT, "client_secret": new_client_secret()}).status_code == 422


def test_an_expired_key_is_invalid_client(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key(expires_at=datetime.now(UTC) - timedelta(seconds=1))

    assert_invalid_client(client.post("/token", data=GRANT, headers=key.basic))


def test_a_deleted_key_is_invalid_client(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()
    assert client.post("/token", data=GRANT, headers=key.basic).status_code == 200
    with client.app.state.session_factory() as session:
        session.delete(session.get(ApiKey, key.id))
        session.commit()

    assert_invalid_client(client.post("/token", data=GRANT, headers=key.basic))


def test_an_inactive_or_deleted_owner_is_invalid_client(
    client: TestClient, make_user: Callable[..., Credentials], make_key: Callable[..., Key]
) -> None:
    inactive_owner, deleted_owner = make_user(), make_user()
    inactive_key, deleted_key = make_key(user=inactive_owner), make_key(user=deleted_owner)
    set_user_active(client, inactive_owner.id, False)
    with client.app.state.session_factory() as session:
        session.delete(session.get(User, deleted_owner.id))
        session.commit()

    assert_invalid_client(client.post("/token", data=GRANT, headers=inactive_key.basic))
    assert_invalid_client(client.post("/token", data=GRANT, headers=deleted_key.basic))


def test_key_secrets_and_key_tokens_are_no_refresh_tokens(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()
    access_token = client.post("/token", data=GRANT, headers=key.basic).json()["access_token"]

    assert_invalid_grant(refresh(client, key.client_secret))
    assert_invalid_grant(refresh(client, access_token))
    assert_invalid_grant(
        client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": key.client_secret}, headers=key.basic
        )
    )


# Throttling


def assert_throttled(response) -> None:  # noqa: ANN001
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= LIMITS["login_failure_window_seconds"]
    assert response.json()["detail"]


def test_failures_are_throttled_per_client_id_even_for_the_right_secret(
    make_client: Callable[..., TestClient], make_key: Callable[..., Key]
) -> None:
    throttled = make_client(**LIMITS)
    key, other_key = make_key(), make_key()
    wrong = {**key.form, "client_secret": new_client_secret()}

    statuses = [throttled.post("/token", data=wrong).status_code for _ in range(3)]

    assert statuses == [401] * 3
    assert_throttled(throttled.post("/token", data=key.form))
    assert_throttled(TestClient(throttled.app, client=(unique_address(), 50000)).post("/token", data=key.form))
    assert throttled.post("/token", data=other_key.form).status_code == 200


def test_failures_are_throttled_per_address(
    make_client: Callable[..., TestClient], make_key: Callable[..., Key]
) -> None:
    address = unique_address()
    throttled = make_client(address=address, **LIMITS)
    key = make_key()

    statuses = [
        throttled.post("/token", data={**GRANT, "client_id": new_client_id(), "client_secret": "x"}).status_code
        for _ in range(6)
    ]

    assert statuses == [401] * 6
    assert_throttled(throttled.post("/token", data=key.form))
    elsewhere = TestClient(throttled.app, client=(unique_address(), 50000))
    assert elsewhere.post("/token", data=key.form).status_code == 200


def test_a_clients_failures_do_not_throttle_a_username_of_the_same_spelling(
    make_client: Callable[..., TestClient], make_user: Callable[..., Credentials]
) -> None:
    throttled = make_client(**LIMITS)
    user = make_user()
    for _ in range(4):
        throttled.post("/token", data={**GRANT, "client_id": user.username, "client_secret": "x"})

    elsewhere = TestClient(throttled.app, client=(unique_address(), 50000))
    response = elsewhere.post("/token", data={"username": user.username, "password": user.password})
    assert response.status_code == 200, response.text


def test_right_secrets_in_parallel_are_never_throttled(
    make_client: Callable[..., TestClient], make_key: Callable[..., Key]
) -> None:
    throttled = make_client(**LIMITS)
    key = make_key()
    racers = 10
    start_together = threading.Barrier(racers)

    def grant(_: int) -> int:
        start_together.wait()
        return throttled.post("/token", data=key.form).status_code

    with ThreadPoolExecutor(racers) as pool:
        statuses = list(pool.map(grant, range(racers)))

    assert statuses == [200] * racers


# last_used_at


def test_last_used_at_moves_at_most_once_a_minute(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()
    assert stored_last_used(client, key.id) is None

    assert client.post("/token", data=GRANT, headers=key.basic).status_code == 200
    first = stored_last_used(client, key.id)
    assert first is not None and abs(datetime.now(UTC) - first) < timedelta(seconds=10)
    assert client.post("/token", data=GRANT, headers=key.basic).status_code == 200
    assert stored_last_used(client, key.id) == first

    a_minute_ago = datetime.now(UTC) - timedelta(seconds=61)
    set_last_used(client, key.id, a_minute_ago)
    assert client.post("/token", data=GRANT, headers=key.basic).status_code == 200
    assert stored_last_used(client, key.id) > a_minute_ago + timedelta(seconds=30)

    recently = datetime.now(UTC) - timedelta(seconds=50)
    set_last_used(client, key.id, recently)
    assert client.post("/token", data=GRANT, headers=key.basic).status_code == 200
    assert stored_last_used(client, key.id) == recently


def test_a_failed_grant_does_not_move_last_used_at(client: TestClient, make_key: Callable[..., Key]) -> None:
    key = make_key()

    assert_invalid_client(client.post("/token", data={**key.form, "client_secret": secrets.token_urlsafe(32)}))

    assert stored_key(client, key.id).last_used_at is None
