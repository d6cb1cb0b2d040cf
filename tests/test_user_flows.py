"""End to end: sign-up, login, /users/me, updates, password change and deletion, admin listing."""

import concurrent.futures
import secrets
import threading

import jwt
import requests

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
    assert set(body) == {
        "id",
        "username",
        "email",
        "full_name",
        "is_active",
        "is_admin",
        "email_verified",
        "created_at",
    }
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
    assert set(page.json()) == {"items", "total", "total_is_exact", "limit", "offset", "next_after"}
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


# A character of four UTF-8 bytes (U+1D11E): the length limit counts characters, not bytes.
FOUR_BYTE_CHARACTER = "\U0001d11e"


def test_password_of_128_four_byte_characters_signs_up_and_logs_in(api: Api) -> None:
    password = FOUR_BYTE_CHARACTER * 128
    assert len(password) == 128 and len(password.encode()) == 512
    account = api.sign_up(password=password)
    assert api.login(account.username, password).status_code == 200
    # All of it counts: one character less, or one changed at the end, is a wrong password.
    assert api.login(account.username, password[:-1]).status_code == 401
    assert api.login(account.username, password[:-1] + "x").status_code == 401


def test_password_of_129_four_byte_characters_is_refused(api: Api) -> None:
    response = api.http.post(
        f"{api.stack.users_url}/users",
        json={"username": f"e2e_{secrets.token_hex(5)}", "password": FOUR_BYTE_CHARACTER * 129},
    )
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def race_sign_ups(users_url: str, username: str, racers: int) -> list[tuple[int, str]]:
    """`racers` sign-ups of one username at the same moment, each on a connection of its own: (status, worker)."""
    start = threading.Barrier(racers)

    def sign_up(index: int) -> tuple[int, str]:
        start.wait()
        response = requests.post(
            f"{users_url}/users", json={"username": username, "password": f"race password {index}"}, timeout=30
        )
        return response.status_code, response.headers.get("X-Worker", "")

    with concurrent.futures.ThreadPoolExecutor(max_workers=racers) as pool:
        return list(pool.map(sign_up, range(racers)))


def test_concurrent_sign_ups_of_one_username_over_http_give_one_201_across_workers(api: Api) -> None:
    """Exactly one 201, the rest 409, in every round; rounds until one had racers on two workers at once."""
    racers, rounds, workers_of_round = 8, 0, set()
    while len(workers_of_round) < 2 and rounds < 10:
        rounds += 1
        username = f"race_{secrets.token_hex(5)}"
        answers = race_sign_ups(api.stack.users_url, username, racers)
        assert sorted(status for status, _ in answers) == [201] + [409] * (racers - 1), answers
        workers_of_round = {worker for _, worker in answers}
        winner = api.login(username, next(f"race password {i}" for i, (s, _) in enumerate(answers) if s == 201))
        assert winner.status_code == 200, winner.text
    assert len(workers_of_round) >= 2, f"in {rounds} rounds every sign-up reached one worker: {workers_of_round}"
