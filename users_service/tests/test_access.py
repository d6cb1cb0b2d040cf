"""Who may do what: 401 without a usable token, 403 on another user's account, admin rights read on every request."""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import delete, text

from shared.models import User
from shared.settings import Settings
from shared.tokens import MAX_DATABASE_ID
from users_service.tests.support import (
    Account,
    assert_error,
    assert_public_user,
    assert_unauthorized,
    bearer,
    stored_user,
    unique_email,
)

# Every route that needs a bearer token, with a body where it takes one; "{id}" is another user's id.
AUTHENTICATED_ROUTES = [
    pytest.param(method, path, body, id=f"{method} {path}")
    for method, path, body in [
        ("GET", "/users/me", None),
        ("PATCH", "/users/me", {"full_name": "x"}),
        ("DELETE", "/users/me", None),
        ("GET", "/users", None),
        ("GET", "/users/{id}", None),
        ("PATCH", "/users/{id}", {"full_name": "x"}),
        ("DELETE", "/users/{id}", None),
    ]
]
ROUTES_ON_ANOTHER_USER = [route for route in AUTHENTICATED_ROUTES if "{id}" in route.values[1]]

BAD_AUTHORIZATION_HEADERS = {
    "none": None,
    "Basic credentials": "Basic dXNlcjpwYXNzd29yZA==",
    "empty bearer": "Bearer ",
    "bearer without a space": "Bearer",
    "garbage bearer": "Bearer garbage",
    "three dots of garbage": "Bearer a.b.c",
    "token without a scheme": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
}


def call(client: TestClient, method: str, path: str, body: dict | None, headers: dict | None, user_id: int) -> Response:
    """One of the routes above, on `user_id`."""
    return client.request(method, path.format(id=user_id), json=body, headers=headers)


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION_HEADERS.values(), ids=BAD_AUTHORIZATION_HEADERS.keys())
@pytest.mark.parametrize(("method", "path", "body"), AUTHENTICATED_ROUTES)
def test_routes_without_a_usable_bearer_token_are_401_with_a_bearer_challenge(
    client: TestClient, method: str, path: str, body: dict | None, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    # An id nobody has: the 401 must come before any lookup.
    assert_unauthorized(call(client, method, path, body, headers, MAX_DATABASE_ID))


def test_the_bearer_scheme_is_case_insensitive(client: TestClient, make_account: Callable[..., Account]) -> None:
    account = make_account()

    assert client.get("/users/me", headers={"Authorization": f"bearer {account.token}"}).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ROUTES_ON_ANOTHER_USER)
def test_a_user_acting_on_another_user_is_403_and_changes_nothing(
    client: TestClient, make_account: Callable[..., Account], method: str, path: str, body: dict | None
) -> None:
    user, other = make_account(), make_account(full_name="Untouched")

    assert_error(call(client, method, path, body, user.headers, other.id), 403)
    untouched = stored_user(client, other.id)
    assert untouched is not None and untouched.full_name == "Untouched"


@pytest.mark.parametrize(("method", "path", "body"), ROUTES_ON_ANOTHER_USER)
def test_a_user_asking_about_an_unknown_id_is_403_like_any_other(
    client: TestClient, make_account: Callable[..., Account], method: str, path: str, body: dict | None
) -> None:
    # docs/api.md's choice: no enumeration of ids through 404 for non-admins.
    assert_error(call(client, method, path, body, make_account().headers, MAX_DATABASE_ID), 403)


def test_a_user_reads_and_patches_itself_by_id(client: TestClient, make_account: Callable[..., Account]) -> None:
    account = make_account()

    assert client.get(f"/users/{account.id}", headers=account.headers).json()["id"] == account.id
    patched = client.patch(f"/users/{account.id}", json={"full_name": "Self"}, headers=account.headers)
    assert patched.status_code == 200 and patched.json()["full_name"] == "Self", patched.text


def test_a_user_changes_its_password_through_its_id(
    client: TestClient, make_account: Callable[..., Account], current_token: Callable[[int], str]
) -> None:
    account = make_account()

    response = client.patch(
        f"/users/{account.id}",
        json={"password": "changed by id", "current_password": account.password},
        headers=account.headers,
    )

    assert response.status_code == 200, response.text
    assert_unauthorized(client.get("/users/me", headers=account.headers))
    assert client.get("/users/me", headers=bearer(current_token(account.id))).status_code == 200


def test_a_user_deletes_itself_by_id(client: TestClient, make_account: Callable[..., Account]) -> None:
    account = make_account()

    assert client.delete(f"/users/{account.id}", headers=account.headers).status_code == 204
    assert stored_user(client, account.id) is None


@pytest.mark.parametrize("flags", [{"is_admin": True}, {"is_active": False}, {"is_active": True}], ids=str)
def test_a_non_admin_setting_admin_flags_on_itself_is_403(
    client: TestClient, make_account: Callable[..., Account], flags: dict
) -> None:
    account = make_account()

    assert_error(client.patch(f"/users/{account.id}", json=flags, headers=account.headers), 403)
    stored = stored_user(client, account.id)
    assert (stored.is_admin, stored.is_active) == (False, True)


def test_admin_reads_anyone(client: TestClient, admin: Account, make_account: Callable[..., Account]) -> None:
    account = make_account()

    response = client.get(f"/users/{account.id}", headers=admin.headers)

    assert response.status_code == 200, response.text
    assert assert_public_user(response.json())["username"] == account.username


def test_admin_patches_anyone(client: TestClient, admin: Account, make_account: Callable[..., Account]) -> None:
    account = make_account()
    email = unique_email()

    response = client.patch(
        f"/users/{account.id}", json={"full_name": "By Admin", "email": email}, headers=admin.headers
    )

    assert response.status_code == 200, response.text
    assert (response.json()["full_name"], response.json()["email"]) == ("By Admin", email)


def test_admin_deletes_anyone(client: TestClient, admin: Account, make_account: Callable[..., Account]) -> None:
    account = make_account()

    response = client.delete(f"/users/{account.id}", headers=admin.headers)

    assert response.status_code == 204 and response.content == b""
    assert_error(client.get(f"/users/{account.id}", headers=admin.headers), 404)


@pytest.mark.parametrize("flag", ["is_active", "is_admin"])
def test_admin_setting_a_flag_to_null_is_422(
    client: TestClient, admin: Account, make_account: Callable[..., Account], flag: str
) -> None:
    account = make_account()

    assert_error(client.patch(f"/users/{account.id}", json={flag: None}, headers=admin.headers), 422)
    stored = stored_user(client, account.id)
    assert (stored.is_active, stored.is_admin) == (True, False)


def test_admin_setting_an_email_taken_by_another_user_is_409(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    taken = unique_email("taken")
    make_account(email=taken)
    account = make_account()

    assert_error(client.patch(f"/users/{account.id}", json={"email": taken}, headers=admin.headers), 409)


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("PATCH", {"full_name": "x"}), ("DELETE", None)], ids=["GET", "PATCH", "DELETE"]
)
def test_an_unknown_id_is_404_for_an_admin(client: TestClient, admin: Account, method: str, body: dict | None) -> None:
    assert_error(client.request(method, f"/users/{MAX_DATABASE_ID}", json=body, headers=admin.headers), 404)


@pytest.mark.parametrize(
    "fields", [{"password": "set by the admin"}, {"password": "set by the admin", "current_password": "whatever1"}]
)
def test_admin_setting_another_users_password_is_403(
    client: TestClient, admin: Account, make_account: Callable[..., Account], fields: dict
) -> None:
    account = make_account()

    assert_error(client.patch(f"/users/{account.id}", json=fields, headers=admin.headers), 403)
    assert client.get("/users/me", headers=account.headers).status_code == 200


def test_admin_deactivating_a_user_makes_its_token_401(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    account = make_account()

    response = client.patch(f"/users/{account.id}", json={"is_active": False}, headers=admin.headers)

    assert response.status_code == 200 and response.json()["is_active"] is False, response.text
    assert_unauthorized(client.get("/users/me", headers=account.headers))


def test_admin_promotes_a_user_who_gains_admin_rights_at_once(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    assert_error(client.get("/users", headers=account.headers), 403)

    assert client.patch(f"/users/{account.id}", json={"is_admin": True}, headers=admin.headers).status_code == 200

    assert client.get("/users", headers=account.headers).status_code == 200


@pytest.mark.parametrize("demoted_by", ["another admin", "itself"])
def test_a_demoted_admin_loses_admin_rights_at_once_with_the_same_token(
    client: TestClient, admin: Account, make_admin: Callable[[], Account], demoted_by: str
) -> None:
    demoted = make_admin()
    assert client.get("/users", headers=demoted.headers).status_code == 200
    actor = admin if demoted_by == "another admin" else demoted

    response = client.patch(f"/users/{demoted.id}", json={"is_admin": False}, headers=actor.headers)

    assert response.status_code == 200 and response.json()["is_admin"] is False, response.text
    assert_error(client.get("/users", headers=demoted.headers), 403)
    assert_error(client.get(f"/users/{admin.id}", headers=demoted.headers), 403)


def test_listing_users_as_a_non_admin_is_403(client: TestClient, make_account: Callable[..., Account]) -> None:
    assert_error(client.get("/users", headers=make_account().headers), 403)


def wait_until_a_query_waits_for_a_lock(client: TestClient, timeout_seconds: float = 5.0) -> None:
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + timeout_seconds
    with client.app.state.engine.connect() as connection:
        while True:
            count = connection.execute(waiting).scalar()
            connection.rollback()  # pg_stat_activity is a snapshot per transaction: take a new one each time
            if count:
                return
            assert time.monotonic() < deadline, "the request never reached the locked row"
            time.sleep(0.02)


def test_admin_patching_a_user_deleted_meanwhile_is_404_not_500(
    client: TestClient, settings: Settings, admin: Account, make_account: Callable[..., Account]
) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("row locks are a PostgreSQL matter")
    account = make_account()
    lenient_client = TestClient(client.app, raise_server_exceptions=False)
    with client.app.state.session_factory() as deleting, ThreadPoolExecutor(1) as pool:
        deleting.execute(delete(User).where(User.id == account.id))  # row locked until the commit below
        patching = pool.submit(
            lenient_client.patch, f"/users/{account.id}", json={"full_name": "late"}, headers=admin.headers
        )
        wait_until_a_query_waits_for_a_lock(client)
        deleting.commit()
        response = patching.result(timeout=10)

    assert_error(response, 404)
