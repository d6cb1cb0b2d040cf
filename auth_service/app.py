"""The auth service's app factory: `create_app(settings)`; `app` is what gunicorn serves."""

from fastapi import FastAPI

from auth_service.routes import router
from shared.passwords import PasswordHasher
from shared.service_app import build_service_app, lazy_module_app
from shared.settings import Settings
from shared.tokens import AccessTokenIssuer


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = build_service_app(
        settings=settings,
        service="auth",
        title="Auth service",
        description="Checks credentials and issues access tokens (JWT) and rotating refresh tokens.",
        router=router,
    )
    app.state.hasher = PasswordHasher(settings)
    app.state.issuer = AccessTokenIssuer(settings)
    return app


__getattr__ = lazy_module_app(create_app, globals())
