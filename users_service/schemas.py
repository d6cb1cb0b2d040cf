"""Request and response bodies of the users service; no schema here ever carries a password hash."""

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_serializer

from shared.fields import Email, Password, StrictBody
from shared.fields import encodable_text as _encodable_text
from shared.models import USERNAME_PATTERN, as_utc


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL. Passwords are only hashed, so they may; stored text may not.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return _encodable_text(value)


Username = Annotated[str, Field(pattern=USERNAME_PATTERN), AfterValidator(str.lower)]
CurrentPassword = Annotated[str, Field(max_length=128), AfterValidator(_encodable_text)]
FullName = Annotated[str, Field(max_length=200), AfterValidator(_storable_text)]


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
    # False until the address answered a verification (or reset) mail; false again whenever it changes.
    email_verified: bool
    created_at: datetime

    @field_serializer("created_at")
    def _with_time_zone(self, value: datetime) -> str:
        return as_utc(value).isoformat()


class UserPage(BaseModel):
    """A page of `GET /users`; pass `next_after` as `after` for the next page (null: this is the last)."""

    items: list[UserPublic]
    # An estimate when `total_is_exact` is false (above 100,000 users).
    total: int
    total_is_exact: bool
    limit: int
    offset: int
    next_after: int | None
