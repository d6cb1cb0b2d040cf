"""Fixtures of the auth service's suite: its app on a fresh migrated database, users inserted directly."""

import ipaddress
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from auth_service.app import create_app
from shared.models import User
from shared.passwords import PasswordHasher
from shared.settings import Settings
from shared.testing import database_url, own_postgres_database, settings_for_tests  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:  # noqa: F811
    return settings_for_tests(database_url)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@dataclass
class Credentials:
    id: int
    username: str
    password: str


@pytest.fixture
def make_user(client: TestClient) -> Callable[..., Credentials]:
    """Inserts a user row the way the users service would (the auth service only reads users)."""

    def make(*, password: str | None = None, is_active: bool = True, password_hash: str | None = None) -> Credentials:
        return insert_user(client, password=password, is_active=is_active, password_hash=password_hash)

    return make


def insert_user(
    client: TestClient,
    *,
    password: str | None = None,
    is_active: bool = True,
    password_hash: str | None = None,
    with_email: bool = False,
) -> Credentials:
    """A user row in `client`'s database; `with_email`: at `<username>@example.com`."""
    username = f"user_{secrets.token_hex(5)}"
    password = password or f"pw-{secrets.token_hex(8)}"
    hasher: PasswordHasher = client.app.state.hasher
    with client.app.state.session_factory() as session:
        user = User(
            username=username,
            email=f"{username}@example.com" if with_email else None,
            password_hash=password_hash or hasher.hash(password),
            is_active=is_active,
            is_admin=False,
            token_version=0,
        )
        session.add(user)
        session.commit()
        return Credentials(id=user.id, username=username, password=password)


def login(client: TestClient, username: str, password: str, **headers: str):
    return client.post("/token", data={"username": username, "password": password}, headers=headers)


def unique_address() -> str:
    """A client address no other test uses, so per-address throttling counts only this test's attempts."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))  # RFC 2544 benchmarking range
    return str(ipaddress.IPv4Address(base + 1 + secrets.randbelow(2**17 - 2)))


@pytest.fixture
def make_client(database_url: str) -> Iterator[Callable[..., TestClient]]:  # noqa: F811
    """Another auth app with its own settings (on the suite's database unless told otherwise), closed at teardown.

    Each client gets a fresh socket address unless `address` is given, so its throttling state is its own.
    """
    with ExitStack() as stack:

        def make(
            *, address: str | None = None, url: str | None = None, raise_server_exceptions: bool = True, **overrides
        ) -> TestClient:
            app = create_app(settings_for_tests(url or database_url, **overrides))
            test_client = TestClient(
                app, client=(address or unique_address(), 50000), raise_server_exceptions=raise_server_exceptions
            )
            return stack.enter_context(test_client)

        yield make


def refresh(client: TestClient, refresh_token: str, **headers: str):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}, headers=headers)


def stored_user(client: TestClient, user_id: int) -> User:
    with client.app.state.session_factory() as session:
        return session.get(User, user_id)


def set_user_active(client: TestClient, user_id: int, is_active: bool) -> None:
    with client.app.state.session_factory() as session:
        session.get(User, user_id).is_active = is_active
        session.commit()


def assert_invalid_grant(response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert isinstance(body["detail"], str) and body["detail"]
