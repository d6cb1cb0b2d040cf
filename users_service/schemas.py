"""Request and response bodies of the users service; no schema here ever carries a password hash."""

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StrictBool, field_serializer

from shared.models import USERNAME_PATTERN, as_utc


def _encodable_text(value: str) -> str:
    # Lone surrogates (a JSON "\ud800") cannot be encoded to UTF-8, for hashing or storing: 422, not 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL. Passwords are only hashed, so they may; stored text may not.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return _encodable_text(value)


Username = Annotated[str, Field(pattern=USERNAME_PATTERN), AfterValidator(str.lower)]
Password = Annotated[str, Field(min_length=8, max_length=128), AfterValidator(_encodable_text)]
CurrentPassword = Annotated[str, Field(max_length=128), AfterValidator(_encodable_text)]
Email = Annotated[EmailStr, Field(max_length=320)]
FullName = Annotated[str, Field(max_length=200), AfterValidator(_storable_text)]


class StrictBody(BaseModel):
    # An unknown field is a client mistake worth a 422, not something to ignore silently.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class UserCreate(StrictBody):
    username: Username
    password: Password
    email: Email | None = None
    full_name: FullName | None = None


class UserUpdateMe(StrictBody):
    """What a user may change on itself; `password` needs `current_password`."""

    email: Email | None = None
    full_name: FullName | None = None
    password: Password | None = None
    current_password: CurrentPassword | None = None


class UserUpdate(UserUpdateMe):
    """`PATCH /users/{id}`: as for oneself, plus the flags only an admin may set."""

    # Strict: "yes" or 1 must not make anyone an admin.
    is_active: StrictBool | None = None
    is_admin: StrictBool | None = None


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str | None
    full_name: str | None
    is_active: bool
    is_admin: bool
    created_at: datetime

    @field_serializer("created_at")
    def _with_time_zone(self, value: datetime) -> str:
        return as_utc(value).isoformat()


class UserPage(BaseModel):
    items: list[UserPublic]
    total: int
    limit: int
    offset: int
