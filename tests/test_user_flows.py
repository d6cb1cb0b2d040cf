"""End to end: sign-up, login, /users/me, updates, password change and deletion, admin listing."""

import secrets

import jwt

from tests.conftest import Api


def test_sign_up_login_and_read_me(api: Api) -> None:
    suffix = secrets.token_hex(4)
    account = api.sign_up(username=f"E2E_Mixed_{suffix}", email=f"Someone.{suffix}@Example.org")
    tokens = api.tokens(account)
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] > 0 and tokens["refresh_token"]
    me = api.users("GET", "/users/me", tokens["access_token"])
    assert me.status_code == 200
    body = me.json()
    assert body["username"] == account.username and body["username"] == body["username"].lower()
    assert set(body) == {"id", "username", "email", "full_name", "is_active", "is_admin", "created_at"}
    assert body["created_at"].endswith("+00:00")
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(account.id) and claims["type"] == "access"
    assert jwt.get_unverified_header(tokens["access_token"])["kid"]


def test_login_is_case_insensitive(api: Api) -> None:
    account = api.sign_up()
    assert api.login(account.username.upper(), account.password).status_code == 200


def test_update_me(api: Api) -> None:
    account = api.sign_up()
    token = api.tokens(account)["access_token"]
    email = f"ada.{secrets.token_hex(4)}@example.org"
    response = api.users("PATCH", "/users/me", token, json={"full_name": "Ada Lovelace", "email": email})
    assert response.status_code == 200
    assert response.json()["full_name"] == "Ada Lovelace" and response.json()["email"] == email
    assert api.users("GET", "/users/me", token).json()["full_name"] == "Ada Lovelace"


def test_password_change_invalidates_old_tokens(api: Api) -> None:
    account = api.sign_up()
    old = api.tokens(account)
    refused = api.users("PATCH", "/users/me", old["access_token"], json={"password": "brand new password"})
    assert refused.status_code == 400
    changed = api.users(
        "PATCH",
        "/users/me",
        old["access_token"],
        json={"password": "brand new password", "current_password": account.password},
    )
    assert changed.status_code == 200
    stale = api.users("GET", "/users/me", old["access_token"])
    assert stale.status_code == 401 and stale.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.refresh(old["refresh_token"]).status_code == 401
    assert api.login(account.username, account.password).status_code == 401
    new_login = api.login(account.username, "brand new password")
    assert new_login.status_code == 200
    assert api.users("GET", "/users/me", new_login.json()["access_token"]).status_code == 200


def test_delete_me_invalidates_token(api: Api) -> None:
    account = api.sign_up()
    tokens = api.tokens(account)
    assert api.users("DELETE", "/users/me", tokens["access_token"]).status_code == 204
    assert api.users("GET", "/users/me", tokens["access_token"]).status_code == 401
    assert api.refresh(tokens["refresh_token"]).status_code == 401
    assert api.login(account.username, account.password).status_code == 401


def test_admin_lists_reads_and_deactivates(api: Api) -> None:
    admin = api.admin_token()
    account = api.sign_up()
    user_token = api.tokens(account)["access_token"]
    page = api.users("GET", "/users", admin, params={"limit": 2, "offset": 0})
    assert page.status_code == 200
    assert set(page.json()) == {"items", "total", "limit", "offset"}
    assert page.json()["limit"] == 2 and len(page.json()["items"]) <= 2 and page.json()["total"] >= 2
    assert api.users("GET", "/users", user_token).status_code == 403
    assert api.users("GET", f"/users/{account.id}", admin).json()["username"] == account.username
    assert api.users("PATCH", f"/users/{account.id}", admin, json={"is_active": False}).json()["is_active"] is False
    assert api.users("GET", "/users/me", user_token).status_code == 401
    assert api.login(account.username, account.password).status_code == 401


def test_users_cannot_touch_each_other(api: Api) -> None:
    alice, bob = api.sign_up(), api.sign_up()
    alice_token = api.tokens(alice)["access_token"]
    assert api.users("GET", f"/users/{bob.id}", alice_token).status_code == 403
    assert api.users("DELETE", f"/users/{bob.id}", alice_token).status_code == 403
    assert api.users("PATCH", f"/users/{alice.id}", alice_token, json={"is_admin": True}).status_code == 403


def test_sign_up_conflicts(api: Api) -> None:
    email = f"dup.{secrets.token_hex(4)}@example.org"
    account = api.sign_up(email=email)
    for duplicate in (
        {"username": account.username.upper(), "password": "password123"},
        {"username": f"other_{secrets.token_hex(4)}", "password": "password123", "email": email.upper()},
    ):
        response = api.http.post(f"{api.stack.users_url}/users", json=duplicate)
        assert response.status_code == 409 and "detail" in response.json()
