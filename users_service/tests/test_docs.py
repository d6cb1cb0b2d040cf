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
