"""HTTP routes of the auth service: `/token`, `/revoke`, the JWKS, `/sessions`. Parsing and answers only."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from auth_service import client_credentials, service, sessions
from auth_service.deps import LoginClaims, unauthorized
from auth_service.schemas import (
    ClientCredentialsTokenResponse,
    JwksResponse,
    SessionList,
    TokenForm,
    TokenResponse,
)
from shared.admission import password_hashing_slot
from shared.client_address import request_client_address
from shared.database import run_on_connection
from shared.errors import ApiError, documented_errors
from shared.observability import LOGIN_ATTEMPTS, REFRESH_REUSE, set_request_user
from shared.throttle import Throttled

router = APIRouter()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SUPPORTED_GRANTS = ("password", "refresh_token", "client_credentials")
# RFC 6749 section 5.2: a failed client authentication challenges with the scheme clients authenticate with here.
BASIC_CHALLENGE = 'Basic realm="token"'
TOKEN_FORM_FIELDS = tuple(TokenForm.model_fields)
FormField = Annotated[str | None, Form()]


def _missing(field: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": "Field required", "type": "missing"}])


async def _token_form(request: Request) -> TokenForm:
    """The token request's fields (`TokenForm`), read as FastAPI reads optional `Form()` strings: absent, empty or an
    empty file input is None, another file is a 422 naming the field, and a body the form parser refuses is a 400
    (Starlette's, or FastAPI's for anything else it raises, which the installed handlers answer as a 422).

    Read here rather than declared as `Form()` parameters: FastAPI works out each such parameter's form handling
    again on every request, which cost a login about a quarter of the auth process's instructions
    (docs/performance.md, "Logins and hashing"). The OpenAPI schema still documents `TokenForm`.
    """
    try:
        form = await request.form()
    except StarletteHTTPException:
        # Starlette's 400 for a multipart body it refuses, with its reason.
        raise
    except Exception as error:
        # What FastAPI raises for anything else its form parser raised on.
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from error
    try:
        fields: dict[str, str | None] = {}
        errors = []
        for name in TOKEN_FORM_FIELDS:
            value = form.get(name)
            if value is None or isinstance(value, str):
                fields[name] = value or None
            elif isinstance(value, UploadFile) and value.filename == "" and value.size == 0:
                # What a browser sends for a file input left empty.
                fields[name] = None
            else:
                errors.append({"loc": ("body", name), "msg": "Input should be a valid string", "type": "string_type"})
        if errors:
            raise RequestValidationError(errors)
        # Every field was checked above: built without validating them again.
        return TokenForm.model_construct(**fields)
    finally:
        await form.close()


def _token_response(pair: service.TokenPair) -> JSONResponse:
    set_request_user(pair.user_id)
    body = TokenResponse(access_token=pair.access_token, expires_in=pair.expires_in, refresh_token=pair.refresh_token)
    return JSONResponse(body.model_dump(), headers=NO_STORE)


def _unauthorized(detail: str, *, error: str | None = None) -> ApiError:
    return ApiError(401, detail, error=error, headers={"WWW-Authenticate": "Bearer", **NO_STORE})


def _invalid_client(detail: str) -> ApiError:
    return ApiError(401, detail, error="invalid_client", headers={"WWW-Authenticate": BASIC_CHALLENGE, **NO_STORE})


def _client_authentication(
    request: Request, *, form_client_id: str | None, form_client_secret: str | None
) -> tuple[str, str]:
    """The key's `(client_id, client_secret)`, from HTTP Basic or from the form fields, never from both."""
    try:
        basic = client_credentials.basic_credentials(request.headers.get("authorization"))
    except client_credentials.MalformedClientAuthentication:
        raise _invalid_client("Malformed HTTP Basic client credentials") from None
    if basic is not None:
        # A form client_id naming the same client is no second method (some libraries send it); a secret is.
        if form_client_secret is not None or form_client_id not in (None, basic[0]):
            raise ApiError(
                400,
                "Use one client authentication method: HTTP Basic or the form fields",
                error="invalid_request",
                headers=NO_STORE,
            )
        return basic
    if form_client_id is None and form_client_secret is None:
        raise _invalid_client("Client authentication required: HTTP Basic or client_id and client_secret")
    for name, value in (("client_id", form_client_id), ("client_secret", form_client_secret)):
        if value is None:
            raise _missing(name)
    return form_client_id, form_client_secret


async def _client_credentials_grant(
    request: Request, *, form_client_id: str | None, form_client_secret: str | None, scope: str | None, now: datetime
) -> JSONResponse:
    client_id, client_secret = _client_authentication(
        request, form_client_id=form_client_id, form_client_secret=form_client_secret
    )
    try:
        token = await run_on_connection(
            request,
            client_credentials.client_credentials_token,
            settings=request.app.state.settings,
            issuer=request.app.state.issuer,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            address=request_client_address(request),
            now=now,
        )
    except Throttled as throttled:
        detail = "Too many failed attempts for this client; try again later"
        raise throttled.api_error(detail, headers=NO_STORE) from None
    except client_credentials.InvalidClient:
        raise _invalid_client("Unknown, wrong or expired client credentials") from None
    except client_credentials.InvalidScope:
        raise ApiError(
            400, "scope asks for more than the API key's scopes", error="invalid_scope", headers=NO_STORE
        ) from None
    set_request_user(token.user_id)
    body = ClientCredentialsTokenResponse(
        access_token=token.access_token, expires_in=token.expires_in, scope=token.scope
    )
    return JSONResponse(body.model_dump(), headers=NO_STORE)


@router.post(
    "/token",
    response_model=TokenResponse | ClientCredentialsTokenResponse,
    summary="OAuth2 token endpoint: password, refresh_token and client_credentials grants",
    responses=documented_errors(400, 401, 413, 422, 429, 503),
    openapi_extra={
        "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": TokenForm.model_json_schema()}}}
    },
)
async def issue_token(request: Request) -> JSONResponse:
    form = await _token_form(request)
    settings = request.app.state.settings
    now = datetime.now(UTC)
    grant = "password" if form.grant_type is None else form.grant_type
    if grant not in SUPPORTED_GRANTS:
        raise ApiError(400, "Unsupported grant_type", error="unsupported_grant_type", headers=NO_STORE)
    if grant == "client_credentials":
        return await _client_credentials_grant(
            request, form_client_id=form.client_id, form_client_secret=form.client_secret, scope=form.scope, now=now
        )
    if grant == "refresh_token":
        if form.refresh_token is None:
            raise _missing("refresh_token")
        try:
            pair = await run_on_connection(
                request,
                service.refresh_token_pair,
                settings=settings,
                issuer=request.app.state.issuer,
                refresh_token=form.refresh_token,
                now=now,
            )
        except service.InvalidRefreshToken as invalid:
            if invalid.reuse_detected:
                REFRESH_REUSE.inc()
            raise _unauthorized("Invalid or expired refresh token", error="invalid_grant") from None
        return _token_response(pair)
    for name, value in (("username", form.username), ("password", form.password)):
        if value is None:
            raise _missing(name)
    address = request_client_address(request)
    try:
        async with password_hashing_slot(request):
            pair = await run_on_connection(
                request,
                service.login_with_password,
                settings=settings,
                hasher=request.app.state.hasher,
                issuer=request.app.state.issuer,
                username=form.username,
                password=form.password,
                address=address,
                now=now,
                user_agent=request.headers.get("user-agent"),
            )
    except Throttled as throttled:
        LOGIN_ATTEMPTS.labels("throttled").inc()
        raise throttled.api_error("Too many failed login attempts; try again later", headers=NO_STORE) from None
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


SESSION_ERRORS = (401, 403, 503)


async def _on_sessions(request: Request, work, /, **arguments) -> object:  # noqa: ANN001
    """Runs a /sessions operation; a token whose user or session is no longer good is a 401 at once."""
    try:
        return await run_on_connection(request, work, now=datetime.now(UTC), **arguments)
    except sessions.SessionsRefused:
        raise unauthorized("Invalid or expired token") from None


@router.get(
    "/sessions",
    response_model=SessionList,
    summary="The caller's live sessions (logins), newest first",
    responses=documented_errors(*SESSION_ERRORS),
)
async def list_sessions(request: Request, claims: LoginClaims) -> Response:
    found = await _on_sessions(request, sessions.list_sessions, claims=claims)
    body = SessionList(items=found)
    return Response(body.model_dump_json(), media_type="application/json", headers=NO_STORE)


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End one of the caller's sessions (the current one too: a logout)",
    responses=documented_errors(*SESSION_ERRORS, 404),
)
async def end_session(
    request: Request, claims: LoginClaims, session_id: Annotated[str, Path(description="The session's id")]
) -> Response:
    try:
        await _on_sessions(request, sessions.end_session_of_caller, claims=claims, session_id=session_id)
    except sessions.SessionNotFound:
        raise ApiError(404, "Session not found", error="not_found") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/sessions",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End every session of the caller but the current one",
    responses=documented_errors(*SESSION_ERRORS),
)
async def end_other_sessions(request: Request, claims: LoginClaims) -> Response:
    await _on_sessions(request, sessions.end_other_sessions_of_caller, claims=claims)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
