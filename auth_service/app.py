"""The auth service's app factory: `create_app(settings)`; `app` is what gunicorn serves."""

from functools import partial

from fastapi import FastAPI

from auth_service.password_reset_routes import router as password_reset_router
from auth_service.routes import router as auth_router
from shared.dummy_hashes import hash_settings_in_use
from shared.passwords import PasswordHasher
from shared.service_app import build_service_app, lazy_module_app
from shared.settings import Settings
from shared.tokens import AccessTokenIssuer, AccessTokenVerifier, signing_key_source

# In this order, the token routes first, as clients call them most.
ROUTERS = (auth_router, password_reset_router)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = build_service_app(
        settings=settings,
        service="auth",
        title="Auth service",
        description="Checks credentials and issues access tokens (JWT) and rotating refresh tokens.",
        routers=ROUTERS,
    )
    # Every check verifies one hash of each setting the users' hashes use: the same time for any username.
    app.state.hasher = PasswordHasher(settings, settings_in_use=partial(hash_settings_in_use, app.state.engine))
    app.state.issuer = AccessTokenIssuer(settings)
    # The /sessions routes check the service's own access tokens.
    app.state.verifier = AccessTokenVerifier(settings, signing_key_source(settings))
    return app


__getattr__ = lazy_module_app(create_app, globals())
