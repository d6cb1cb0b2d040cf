"""Revoking a user's refresh tokens: the users service does it on password change, deactivation, deletion."""

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import RefreshToken, User


def revoke_refresh_tokens_of_user(*, session: Session, user_id: int, now: datetime) -> None:
    """Marks every live refresh token of the user revoked; the caller commits, with the change that is the reason.

    The user's row is locked first, as the auth service takes it before storing a refresh token (shared in a
    login, exclusive in a refresh): a login or refresh at the same moment either stores its token before this
    and has it revoked here, or waits for the commit and then finds the user changed (a new token version, or
    inactive) and stores none.
    """
    session.execute(select(User.id).where(User.id == user_id).with_for_update())
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
