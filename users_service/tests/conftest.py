"""Fixtures of the users service's suite: its app, tokens minted as the auth service does."""

import secrets
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from shared.settings import Settings
from shared.testing import database_url, own_postgres_database, settings_for_tests  # noqa: F401  (fixtures)
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import ADMIN_PASSWORD, Account, add_session, stored_user, unique_username


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:  # noqa: F811
    return settings_for_tests(database_url, admin_username="root-admin", admin_password=ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def issuer(settings: Settings) -> AccessTokenIssuer:
    """Signs tokens exactly as the auth service does, with the shared key."""
    return AccessTokenIssuer(settings)


@pytest.fixture
def make_account(client: TestClient, issuer: AccessTokenIssuer) -> Callable[..., Account]:
    """Signs up a new user through the API and gives it an access token."""

    def make(**fields: object) -> Account:
        username = str(fields.pop("username", unique_username()))
        password = str(fields.pop("password", f"pw-{secrets.token_hex(8)}"))
        response = client.post("/users", json={"username": username, "password": password, **fields})
        assert response.status_code == 201, response.text
        user_id = response.json()["id"]
        token = issuer.issue(user_id=user_id, token_version=0).token
        return Account(id=user_id, username=username.lower(), password=password, token=token)

    return make


@pytest.fixture(scope="session")
def admin(client: TestClient, settings: Settings, issuer: AccessTokenIssuer) -> Account:
    """The admin created at start-up from ADMIN_USERNAME/ADMIN_PASSWORD."""
    from sqlalchemy import select

    from shared.models import User

    with client.app.state.session_factory() as session:
        user = session.scalar(select(User).where(User.username == settings.admin_username))
        assert user is not None and user.is_admin
        return Account(
            id=user.id,
            username=user.username,
            password=ADMIN_PASSWORD,
            token=issuer.issue(user_id=user.id, token_version=user.token_version).token,
        )


@pytest.fixture
def make_admin(client: TestClient, admin: Account, make_account: Callable[..., Account]) -> Callable[[], Account]:
    """A new user promoted by the bootstrap admin, for tests that demote or otherwise spend an admin."""

    def make() -> Account:
        account = make_account(username=unique_username("admin"))
        response = client.patch(f"/users/{account.id}", json={"is_admin": True}, headers=admin.headers)
        assert response.status_code == 200 and response.json()["is_admin"] is True, response.text
        return account

    return make


@pytest.fixture
def current_token(client: TestClient, issuer: AccessTokenIssuer) -> Callable[[int], str]:
    """A token the auth service would issue now: it carries the user's token_version as stored."""

    def mint(user_id: int) -> str:
        user = stored_user(client, user_id)
        assert user is not None
        return issuer.issue(user_id=user_id, token_version=user.token_version).token

    return mint


@pytest.fixture
def start_session(client: TestClient, issuer: AccessTokenIssuer) -> Callable[[int], tuple[str, str]]:
    """A login as the auth service makes one: a live session row, and an access token carrying its `sid` and the
    user's token version as stored. Returns (session id, token)."""

    def start(user_id: int) -> tuple[str, str]:
        user = stored_user(client, user_id)
        assert user is not None
        session_id = add_session(client, user_id)
        return session_id, issuer.issue(user_id=user_id, token_version=user.token_version, session_id=session_id).token

    return start
