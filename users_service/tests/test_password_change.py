"""Changing a password with current_password: atomic under concurrent changes, throttled like a login, and no
transaction held open while the passwords hash. Real parallelism: several replicas of the app on the suite's
database, one thread per request."""

import ipaddress
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from shared.models import LoginFailure
from shared.settings import Settings
from shared.testing import at_once as run_at_once
from shared.testing import settings_for_tests
from users_service.app import create_app
from users_service.tests.support import Account, assert_error, assert_unauthorized, stored_user

LIMIT = 3
REPLICAS = 3


def unique_address() -> str:
    base = int(ipaddress.IPv4Address("198.18.0.0"))  # RFC 2544 benchmarking range
    return str(ipaddress.IPv4Address(base + 1 + secrets.randbelow(2**17 - 2)))


@pytest.fixture
def replicas(settings: Settings) -> Iterator[Callable[..., list[TestClient]]]:
    """`count` more apps on the suite's database and key, each seen from its own client address."""
    with ExitStack() as stack:

        def make(count: int = REPLICAS, **overrides: object) -> list[TestClient]:
            values = {"login_max_failures_per_username": LIMIT, **overrides}
            app_settings = settings_for_tests(
                settings.database_url, jwt_secret=settings.jwt_secret, admin_username=None, **values
            )
            return [
                stack.enter_context(TestClient(create_app(app_settings), client=(unique_address(), 50000)))
                for _ in range(count)
            ]

        yield make


def patch_me(client: TestClient, account: Account, **fields: object):
    return client.patch("/users/me", json=fields, headers=account.headers)


def at_once(requests: list[Callable[[], object]]) -> list[int]:
    return [response.status_code for response in run_at_once(requests)]


def failures_of(client: TestClient, username: str) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(
            select(func.count()).where(LoginFailure.username == username, LoginFailure.pending.is_(False))
        )


@pytest.mark.parametrize("round_", range(3))
def test_of_concurrent_changes_with_the_right_current_password_exactly_one_wins(
    replicas, make_account: Callable[..., Account], round_: int
) -> None:
    clients = replicas()
    account = make_account()
    new_passwords = [f"new password {index} {secrets.token_hex(4)}" for index in range(len(clients))]

    statuses = at_once(
        [
            lambda client=client, new=new: patch_me(client, account, current_password=account.password, password=new)
            for client, new in zip(clients, new_passwords, strict=True)
        ]
    )

    assert sorted(statuses) == [200] + [401] * (len(clients) - 1), statuses
    stored = stored_user(clients[0], account.id)
    # The version moves once per change that took effect, and the stored password is the winner's.
    assert stored.token_version == 1
    winner = new_passwords[statuses.index(200)]
    assert clients[0].app.state.hasher.verify(password=winner, password_hash=stored.password_hash)


def test_a_loser_of_the_race_is_told_its_token_ended(replicas, make_account: Callable[..., Account]) -> None:
    client = replicas(1)[0]
    account = make_account()
    assert (
        patch_me(client, account, current_password=account.password, password="the winner's password").status_code
        == 200
    )

    # The same token and the same (formerly right) current password, as a request that lost the race would send.
    assert_unauthorized(patch_me(client, account, current_password=account.password, password="too late"))


def test_wrong_current_passwords_are_failed_logins_and_past_the_limit_even_the_right_one_is_429(
    replicas, make_account: Callable[..., Account]
) -> None:
    client = replicas(1)[0]
    account = make_account()

    for _ in range(LIMIT):
        body = assert_error(patch_me(client, account, current_password="a wrong guess", password="x" * 12), 400)
        assert body["error"] == "invalid_current_password"
    throttled = patch_me(client, account, current_password=account.password, password="the new password")

    body = assert_error(throttled, 429)
    assert body["error"] == "too_many_attempts"
    assert int(throttled.headers["retry-after"]) >= 1
    assert failures_of(client, account.username) == LIMIT
    assert stored_user(client, account.id).token_version == 0


def test_failed_logins_at_post_token_count_against_current_password_too(
    replicas, make_account: Callable[..., Account]
) -> None:
    client = replicas(1)[0]
    account = make_account()
    with client.app.state.session_factory() as session:
        # What the auth service stores for wrong passwords at POST /token, from anywhere.
        session.add_all(
            LoginFailure(username=account.username, address=unique_address(), occurred_at=datetime.now(UTC))
            for _ in range(LIMIT)
        )
        session.commit()

    assert_error(patch_me(client, account, current_password=account.password, password="the new password"), 429)


def test_parallel_changes_with_the_right_password_are_never_throttled_by_each_other(
    replicas, make_account: Callable[..., Account]
) -> None:
    # More at once than the limit: pending checks of right passwords wait for each other, none counts as a failure.
    clients = replicas(2)
    account = make_account()

    statuses = at_once(
        [
            lambda client=clients[index % 2], index=index: patch_me(
                client, account, current_password=account.password, password=f"new password {index}"
            )
            for index in range(2 * LIMIT)
        ]
    )

    assert Counter(statuses) == {200: 1, 401: 2 * LIMIT - 1}, statuses
    assert failures_of(clients[0], account.username) == 0


def test_no_transaction_is_open_while_the_passwords_hash(
    replicas, settings: Settings, make_account: Callable[..., Account]
) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("pg_stat_activity is PostgreSQL's")
    client = replicas(1)[0]
    account = make_account()
    hasher = client.app.state.hasher
    argon2 = hasher._context  # noqa: SLF001
    states: list[str] = []
    database = client.app.state.engine.url.database

    def open_transactions() -> None:
        with client.app.state.engine.connect() as connection:
            states.extend(
                connection.execute(
                    text(
                        "SELECT state FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
                        " AND state LIKE 'idle in transaction%'"
                    ),
                    {"name": database},
                ).scalars()
            )

    class Watching:
        def verify_and_update(self, password: str, password_hash: str) -> tuple[bool, str | None]:
            open_transactions()
            return argon2.verify_and_update(password, password_hash)

        def hash(self, password: str) -> str:
            open_transactions()
            return argon2.hash(password)

    hasher._context = Watching()  # noqa: SLF001
    response = patch_me(client, account, current_password=account.password, password="the new password")

    assert response.status_code == 200, response.text
    assert states == []
