"""FastAPI dependencies of the auth service: the bearer token of a person's login, for the /sessions routes.

Checked without the database (signature and claims); whether its session is still live is read by the same query
that serves the request (auth_service/sessions.py).
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import ApiError
from shared.observability import set_request_user
from shared.tokens import AccessClaims, InvalidAccessToken


def unauthorized(detail: str, *, invalid_token: bool = True) -> ApiError:
    # RFC 6750 section 3: no error code when the request carried no token at all.
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return ApiError(
        401, detail, error="invalid_token" if invalid_token else None, headers={"WWW-Authenticate": challenge}
    )


def insufficient_scope(detail: str) -> ApiError:
    return ApiError(
        403, detail, error="insufficient_scope", headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
    )


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="AccessToken",
    description="An access token from this service's POST /token (password or refresh_token grant).",
)


async def login_claims(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> AccessClaims:
    """The checked claims of a login's access token; an API key's token is refused (403 insufficient_scope)."""
    if credentials is None or not credentials.credentials:
        raise unauthorized("Not authenticated", invalid_token=False)
    try:
        claims = request.app.state.verifier.verify(credentials.credentials)
    except InvalidAccessToken:
        raise unauthorized("Invalid or expired token") from None
    set_request_user(claims.user_id)
    if claims.scopes is not None:
        # Sessions are a person's: a leaked key must not list or end them.
        raise insufficient_scope("An API key cannot do this; log in with a password")
    return claims


LoginClaims = Annotated[AccessClaims, Depends(login_claims)]
