"""The parts of a FastAPI app both services share: engine, errors, body limit, CORS, logs, metrics, health, docs.

Each service's `create_app(settings)` calls `build_service_app` with its own routes.
"""

import asyncio
import gc
import logging
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI

from shared.admission import HashingAdmission
from shared.client_address import parse_trusted_proxies
from shared.database import build_engine, build_session_factory
from shared.docs import install_docs
from shared.errors import install_error_handlers
from shared.health import ReadinessCheck
from shared.health import router as health_router
from shared.mail.sender import start_mail_sender
from shared.middleware import AllowedOriginsCORSMiddleware, RequestBodyGuardMiddleware
from shared.observability import (
    RequestObservabilityMiddleware,
    configure_logging,
    install_metrics_route,
    track_pool_usage,
)
from shared.retention import start_retention
from shared.settings import Settings

logger = logging.getLogger("shared.service_app")


def build_service_app(
    *,
    settings: Settings,
    service: str,
    title: str,
    description: str,
    routers: Sequence[APIRouter],
    on_startup: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    configure_logging(settings.log_level)
    engine = build_engine(settings)
    track_pool_usage(engine, service=service)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Sized with the connection pool (see Settings.effective_threadpool_size and docs/architecture.md).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.effective_threadpool_size
        # Which event loop the server runs this worker on (uvloop with gunicorn's UvicornWorker), for operators
        # and for the test that keeps `make run`, the images and the bench on it.
        loop = type(asyncio.get_running_loop())
        logger.info("worker started", extra={"fields": {"event_loop": f"{loop.__module__}.{loop.__qualname__}"}})
        if on_startup is not None:
            await anyio.to_thread.run_sync(on_startup, app)
        # A sender thread in every worker (shared/mail/sender.py says why); it stops before the engines go.
        mail_sender = start_mail_sender(settings)
        # Deletes rows past their retention now and then (shared/retention.py); stopped before the engine goes.
        retention = start_retention(engine=engine, settings=settings)
        # What start-up made lives as long as the worker: out of the garbage collector's way, its garbage collected
        # first. A full collection scanned all of it, holding the worker's event loop and threads meanwhile
        # (docs/performance.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # Also when the server ends the lifespan with an error (cancelled, say): its threads and pools stop.
            # Collectable again: a process that builds many apps (a test suite) would otherwise keep every one.
            gc.unfreeze()
            if retention is not None:
                await anyio.to_thread.run_sync(retention.stop)
            if mail_sender is not None:
                await anyio.to_thread.run_sync(mail_sender.stop)
            engine.dispose()
            app.state.readiness.dispose()

    app = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # No redirects: a 307 from `/token/` to `/token` makes clients send the password again (to `http://`
        # behind TLS termination). A path with a trailing slash is 404 like any other unknown path.
        redirect_slashes=False,
    )
    app.state.settings = settings
    # Parsed once here, not per request; an entry that is not an address or range stops the start.
    app.state.trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)
    app.state.hashing_admission = HashingAdmission(limit=settings.password_hash_max_in_flight)
    app.state.engine = engine
    app.state.session_factory = build_session_factory(engine)
    # Writes that queue a mail in their own transaction (a sign-up, an email change) read the mail settings here.
    app.state.session_factory.configure(info={"settings": settings})
    # A connection of its own for /readyz: a pool emptied by a burst must not read as a database that is down.
    app.state.readiness = ReadinessCheck(
        build_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    )
    install_error_handlers(app)
    app.add_middleware(RequestBodyGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.effective_cors_origins:
        app.add_middleware(
            AllowedOriginsCORSMiddleware,
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
    # before the right one costs it time (docs/performance.md), so health, metrics and docs come last.
    # The routers' routes become the app's own: FastAPI keeps an included router as a level of routing of its own,
    # matched again on every request. Each route already holds its router's prefix, tags and responses; not
    # `app.dependency_overrides`, which neither service nor any test uses.
    for router in [*routers, health_router]:
        app.router.routes.extend(router.routes)
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
