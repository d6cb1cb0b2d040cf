"""FastAPI dependencies of the users service: the bearer token's claims, the session.

The claims dependency is `async` and touches no database: all of a request's database work then
happens in the one thread its endpoint runs in, so no connection is held while waiting for a thread.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import ApiError
from shared.tokens import AccessClaims, InvalidAccessToken, StaticKeySource

bearer_scheme = HTTPBearer(auto_error=False, description="An access token from the auth service's POST /token")


def unauthorized(detail: str, *, invalid_token: bool = True) -> ApiError:
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return ApiError(401, detail, error="invalid_token" if invalid_token else None, headers={"WWW-Authenticate": challenge})


async def bearer_claims(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> AccessClaims:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("Not authenticated", invalid_token=False)
    verifier = request.app.state.verifier
    try:
        if isinstance(request.app.state.key_source, StaticKeySource):
            return verifier.verify(credentials.credentials)
        # A JWKS refetch is blocking I/O: keep it off the event loop.
        return await run_in_threadpool(verifier.verify, credentials.credentials)
    except InvalidAccessToken:
        raise unauthorized("Invalid or expired token") from None


Claims = Annotated[AccessClaims, Depends(bearer_claims)]
