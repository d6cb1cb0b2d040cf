"""What the users service's tests share besides fixtures: accounts, response-shape checks, reads of the users table, the
log lines the process writes."""

import secrets
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import func, select

from shared.models import RefreshToken, User, UserSession
from shared.observability import configure_logging, flush_logs

# The bootstrap admin's password in the suite's settings.
ADMIN_PASSWORD = "admin password 1"
PUBLIC_USER_FIELDS = {"id", "username", "email", "full_name", "is_active", "is_admin", "email_verified", "created_at"}


@dataclass
class Account:
    id: int
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def unique_username(prefix: str = "user") -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


def unique_email(prefix: str = "mail") -> str:
    return f"{prefix}.{secrets.token_hex(5)}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Response, status_code: int | set[int]) -> dict:
    """The error shape of the API reference (docs/api.md): the status, a JSON body, a `detail` key."""
    expected = status_code if isinstance(status_code, set) else {status_code}
    assert response.status_code in expected, response.text
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and "detail" in body, body
    return body


def assert_unauthorized(response: Response) -> dict:
    body = assert_error(response, 401)
    assert response.headers.get("www-authenticate", "").startswith("Bearer"), response.headers
    return body


def assert_retry_later(response: Response) -> dict:
    """503 with a JSON detail and a `Retry-After` in whole seconds."""
    body = assert_error(response, 503)
    assert int(response.headers["retry-after"]) > 0
    return body


def assert_public_user(body: dict) -> dict:
    """Exactly the public fields, never a password or hash, `created_at` ISO 8601 with a time zone."""
    assert set(body) == PUBLIC_USER_FIELDS, body
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None, body["created_at"]
    return body


def stored_user(client: TestClient, user_id: int) -> User | None:
    with client.app.state.session_factory() as session:
        return session.get(User, user_id)


def stored_user_named(client: TestClient, username: str) -> User | None:
    with client.app.state.session_factory() as session:
        return session.scalar(select(User).where(User.username == username))


def count_users_named(client: TestClient, username: str) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(select(func.count()).select_from(User).where(User.username == username))


def count_users(client: TestClient) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(select(func.count()).select_from(User))


def add_session(client: TestClient, user_id: int, *, expires_at: datetime | None = None) -> str:
    """A live session row, as the auth service stores it at a login; its id is the `sid` of the login's tokens."""
    now = datetime.now(UTC)
    with client.app.state.session_factory() as session:
        row = UserSession(
            id=str(uuid.uuid4()),
            user_id=user_id,
            created_at=now,
            last_used_at=now,
            expires_at=expires_at or now + timedelta(days=1),
            user_agent="pytest",
            ip_address="127.0.0.1",
        )
        session.add(row)
        session.commit()
        return row.id


def stored_session(client: TestClient, session_id: str) -> UserSession | None:
    with client.app.state.session_factory() as session:
        return session.get(UserSession, session_id)


def add_refresh_token(client: TestClient, user_id: int, *, expires_at: datetime, session_id: str | None = None) -> int:
    """A live refresh token row, as the auth service would have stored it after a login (in a new session unless
    `session_id` names one)."""
    family_id = session_id or add_session(client, user_id, expires_at=expires_at)
    with client.app.state.session_factory() as session:
        row = RefreshToken(
            token_hash=secrets.token_hex(32),
            family_id=family_id,
            user_id=user_id,
            expires_at=expires_at,
        )
        session.add(row)
        session.commit()
        return row.id


def stored_refresh_token(client: TestClient, token_id: int) -> RefreshToken | None:
    with client.app.state.session_factory() as session:
        return session.get(RefreshToken, token_id)


@contextmanager
def stdout_log_lines(path: Path, *, level: str) -> Iterator[Callable[[], list[str]]]:
    """Logging at `level` written to the file `path` as the process's stdout; yields a reader of the lines written
    so far (flushed first). Logging goes back to stdout at INFO afterwards."""
    with path.open("w") as stdout:
        # configure_logging takes sys.stdout as it is when called (pytest puts its own back between test phases).
        real_stdout, sys.stdout = sys.stdout, stdout
        try:
            configure_logging(level)
        finally:
            sys.stdout = real_stdout

        def written() -> list[str]:
            flush_logs()
            return path.read_text().splitlines()

        try:
            yield written
        finally:
            configure_logging("INFO")
