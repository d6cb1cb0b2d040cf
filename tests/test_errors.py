"""End to end: the error rules of the API reference (docs/api.md) on both services, over real HTTP."""

import json
import secrets

import pytest
import requests

from tests.conftest import Api

LIMIT = 65_536


def chunked(payload: bytes, size: int = 8192):
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


@pytest.fixture
def urls(api: Api) -> dict[str, str]:
    return {"users": f"{api.stack.users_url}/users", "token": f"{api.stack.auth_url}/token"}


def assert_json_error(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "detail" in response.json()


@pytest.mark.parametrize("target", ["users", "token"])
def test_body_over_64_kib_is_413_with_or_without_content_length(urls: dict[str, str], target: str) -> None:
    oversized = b"a" * (LIMIT + 1)
    assert_json_error(requests.post(urls[target], data=oversized), 413)
    assert_json_error(requests.post(urls[target], data=chunked(oversized)), 413)


def sign_up_body_of_exactly(size: int) -> bytes:
    """A valid sign-up of a new user, padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps({"username": f"kib_{secrets.token_hex(5)}", "password": "password 64 KiB"}).encode()
    padded = body[:1] + b" " * (size - len(body)) + body[1:]
    assert len(padded) == size
    return padded


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_of_exactly_64_kib_is_accepted(urls: dict[str, str], framing: str) -> None:
    body = sign_up_body_of_exactly(LIMIT)
    data = body if framing == "content-length" else chunked(body)
    response = requests.post(urls["users"], data=data, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"username": "\xff\xfe", "password": "password123"}', b"[" * 10_000 + b"]" * 10_000],
    ids=["malformed", "invalid-utf8", "deeply-nested"],
)
def test_bad_json_is_422(urls: dict[str, str], body: bytes) -> None:
    assert_json_error(requests.post(urls["users"], data=body, headers={"content-type": "application/json"}), 422)


def test_json_endpoint_refuses_other_content_type_with_422(urls: dict[str, str]) -> None:
    # 422: of the 415 or 422 docs/api.md#errors allows for a JSON endpoint sent another content type, the one used.
    response = requests.post(
        urls["users"],
        data=b'{"username": "someone", "password": "password123"}',
        headers={"content-type": "text/plain"},
    )
    assert_json_error(response, 422)


def test_bad_form_is_422(urls: dict[str, str]) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert_json_error(requests.post(urls["token"], data=b"username=%FF%FE&password=x", headers=form), 422)
    assert_json_error(requests.post(urls["token"], data=b"username=\xff&password=x", headers=form), 422)
    assert_json_error(requests.post(urls["token"], data={"password": "x"}), 422)


def test_unknown_grant_type_is_400(urls: dict[str, str]) -> None:
    response = requests.post(urls["token"], data={"grant_type": "authorization_code"})
    assert_json_error(response, 400)
    assert response.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"])
def test_bad_bearer_is_401_with_challenge(api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(f"{api.stack.users_url}/users/me", headers=headers)
    assert_json_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_user_and_wrong_password_answer_alike(api: Api) -> None:
    account = api.sign_up()
    wrong_password = api.login(account.username, "not the password")
    unknown_user = api.login(account.username + "x", "not the password")
    for response in (wrong_password, unknown_user):
        assert_json_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert wrong_password.json() == unknown_user.json()


@pytest.mark.parametrize("service", ["auth", "users"])
def test_errors_are_never_html(api: Api, service: str) -> None:
    base = api.stack.auth_url if service == "auth" else api.stack.users_url
    for method, path in (("GET", "/no-such-path"), ("DELETE", "/healthz")):
        response = requests.request(method, base + path)
        assert response.status_code in (404, 405)
        assert response.headers["content-type"].startswith("application/json") and "detail" in response.json()


@pytest.mark.parametrize("service", ["auth", "users"])
def test_health_and_readiness(api: Api, service: str) -> None:
    base = api.stack.auth_url if service == "auth" else api.stack.users_url
    assert requests.get(f"{base}/healthz").status_code == 200
    assert requests.get(f"{base}/readyz").status_code == 200
