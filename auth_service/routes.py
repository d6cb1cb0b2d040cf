"""HTTP routes of the auth service: `/token`, `/revoke`, the JWKS. Parsing and answers only."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from auth_service import service
from auth_service.schemas import JwksResponse, TokenResponse
from auth_service.throttle import LoginThrottled, client_address
from shared.database import run_on_connection
from shared.errors import ApiError, documented_errors
from shared.observability import LOGIN_ATTEMPTS, REFRESH_REUSE, set_request_user

router = APIRouter()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SUPPORTED_GRANTS = ("password", "refresh_token")
FormField = Annotated[str | None, Form()]


def _missing(field: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": "Field required", "type": "missing"}])


def _token_response(pair: service.TokenPair) -> JSONResponse:
    set_request_user(pair.user_id)
    body = TokenResponse(access_token=pair.access_token, expires_in=pair.expires_in, refresh_token=pair.refresh_token)
    return JSONResponse(body.model_dump(), headers=NO_STORE)


def _unauthorized(detail: str, *, error: str | None = None) -> ApiError:
    return ApiError(401, detail, error=error, headers={"WWW-Authenticate": "Bearer", **NO_STORE})


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="OAuth2 token endpoint: password and refresh_token grants",
    responses=documented_errors(400, 401, 413, 422, 429, 503),
)
async def issue_token(
    request: Request,
    grant_type: FormField = None,
    username: FormField = None,
    password: FormField = None,
    refresh_token: FormField = None,
    scope: FormField = None,
) -> JSONResponse:
    settings = request.app.state.settings
    now = datetime.now(UTC)
    grant = "password" if grant_type is None else grant_type
    if grant not in SUPPORTED_GRANTS:
        raise ApiError(400, "Unsupported grant_type", error="unsupported_grant_type", headers=NO_STORE)
    if grant == "refresh_token":
        if refresh_token is None:
            raise _missing("refresh_token")
        try:
            pair = await run_on_connection(
                request,
                service.refresh_token_pair,
                settings=settings,
                issuer=request.app.state.issuer,
                refresh_token=refresh_token,
                now=now,
            )
        except service.InvalidRefreshToken as invalid:
            if invalid.reuse_detected:
                REFRESH_REUSE.inc()
            raise _unauthorized("Invalid or expired refresh token", error="invalid_grant") from None
        return _token_response(pair)
    for name, value in (("username", username), ("password", password)):
        if value is None:
            raise _missing(name)
    address = client_address(
        socket_address=request.client.host if request.client else None,
        forwarded_for=request.headers.get("x-forwarded-for"),
        trusted_proxies=settings.trusted_proxies,
    )
    try:
        pair = await run_on_connection(
            request,
            service.login_with_password,
            settings=settings,
            hasher=request.app.state.hasher,
            issuer=request.app.state.issuer,
            username=username,
            password=password,
            address=address,
            now=now,
        )
    except LoginThrottled as throttled:
        LOGIN_ATTEMPTS.labels("throttled").inc()
        raise ApiError(
            429,
            "Too many failed login attempts; try again later",
            error="too_many_attempts",
            headers={"Retry-After": str(throttled.retry_after_seconds), **NO_STORE},
        ) from None
    except service.InvalidCredentials:
        LOGIN_ATTEMPTS.labels("failure").inc()
        raise _unauthorized("Incorrect username or password", error="invalid_grant") from None
    LOGIN_ATTEMPTS.labels("success").inc()
    return _token_response(pair)


@router.post(
    "/revoke",
    summary="RFC 7009 revocation of a refresh token (and its family)",
    responses=documented_errors(413, 422, 503),
)
async def revoke(request: Request, token: Annotated[str, Form()], token_type_hint: FormField = None) -> JSONResponse:
    await run_on_connection(request, service.revoke_refresh_token, token=token, now=datetime.now(UTC))
    return JSONResponse({}, headers=NO_STORE)


@router.get("/.well-known/jwks.json", response_model=JwksResponse, summary="Public keys that sign access tokens")
async def jwks(request: Request) -> dict[str, list[dict[str, str]]]:
    return request.app.state.issuer.jwks
