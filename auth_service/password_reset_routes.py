"""HTTP routes of password reset: request a mailed token, confirm it with a new password. Parsing and answers only."""

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

from auth_service import password_reset
from shared.admission import HashesPassword
from shared.client_address import request_client_address
from shared.database import run_in_session, run_on_connection
from shared.errors import ApiError, documented_errors
from shared.fields import Email, Password, StrictBody
from shared.one_time_tokens import InvalidToken
from shared.throttle import Throttled

router = APIRouter(tags=["password reset"])
NO_STORE = {"Cache-Control": "no-store"}


class PasswordResetRequest(StrictBody):
    email: Email


class PasswordResetConfirm(StrictBody):
    # Any string: a malformed token is as invalid as an unknown one (400 invalid_token), never a 422 or a 500.
    token: str
    new_password: Password


class Accepted(BaseModel):
    pass


def invalid_token() -> ApiError:
    return ApiError(400, "Invalid, used or expired token", error="invalid_token", headers=NO_STORE)


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    summary="Mail a password reset link to this address, if it is an active user's (the answer is the same)",
    responses=documented_errors(413, 415, 422, 429, 503),
)
async def request_password_reset(request: Request, body: PasswordResetRequest) -> Response:
    settings = request.app.state.settings
    now = datetime.now(UTC)
    try:
        await run_on_connection(
            request,
            password_reset.count_reset_request,
            settings=settings,
            address=request_client_address(request),
            now=now,
        )
    except Throttled as throttled:
        raise throttled.api_error("Too many password reset requests; try again later") from None
    await run_in_session(request, password_reset.request_password_reset, settings=settings, email=body.email, now=now)
    return Response("{}", status_code=status.HTTP_202_ACCEPTED, media_type="application/json")


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with a mailed reset token; every session of the user ends",
    responses=documented_errors(400, 413, 415, 422, 503),
    dependencies=[HashesPassword],
)
async def confirm_password_reset(request: Request, body: PasswordResetConfirm) -> Response:
    now = datetime.now(UTC)
    try:
        password_hash = await run_in_session(
            request,
            password_reset.hash_for_live_token,
            hasher=request.app.state.hasher,
            token=body.token,
            new_password=body.new_password,
            now=now,
        )
        await run_in_session(
            request,
            password_reset.confirm_password_reset,
            settings=request.app.state.settings,
            token=body.token,
            password_hash=password_hash,
            now=datetime.now(UTC),
        )
    except InvalidToken:
        raise invalid_token() from None
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=NO_STORE)
