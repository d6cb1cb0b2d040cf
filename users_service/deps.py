"""FastAPI dependencies of the users service: the bearer token's claims, the session.

The claims dependency is `async` and touches no database: all of a request's database work then
happens in the one thread its endpoint runs in, so no connection is held while waiting for a thread.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer

from shared.errors import ApiError
from shared.observability import set_request_user
from shared.tokens import AccessClaims, InvalidAccessToken, StaticKeySource

# The docs' "Authorize" logs in at the auth service; create_app puts its public URL into the OpenAPI schema.
SECURITY_SCHEME_NAME = "AuthServicePassword"
bearer_scheme = OAuth2PasswordBearer(
    tokenUrl="/token",
    scheme_name=SECURITY_SCHEME_NAME,
    auto_error=False,
    description="Log in at the auth service's POST /token; the access token is sent as a bearer token.",
)


def unauthorized(detail: str, *, invalid_token: bool = True) -> ApiError:
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return ApiError(
        401, detail, error="invalid_token" if invalid_token else None, headers={"WWW-Authenticate": challenge}
    )


async def bearer_claims(request: Request, token: Annotated[str | None, Depends(bearer_scheme)]) -> AccessClaims:
    if not token:
        raise unauthorized("Not authenticated", invalid_token=False)
    verifier = request.app.state.verifier
    try:
        if isinstance(request.app.state.key_source, StaticKeySource):
            claims = verifier.verify(token)
        else:
            # A JWKS refetch is blocking I/O: keep it off the event loop.
            claims = await run_in_threadpool(verifier.verify, token)
    except InvalidAccessToken:
        raise unauthorized("Invalid or expired token") from None
    set_request_user(claims.user_id)
    return claims


Claims = Annotated[AccessClaims, Depends(bearer_claims)]
