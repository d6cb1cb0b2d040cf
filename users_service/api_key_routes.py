"""HTTP routes of the users service's API keys: the caller's own (`/users/me/api-keys`) and, for admins, anyone's.

Every route needs a login's token (`LoginClaims`): a key's token may never create, list or delete keys.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from shared.database import run_in_session
from shared.errors import documented_errors
from shared.tokens import MAX_DATABASE_ID
from users_service import api_keys
from users_service.api_key_schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyPublic
from users_service.deps import LoginClaims
from users_service.routes import AUTHENTICATED_ERRORS, JSON, UserId

# Included after the users routes, which it cannot shadow (their paths have one segment after /users). Within
# it, each `/me/...` route comes before its `/{user_id}/...` twin, which would match "me" too.
router = APIRouter(prefix="/users", tags=["api keys"])

KeyId = Annotated[int, Path(ge=1, le=MAX_DATABASE_ID, description="The API key's id")]
KEY_ERRORS = (*AUTHENTICATED_ERRORS, 403)


def _key_list(keys: list) -> Response:
    page = ApiKeyList(items=[ApiKeyPublic.model_validate(key) for key in keys])
    return Response(page.model_dump_json(), media_type=JSON)


@router.post(
    "/me/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create an API key of the caller; its client_secret is in this response only",
    responses=documented_errors(*KEY_ERRORS, 409, 415),
)
async def create_api_key(request: Request, claims: LoginClaims, body: ApiKeyCreate) -> Response:
    key, client_secret = await run_in_session(
        request,
        api_keys.create_api_key,
        settings=request.app.state.settings,
        claims=claims,
        data=body,
        now=datetime.now(UTC),
    )
    created = ApiKeyCreated.model_validate(
        {**ApiKeyPublic.model_validate(key).model_dump(), "client_secret": client_secret}
    )
    return Response(created.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type=JSON)


@router.get(
    "/me/api-keys",
    response_model=ApiKeyList,
    summary="The caller's API keys, newest first",
    responses=documented_errors(*KEY_ERRORS),
)
async def list_own_api_keys(request: Request, claims: LoginClaims) -> Response:
    return _key_list(await run_in_session(request, api_keys.list_own_api_keys, claims=claims))


@router.delete(
    "/me/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one of the caller's API keys; its access tokens stop at once",
    responses=documented_errors(*KEY_ERRORS, 404),
)
async def delete_own_api_key(request: Request, claims: LoginClaims, key_id: KeyId) -> Response:
    await run_in_session(request, api_keys.delete_own_api_key, claims=claims, key_id=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{user_id}/api-keys",
    response_model=ApiKeyList,
    summary="A user's API keys, newest first (admin)",
    responses=documented_errors(*KEY_ERRORS, 404),
)
async def list_api_keys_of_user(request: Request, claims: LoginClaims, user_id: UserId) -> Response:
    return _key_list(await run_in_session(request, api_keys.list_api_keys_of_user, claims=claims, user_id=user_id))


@router.delete(
    "/{user_id}/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user's API key (admin)",
    responses=documented_errors(*KEY_ERRORS, 404),
)
async def delete_api_key_of_user(request: Request, claims: LoginClaims, user_id: UserId, key_id: KeyId) -> Response:
    await run_in_session(request, api_keys.delete_api_key_of_user, claims=claims, user_id=user_id, key_id=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
