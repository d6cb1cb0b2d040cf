"""How every error leaves either service: JSON `{"detail": ...}`, never a trace, SQL or secret.

Also the error body schema and the shared `responses=` entries documented in OpenAPI.
"""

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.database_failures import log_database_failure
from shared.passwords import PasswordHashingBusy
from shared.tokens import SigningKeysUnavailable

logger = logging.getLogger("shared.errors")

DATABASE_RETRY_AFTER_SECONDS = 5
BUSY_RETRY_AFTER_SECONDS = 1


class ErrorBody(BaseModel):
    """What every error response carries; `error` is an OAuth2 or machine-readable code where one applies."""

    detail: Any
    error: str | None = None


class ApiError(Exception):
    """An expected failure a route turns into a status, a `detail` and optionally an `error` code."""

    def __init__(
        self, status_code: int, detail: str, *, error: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.error = error
        self.headers = headers


def error_response(status_code: int, detail: Any, *, error: str | None = None, headers=None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if error is not None:
        body["error"] = error
    return JSONResponse(body, status_code=status_code, headers=headers)


def documented_errors(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status code with the error body schema."""
    descriptions = {
        400: "Bad request",
        401: "Missing, invalid or expired credentials",
        403: "Authenticated but not allowed",
        404: "Not found",
        409: "Conflict with an existing resource",
        413: "Body larger than 64 KiB",
        415: "Unsupported content type",
        422: "Malformed or invalid input",
        429: "Too many failed attempts; see Retry-After",
        503: "Database or a dependency unavailable; see Retry-After",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in status_codes}


def _validation_errors_without_input(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Pydantic echoes the offending value, which may be a password: keep only where and why.
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", "invalid"), "type": error.get("type", "invalid")}
        for error in exc.errors()
    ]


def _is_database_unavailable(exc: DBAPIError) -> bool:
    # Pool timeouts are not DBAPI errors; they have a handler of their own below.
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, error=exc.error, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI answers 400 when its body parser raises (too deeply nested JSON, say); docs/api.md says 422.
            return error_response(422, [{"loc": ["body"], "msg": "Malformed body", "type": "body_unparsable"}])
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; RFC 9110 wants every method it has.
            headers["Allow"] = ", ".join(sorted(_allowed_methods(request))) or headers.get("Allow", "")
        return error_response(exc.status_code, exc.detail, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_errors_without_input(exc))

    @app.exception_handler(PasswordHashingBusy)
    async def _busy(_request: Request, _exc: PasswordHashingBusy) -> JSONResponse:
        return error_response(
            503, "Too many password checks at once; try again", headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)}
        )

    @app.exception_handler(SigningKeysUnavailable)
    async def _no_keys(_request: Request, _exc: SigningKeysUnavailable) -> JSONResponse:
        return error_response(
            503, "Token signing keys unavailable", headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if str(getattr(exc.orig, "pgcode", "") or "").startswith("40"):
            # Class 40, transaction rollback (deadlock, serialization failure): the database is fine, retry.
            logger.warning("transaction rolled back on %s %s", request.method, request.url.path)
            return error_response(
                503,
                "Conflict with a concurrent request; try again",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
        if _is_database_unavailable(exc):
            # The driver's message, once per cause: an outage fails every request, the log needs it once.
            log_database_failure(exc, engine=request.app.state.engine, where=f"{request.method} {request.url.path}")
            return error_response(
                503, "Database unavailable; try again", headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
            )
        return _internal_error(request, exc)

    @app.exception_handler(PoolTimeoutError)
    async def _pool_timeout(request: Request, _exc: PoolTimeoutError) -> JSONResponse:
        logger.warning("database pool exhausted on %s %s", request.method, request.url.path)
        return error_response(503, "Database busy; try again", headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)


def _allowed_methods(request: Request) -> set[str]:
    """Every method the OpenAPI schema lists for paths matching the request's path (HEAD wherever GET is)."""
    table = getattr(request.app.state, "allowed_methods_by_path", None)
    if table is None:
        table = []
        for template, operations in request.app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
            methods = {method.upper() for method in operations if method != "parameters"}
            table.append((pattern, methods | ({"HEAD"} if "GET" in methods else set())))
        request.app.state.allowed_methods_by_path = table
    return {method for pattern, methods in table if pattern.match(request.url.path) for method in methods}


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The type only: exception messages can carry SQL parameters or user input.
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(500, "Internal server error")
