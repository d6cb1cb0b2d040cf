"""What a login does while its password is being hashed: it holds no transaction open, and it copes with the
world changing meanwhile (a password change, a deactivation, a lost database connection), each made to happen
inside the hash, where a real one would."""

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, func, select, text

from auth_service.tests.conftest import assert_invalid_grant, login, stored_user
from auth_service.tests.test_password_grant import LEGACY_HASHES
from shared.models import RefreshToken, User
from shared.passwords import PasswordHasher
from shared.revocation import revoke_refresh_tokens_of_user
from shared.testing import terminate_backends

BACKEND_STATES = text("SELECT state FROM pg_stat_activity WHERE application_name = :name")
BACKEND_PIDS = text("SELECT pid FROM pg_stat_activity WHERE application_name = :name")


def during_the_hash(client, action: Callable[[], None]) -> None:  # noqa: ANN001
    """Runs `action` right after the client's app has checked a password, before the login goes on."""
    hasher: PasswordHasher = client.app.state.hasher
    argon2 = hasher._context  # noqa: SLF001

    class ActingContext:
        def verify_and_update(self, password: str, password_hash: str) -> tuple[bool, str | None]:
            outcome = argon2.verify_and_update(password, password_hash)
            action()
            return outcome

    hasher._context = ActingContext()  # noqa: SLF001


def change_user(client, user_id: int, *, password_hash: str | None = None, deactivate: bool = False) -> None:  # noqa: ANN001
    """What the users service commits for a password change (new hash, token version bumped) or a deactivation."""
    with client.app.state.session_factory() as session:
        user = session.get(User, user_id)
        if password_hash is not None:
            user.password_hash = password_hash
            user.token_version += 1
        if deactivate:
            user.is_active = False
        revoke_refresh_tokens_of_user(session=session, user_id=user_id, now=datetime.now(UTC))
        session.commit()


def live_refresh_tokens(client, user_id: int) -> int:  # noqa: ANN001
    with client.app.state.session_factory() as session:
        return session.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        )


@pytest.mark.parametrize("change", ["password", "deactivation"])
def test_a_login_whose_user_changes_during_the_hash_gets_no_tokens(make_client, make_user, change: str) -> None:
    client = make_client()
    user = make_user()
    new_hash = client.app.state.hasher.hash("the new password")
    during_the_hash(
        client,
        lambda: change_user(
            client, user.id, password_hash=new_hash if change == "password" else None, deactivate=change != "password"
        ),
    )
    # The password was right when it was checked; the session it would open must not outlive the change.
    assert_invalid_grant(login(client, user.username, user.password))
    assert live_refresh_tokens(client, user.id) == 0


@pytest.mark.parametrize("make_hash", list(LEGACY_HASHES.values()), ids=list(LEGACY_HASHES))
def test_an_outdated_hash_is_not_upgraded_over_a_password_changed_during_the_hash(
    make_client, make_user, make_hash
) -> None:
    client = make_client()
    user = make_user(password="legacy password 1", password_hash=make_hash("legacy password 1"))
    new_hash = client.app.state.hasher.hash("the new password")
    during_the_hash(client, lambda: change_user(client, user.id, password_hash=new_hash))
    login(client, user.username, "legacy password 1")
    # The upgrade of the old password's hash would have put the old password back.
    assert stored_user(client, user.id).password_hash == new_hash


def client_with_named_connections(make_client, database_url: str):  # noqa: ANN001, ANN201
    """A client (PostgreSQL only) whose database connections carry an application name of their own, and the name:
    `pg_stat_activity` then shows the login's connection."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL matter")
    application_name = f"login_{secrets.token_hex(4)}"
    separator = "&" if "?" in database_url else "?"
    return make_client(url=f"{database_url}{separator}application_name={application_name}"), application_name


def test_a_login_holds_no_transaction_open_while_its_password_is_hashed(make_client, make_user, database_url) -> None:
    """Behind Neon's pooler in transaction mode, an open transaction pins a server connection for the hash's time."""
    client, application_name = client_with_named_connections(make_client, database_url)
    user = make_user()
    observer = create_engine(database_url)
    states_during_hash: list[str] = []

    def record_the_logins_backend_state() -> None:
        with observer.connect() as connection:
            states_during_hash.extend(connection.scalars(BACKEND_STATES, {"name": application_name}))

    during_the_hash(client, record_the_logins_backend_state)
    try:
        assert login(client, user.username, user.password).status_code == 200
    finally:
        observer.dispose()
    # The login's connection was seen, and it was idle: not "idle in transaction".
    assert states_during_hash == ["idle"]


def test_a_connection_lost_during_the_hash_is_503_and_the_next_login_works(
    make_client, make_user, database_url
) -> None:
    client, application_name = client_with_named_connections(make_client, database_url)
    user = make_user()
    observer = create_engine(database_url)

    def end_the_logins_backend() -> None:
        with observer.connect() as connection:
            pids = connection.scalars(BACKEND_PIDS, {"name": application_name}).all()
        terminate_backends(*pids)

    hasher: PasswordHasher = client.app.state.hasher
    argon2 = hasher._context  # noqa: SLF001
    try:
        during_the_hash(client, end_the_logins_backend)
        refused = login(client, user.username, user.password)
        hasher._context = argon2  # noqa: SLF001
        again = login(client, user.username, user.password)
    finally:
        observer.dispose()
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert again.status_code == 200, again.text
