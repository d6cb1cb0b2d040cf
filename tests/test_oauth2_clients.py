"""Real OAuth2 client libraries, unchanged, against the two real services: requests-oauthlib's client-credentials
client (`BackendApplicationClient`) with an API key, and its password-grant client (`LegacyApplicationClient`)."""

from collections.abc import Iterator

import pytest
from oauthlib.oauth2 import BackendApplicationClient, LegacyApplicationClient
from requests_oauthlib import OAuth2Session

from tests.conftest import Api


@pytest.fixture(autouse=True)
def plain_http_for_the_local_services(stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # noqa: ANN001
    # oauthlib refuses http:// token URLs unless told, as documented; the suite's services listen on plain HTTP.
    if stack.auth_url.startswith("http://"):
        monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    yield


def test_an_api_key_works_with_backend_application_client_and_stops_when_its_owner_is_deactivated(api: Api) -> None:
    account = api.sign_up()
    login_token = api.tokens(account)["access_token"]
    created = api.users("POST", "/users/me/api-keys", login_token, json={"name": "e2e robot", "scopes": ["users:read"]})
    assert created.status_code == 201, created.text
    key = created.json()

    robot = OAuth2Session(client=BackendApplicationClient(client_id=key["client_id"]))
    token = robot.fetch_token(
        token_url=f"{api.stack.auth_url}/token", client_id=key["client_id"], client_secret=key["client_secret"]
    )

    assert token["token_type"] == "bearer" and "refresh_token" not in token
    assert token["scope"] == ["users:read"]
    me = robot.get(f"{api.stack.users_url}/users/me")
    assert me.status_code == 200, me.text
    assert me.json()["id"] == account.id
    refused = robot.patch(f"{api.stack.users_url}/users/me", json={"full_name": "robot"})
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert refused.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'

    deactivated = api.users("PATCH", f"/users/{account.id}", api.admin_token(), json={"is_active": False})
    assert deactivated.status_code == 200, deactivated.text

    after = robot.get(f"{api.stack.users_url}/users/me")
    assert after.status_code == 401, after.text
    again = api.http.post(
        f"{api.stack.auth_url}/token",
        data={"grant_type": "client_credentials"},
        auth=(key["client_id"], key["client_secret"]),
    )
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"
    assert again.headers["www-authenticate"].startswith("Basic")


def test_a_deleted_key_stops_its_token_at_once(api: Api) -> None:
    account = api.sign_up()
    login_token = api.tokens(account)["access_token"]
    key = api.users("POST", "/users/me/api-keys", login_token, json={"name": "short-lived"}).json()
    robot = OAuth2Session(client=BackendApplicationClient(client_id=key["client_id"]))
    robot.fetch_token(
        token_url=f"{api.stack.auth_url}/token", client_id=key["client_id"], client_secret=key["client_secret"]
    )
    assert robot.get(f"{api.stack.users_url}/users/me").status_code == 200

    assert api.users("DELETE", f"/users/me/api-keys/{key['id']}", login_token).status_code == 204

    assert robot.get(f"{api.stack.users_url}/users/me").status_code == 401


def test_the_password_grant_works_with_legacy_application_client(api: Api) -> None:
    account = api.sign_up()

    person = OAuth2Session(client=LegacyApplicationClient(client_id=None))
    token = person.fetch_token(
        token_url=f"{api.stack.auth_url}/token", username=account.username, password=account.password
    )

    assert token["token_type"] == "bearer" and token["refresh_token"]
    me = person.get(f"{api.stack.users_url}/users/me")
    assert me.status_code == 200 and me.json()["id"] == account.id
    keys = person.get(f"{api.stack.users_url}/users/me/api-keys")
    assert keys.status_code == 200 and keys.json() == {"items": []}
