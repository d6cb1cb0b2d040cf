"""The caller's own account, `/users/me`: read, update (password change included), delete, and what each revokes."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from users_service.tests.support import (
    Account,
    add_refresh_token,
    assert_error,
    assert_public_user,
    assert_unauthorized,
    bearer,
    stored_refresh_token,
    stored_user,
    unique_email,
)

NEW_PASSWORD = "a brand new password"
# 89 bytes: a hash that kept only the first 72 would accept a prefix of it.
LONG_PASSWORD = "é" * 40 + "-the-tail"


def change_password(client: TestClient, account: Account, **fields: object) -> Response:
    return client.patch("/users/me", json={"password": NEW_PASSWORD, **fields}, headers=account.headers)


def test_get_me_returns_the_caller(client: TestClient, make_account: Callable[..., Account]) -> None:
    email = unique_email()
    account = make_account(email=email, full_name="Grace H.")

    response = client.get("/users/me", headers=account.headers)

    assert response.status_code == 200, response.text
    body = assert_public_user(response.json())
    assert (body["id"], body["username"], body["email"], body["full_name"]) == (
        account.id,
        account.username,
        email,
        "Grace H.",
    )


def test_patch_me_sets_then_null_clears_email_and_full_name(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    email = unique_email()

    updated = client.patch("/users/me", json={"email": email, "full_name": "New Name"}, headers=account.headers)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["email"], updated.json()["full_name"]) == (email, "New Name")
    assert_public_user(updated.json())

    cleared = client.patch("/users/me", json={"email": None, "full_name": None}, headers=account.headers)
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["email"], cleared.json()["full_name"]) == (None, None)
    assert client.get("/users/me", headers=account.headers).json()["email"] is None


def test_patch_me_leaves_fields_not_sent_alone(client: TestClient, make_account: Callable[..., Account]) -> None:
    email = unique_email()
    account = make_account(email=email, full_name="Keep Me")

    response = client.patch("/users/me", json={"full_name": "Changed"}, headers=account.headers)

    assert response.status_code == 200, response.text
    assert response.json()["email"] == email


def test_patch_me_to_an_email_taken_in_another_case_is_409(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    taken = unique_email("taken")
    make_account(email=taken)
    account = make_account()

    assert_error(client.patch("/users/me", json={"email": taken.upper()}, headers=account.headers), 409)


@pytest.mark.parametrize(
    "body",
    [{"is_admin": True}, {"is_active": False}, {"username": "renamed"}, {"full_name": "f" * 201}],
    ids=["is_admin", "is_active", "username", "full_name too long"],
)
def test_patch_me_refuses_fields_it_does_not_take(
    client: TestClient, make_account: Callable[..., Account], body: dict
) -> None:
    account = make_account()

    assert_error(client.patch("/users/me", json=body, headers=account.headers), 422)
    assert stored_user(client, account.id).is_admin is False


@pytest.mark.parametrize(
    "current_password",
    [None, "not the password", LONG_PASSWORD.encode()[:72].decode(), LONG_PASSWORD[:-1]],
    ids=["missing", "wrong", "the first 72 bytes of the right one", "all but its last character"],
)
def test_password_change_without_the_right_current_password_is_400_and_changes_nothing(
    client: TestClient, make_account: Callable[..., Account], current_password: str | None
) -> None:
    account = make_account(password=LONG_PASSWORD)
    fields = {} if current_password is None else {"current_password": current_password}

    response = change_password(client, account, **fields)

    assert_error(response, 400)
    assert NEW_PASSWORD not in response.text
    assert client.get("/users/me", headers=account.headers).status_code == 200
    assert client.app.state.hasher.verify(
        password=account.password, password_hash=stored_user(client, account.id).password_hash
    )


def test_password_change_retires_older_tokens_and_newer_ones_work(
    client: TestClient, make_account: Callable[..., Account], current_token: Callable[[int], str]
) -> None:
    account = make_account()

    response = change_password(client, account, current_password=account.password)

    assert response.status_code == 200, response.text
    assert_public_user(response.json())
    assert_unauthorized(client.get("/users/me", headers=account.headers))
    assert client.get("/users/me", headers=bearer(current_token(account.id))).status_code == 200
    stored_hash = stored_user(client, account.id).password_hash
    assert client.app.state.hasher.verify(password=NEW_PASSWORD, password_hash=stored_hash)
    assert not client.app.state.hasher.verify(password=account.password, password_hash=stored_hash)


def test_password_change_too_short_is_422_without_echoing_it(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    account = make_account()

    response = client.patch(
        "/users/me", json={"password": "short-7", "current_password": account.password}, headers=account.headers
    )

    assert_error(response, 422)
    assert "short-7" not in response.text and account.password not in response.text


def test_delete_me_is_204_then_the_token_is_401_and_the_user_is_gone(
    client: TestClient, make_account: Callable[..., Account], admin: Account
) -> None:
    account = make_account()

    response = client.delete("/users/me", headers=account.headers)

    assert response.status_code == 204 and response.content == b""
    assert_unauthorized(client.get("/users/me", headers=account.headers))
    assert_error(client.get(f"/users/{account.id}", headers=admin.headers), 404)
    assert stored_user(client, account.id) is None


def test_a_deleted_username_can_sign_up_again(client: TestClient, make_account: Callable[..., Account]) -> None:
    account = make_account()
    assert client.delete("/users/me", headers=account.headers).status_code == 204

    response = client.post("/users", json={"username": account.username, "password": "another password"})

    assert response.status_code == 201, response.text
    assert response.json()["id"] != account.id


def end_by_password_change(client: TestClient, account: Account, admin: Account) -> None:
    assert change_password(client, account, current_password=account.password).status_code == 200


def end_by_deactivation(client: TestClient, account: Account, admin: Account) -> None:
    assert client.patch(f"/users/{account.id}", json={"is_active": False}, headers=admin.headers).status_code == 200


def end_by_own_deletion(client: TestClient, account: Account, admin: Account) -> None:
    assert client.delete("/users/me", headers=account.headers).status_code == 204


def end_by_admin_deletion(client: TestClient, account: Account, admin: Account) -> None:
    assert client.delete(f"/users/{account.id}", headers=admin.headers).status_code == 204


SESSION_ENDING_EVENTS = {
    "password change": end_by_password_change,
    "deactivation by an admin": end_by_deactivation,
    "deletion by the user": end_by_own_deletion,
    "deletion by an admin": end_by_admin_deletion,
}


@pytest.mark.parametrize("end_sessions", SESSION_ENDING_EVENTS.values(), ids=SESSION_ENDING_EVENTS.keys())
def test_events_that_end_sessions_make_the_token_401_and_revoke_refresh_tokens(
    client: TestClient, make_account: Callable[..., Account], admin: Account, end_sessions: Callable
) -> None:
    account = make_account()
    refresh_token_id = add_refresh_token(client, account.id, expires_at=datetime.now(UTC) + timedelta(days=1))

    end_sessions(client, account, admin)

    assert_unauthorized(client.get("/users/me", headers=account.headers))
    refresh_token = stored_refresh_token(client, refresh_token_id)
    assert refresh_token is None or refresh_token.revoked_at is not None
