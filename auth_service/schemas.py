"""Bodies of the auth service: the token request's form and the responses."""

from datetime import datetime

from pydantic import BaseModel


class TokenForm(BaseModel):
    """`POST /token`'s form fields (RFC 6749), each optional here: which a grant needs is checked per grant."""

    grant_type: str | None = None
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None
    scope: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


class ClientCredentialsTokenResponse(BaseModel):
    """The client-credentials grant's answer: no refresh token, and the scopes the access token carries."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    scope: str


class JwksResponse(BaseModel):
    keys: list[dict[str, str]]


class SessionPublic(BaseModel):
    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    # True for the session the presented access token belongs to.
    current: bool


class SessionList(BaseModel):
    items: list[SessionPublic]
