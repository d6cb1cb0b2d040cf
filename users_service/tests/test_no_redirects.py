"""No redirects: a path with a trailing slash is 404 JSON, never a 307 that makes a client re-send its token."""

import pytest

from users_service.tests.support import assert_error

PATHS_WITH_A_TRAILING_SLASH = [
    ("GET", "/users/me/"),
    ("PATCH", "/users/me/"),
    ("GET", "/users/"),
    ("POST", "/users/"),
    ("GET", "/users/1/"),
    ("GET", "/healthz/"),
    ("GET", "/readyz/"),
]


@pytest.mark.parametrize(
    ("method", "path"), PATHS_WITH_A_TRAILING_SLASH, ids=[f"{m} {p}" for m, p in PATHS_WITH_A_TRAILING_SLASH]
)
def test_a_trailing_slash_is_404_json_not_a_redirect(client, admin, method, path):
    body = {"username": "slashed", "password": "password-123"} if method != "GET" else None
    response = client.request(method, path, json=body, headers=admin.headers, follow_redirects=False)

    assert "location" not in response.headers, response.headers["location"]
    assert_error(response, 404)
