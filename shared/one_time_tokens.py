"""Single-use tokens mailed to users (password reset, email verification): made, stored as a hash, claimed once.

The token itself only ever exists in the mail; the table holds its SHA-256. Both services use these helpers.
"""

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from shared.mail.outbox import queue_email
from shared.models import OneTimeToken, User
from shared.settings import Settings

PASSWORD_RESET = "password_reset"
EMAIL_VERIFICATION = "email_verification"
# 256 random bits, URL-safe, so a token fits in a link as it is.
TOKEN_BYTES = 32
# At most one mail of a purpose per user in this many seconds (60 s, as the API reference, docs/api.md, says).
RESEND_INTERVAL_SECONDS = 60

TOKENS = OneTimeToken.__table__


class InvalidToken(Exception):
    """Unknown, used, expired, for another purpose or another address: one answer for all (400 invalid_token)."""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    # surrogatepass: any string a client can send hashes (to nothing stored) instead of failing.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def store_token(
    *, session: Session, token: str, purpose: str, user_id: int, email: str, ttl_seconds: int, now: datetime
) -> None:
    """Inserts the token's row in the session's transaction; the caller commits it with what caused it."""
    session.execute(
        insert(TOKENS).values(
            token_hash=hash_token(token),
            purpose=purpose,
            user_id=user_id,
            email=email,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
    )


def mail_token(
    *, session: Session, settings: Settings, token: str, purpose: str, user_id: int, email: str, mail, now: datetime
) -> None:
    """Stores the token for `email` and queues its `mail` (a RenderedMail) to it, both in the session's transaction."""
    ttl_seconds = (
        settings.password_reset_ttl_seconds if purpose == PASSWORD_RESET else settings.email_verification_ttl_seconds
    )
    store_token(
        session=session, token=token, purpose=purpose, user_id=user_id, email=email, ttl_seconds=ttl_seconds, now=now
    )
    queue_email(session=session, mail=mail, recipient=email, mail_from=settings.mail_from, now=now)


def sent_recently(*, session: Session, purpose: str, user_id: int, now: datetime, email: str | None = None) -> bool:
    """A token of this purpose went to the user (at `email`, if given) in the last RESEND_INTERVAL_SECONDS."""
    query = select(TOKENS.c.id).where(
        TOKENS.c.user_id == user_id,
        TOKENS.c.purpose == purpose,
        TOKENS.c.created_at > now - timedelta(seconds=RESEND_INTERVAL_SECONDS),
    )
    if email is not None:
        query = query.where(TOKENS.c.email == email)
    return session.execute(query.limit(1)).first() is not None


def live_token_exists(*, session: Session, token: str, purpose: str, now: datetime) -> bool:
    """A read with no lock, to refuse a bad token before any costly work (hashing a new password)."""
    query = select(TOKENS.c.id).where(*_usable(token=token, purpose=purpose, now=now))
    return session.execute(query).first() is not None


def claim_token(*, session: Session, token: str, purpose: str, now: datetime):  # noqa: ANN201
    """Marks the token used if it is still usable and returns its (user_id, email); InvalidToken otherwise.

    One conditional UPDATE: of two claims at once, the second waits for the first's commit and then matches
    nothing, so exactly one succeeds.
    """
    claimed = session.execute(
        update(TOKENS)
        .where(*_usable(token=token, purpose=purpose, now=now))
        .values(used_at=now)
        .returning(TOKENS.c.user_id, TOKENS.c.email)
    ).first()
    if claimed is None:
        raise InvalidToken
    return claimed


def claim_token_of_user(*, session: Session, token: str, purpose: str, now: datetime):  # noqa: ANN201
    """(the token's user, (user_id, email) of the claimed token); InvalidToken if either is gone or the user inactive.

    The user's row is locked before the token is claimed: every writer of a user's rows takes that row first
    (shared/revocation.py), so two confirms of one user's tokens queue there instead of deadlocking.
    """
    owner_id = token_owner_id(session=session, token=token, purpose=purpose)
    user = session.scalars(select(User).where(User.id == owner_id).with_for_update()).first()
    claimed = claim_token(session=session, token=token, purpose=purpose, now=now)
    if user is None or not user.is_active:
        raise InvalidToken
    return user, claimed


def same_address(first: str | None, second: str | None) -> bool:
    """A token is good only for the address it was mailed to; domains are case-insensitive, and uniqueness here is
    too (lower(email)), so is "the same address"."""
    return first is not None and second is not None and first.lower() == second.lower()


def token_owner_id(*, session: Session, token: str, purpose: str) -> int | None:
    found = session.execute(
        select(TOKENS.c.user_id).where(TOKENS.c.token_hash == hash_token(token), TOKENS.c.purpose == purpose)
    ).first()
    return found.user_id if found else None


def void_tokens(*, session: Session, user_id: int, purpose: str, now: datetime) -> None:
    """Every still-unused token of this purpose of the user stops working."""
    session.execute(
        update(TOKENS)
        .where(TOKENS.c.user_id == user_id, TOKENS.c.purpose == purpose, TOKENS.c.used_at.is_(None))
        .values(used_at=now)
    )


def _usable(*, token: str, purpose: str, now: datetime) -> tuple:
    return (
        TOKENS.c.token_hash == hash_token(token),
        TOKENS.c.purpose == purpose,
        TOKENS.c.used_at.is_(None),
        TOKENS.c.expires_at > now,
    )
