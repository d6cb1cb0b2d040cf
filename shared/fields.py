"""Request-body field types both services validate alike: passwords, email addresses, bodies without extra fields."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field


def encodable_text(value: str) -> str:
    # Lone surrogates (a JSON "\ud800") cannot be encoded to UTF-8, for hashing or storing: 422, not 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


# 8-128 characters of any Unicode, all of it counted: sign-up, a password change and a reset confirm alike.
Password = Annotated[str, Field(min_length=8, max_length=128), AfterValidator(encodable_text)]
Email = Annotated[EmailStr, Field(max_length=320)]


class StrictBody(BaseModel):
    # An unknown field is a client mistake worth a 422, not something to ignore silently.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
