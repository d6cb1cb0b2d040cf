"""End to end: sessions over both real services. A session ended any way fails its access token at the very next
request, to the users service and to the auth service's /sessions alike."""

from collections.abc import Callable

import jwt
import pytest
import requests

from tests.conftest import Account, Api


def sid_of(pair: dict) -> str:
    return jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sessions(api: Api, method: str, path: str, token: str) -> requests.Response:
    return api.http.request(method, f"{api.stack.auth_url}{path}", headers=bearer(token), timeout=30)


def assert_ended_everywhere(api: Api, pair: dict) -> None:
    """The access token is refused by both services, and the refresh token by the token endpoint."""
    me = api.users("GET", "/users/me", pair["access_token"])
    listed = sessions(api, "GET", "/sessions", pair["access_token"])
    assert (me.status_code, listed.status_code) == (401, 401), (me.text, listed.text)
    assert me.headers["WWW-Authenticate"].startswith("Bearer")
    assert listed.headers["WWW-Authenticate"].startswith("Bearer")
    refreshed = api.refresh(pair["refresh_token"])
    assert refreshed.status_code == 401 and refreshed.json()["error"] == "invalid_grant"


def test_two_logins_list_each_other_and_one_ends_the_other(api: Api) -> None:
    account = api.sign_up()
    laptop = api.login(account.username, account.password, **{"User-Agent": "laptop browser"}).json()
    phone = api.login(account.username, account.password, **{"User-Agent": "phone app"}).json()
    assert api.users("GET", "/users/me", phone["access_token"]).status_code == 200

    listed = sessions(api, "GET", "/sessions", laptop["access_token"])

    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [(item["id"], item["user_agent"], item["current"]) for item in items] == [
        (sid_of(phone), "phone app", False),
        (sid_of(laptop), "laptop browser", True),
    ]
    assert all(item["ip_address"] == api.stack.client_address for item in items)

    ended = sessions(api, "DELETE", f"/sessions/{sid_of(phone)}", laptop["access_token"])

    assert ended.status_code == 204, ended.text
    assert_ended_everywhere(api, phone)
    assert api.users("GET", "/users/me", laptop["access_token"]).status_code == 200
    assert [item["id"] for item in sessions(api, "GET", "/sessions", laptop["access_token"]).json()["items"]] == [
        sid_of(laptop)
    ]


def by_delete_session(api: Api, account: Account, pair: dict, other: dict) -> None:
    assert sessions(api, "DELETE", f"/sessions/{sid_of(pair)}", other["access_token"]).status_code == 204


def by_delete_other_sessions(api: Api, account: Account, pair: dict, other: dict) -> None:
    assert sessions(api, "DELETE", "/sessions", other["access_token"]).status_code == 204


def by_revoke(api: Api, account: Account, pair: dict, other: dict) -> None:
    assert api.http.post(f"{api.stack.auth_url}/revoke", data={"token": pair["refresh_token"]}).status_code == 200


def by_reuse(api: Api, account: Account, pair: dict, other: dict) -> None:
    rotated = api.refresh(pair["refresh_token"])
    assert rotated.status_code == 200
    pair["access_token"] = rotated.json()["access_token"]
    assert api.refresh(pair["refresh_token"]).status_code == 401
    pair["refresh_token"] = rotated.json()["refresh_token"]


def by_password_change(api: Api, account: Account, pair: dict, other: dict) -> None:
    changed = api.users(
        "PATCH",
        "/users/me",
        other["access_token"],
        json={"password": "a brand new password", "current_password": account.password},
    )
    assert changed.status_code == 200, changed.text


def by_deactivation(api: Api, account: Account, pair: dict, other: dict) -> None:
    response = api.users("PATCH", f"/users/{account.id}", api.admin_token(), json={"is_active": False})
    assert response.status_code == 200, response.text


def by_deletion(api: Api, account: Account, pair: dict, other: dict) -> None:
    assert api.users("DELETE", "/users/me", other["access_token"]).status_code == 204


ENDINGS: dict[str, Callable[[Api, Account, dict, dict], None]] = {
    "DELETE /sessions/{id}": by_delete_session,
    "DELETE /sessions": by_delete_other_sessions,
    "revoke": by_revoke,
    "refresh-token reuse": by_reuse,
    "password change": by_password_change,
    "deactivation": by_deactivation,
    "deletion": by_deletion,
}


@pytest.mark.parametrize("end", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_session_ended_any_way_is_401_at_once_on_both_services(
    api: Api, end: Callable[[Api, Account, dict, dict], None]
) -> None:
    account = api.sign_up()
    pair, other = api.tokens(account), api.tokens(account)
    assert api.users("GET", "/users/me", pair["access_token"]).status_code == 200
    assert sessions(api, "GET", "/sessions", pair["access_token"]).status_code == 200

    end(api, account, pair, other)

    assert_ended_everywhere(api, pair)
