"""Table definitions shared by both services.

The users service owns `users`, `api_keys` and email verification tokens; the auth service owns `sessions`,
`refresh_tokens`, `login_failures` and password reset tokens; both write `outbox_emails`, which a sender drains.
"""

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them and errors can be told apart.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 3-64 ASCII letters, digits, `_`, `.`, `-`; compared and stored lower-case.
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,64}$"
EMAIL_UNIQUE_INDEX = "uq_users_email_lower"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Always stored lower-case, so the plain unique constraint is case-insensitive.
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    full_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # True once the address answered a verification or reset mail; false again when the address changes.
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Bumped on every password change; access tokens carry it, and older ones are refused.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)

    # On SQLite (`make run`) ids are never handed out again, as PostgreSQL's sequence never does (migration 0006).
    __table_args__ = (Index(EMAIL_UNIQUE_INDEX, func.lower(email), unique=True), {"sqlite_autoincrement": True})


class UserSession(Base):
    """One login: the family of refresh tokens it started, and what a person needs to recognise it."""

    __tablename__ = "sessions"

    # A UUID, the `sid` claim of the session's access tokens and the `family_id` of its refresh tokens.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    # The expiry of the session's newest refresh token.
    # Indexed, as is ended_at, for the retention pass (shared.retention) to find sessions past their retention.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    user_agent: Mapped[str | None] = mapped_column(String(256))
    ip_address: Mapped[str | None] = mapped_column(String(64))


class RefreshToken(Base):
    """One refresh token; every token of one login shares a `family_id`, the id of its session."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SHA-256 of the opaque token: the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    # Indexed for the retention pass (shared.retention), which deletes tokens long past it.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # Set when the token was exchanged for the next one; a second use of it is theft.
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A credential for machine clients: the OAuth2 client-credentials grant with `client_id` and a secret."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    # A keyed hash of the secret (the secret is 256 random bits, so no slow hash is needed); never the secret.
    secret_hash: Mapped[str] = mapped_column(String(64))
    # Space-separated, as OAuth2 writes scopes.
    scopes: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OneTimeToken(Base):
    """A single-use token mailed to a user: a password reset or an email verification; only its hash is kept."""

    __tablename__ = "one_time_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # "password_reset" or "email_verification".
    purpose: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The address the token was mailed to: a verification is good only while the user still has it.
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    # Indexed for the retention pass (shared.retention).
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_one_time_tokens_user_id_purpose_created_at", "user_id", "purpose", "created_at"),)


class OutboxEmail(Base):
    """An email waiting to be sent, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox_emails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Sent as the Message-ID header, so a duplicate delivery can be recognised.
    message_id: Mapped[str] = mapped_column(String(255))
    # What the mail is for ("password_reset", "email_verification", "password_changed"): metrics and logs.
    kind: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(255))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    # When a sender may next try it: moved forward when a sender claims it (a lease) and after a failure (backoff).
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginFailure(Base):
    """One failed password login (or one whose password is still being checked), kept for the throttling window."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    # True while the attempt's password is being checked; an attempt that failed is a plain failure (false).
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_login_failures_username_occurred_at", "username", "occurred_at"),
        Index("ix_login_failures_address_occurred_at", "address", "occurred_at"),
        Index("ix_login_failures_occurred_at", "occurred_at"),
    )


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
