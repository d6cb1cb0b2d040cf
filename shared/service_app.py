"""The parts of a FastAPI app both services share: engine, errors, body limit, CORS, logs, metrics, health, docs.

Each service's `create_app(settings)` calls `build_service_app` with its own routes.
"""

from collections.abc import Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from shared.database import build_engine, build_session_factory
from shared.docs import install_docs
from shared.errors import install_error_handlers
from shared.health import router as health_router
from shared.middleware import RequestBodyGuardMiddleware
from shared.observability import (
    RequestObservabilityMiddleware,
    configure_logging,
    install_metrics_route,
    track_pool_usage,
)
from shared.settings import Settings


def build_service_app(
    *,
    settings: Settings,
    service: str,
    title: str,
    description: str,
    router: APIRouter,
    on_startup: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    configure_logging(settings.log_level)
    engine = build_engine(settings)
    track_pool_usage(engine, service=service)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Sized with the connection pool (see Settings.effective_threadpool_size and the README).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.effective_threadpool_size
        if on_startup is not None:
            await anyio.to_thread.run_sync(on_startup, app)
        yield
        engine.dispose()

    app = FastAPI(
        title=title, description=description, version="1.0.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = build_session_factory(engine)
    install_error_handlers(app)
    app.add_middleware(RequestBodyGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.effective_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.effective_cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            # X-Requested-With: the docs' "Authorize" (Swagger UI) sends it with its request to /token.
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-Requested-With"],
            # Browser code may read these: when to retry a 429/503, and the id to quote in a bug report.
            expose_headers=["Retry-After", "X-Request-ID"],
            allow_credentials=False,
            max_age=600,
        )
    # Outermost, so refused bodies and errors are logged and carry the request id too.
    app.add_middleware(RequestObservabilityMiddleware, service=service)
    # The service's own routes first: a request is matched against the routes in order, and every route tried
    # before the right one costs it about 2 us (FastAPI 0.165, measured), so health, metrics and docs come last.
    app.include_router(router)
    app.include_router(health_router)
    install_metrics_route(app)
    install_docs(app)
    return app


def lazy_module_app(create_app: Callable[[], FastAPI], module_globals: dict) -> Callable[[str], FastAPI]:
    """A module `__getattr__` that builds `app` on first access, for `gunicorn package.app:app`.

    Importing the module (for `create_app`, as tests do) then needs no settings in the environment.
    """

    def module_getattr(name: str) -> FastAPI:
        if name != "app":
            raise AttributeError(name)
        module_globals["app"] = create_app()
        return module_globals["app"]

    return module_getattr
