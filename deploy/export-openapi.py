"""Writes each service's OpenAPI schema to docs/openapi/: `make openapi` after an API change, then commit the diff.

tests/test_openapi_drift.py fails while the committed files differ from what the code serves.
"""

import json
from pathlib import Path

from fastapi import FastAPI

from auth_service.app import create_app as create_auth_app
from shared.settings import Settings
from users_service.app import create_app as create_users_app

OPENAPI_DIR = Path(__file__).resolve().parent.parent / "docs" / "openapi"
# Fixed settings, so the schema depends on the code alone (the docs' tokenUrl is the local run's auth address).
EXPORT_SETTINGS = {
    "app_env": "local",
    "database_url": "sqlite:///:memory:",
    "jwt_secret": "openapi-export-only-" + "k3y5" * 8,
    "auth_public_url": "http://127.0.0.1:8001",
}


def schemas() -> dict[str, str]:
    """Each service's schema file name and its text, as the code serves it."""
    settings = Settings(_env_file=None, **EXPORT_SETTINGS)
    apps: dict[str, FastAPI] = {"auth.json": create_auth_app(settings), "users.json": create_users_app(settings)}
    return {name: json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n" for name, app in apps.items()}


def main() -> None:
    OPENAPI_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (OPENAPI_DIR / name).write_text(text)
        print(f"wrote {OPENAPI_DIR / name}")


if __name__ == "__main__":
    main()
