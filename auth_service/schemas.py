"""Response bodies of the auth service (request bodies are OAuth2 forms)."""

from pydantic import BaseModel


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


class JwksResponse(BaseModel):
    keys: list[dict[str, str]]
