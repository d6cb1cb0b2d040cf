"""The ADMIN_USERNAME admin: created at start-up, never duplicated, its password reset to ADMIN_PASSWORD."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from shared.settings import Settings
from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import (
    ADMIN_PASSWORD,
    Account,
    assert_unauthorized,
    bearer,
    count_users_named,
    stored_user,
    stored_user_named,
    unique_username,
)


def test_the_admin_exists_once_and_is_an_active_admin(client: TestClient, settings: Settings, admin: Account) -> None:
    stored = stored_user(client, admin.id)

    assert count_users_named(client, settings.admin_username) == 1
    assert stored.is_admin and stored.is_active
    assert client.app.state.hasher.verify(password=ADMIN_PASSWORD, password_hash=stored.password_hash)


def same_settings(settings: Settings, database_url: str) -> Settings:
    return settings


def upper_case_admin_username(settings: Settings, database_url: str) -> Settings:
    upper_case = settings.admin_username.upper()
    return settings_for_tests(database_url, admin_username=upper_case, admin_password=ADMIN_PASSWORD)


@pytest.mark.parametrize("second_settings", [same_settings, upper_case_admin_username])
def test_another_start_does_not_duplicate_or_log_out_the_admin(
    client: TestClient, settings: Settings, database_url: str, admin: Account, second_settings: Callable
) -> None:
    with TestClient(create_app(second_settings(settings, database_url))) as second:
        assert second.get("/readyz").status_code == 200

    assert count_users_named(client, settings.admin_username) == 1
    # The token minted before the second start still carries the current token_version.
    assert client.get("/users", headers=admin.headers).status_code == 200


def start_app_with_admin(database_url: str, username: str, password: str) -> None:
    settings = settings_for_tests(database_url, admin_username=username, admin_password=password)
    with TestClient(create_app(settings)):
        pass


def test_a_start_with_another_admin_password_resets_it_and_ends_the_admins_sessions(
    client: TestClient, database_url: str, issuer: AccessTokenIssuer
) -> None:
    username = unique_username("boot")
    start_app_with_admin(database_url, username, "first admin password")
    first = stored_user_named(client, username)
    old_token = bearer(issuer.issue(user_id=first.id, token_version=first.token_version).token)
    assert client.get("/users", headers=old_token).status_code == 200

    start_app_with_admin(database_url, username, "second admin password")

    assert count_users_named(client, username) == 1
    stored_hash = stored_user_named(client, username).password_hash
    assert client.app.state.hasher.verify(password="second admin password", password_hash=stored_hash)
    assert_unauthorized(client.get("/users", headers=old_token))
