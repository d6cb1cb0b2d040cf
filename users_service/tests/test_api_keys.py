"""API keys in the users service: create (secret shown once), list, delete, admin list/delete, the live-key limit,
and what a key's access token may do (scopes, 403 insufficient_scope)."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from shared.api_keys import hash_client_secret
from shared.models import ApiKey
from shared.settings import Settings
from shared.tokens import AccessTokenIssuer
from users_service.tests.support import Account, assert_error, assert_unauthorized, bearer

KEY_FIELDS = {"id", "name", "client_id", "scopes", "created_at", "expires_at", "last_used_at"}


def create_key(client: TestClient, account: Account, **fields: object) -> dict:
    response = client.post("/users/me/api-keys", json={"name": "deploy bot", **fields}, headers=account.headers)
    assert response.status_code == 201, response.text
    return response.json()


def key_token(issuer: AccessTokenIssuer, account: Account, key: dict) -> dict[str, str]:
    """The headers of an access token the auth service would issue for `key`."""
    return bearer(issuer.issue(user_id=account.id, client_id=key["client_id"], scopes=key["scopes"]).token)


def stored_key(client: TestClient, client_id: str) -> ApiKey | None:
    with client.app.state.session_factory() as session:
        return session.scalar(select(ApiKey).where(ApiKey.client_id == client_id))


def expire_key(client: TestClient, key_id: int) -> None:
    with client.app.state.session_factory() as session:
        session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()


def assert_insufficient_scope(response) -> None:  # noqa: ANN001
    body = assert_error(response, 403)
    assert body["error"] == "insufficient_scope", body
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"', response.headers


# Creation


def test_a_new_key_shows_its_secret_once_and_stores_only_a_keyed_hash(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    before = datetime.now(UTC)

    key = create_key(client, account, name="ci", scopes=["users:write", "users:read"], expires_in_days=30)

    assert set(key) == KEY_FIELDS | {"client_secret"}, key
    assert key["name"] == "ci" and key["scopes"] == ["users:read", "users:write"]
    assert key["client_id"].startswith("ak_") and key["client_secret"].startswith("aks_")
    assert len(key["client_secret"]) >= 4 + 43  # 32 random bytes, url-safe base64
    assert key["last_used_at"] is None
    created_at, expires_at = datetime.fromisoformat(key["created_at"]), datetime.fromisoformat(key["expires_at"])
    assert created_at.utcoffset() is not None and created_at >= before - timedelta(seconds=1)
    assert abs(expires_at - created_at - timedelta(days=30)) < timedelta(seconds=1)
    stored = stored_key(client, key["client_id"])
    assert stored is not None and stored.user_id == account.id
    assert stored.secret_hash == hash_client_secret(client_id=key["client_id"], client_secret=key["client_secret"])
    assert key["client_secret"] not in stored.secret_hash
    listed = client.get("/users/me/api-keys", headers=account.headers).json()["items"]
    assert listed == [{name: key[name] for name in KEY_FIELDS}]


def test_defaults_are_read_scope_and_90_days(client: TestClient, make_account: Callable[..., Account]) -> None:
    key = create_key(client, make_account())

    assert key["scopes"] == ["users:read"]
    lifetime = datetime.fromisoformat(key["expires_at"]) - datetime.fromisoformat(key["created_at"])
    assert abs(lifetime - timedelta(days=90)) < timedelta(seconds=1)


def test_a_key_may_never_expire(client: TestClient, make_account: Callable[..., Account]) -> None:
    assert create_key(client, make_account(), expires_in_days=None)["expires_at"] is None


@pytest.mark.parametrize("length", [1, 100])
def test_names_of_1_and_100_characters_are_accepted(
    client: TestClient, make_account: Callable[..., Account], length: int
) -> None:
    assert create_key(client, make_account(), name="n" * length)["name"] == "n" * length


@pytest.mark.parametrize("days", [1, 365])
def test_expires_in_days_1_and_365_are_accepted(
    client: TestClient, make_account: Callable[..., Account], days: int
) -> None:
    key = create_key(client, make_account(), expires_in_days=days)
    lifetime = datetime.fromisoformat(key["expires_at"]) - datetime.fromisoformat(key["created_at"])
    assert abs(lifetime - timedelta(days=days)) < timedelta(seconds=1)


INVALID_KEYS = {
    "name of 0 characters": {"name": ""},
    "name of 101 characters": {"name": "n" * 101},
    "name missing": {"name": None},
    "name with NUL": {"name": "a\x00b"},
    "unknown scope": {"scopes": ["users:admin"]},
    "known and unknown scope": {"scopes": ["users:read", "sessions:write"]},
    "no scope": {"scopes": []},
    "scopes as a string": {"scopes": "users:read"},
    "expires_in_days 0": {"expires_in_days": 0},
    "expires_in_days 366": {"expires_in_days": 366},
    "expires_in_days negative": {"expires_in_days": -1},
    "expires_in_days as a string": {"expires_in_days": "30"},
    "expires_in_days fractional": {"expires_in_days": 1.5},
    "unknown field": {"owner": 1},
}


@pytest.mark.parametrize("fields", INVALID_KEYS.values(), ids=INVALID_KEYS.keys())
def test_invalid_key_requests_are_422_and_create_nothing(
    client: TestClient, make_account: Callable[..., Account], fields: dict
) -> None:
    account = make_account()
    body = {"name": "bot", **fields}
    body = {name: value for name, value in body.items() if value is not None}

    assert_error(client.post("/users/me/api-keys", json=body, headers=account.headers), 422)
    assert client.get("/users/me/api-keys", headers=account.headers).json() == {"items": []}


def test_the_21st_live_key_is_409_and_expired_or_deleted_keys_do_not_count(
    client: TestClient, settings: Settings, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    limit = settings.api_key_max_per_user
    assert limit == 20
    keys = [create_key(client, account, name=f"key {index}") for index in range(limit)]

    refused = client.post("/users/me/api-keys", json={"name": "one too many"}, headers=account.headers)

    assert assert_error(refused, 409)["error"] == "too_many_api_keys"
    expire_key(client, keys[0]["id"])
    create_key(client, account, name="replaces the expired one")
    assert_error(client.post("/users/me/api-keys", json={"name": "again"}, headers=account.headers), 409)
    assert client.delete(f"/users/me/api-keys/{keys[1]['id']}", headers=account.headers).status_code == 204
    create_key(client, account, name="replaces the deleted one")
    assert len(client.get("/users/me/api-keys", headers=account.headers).json()["items"]) == limit + 1


def test_concurrent_creations_never_exceed_the_limit(
    client: TestClient, settings: Settings, make_account: Callable[..., Account]
) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("row locks are a PostgreSQL matter (on SQLite create_api_key counts under no lock)")
    account = make_account()
    racers = settings.api_key_max_per_user + 10
    start_together = threading.Barrier(racers)

    def race(index: int) -> int:
        start_together.wait()
        return client.post("/users/me/api-keys", json={"name": f"racer {index}"}, headers=account.headers).status_code

    with ThreadPoolExecutor(racers) as pool:
        statuses = list(pool.map(race, range(racers)))

    assert sorted(statuses) == [201] * settings.api_key_max_per_user + [409] * 10, statuses


# Listing and deletion


def test_the_list_is_newest_first_without_secrets_and_only_the_callers(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    account, other = make_account(), make_account()
    names = ["first", "second", "third"]
    for name in names:
        create_key(client, account, name=name)
    create_key(client, other, name="someone else's")

    response = client.get("/users/me/api-keys", headers=account.headers)

    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["name"] for item in items] == names[::-1]
    assert all(set(item) == KEY_FIELDS for item in items), items
    assert "client_secret" not in response.text and "secret_hash" not in response.text


def test_deleting_a_key_removes_it_and_ends_its_tokens(
    client: TestClient, issuer: AccessTokenIssuer, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    key = create_key(client, account)
    headers = key_token(issuer, account, key)
    assert client.get("/users/me", headers=headers).status_code == 200

    assert client.delete(f"/users/me/api-keys/{key['id']}", headers=account.headers).status_code == 204

    assert stored_key(client, key["client_id"]) is None
    assert client.get("/users/me/api-keys", headers=account.headers).json() == {"items": []}
    assert_unauthorized(client.get("/users/me", headers=headers))
    assert_error(client.delete(f"/users/me/api-keys/{key['id']}", headers=account.headers), 404)


def test_an_expired_keys_tokens_are_refused(
    client: TestClient, issuer: AccessTokenIssuer, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    key = create_key(client, account)
    headers = key_token(issuer, account, key)
    expire_key(client, key["id"])

    assert_unauthorized(client.get("/users/me", headers=headers))


def test_another_users_key_and_an_unknown_key_are_404_and_stay(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    owner, other = make_account(), make_account()
    key = create_key(client, owner)

    for key_id in (key["id"], 2**31 - 1):
        body = assert_error(client.delete(f"/users/me/api-keys/{key_id}", headers=other.headers), 404)
        assert body["error"] == "not_found"
    assert stored_key(client, key["client_id"]) is not None
    assert_error(client.delete("/users/me/api-keys/0", headers=owner.headers), 422)


def test_key_routes_need_a_token(client: TestClient) -> None:
    for method, path in [
        ("POST", "/users/me/api-keys"),
        ("GET", "/users/me/api-keys"),
        ("DELETE", "/users/me/api-keys/1"),
        ("GET", "/users/1/api-keys"),
        ("DELETE", "/users/1/api-keys/1"),
    ]:
        assert_unauthorized(client.request(method, path, json={"name": "x"} if method == "POST" else None))


# Admin


def test_an_admin_lists_and_deletes_any_users_keys(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    owner = make_account()
    first, second = create_key(client, owner, name="first"), create_key(client, owner, name="second")

    listed = client.get(f"/users/{owner.id}/api-keys", headers=admin.headers)

    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["items"]] == [second["id"], first["id"]]
    assert "client_secret" not in listed.text
    assert client.delete(f"/users/{owner.id}/api-keys/{first['id']}", headers=admin.headers).status_code == 204
    assert [item["id"] for item in client.get("/users/me/api-keys", headers=owner.headers).json()["items"]] == [
        second["id"]
    ]
    assert_error(client.delete(f"/users/{owner.id}/api-keys/{first['id']}", headers=admin.headers), 404)


def test_an_admin_deleting_a_key_through_the_wrong_user_gets_404(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    owner, other = make_account(), make_account()
    key = create_key(client, owner)

    assert_error(client.delete(f"/users/{other.id}/api-keys/{key['id']}", headers=admin.headers), 404)
    assert stored_key(client, key["client_id"]) is not None


def test_an_admin_asking_about_an_unknown_user_gets_404(client: TestClient, admin: Account) -> None:
    assert_error(client.get(f"/users/{2**31 - 1}/api-keys", headers=admin.headers), 404)


def test_a_non_admin_cannot_list_or_delete_another_users_keys(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    owner, other = make_account(), make_account()
    key = create_key(client, owner)

    assert_error(client.get(f"/users/{owner.id}/api-keys", headers=other.headers), 403)
    assert_error(client.delete(f"/users/{owner.id}/api-keys/{key['id']}", headers=other.headers), 403)
    assert stored_key(client, key["client_id"]) is not None


# What a key's token may do


@pytest.fixture
def keyed(
    client: TestClient, issuer: AccessTokenIssuer, make_account: Callable[..., Account]
) -> Callable[..., tuple[Account, dict[str, str]]]:
    """An account and the headers of a token from one of its keys with `scopes`."""

    def make(*scopes: str) -> tuple[Account, dict[str, str]]:
        account = make_account()
        return account, key_token(issuer, account, create_key(client, account, scopes=list(scopes)))

    return make


def test_a_key_token_can_never_manage_keys(
    client: TestClient, keyed: Callable[..., tuple[Account, dict[str, str]]], admin: Account
) -> None:
    account, headers = keyed("users:read", "users:write")
    key_id = client.get("/users/me/api-keys", headers=account.headers).json()["items"][0]["id"]

    for method, path in [
        ("POST", "/users/me/api-keys"),
        ("GET", "/users/me/api-keys"),
        ("DELETE", f"/users/me/api-keys/{key_id}"),
        ("GET", f"/users/{account.id}/api-keys"),
        ("DELETE", f"/users/{account.id}/api-keys/{key_id}"),
    ]:
        assert_insufficient_scope(
            client.request(method, path, json={"name": "x"} if method == "POST" else None, headers=headers)
        )
    assert len(client.get("/users/me/api-keys", headers=account.headers).json()["items"]) == 1


def test_a_read_key_reads_with_its_owners_rights(
    client: TestClient, keyed: Callable[..., tuple[Account, dict[str, str]]], make_account: Callable[..., Account]
) -> None:
    account, headers = keyed("users:read")
    stranger = make_account()

    me = client.get("/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["id"] == account.id
    assert client.get(f"/users/{account.id}", headers=headers).status_code == 200
    assert_error(client.get(f"/users/{stranger.id}", headers=headers), 403)
    assert_error(client.get("/users", headers=headers), 403)


def test_an_admins_read_key_lists_users(
    client: TestClient, issuer: AccessTokenIssuer, make_admin: Callable[[], Account]
) -> None:
    admin = make_admin()
    headers = key_token(issuer, admin, create_key(client, admin, scopes=["users:read"]))

    assert client.get("/users", headers=headers).status_code == 200


def test_a_read_key_cannot_patch_or_delete(
    client: TestClient, keyed: Callable[..., tuple[Account, dict[str, str]]]
) -> None:
    account, headers = keyed("users:read")

    assert_insufficient_scope(client.patch("/users/me", json={"full_name": "x"}, headers=headers))
    assert_insufficient_scope(client.patch(f"/users/{account.id}", json={"full_name": "x"}, headers=headers))
    assert_insufficient_scope(client.delete("/users/me", headers=headers))
    assert_insufficient_scope(client.delete(f"/users/{account.id}", headers=headers))
    assert client.get("/users/me", headers=account.headers).json()["full_name"] is None


def test_a_write_only_key_cannot_read(client: TestClient, keyed: Callable[..., tuple[Account, dict[str, str]]]) -> None:
    account, headers = keyed("users:write")

    assert_insufficient_scope(client.get("/users/me", headers=headers))
    assert_insufficient_scope(client.get(f"/users/{account.id}", headers=headers))
    assert_insufficient_scope(client.get("/users", headers=headers))


def test_a_write_key_patches_and_deletes(
    client: TestClient, keyed: Callable[..., tuple[Account, dict[str, str]]]
) -> None:
    account, headers = keyed("users:read", "users:write")

    patched = client.patch("/users/me", json={"full_name": "Robot"}, headers=headers)
    assert patched.status_code == 200 and patched.json()["full_name"] == "Robot"
    assert client.patch(f"/users/{account.id}", json={"full_name": "Bot"}, headers=headers).status_code == 200
    assert client.delete("/users/me", headers=headers).status_code == 204
    assert_unauthorized(client.get("/users/me", headers=account.headers))


@pytest.mark.parametrize(
    "change",
    [
        {"password": "a new password 1", "current_password": "whatever"},
        {"email": "robot@example.com"},
        {"email": None},
        {"password": None},
    ],
    ids=["password", "email", "email cleared", "password null"],
)
@pytest.mark.parametrize("path", ["/users/me", "/users/{id}"])
def test_a_write_key_can_never_change_a_password_or_an_email(
    client: TestClient, keyed: Callable[..., tuple[Account, dict[str, str]]], change: dict, path: str
) -> None:
    account, headers = keyed("users:read", "users:write")
    if "current_password" in change:
        change = {**change, "current_password": account.password}

    assert_insufficient_scope(client.patch(path.format(id=account.id), json=change, headers=headers))
    login = client.get("/users/me", headers=account.headers).json()
    assert login["email"] is None


def test_a_key_token_of_a_deactivated_owner_is_refused(
    client: TestClient, admin: Account, keyed: Callable[..., tuple[Account, dict[str, str]]]
) -> None:
    account, headers = keyed("users:read")
    assert client.get("/users/me", headers=headers).status_code == 200

    assert client.patch(f"/users/{account.id}", json={"is_active": False}, headers=admin.headers).status_code == 200

    assert_unauthorized(client.get("/users/me", headers=headers))


def test_login_tokens_are_not_limited_by_scopes(client: TestClient, make_account: Callable[..., Account]) -> None:
    account = make_account()

    assert client.get("/users/me", headers=account.headers).status_code == 200
    assert client.patch("/users/me", json={"full_name": "Person"}, headers=account.headers).status_code == 200
    assert client.get("/users/me/api-keys", headers=account.headers).status_code == 200
