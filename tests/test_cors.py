"""CORS at the header level, on both services: what an allowed origin gets, and that a refused one gets nothing.

The browser test sees only Chromium's "blocked by CORS" message, which a wrong allow-origin would produce too;
these read the exact headers of the preflight and of the simple response.
"""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from auth_service.app import create_app as create_auth_app
from shared.testing import settings_for_tests
from users_service.app import create_app as create_users_app

ALLOWED = "https://app.example.org"
REFUSED = "https://evil.example.net"
# Per service: a path a browser app calls, the method it uses and the headers it sends with it.
CALLS = {
    "auth": ("/token", "POST", "content-type, x-request-id"),
    "users": ("/users/me", "GET", "authorization, x-request-id"),
}


def header_set(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def cors_headers(response) -> dict[str, str]:  # noqa: ANN001
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


@pytest.fixture(scope="module", params=["auth", "users"])
def service(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[str, TestClient]]:
    create_app = create_auth_app if request.param == "auth" else create_users_app
    settings = settings_for_tests(database_url, cors_origins=[ALLOWED, "https://other.example.org"])
    with TestClient(create_app(settings)) as client:
        yield request.param, client


def preflight(client: TestClient, name: str, origin: str):  # noqa: ANN201
    path, method, headers = CALLS[name]
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def test_preflight_of_an_allowed_origin(service: tuple[str, TestClient]) -> None:
    name, client = service
    response = preflight(client, name, ALLOWED)

    assert response.status_code == 200, response.text
    headers = response.headers
    assert headers["access-control-allow-origin"] == ALLOWED
    assert header_set(headers["access-control-allow-methods"]) == {"get", "post", "patch", "delete", "options"}
    assert header_set(headers["access-control-allow-headers"]) >= {
        "authorization",
        "content-type",
        "x-request-id",
        "x-requested-with",
    }
    assert headers["access-control-max-age"] == "600"
    assert "origin" in header_set(headers.get("vary", ""))
    assert "access-control-allow-credentials" not in headers


def test_simple_response_to_an_allowed_origin(service: tuple[str, TestClient]) -> None:
    _, client = service
    response = client.get("/healthz", headers={"Origin": ALLOWED})

    assert response.status_code == 200
    headers = response.headers
    assert headers["access-control-allow-origin"] == ALLOWED
    assert header_set(headers["access-control-expose-headers"]) == {"retry-after", "x-request-id"}
    assert "origin" in header_set(headers.get("vary", ""))
    assert "access-control-allow-credentials" not in headers


def test_an_error_response_carries_the_cors_headers_too(service: tuple[str, TestClient]) -> None:
    """Browser code must be able to read a 401/404 and its X-Request-ID, not only successes."""
    _, client = service
    response = client.get("/no-such-path", headers={"Origin": ALLOWED})

    assert response.status_code == 404
    assert response.headers["access-control-allow-origin"] == ALLOWED


def test_a_refused_origin_gets_no_cors_header_at_all(service: tuple[str, TestClient]) -> None:
    name, client = service
    refused_preflight = preflight(client, name, REFUSED)
    simple = client.get("/healthz", headers={"Origin": REFUSED})

    assert cors_headers(refused_preflight) == {}, refused_preflight.headers
    assert cors_headers(simple) == {}, simple.headers
    if refused_preflight.status_code >= 400:
        # Like every error of both services: JSON with a detail.
        assert refused_preflight.headers["content-type"].startswith("application/json"), refused_preflight.text
        assert "detail" in refused_preflight.json()
    # The request itself is still answered (CORS is the browser's to enforce); only no permission is given.
    assert simple.status_code == 200
    assert "origin" in header_set(simple.headers.get("vary", ""))


def test_an_allowed_origin_is_matched_exactly(service: tuple[str, TestClient]) -> None:
    """No prefix, suffix or scheme variants: each is a different origin."""
    name, client = service
    for near_miss in (ALLOWED + ".evil.net", "http://app.example.org", ALLOWED + ":8443", "null"):
        response = client.get("/healthz", headers={"Origin": near_miss})
        assert "access-control-allow-origin" not in response.headers, (near_miss, response.headers)
        assert "access-control-allow-origin" not in preflight(client, name, near_miss).headers, near_miss
