"""No redirects: a path with a trailing slash is 404 JSON, never a 307 that makes a client re-send its password."""

import pytest

PATHS_WITH_A_TRAILING_SLASH = [
    ("POST", "/token/"),
    ("POST", "/revoke/"),
    ("GET", "/.well-known/jwks.json/"),
    ("GET", "/healthz/"),
    ("GET", "/readyz/"),
    ("GET", "/metrics/"),
]


@pytest.mark.parametrize(
    ("method", "path"), PATHS_WITH_A_TRAILING_SLASH, ids=[p for _, p in PATHS_WITH_A_TRAILING_SLASH]
)
def test_a_trailing_slash_is_404_json_not_a_redirect(client, method, path):
    response = client.request(
        method, path, data={"username": "someone", "password": "some password"}, follow_redirects=False
    )

    assert response.status_code == 404, (response.status_code, response.headers.get("location"))
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)
