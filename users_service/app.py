"""The users service's app factory: `create_app(settings)`; `app` is what gunicorn serves."""

import logging
import threading
import time
from functools import partial

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from shared.dummy_hashes import hash_settings_in_use
from shared.passwords import PasswordHasher
from shared.service_app import build_service_app, lazy_module_app
from shared.settings import Settings
from shared.tokens import AccessTokenVerifier, build_key_source
from users_service import service
from users_service.api_key_routes import router as api_key_router
from users_service.deps import SECURITY_SCHEME_NAME
from users_service.email_verification_routes import router as email_verification_router
from users_service.routes import router as users_router

logger = logging.getLogger("users_service")
# In this order, the users routes first, as clients call them most; the API keys' paths cannot be shadowed by theirs.
ROUTERS = (users_router, api_key_router, email_verification_router)
ADMIN_RETRY_SECONDS = 5


def _bootstrap_admin(app: FastAPI) -> None:
    """Creates the ADMIN_USERNAME admin; if the database is down at start-up, keeps trying in the background."""
    settings = app.state.settings
    if not (settings.admin_username and settings.admin_password):
        return

    def attempt() -> bool:
        try:
            with app.state.session_factory() as session:
                service.ensure_admin(
                    session=session,
                    hasher=app.state.hasher,
                    username=settings.admin_username,
                    password=settings.admin_password,
                )
            return True
        except SQLAlchemyError:
            logger.warning("database unavailable; admin bootstrap retries in %s s", ADMIN_RETRY_SECONDS)
            return False

    def retry_until_done() -> None:
        while not attempt():
            time.sleep(ADMIN_RETRY_SECONDS)

    if not attempt():
        threading.Thread(target=retry_until_done, name="admin-bootstrap", daemon=True).start()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = build_service_app(
        settings=settings,
        service="users",
        title="Users service",
        description="User accounts. Authorize with an access token from the auth service's POST /token.",
        routers=ROUTERS,
        on_startup=_bootstrap_admin,
    )
    # Every check verifies one hash of each setting the users' hashes use: the same time for any username.
    app.state.hasher = PasswordHasher(settings, settings_in_use=partial(hash_settings_in_use, app.state.engine))
    app.state.key_source = build_key_source(settings)
    app.state.verifier = AccessTokenVerifier(settings, app.state.key_source)
    _point_docs_login_at_auth_service(app, token_url=f"{settings.effective_auth_public_url}/token")
    return app


def _point_docs_login_at_auth_service(app: FastAPI, *, token_url: str) -> None:
    generate_schema = app.openapi

    def openapi() -> dict:
        schema = generate_schema()
        for flow in schema["components"]["securitySchemes"][SECURITY_SCHEME_NAME]["flows"].values():
            flow["tokenUrl"] = token_url
        return schema

    app.openapi = openapi


__getattr__ = lazy_module_app(create_app, globals())
