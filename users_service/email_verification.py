"""Email verification (users service): a mail to every new address, resend on request, confirm with the token.

A token is good once, for the address it was mailed to: after an email change only the newest address counts.
Lock order as elsewhere: the user's row first, then its tokens and the outbox (a new row, locked by nobody).
"""

from datetime import UTC, datetime

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from shared.errors import ApiError
from shared.mail.messages import email_verification_mail
from shared.models import User
from shared.one_time_tokens import (
    EMAIL_VERIFICATION,
    InvalidToken,
    claim_token_of_user,
    mail_token,
    new_token,
    same_address,
    sent_recently,
)
from shared.settings import Settings


def verify_new_email(*, session: Session, user: User) -> None:
    """On sign-up and on every change of `user.email` (not yet flushed): unverified, and a mail to the new address.

    Called before the caller commits, so the token and the mail are in the same transaction as the change.
    """
    history = inspect(user).attrs.email.history
    previous = history.deleted[0] if history.deleted else None
    if not history.added or same_address(previous, user.email):
        return
    user.email_verified = False
    if user.email is None:
        return
    settings, now = session.info["settings"], datetime.now(UTC)
    if user.id is not None:
        _send_verification(session=session, settings=settings, user=user, now=now)
        return
    # A new user has no id before its INSERT: its token and mail follow that INSERT in the commit's own flush, so a
    # sign-up refused as a duplicate leaves neither behind.
    event.listen(
        session,
        "after_flush",
        lambda flushed, _context: _send_verification(session=flushed, settings=settings, user=user, now=now),
        once=True,
    )


def _send_verification(*, session: Session, settings: Settings, user: User, now: datetime) -> None:
    token = new_token()
    mail_token(
        session=session,
        settings=settings,
        token=token,
        purpose=EMAIL_VERIFICATION,
        user_id=user.id,
        email=user.email,
        mail=email_verification_mail(settings=settings, token=token, username=user.username),
        now=now,
    )


def resend_verification(*, session: Session, settings: Settings, user: User, now: datetime) -> None:
    """`POST /users/me/email-verification` for `user` (the checked caller): another mail, unless one went to this
    address in the last 60 s.

    409 when there is nothing to verify. Within the 60 s the answer is still 202 and nothing is sent, as for a
    password reset: the mail already on its way is the one to use.
    """
    # Locked (and read again) so that two resends at once send one mail.
    session.refresh(user, with_for_update={"key_share": True})
    if user.email is None:
        raise ApiError(409, "There is no email address to verify", error="no_email")
    if user.email_verified:
        raise ApiError(409, "The email address is already verified", error="already_verified")
    if sent_recently(session=session, purpose=EMAIL_VERIFICATION, user_id=user.id, email=user.email, now=now):
        return
    _send_verification(session=session, settings=settings, user=user, now=now)
    session.commit()


def confirm_email(*, session: Session, token: str, now: datetime) -> User:
    """`POST /email-verification/confirm`: the token's user, now verified; InvalidToken (400) for anything else,
    a token for an address the user no longer has included."""
    user, claimed = claim_token_of_user(session=session, token=token, purpose=EMAIL_VERIFICATION, now=now)
    if not same_address(user.email, claimed.email):
        raise InvalidToken
    user.email_verified = True
    session.commit()
    return user
