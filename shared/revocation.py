"""Revoking a user's refresh tokens: the users service does it on password change, deactivation, deletion."""

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.models import RefreshToken


def revoke_refresh_tokens_of_user(*, session: Session, user_id: int, now: datetime) -> None:
    """Marks every live refresh token of the user revoked; the caller commits."""
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
