"""HTTP routes of the users service: parse, call `service`, return. Each runs its database work in one thread.

Every route builds its JSON response itself, in its own thread. Returning a model instead would make
FastAPI validate it in a second thread-pool hop while the request still holds its database connection:
with every thread waiting for a connection, that hop would never come (a deadlock until the pool timeout).
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from shared.database import SessionDep
from shared.errors import documented_errors
from shared.tokens import MAX_DATABASE_ID
from users_service import service
from users_service.deps import Claims
from shared.models import User
from users_service.schemas import UserCreate, UserPage, UserPublic, UserUpdate, UserUpdateMe

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_DATABASE_ID, description="The user's id")]
AUTHENTICATED_ERRORS = (401, 413, 422, 503)


def user_response(user: User, *, status_code: int = status.HTTP_200_OK) -> JSONResponse:
    return JSONResponse(UserPublic.model_validate(user).model_dump(mode="json"), status_code=status_code)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    summary="Sign up",
    responses=documented_errors(409, 413, 415, 422, 503),
)
def sign_up(request: Request, session: SessionDep, body: UserCreate) -> JSONResponse:
    user = service.create_user(session=session, hasher=request.app.state.hasher, data=body)
    return user_response(user, status_code=status.HTTP_201_CREATED)


@router.get("/me", response_model=UserPublic, summary="The caller", responses=documented_errors(*AUTHENTICATED_ERRORS))
def read_me(session: SessionDep, claims: Claims) -> JSONResponse:
    return user_response(service.authenticated_user(session=session, claims=claims))


@router.patch(
    "/me",
    response_model=UserPublic,
    summary="Update the caller; a new password needs current_password",
    responses=documented_errors(400, *AUTHENTICATED_ERRORS, 409, 415),
)
def update_me(request: Request, session: SessionDep, claims: Claims, body: UserUpdateMe) -> JSONResponse:
    actor = service.authenticated_user(session=session, claims=claims)
    user = service.update_user(session=session, hasher=request.app.state.hasher, actor=actor, target=actor, data=body)
    return user_response(user)


@router.delete(
    "/me", status_code=status.HTTP_204_NO_CONTENT, summary="Delete the caller", responses=documented_errors(*AUTHENTICATED_ERRORS)
)
def delete_me(session: SessionDep, claims: Claims) -> Response:
    service.delete_user(session=session, user=service.authenticated_user(session=session, claims=claims))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "", response_model=UserPage, summary="List users (admin)", responses=documented_errors(*AUTHENTICATED_ERRORS, 403)
)
def list_users(
    session: SessionDep,
    claims: Claims,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DATABASE_ID)] = 0,
) -> JSONResponse:
    service.require_admin(service.authenticated_user(session=session, claims=claims))
    users, total = service.list_users(session=session, limit=limit, offset=offset)
    page = UserPage(items=[UserPublic.model_validate(user) for user in users], total=total, limit=limit, offset=offset)
    return JSONResponse(page.model_dump(mode="json"))


@router.get(
    "/{user_id}",
    response_model=UserPublic,
    summary="One user (self or admin)",
    responses=documented_errors(*AUTHENTICATED_ERRORS, 403, 404),
)
def read_user(session: SessionDep, claims: Claims, user_id: UserId) -> JSONResponse:
    actor = service.authenticated_user(session=session, claims=claims)
    return user_response(service.authorized_target(session=session, actor=actor, user_id=user_id))


@router.patch(
    "/{user_id}",
    response_model=UserPublic,
    summary="Update a user (self or admin; only admins set is_active/is_admin)",
    responses=documented_errors(400, *AUTHENTICATED_ERRORS, 403, 404, 409, 415),
)
def update_user(
    request: Request, session: SessionDep, claims: Claims, user_id: UserId, body: UserUpdate
) -> JSONResponse:
    actor = service.authenticated_user(session=session, claims=claims)
    target = service.authorized_target(session=session, actor=actor, user_id=user_id)
    user = service.update_user(session=session, hasher=request.app.state.hasher, actor=actor, target=target, data=body)
    return user_response(user)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (self or admin)",
    responses=documented_errors(*AUTHENTICATED_ERRORS, 403, 404),
)
def delete_user(session: SessionDep, claims: Claims, user_id: UserId) -> Response:
    actor = service.authenticated_user(session=session, claims=claims)
    service.delete_user(session=session, user=service.authorized_target(session=session, actor=actor, user_id=user_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
