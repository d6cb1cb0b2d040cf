"""The interactive docs: served without a CDN, and their "Authorize" logs in at AUTH_PUBLIC_URL's /token."""

from fastapi.testclient import TestClient

from shared.testing import settings_for_tests
from users_service.app import create_app

AUTH_PUBLIC_URL = "https://auth.example.test/"


def test_the_docs_token_url_is_the_auth_services_public_token_endpoint(database_url: str) -> None:
    settings = settings_for_tests(database_url, auth_public_url=AUTH_PUBLIC_URL)
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()

    flows = [scheme.get("flows", {}) for scheme in schema["components"]["securitySchemes"].values()]
    assert [flow["password"]["tokenUrl"] for flow in flows if "password" in flow] == ["https://auth.example.test/token"]


def test_the_docs_page_and_its_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/docs")

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cdn." not in page.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200


def test_the_docs_authorize_offers_password_and_client_credentials_at_the_auth_service(database_url: str) -> None:
    settings = settings_for_tests(database_url, auth_public_url=AUTH_PUBLIC_URL)
    with TestClient(create_app(settings)) as client:
        schema = client.get("/openapi.json").json()

    schemes = list(schema["components"]["securitySchemes"].values())
    assert len(schemes) == 1 and schemes[0]["type"] == "oauth2"
    flows = schemes[0]["flows"]
    assert set(flows) == {"password", "clientCredentials"}
    assert {flow["tokenUrl"] for flow in flows.values()} == {"https://auth.example.test/token"}
    assert set(flows["clientCredentials"]["scopes"]) == {"users:read", "users:write"}
    key_routes = [schema["paths"]["/users/me/api-keys"]["post"], schema["paths"]["/users/{user_id}/api-keys"]["get"]]
    assert all(route["security"] == [{"AuthService": []}] for route in key_routes)
