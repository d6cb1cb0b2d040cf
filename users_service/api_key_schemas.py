"""Request and response bodies of the users service's API key endpoints; only the creation shows the secret."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, field_validator

from shared.api_keys import SCOPE_READ, SCOPES, scopes_of
from shared.models import as_utc
from users_service.schemas import StrictBody, _storable_text

Scope = Literal["users:read", "users:write"]
assert set(Scope.__args__) == set(SCOPES)  # noqa: S101  (one list of scopes)


def _canonical_scopes(scopes: list[str]) -> list[str]:
    # A repeated scope grants nothing more; stored and returned once each, in a fixed order.
    return [scope for scope in SCOPES if scope in scopes]


class ApiKeyCreate(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_storable_text)]
    # At least one: a key without a scope could do nothing.
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=8), AfterValidator(_canonical_scopes)] = [SCOPE_READ]
    expires_in_days: Annotated[int, Field(strict=True, ge=1, le=365)] | None = 90


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    client_id: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None

    @field_validator("scopes", mode="before")
    @classmethod
    def _split_stored_scopes(cls, value: object) -> object:
        # Stored space-separated, as OAuth2 writes them.
        return scopes_of(value) if isinstance(value, str) else value

    @field_serializer("created_at", "expires_at", "last_used_at")
    def _with_time_zone(self, value: datetime | None) -> str | None:
        return None if value is None else as_utc(value).isoformat()


class ApiKeyCreated(ApiKeyPublic):
    """The one response that carries `client_secret`: it is stored only as a hash."""

    client_secret: str


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]
