"""Password reset (auth service): a single-use token mailed on request, exchanged once for a new password.

The request's answer is the same, in about the same time, for every address: the same work up front (a token
made, a mail rendered) and one short transaction, which writes the token and the outbox row only for an active
user's address. Lock order, as every writer of users takes it: the user's row, then its tokens, sessions and
refresh tokens (shared.revocation), then the outbox (a new row, locked by nobody).
"""

from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection, delete, func, literal, select
from sqlalchemy.orm import Session

from shared.mail.messages import password_changed_mail, password_reset_mail
from shared.mail.outbox import queue_email
from shared.models import LoginFailure, User
from shared.one_time_tokens import (
    PASSWORD_RESET,
    InvalidToken,
    claim_token_of_user,
    live_token_exists,
    mail_token,
    new_token,
    same_address,
    sent_recently,
    void_tokens,
)
from shared.passwords import PasswordHasher
from shared.revocation import end_all_credentials_of_user
from shared.settings import Settings
from shared.throttle import (
    ThrottleLimits,
    begin_attempt,
    login_limits,
    record_failure,
    throttle_key_for_username,
)

USERS = User.__table__
# Sized like the login columns; the prefix keeps reset requests out of the login counts of the same address.
THROTTLE_KEY_LENGTH = 64


def reset_request_limits(settings: Settings) -> ThrottleLimits:
    """Reset requests share the login throttle's table and window, with the per-address limit, counted apart."""
    return replace(login_limits(settings), per_key=settings.login_max_failures_per_address)


def count_reset_request(*, connection: Connection, settings: Settings, address: str, now: datetime) -> None:
    """Counts one request from `address` (every request counts, like a failed login); Throttled past the limit."""
    key = f"reset:{address}"[:THROTTLE_KEY_LENGTH]
    attempt_id = begin_attempt(
        connection=connection, limits=reset_request_limits(settings), key=key, address=key, now=now
    )
    record_failure(connection=connection, attempt_id=attempt_id, key=key, address=key, now=now)


def request_password_reset(*, session: Session, settings: Settings, email: str, now: datetime) -> None:
    """`POST /password-reset`: for an active user's address, a token and its mail (one per user per 60 s)."""
    token = new_token()
    mail = password_reset_mail(settings=settings, token=token)
    # Locked, so that of two requests at once the second sees the first's token and sends nothing.
    user = session.execute(
        select(USERS.c.id, USERS.c.email)
        .where(func.lower(USERS.c.email) == func.lower(literal(email)), USERS.c.is_active.is_(True))
        .with_for_update(key_share=True)
    ).first()
    if user is None or sent_recently(session=session, purpose=PASSWORD_RESET, user_id=user.id, now=now):
        return
    mail_token(
        session=session,
        settings=settings,
        token=token,
        purpose=PASSWORD_RESET,
        user_id=user.id,
        email=user.email,
        mail=mail,
        now=now,
    )
    session.commit()


def hash_for_live_token(
    *, session: Session, hasher: PasswordHasher, token: str, new_password: str, now: datetime
) -> str:
    """The new password's hash, once a read shows the token usable: a bad token never costs a hash."""
    if not live_token_exists(session=session, token=token, purpose=PASSWORD_RESET, now=now):
        raise InvalidToken
    # The read's transaction ends and its connection goes back to the pool before the slow hash.
    session.close()
    return hasher.hash(new_password)


def confirm_password_reset(
    *, session: Session, settings: Settings, token: str, password_hash: str, now: datetime
) -> None:
    """`POST /password-reset/confirm`: claims the token (good only while the user still has the address it was
    mailed to) and, in the same transaction, sets the password, ends every session and deletes every API key (so
    every older access token ends), voids the other reset tokens, marks the address verified, clears the
    username's login throttle and queues the "password changed" mail."""
    user, claimed = claim_token_of_user(session=session, token=token, purpose=PASSWORD_RESET, now=now)
    if not same_address(user.email, claimed.email):
        # Mailed to an address the user has left since (perhaps because that mailbox was lost): raised before the
        # commit, so nothing of the claim stays.
        raise InvalidToken
    user.password_hash = password_hash
    user.token_version += 1
    # Sessions end and API keys go: the account may have been taken over, and no credential of that time may
    # outlive its recovery (a key's access tokens end with the key).
    end_all_credentials_of_user(session=session, user_id=user.id, now=now)
    void_tokens(session=session, user_id=user.id, purpose=PASSWORD_RESET, now=now)
    # The mailbox answered: as good as a verification.
    user.email_verified = True
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.username == throttle_key_for_username(user.username), LoginFailure.pending.is_(False)
        )
    )
    if user.email is not None:
        queue_email(
            session=session,
            mail=password_changed_mail(username=user.username),
            recipient=user.email,
            mail_from=settings.mail_from,
            now=now,
        )
    session.commit()
