"""The one Settings class both services read, from the environment and `.env`.

Validation happens here, at start-up: a service with a weak key or a URL it cannot use refuses to start.
"""

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_BYTES = 32
# Values people paste from tutorials; refused even when long enough.
KNOWN_WEAK_SECRETS = {"changeme", "secret", "changethis", "your-secret-key", "jwt-secret"}
LOCAL_SQLITE_URL = "sqlite:///./var/local.db"


def normalise_database_url(url: str) -> str:
    """Make a pasted PostgreSQL URL use psycopg2, which is what this project ships.

    SQLAlchemy 2.1 would pick psycopg 3 for a bare `postgresql://`, and Neon's console and
    Heroku-style tools hand out `postgres://`, which SQLAlchemy does not know at all.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def split_comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Configuration of both services; auth-only and users-only fields say so."""

    # hide_input_in_errors: a refused setting must not print the secrets beside it.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    # "local" is the `make run` developer mode: a SQLite default, docs origins allowed for CORS.
    app_env: Literal["local", "production"] = "production"

    database_url: str = LOCAL_SQLITE_URL
    # Neon: the direct (non-pooler) URL for migrations; the pooled one for the services.
    migration_database_url: str | None = None
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # A SELECT 1 before using a pooled connection: what finds the ones a suspended Neon compute closed.
    db_pool_pre_ping: bool = True
    # ...sent only to a connection that rested in the pool this long, or that the server wrote to meanwhile (its
    # notice that it closed it); one reused within this window goes without the round trip. 0: before every use.
    db_pool_pre_ping_idle_seconds: float = Field(default=1.0, ge=0, le=300)
    # Neon closes idle connections when it suspends a compute; recycle before that bites.
    db_pool_recycle_seconds: int = Field(default=280, ge=1, le=300)
    db_connect_timeout_seconds: int = Field(default=10, ge=1, le=60)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)

    jwt_secret: str | None = None
    jwt_algorithm: Literal["HS256", "EdDSA", "RS256"] = "HS256"
    jwt_private_key_file: Path | None = None
    # Public keys (or private keys, whose public half is used) of earlier signing keys, still published.
    jwt_previous_key_files: CommaList = []
    jwt_public_key_file: Path | None = None
    jwks_url: str | None = None
    jwks_cache_seconds: int = Field(default=300, ge=1)
    jwks_min_refetch_seconds: float = Field(default=10.0, ge=0)
    jwt_issuer: str = "auth-service"
    jwt_audience: str = "users-service"
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    access_token_ttl_seconds: int = Field(default=900, ge=1)
    refresh_token_ttl_seconds: int = Field(default=1_209_600, ge=1)

    # Argon2id; the defaults are OWASP's minimum (19 MiB, 2 passes, 1 lane).
    argon2_memory_kib: int = Field(default=19_456, ge=8)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Each Argon2 hash holds its memory while it runs: bound how many run at once per worker. One per worker,
    # with a worker per core: more hashes than cores thrash the cache and each holds its memory more
    # (docs/performance.md, "Logins and hashing").
    password_hash_concurrency: int = Field(default=1, ge=1)
    password_hash_queue_timeout_seconds: float = Field(default=5.0, gt=0)
    # Requests that will hash a password (login, sign-up, password change) in flight per worker; beyond it they are
    # refused at once (503, Retry-After) instead of queueing for a thread with their bodies in memory.
    password_hash_max_in_flight: int = Field(default=32, ge=1)

    admin_username: str | None = None
    admin_password: str | None = None

    login_max_failures_per_username: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=50, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    trusted_proxies: CommaList = []

    cors_origins: CommaList = []
    # The auth service's address as browsers see it (the docs' tokenUrl); default: the local run's.
    auth_public_url: str | None = None
    auth_port: int = 8001
    users_port: int = 8002

    # Machine clients (users service owns the keys, the auth service checks them).
    api_key_max_per_user: int = Field(default=20, ge=1)

    # Mail. No SMTP_HOST: mails are written as .eml files under `mail_dir` (the local run's inbox).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65_535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    mail_from: str = "no-reply@localhost"
    mail_dir: Path = Path("var/mail")
    # Links put in mails; `{token}` is replaced. Unset: the mail names the API's confirm endpoint instead.
    password_reset_url: str | None = None
    email_verification_url: str | None = None
    password_reset_ttl_seconds: int = Field(default=1_800, ge=60)
    email_verification_ttl_seconds: int = Field(default=86_400, ge=60)
    # The outbox sender: a thread in every worker (shared.mail.sender); off here if mail is sent some other way.
    mail_sender_enabled: bool = True
    # Retries back off exponentially from the base to the cap (with jitter); after the last attempt a mail is dead.
    # 60 attempts: about two days, so an SMTP outage of a weekend loses no mail.
    mail_max_attempts: int = Field(default=60, ge=1)
    mail_retry_base_seconds: float = Field(default=5.0, gt=0)
    mail_retry_max_seconds: float = Field(default=3_600.0, gt=0)

    # Rows of ended or expired sessions (their refresh tokens) are deleted this long after the end.
    ended_session_retention_seconds: int = Field(default=604_800, ge=0)
    # Retention (shared.retention): a pass in every worker about this often (with jitter), skipped while the
    # worker has not used the database since its last pass; 0 turns it off.
    retention_interval_seconds: float = Field(default=3_600.0, ge=0)
    # Rows deleted per statement (each its own short transaction); sessions go a twentieth of it at a time,
    # each taking its refresh tokens with it.
    retention_batch_size: int = Field(default=1_000, ge=20, le=100_000)
    # Reset and verification tokens are kept this long after they expire (a used one expires soon after anyway).
    one_time_token_retention_seconds: int = Field(default=86_400, ge=0)
    # Sent and dead outbox mails are kept this long after they were sent or given up, for an operator's questions.
    outbox_retention_seconds: int = Field(default=604_800, ge=0)

    max_body_bytes: int = Field(default=65_536, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # FastAPI runs `def` endpoints in a thread pool; it must not exceed the DB pool (docs/architecture.md).
    threadpool_size: int | None = Field(default=None, ge=1)

    _split = field_validator("jwt_previous_key_files", "trusted_proxies", "cors_origins", mode="before")(
        split_comma_list
    )

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        return normalise_database_url(value) if value else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        # gunicorn's docs write levels in lower case; accept both.
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_consistency(self) -> "Settings":
        if self.jwt_algorithm == "HS256":
            self._check_secret()
        if self.app_env != "local" and self.database_url.startswith("sqlite"):
            raise ValueError("DATABASE_URL must be set outside local development (SQLite is for `make run` only)")
        if bool(self.admin_username) != bool(self.admin_password):
            raise ValueError("ADMIN_USERNAME and ADMIN_PASSWORD go together: set both or neither")
        return self

    def _check_secret(self) -> None:
        secret = self.jwt_secret
        if secret is None:
            raise ValueError("JWT_SECRET is required with JWT_ALGORITHM=HS256 (`make run` writes one into .env)")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        if secret.lower() in KNOWN_WEAK_SECRETS or len(set(secret)) < 8:
            raise ValueError("JWT_SECRET is a known or low-entropy value; generate a random one")

    @cached_property
    def effective_threadpool_size(self) -> int:
        """Threads for `def` endpoints: one per pooled connection, so no thread waits on the pool forever."""
        return self.threadpool_size or self.db_pool_size + self.db_max_overflow

    @property
    def effective_auth_public_url(self) -> str:
        return (self.auth_public_url or f"http://127.0.0.1:{self.auth_port}").rstrip("/")

    @property
    def effective_cors_origins(self) -> list[str]:
        if self.cors_origins or self.app_env != "local":
            return self.cors_origins
        return [
            f"http://{host}:{port}" for host in ("127.0.0.1", "localhost") for port in (self.auth_port, self.users_port)
        ]


class MigrationSettings(BaseSettings):
    """The two URLs migrations need, read like Settings but without its service checks.

    A migration job needs no signing key, so it is not made to carry one.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = LOCAL_SQLITE_URL
    migration_database_url: str | None = None

    @property
    def effective_migration_url(self) -> str:
        return normalise_database_url(self.migration_database_url or self.database_url)
