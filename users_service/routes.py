"""HTTP routes of the users service: parse, call `service` in one worker thread, return.

The routes are `async`: their only blocking work is one `run_on_connection` (reads) or `run_in_session` (writes)
call, whose connection is closed in its thread, so no request holds one while it waits for a thread.
"""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from shared.admission import HashesPassword, password_hashing_slot
from shared.api_keys import SCOPE_READ, SCOPE_WRITE
from shared.client_address import request_client_address
from shared.database import run_in_session, run_on_connection
from shared.errors import documented_errors
from shared.models import User
from shared.tokens import MAX_DATABASE_ID, AccessClaims
from users_service import service
from users_service.deps import Claims, refuse_key_token, require_scope
from users_service.listing import check_paging
from users_service.schemas import UserCreate, UserPage, UserPublic, UserUpdate, UserUpdateMe

# Requests are matched against the routes in order and each route tried costs time: the reads clients
# call most come first. Each `/me` route must come before its `/{user_id}` twin, which would match "me" too.
router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=MAX_DATABASE_ID, description="The user's id")]
AUTHENTICATED_ERRORS = (401, 413, 422, 503)
JSON = "application/json"


def user_response(user: User | tuple, *, status_code: int = status.HTTP_200_OK) -> Response:
    # Serialised by pydantic straight to JSON bytes, as JSONResponse would write them.
    return Response(UserPublic.model_validate(user).model_dump_json(), status_code=status_code, media_type=JSON)


def require_update_scope(claims: AccessClaims, body: UserUpdateMe) -> None:
    require_scope(claims, SCOPE_WRITE)
    if body.model_fields_set & {"password", "email"}:
        # A password or an address is what recovers an account: an API key must not be able to take it over.
        refuse_key_token(claims, "An API key cannot change a password or an email; log in with a password")


@router.get(
    "/me", response_model=UserPublic, summary="The caller", responses=documented_errors(*AUTHENTICATED_ERRORS, 403)
)
async def read_me(request: Request, claims: Claims) -> Response:
    require_scope(claims, SCOPE_READ)
    return user_response(await run_on_connection(request, service.read_caller, claims=claims))


@router.get(
    "/{user_id}",
    response_model=UserPublic,
    summary="One user (self or admin)",
    responses=documented_errors(*AUTHENTICATED_ERRORS, 403, 404),
)
async def read_user(request: Request, claims: Claims, user_id: UserId) -> Response:
    require_scope(claims, SCOPE_READ)
    return user_response(await run_on_connection(request, service.read_user, claims=claims, user_id=user_id))


@router.patch(
    "/me",
    response_model=UserPublic,
    summary="Update the caller; a new password needs current_password",
    responses=documented_errors(400, *AUTHENTICATED_ERRORS, 403, 409, 415),
)
async def update_me(request: Request, claims: Claims, body: UserUpdateMe) -> Response:
    require_update_scope(claims, body)
    async with password_hashing_slot(request, hashes=body.password is not None):
        user = await run_in_session(
            request,
            service.update_caller,
            hasher=request.app.state.hasher,
            settings=request.app.state.settings,
            address=request_client_address(request),
            claims=claims,
            data=body,
        )
    return user_response(user)


@router.patch(
    "/{user_id}",
    response_model=UserPublic,
    summary="Update a user (self or admin; only admins set is_active/is_admin)",
    responses=documented_errors(400, *AUTHENTICATED_ERRORS, 403, 404, 409, 415),
)
async def update_user(request: Request, claims: Claims, user_id: UserId, body: UserUpdate) -> Response:
    require_update_scope(claims, body)
    async with password_hashing_slot(request, hashes=body.password is not None):
        user = await run_in_session(
            request,
            service.update_user_by_id,
            hasher=request.app.state.hasher,
            settings=request.app.state.settings,
            address=request_client_address(request),
            claims=claims,
            user_id=user_id,
            data=body,
        )
    return user_response(user)


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete the caller",
    responses=documented_errors(*AUTHENTICATED_ERRORS, 403),
)
async def delete_me(request: Request, claims: Claims) -> Response:
    require_scope(claims, SCOPE_WRITE)
    await run_in_session(request, service.delete_caller, claims=claims)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user (self or admin)",
    responses=documented_errors(*AUTHENTICATED_ERRORS, 403, 404),
)
async def delete_user(request: Request, claims: Claims, user_id: UserId) -> Response:
    require_scope(claims, SCOPE_WRITE)
    await run_in_session(request, service.delete_user_by_id, claims=claims, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    summary="Sign up",
    responses=documented_errors(409, 413, 415, 422, 503),
    dependencies=[HashesPassword],
)
async def sign_up(request: Request, body: UserCreate) -> Response:
    user = await run_in_session(request, service.create_user, hasher=request.app.state.hasher, data=body)
    return user_response(user, status_code=status.HTTP_201_CREATED)


@router.get(
    "", response_model=UserPage, summary="List users (admin)", responses=documented_errors(*AUTHENTICATED_ERRORS, 403)
)
async def list_users(
    request: Request,
    claims: Claims,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DATABASE_ID)] = 0,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_DATABASE_ID, description="The `next_after` of the previous page (keyset paging)"),
    ] = None,
) -> Response:
    require_scope(claims, SCOPE_READ)
    check_paging(after=after, offset=offset)
    listing = await run_on_connection(
        request, service.list_users_for_admin, claims=claims, limit=limit, offset=offset, after=after
    )
    page = UserPage(
        items=[UserPublic.model_validate(user) for user in listing.users],
        total=listing.total,
        total_is_exact=listing.total_is_exact,
        limit=limit,
        offset=offset,
        next_after=listing.next_after,
    )
    return Response(page.model_dump_json(), media_type=JSON)
