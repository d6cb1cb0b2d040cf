"""FastAPI dependencies of the users service: the bearer token's claims, the session.

The claims dependency is `async` and touches no database: all of a request's database work then
happens in the one thread its endpoint runs in, so no connection is held while waiting for a thread.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.models import OAuthFlowClientCredentials
from fastapi.security import OAuth2PasswordBearer

from shared.api_keys import SCOPE_READ, SCOPE_WRITE
from shared.errors import ApiError
from shared.observability import set_request_user
from shared.tokens import AccessClaims, InvalidAccessToken, StaticKeySource


def unauthorized(detail: str, *, invalid_token: bool = True) -> ApiError:
    challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
    return ApiError(
        401, detail, error="invalid_token" if invalid_token else None, headers={"WWW-Authenticate": challenge}
    )


class AccessTokenBearer(OAuth2PasswordBearer):
    """The OAuth2 password-flow bearer scheme, returning the checked claims of the caller's access token.

    One dependency that both documents the scheme and checks the token: as a scheme plus a checker depending on
    it, every authenticated request paid FastAPI a second dependency to resolve (docs/performance.md).
    """

    async def __call__(self, request: Request) -> AccessClaims:  # type: ignore[override]
        token = await super().__call__(request)
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


# The docs' "Authorize" gets a token at the auth service, with a password or an API key (client credentials);
# create_app puts the auth service's public URL into the OpenAPI schema as both flows' tokenUrl.
SECURITY_SCHEME_NAME = "AuthService"
API_KEY_SCOPES = {
    SCOPE_READ: "GET /users/me, GET /users/{id}, GET /users (with the key owner's rights)",
    SCOPE_WRITE: "PATCH and DELETE of users (never a password or an email)",
}
access_token_bearer = AccessTokenBearer(
    tokenUrl="/token",
    scheme_name=SECURITY_SCHEME_NAME,
    auto_error=False,
    description=(
        "An access token from the auth service's POST /token: log in with a password, or use an API key "
        "(client_id and client_secret) with the client credentials grant; it is sent as a bearer token."
    ),
)
access_token_bearer.model.flows.clientCredentials = OAuthFlowClientCredentials(tokenUrl="/token", scopes=API_KEY_SCOPES)

Claims = Annotated[AccessClaims, Depends(access_token_bearer)]


def insufficient_scope(detail: str) -> ApiError:
    return ApiError(
        403, detail, error="insufficient_scope", headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
    )


def require_scope(claims: AccessClaims, scope: str) -> None:
    """Refuse an API-key token without `scope`; a login token (scopes None) may do anything its user may."""
    if claims.scopes is not None and scope not in claims.scopes:
        raise insufficient_scope(f"This API key lacks the {scope} scope")


def refuse_key_token(claims: AccessClaims, detail: str) -> None:
    if claims.scopes is not None:
        raise insufficient_scope(detail)


async def login_claims(claims: Claims) -> AccessClaims:
    # Managing keys, password or email needs a person's login: a leaked key must not mint or keep itself alive.
    refuse_key_token(claims, "An API key cannot do this; log in with a password")
    return claims


LoginClaims = Annotated[AccessClaims, Depends(login_claims)]
