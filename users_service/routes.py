"""HTTP routes of the users service: parse, call `service`, return. Each runs its database work in one thread."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from shared.database import SessionDep
from shared.errors import documented_errors
from shared.tokens import MAX_DATABASE_ID
from users_service import service
from users_service.deps import Claims
from users_service.schemas import UserCreate, UserPage, UserPublic, UserUpdate, UserUpdateMe

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_DATABASE_ID, description="The user's id")]
AUTHENTICATED_ERRORS = (401, 413, 422, 503)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    summary="Sign up",
    responses=documented_errors(409, 413, 415, 422, 503),
)
def sign_up(request: Request, session: SessionDep, body: UserCreate) -> UserPublic:
    user = service.create_user(session=session, hasher=request.app.state.hasher, data=body)
    return UserPublic.model_validate(user)


@router.get("/me", response_model=UserPublic, summary="The caller", responses=documented_errors(*AUTHENTICATED_ERRORS))
def read_me(session: SessionDep, claims: Claims) -> UserPublic:
    return UserPublic.model_validate(service.authenticated_user(session=session, claims=claims))


@router.patch(
    "/me",
    response_model=UserPublic,
    summary="Update the caller; a new password needs current_password",
    responses=documented_errors(400, *AUTHENTICATED_ERRORS, 409, 415),
)
def update_me(request: Request, session: SessionDep, claims: Claims, body: UserUpdateMe) -> UserPublic:
    actor = service.authenticated_user(session=session, claims=claims)
    user = service.update_user(session=session, hasher=request.app.state.hasher, actor=actor, target=actor, data=body)
    return UserPublic.model_validate(user)


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
) -> UserPage:
    service.require_admin(service.authenticated_user(session=session, claims=claims))
    users, total = service.list_users(session=session, limit=limit, offset=offset)
    return UserPage(items=[UserPublic.model_validate(user) for user in users], total=total, limit=limit, offset=offset)


@router.get(
    "/{user_id}",
    response_model=UserPublic,
    summary="One user (self or admin)",
    responses=documented_errors(*AUTHENTICATED_ERRORS, 403, 404),
)
def read_user(session: SessionDep, claims: Claims, user_id: UserId) -> UserPublic:
    actor = service.authenticated_user(session=session, claims=claims)
    return UserPublic.model_validate(service.authorized_target(session=session, actor=actor, user_id=user_id))


@router.patch(
    "/{user_id}",
    response_model=UserPublic,
    summary="Update a user (self or admin; only admins set is_active/is_admin)",
    responses=documented_errors(400, *AUTHENTICATED_ERRORS, 403, 404, 409, 415),
)
def update_user(request: Request, session: SessionDep, claims: Claims, user_id: UserId, body: UserUpdate) -> UserPublic:
    actor = service.authenticated_user(session=session, claims=claims)
    target = service.authorized_target(session=session, actor=actor, user_id=user_id)
    user = service.update_user(session=session, hasher=request.app.state.hasher, actor=actor, target=target, data=body)
    return UserPublic.model_validate(user)


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
