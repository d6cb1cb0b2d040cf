"""Deactivation ends every access token issued before it for good: reactivating the user revives none of them,
whether an admin reactivates it or the start-up does for the ADMIN_USERNAME admin."""

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import update

from shared.models import User
from shared.settings import Settings
from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import (
    ADMIN_PASSWORD,
    Account,
    assert_unauthorized,
    bearer,
    stored_user,
    stored_user_named,
    unique_username,
)


def set_active(client: TestClient, admin: Account, user_id: int, active: bool) -> None:
    response = client.patch(f"/users/{user_id}", json={"is_active": active}, headers=admin.headers)
    assert response.status_code == 200 and response.json()["is_active"] is active, response.text


def test_a_token_from_before_a_deactivation_stays_dead_after_reactivation(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    assert client.get("/users/me", headers=account.headers).status_code == 200

    set_active(client, admin, account.id, False)
    set_active(client, admin, account.id, True)

    assert_unauthorized(client.get("/users/me", headers=account.headers))
    assert stored_user(client, account.id).token_version == 1


def test_a_token_issued_after_reactivation_works(
    client: TestClient, admin: Account, make_account: Callable[..., Account], current_token: Callable[[int], str]
) -> None:
    account = make_account()
    set_active(client, admin, account.id, False)
    set_active(client, admin, account.id, True)

    assert client.get("/users/me", headers=bearer(current_token(account.id))).status_code == 200


def test_the_start_up_reactivating_its_admin_does_not_revive_the_admins_old_tokens(
    client: TestClient, admin: Account, settings: Settings
) -> None:
    own = settings_for_tests(
        settings.database_url, admin_username=unique_username("boot"), admin_password=ADMIN_PASSWORD
    )
    with TestClient(create_app(own)) as first:
        booted = stored_user_named(first, own.admin_username)
        token = AccessTokenIssuer(own).issue(user_id=booted.id, token_version=booted.token_version).token
        assert first.get("/users/me", headers=bearer(token)).status_code == 200
    # Deactivated by an admin through the API, then the service restarts and reactivates it.
    set_active(client, admin, booted.id, False)

    with TestClient(create_app(own)) as restarted:
        assert stored_user(restarted, booted.id).is_active
        assert_unauthorized(restarted.get("/users/me", headers=bearer(token)))


def test_the_start_up_ends_old_tokens_of_an_admin_deactivated_without_a_version_change(
    client: TestClient, settings: Settings
) -> None:
    # Rows deactivated by older code (or by hand in SQL) kept their token version.
    own = settings_for_tests(
        settings.database_url, admin_username=unique_username("boot"), admin_password=ADMIN_PASSWORD
    )
    with TestClient(create_app(own)) as first:
        booted = stored_user_named(first, own.admin_username)
        token = AccessTokenIssuer(own).issue(user_id=booted.id, token_version=booted.token_version).token
        with first.app.state.session_factory() as session:
            session.execute(update(User).where(User.id == booted.id).values(is_active=False))
            session.commit()

    with TestClient(create_app(own)) as restarted:
        assert stored_user(restarted, booted.id).is_active
        assert_unauthorized(restarted.get("/users/me", headers=bearer(token)))
