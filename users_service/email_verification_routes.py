"""HTTP routes of email verification: resend to the caller, confirm with a mailed token. Parsing and answers only."""

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel
from sqlalchemy.orm import Session

from shared.database import run_in_session
from shared.errors import ApiError, documented_errors
from shared.fields import StrictBody
from shared.one_time_tokens import InvalidToken
from shared.settings import Settings
from shared.tokens import AccessClaims
from users_service import email_verification, service
from users_service.deps import LoginClaims
from users_service.routes import user_response
from users_service.schemas import UserPublic

router = APIRouter(tags=["email verification"])


class EmailVerificationConfirm(StrictBody):
    # Any string: a malformed token is as invalid as an unknown one (400 invalid_token), never a 422 or a 500.
    token: str


class Accepted(BaseModel):
    pass


def resend_to_caller(*, session: Session, settings: Settings, claims: AccessClaims, now: datetime) -> None:
    user = service.authenticated_user(session=session, claims=claims)
    email_verification.resend_verification(session=session, settings=settings, user=user, now=now)


@router.post(
    "/users/me/email-verification",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    summary="Mail the caller's address a verification link again (at most one mail per 60 s)",
    responses=documented_errors(401, 403, 409, 413, 503),
)
async def resend_email_verification(request: Request, claims: LoginClaims) -> Response:
    await run_in_session(
        request, resend_to_caller, settings=request.app.state.settings, claims=claims, now=datetime.now(UTC)
    )
    return Response("{}", status_code=status.HTTP_202_ACCEPTED, media_type="application/json")


@router.post(
    "/email-verification/confirm",
    response_model=UserPublic,
    summary="Confirm an email address with the token mailed to it",
    responses=documented_errors(400, 413, 415, 422, 503),
)
async def confirm_email_verification(request: Request, body: EmailVerificationConfirm) -> Response:
    try:
        user = await run_in_session(request, email_verification.confirm_email, token=body.token, now=datetime.now(UTC))
    except InvalidToken:
        raise ApiError(400, "Invalid, used or expired token", error="invalid_token") from None
    return user_response(user)
