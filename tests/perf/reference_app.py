"""The bench's reference app: the floor of this stack and its best for `GET /users/me`. Imports nothing of the services.

`GET /floor` is a bare `async def` returning a small dict (FastAPI + uvicorn + gunicorn and nothing else).
`GET /me` is a `def` that decodes the HS256 bearer with PyJWT and selects the user row by primary key with
raw psycopg2 from a pool: the same work `GET /users/me` must do, with no ORM, no session and no middleware.
Served by `make bench` with deploy/gunicorn.conf.py, like the services; configured from the same variables.
"""

import asyncio
import logging
import os
from contextlib import asynccontextmanager

import anyio
import jwt
from fastapi import FastAPI, Header, HTTPException
from psycopg2.pool import ThreadedConnectionPool

logger = logging.getLogger("reference_app")

SELECT_USER = (
    "SELECT id, username, email, full_name, is_active, is_admin, created_at, token_version FROM users WHERE id = %s"
)


def libpq_dsn(database_url: str) -> str:
    """psycopg2 wants a libpq URL: drop SQLAlchemy's `+psycopg2` driver suffix and accept `postgres://`."""
    scheme, rest = database_url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else database_url


def create_app() -> FastAPI:
    database_url = os.environ["DATABASE_URL"]
    secret = os.environ["JWT_SECRET"]
    issuer = os.environ.get("JWT_ISSUER", "auth-service")
    audience = os.environ.get("JWT_AUDIENCE", "users-service")
    # The services' defaults: one thread per pooled connection (Settings.effective_threadpool_size).
    pool_size = int(os.environ.get("DB_POOL_SIZE", "10"))
    state: dict[str, ThreadedConnectionPool] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = pool_size
        # The services' line, so the bench can show that all three run on the same event loop.
        loop = type(asyncio.get_running_loop())
        logger.info("worker started", extra={"fields": {"event_loop": f"{loop.__module__}.{loop.__qualname__}"}})
        # minconn = maxconn: psycopg2's pool closes any connection given back beyond `minconn`.
        state["pool"] = ThreadedConnectionPool(pool_size, pool_size, libpq_dsn(database_url))
        yield
        state["pool"].closeall()

    app = FastAPI(title="Bench reference", lifespan=lifespan, openapi_url=None)

    @app.get("/healthz", response_model=None)
    async def healthz():
        return {"status": "ok"}

    @app.get("/floor", response_model=None)
    async def floor():
        return {"status": "ok"}

    @app.get("/me", response_model=None)
    def me(authorization: str = Header(default="")):
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                audience=audience,
                issuer=issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti", "type"]},
            )
        except jwt.PyJWTError:
            raise HTTPException(401, "Invalid token", headers={"WWW-Authenticate": "Bearer"}) from None
        pool = state["pool"]
        connection = pool.getconn()
        try:
            with connection.cursor() as cursor:
                cursor.execute(SELECT_USER, (int(claims["sub"]),))
                row = cursor.fetchone()
        finally:
            # putconn rolls back the implicit transaction psycopg2 opened for the SELECT.
            pool.putconn(connection)
        if row is None or not row[4] or row[7] != claims.get("ver", 0):
            raise HTTPException(401, "Invalid token", headers={"WWW-Authenticate": "Bearer"})
        return {
            "id": row[0],
            "username": row[1],
            "email": row[2],
            "full_name": row[3],
            "is_active": row[4],
            "is_admin": row[5],
            "created_at": row[6].isoformat(),
        }

    return app


def __getattr__(name: str) -> FastAPI:
    # `tests.perf.reference_app:app` for gunicorn, built on first access so importing needs no environment.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
