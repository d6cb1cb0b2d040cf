"""End to end: every writer of a user's sessions and refresh tokens, in both services, takes the user's row first
(the lock order of shared/revocation.py), so racing them never deadlocks: each answers a code docs/api.md allows."""

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import Account, Api

NEW_PASSWORD = "a brand new password 1"


@dataclass
class Race:
    """One user with three logins (A rotated once, so its first refresh token is retired), and the admin."""

    account: Account
    a_old: dict
    a: dict
    b: dict
    c: dict
    admin_token: str


def set_up(api: Api) -> Race:
    account = api.sign_up()
    a_old, b, c = (api.tokens(account) for _ in range(3))
    rotated = api.refresh(a_old["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    return Race(account, a_old, rotated.json(), b, c, api.admin_token())


def sid_of(pair: dict) -> str:
    return jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]


def writers(api: Api, race: Race) -> dict[str, tuple[Callable[[], requests.Response], set[int]]]:
    """Each path that writes the user's sessions or refresh tokens, and the codes docs/api.md allows it whatever
    ran before it (a session ended, the password changed, the user deactivated or deleted)."""
    auth, users = api.stack.auth_url, api.stack.users_url
    account = race.account

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def refresh(pair: dict) -> requests.Response:
        return requests.post(
            f"{auth}/token", data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}, timeout=60
        )

    return {
        "revoke": (lambda: requests.post(f"{auth}/revoke", data={"token": race.b["refresh_token"]}, timeout=60), {200}),
        "refresh": (lambda: refresh(race.a), {200, 401}),
        "reuse": (lambda: refresh(race.a_old), {401}),
        "login": (
            lambda: requests.post(
                f"{auth}/token", data={"username": account.username, "password": account.password}, timeout=60
            ),
            {200, 401},
        ),
        "DELETE /sessions": (
            lambda: requests.delete(f"{auth}/sessions", headers=bearer(race.a["access_token"]), timeout=60),
            {204, 401},
        ),
        "DELETE /sessions/{id}": (
            lambda: requests.delete(
                f"{auth}/sessions/{sid_of(race.c)}", headers=bearer(race.b["access_token"]), timeout=60
            ),
            {204, 401},
        ),
        "password change": (
            lambda: requests.patch(
                f"{users}/users/me",
                json={"password": NEW_PASSWORD, "current_password": account.password},
                headers=bearer(race.c["access_token"]),
                timeout=60,
            ),
            {200, 401},
        ),
        "deactivation": (
            lambda: requests.patch(
                f"{users}/users/{account.id}",
                json={"is_active": False},
                headers=bearer(race.admin_token),
                timeout=60,
            ),
            {200, 404},
        ),
        "user delete": (
            lambda: requests.delete(f"{users}/users/{account.id}", headers=bearer(race.admin_token), timeout=60),
            {204, 404},
        ),
    }


def run_all(paths: dict, *, start: threading.Barrier | None = None) -> tuple[dict[str, int], list[threading.Thread]]:
    statuses: dict[str, int] = {}

    def send(name: str) -> None:
        if start is not None:
            start.wait()
        statuses[name] = paths[name][0]().status_code

    names = list(paths)
    random.shuffle(names)
    threads = [threading.Thread(target=send, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    return statuses, threads


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=60)


def assert_contract_codes(paths: dict, statuses: dict[str, int]) -> None:
    """Every request answered, each with a code docs/api.md allows it: a deadlock would be a 503 (or a 500)."""
    wrong = {name: statuses.get(name) for name, (_, allowed) in paths.items() if statuses.get(name) not in allowed}
    assert not wrong, f"answers outside the contract: {wrong}; all: {statuses}"


def assert_everything_of_the_user_ended(api: Api, race: Race) -> None:
    for pair in (race.a, race.b, race.c):
        assert api.users("GET", "/users/me", pair["access_token"]).status_code == 401
        assert (
            requests.get(
                f"{api.stack.auth_url}/sessions", headers={"Authorization": f"Bearer {pair['access_token']}"}
            ).status_code
            == 401
        )


def waiting_backends(connection, database: str, holder_pid: int) -> list[tuple[int, list[int]]]:  # noqa: ANN001
    rows = connection.execute(
        text(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity"
            " WHERE datname = :database AND wait_event_type = 'Lock' AND pid <> :holder"
        ),
        {"database": database, "holder": holder_pid},
    )
    found = [(row[0], list(row[1])) for row in rows]
    # Statistics views are a snapshot per transaction: the next look must start a new one.
    connection.rollback()
    return found


@pytest.fixture
def database(stack, request):  # noqa: ANN001, ANN201
    if not stack.started_here:
        pytest.skip("needs the database of services started here")
    url = request.getfixturevalue("database_url")
    if url.startswith("sqlite"):
        pytest.skip("row locks are a PostgreSQL matter")
    engine = create_engine(url)
    yield engine
    engine.dispose()


def test_every_writer_waits_for_the_users_row_before_touching_a_session_or_refresh_token(api: Api, database) -> None:  # noqa: ANN001
    """While another transaction holds the user's row, every writer of both services queues on that row and holds
    no session or refresh-token row: nothing can then lock those rows in another order and deadlock."""
    race = set_up(api)
    paths = writers(api, race)
    user_id = race.account.id
    with database.connect() as holder, database.connect() as observer:
        with holder.begin():
            holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
            holder.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
            statuses, threads = run_all(paths)
            deadline = time.monotonic() + 10
            while len(waiting_backends(observer, database.url.database, holder_pid)) < len(paths):
                assert time.monotonic() < deadline, (
                    statuses,
                    waiting_backends(observer, database.url.database, holder_pid),
                )
                time.sleep(0.05)
            waiting = waiting_backends(observer, database.url.database, holder_pid)
            # Each waits for the holder, or for a request queued before it for the same row: none for a row a
            # running request took.
            queued = {holder_pid} | {pid for pid, _ in waiting}
            assert all(set(blockers) <= queued for _, blockers in waiting), waiting
            # And none holds a row of the user's sessions or refresh tokens meanwhile.
            for table in ("sessions", "refresh_tokens"):
                with observer.begin():
                    try:
                        observer.execute(
                            text(f"SELECT id FROM {table} WHERE user_id = :id FOR UPDATE NOWAIT"), {"id": user_id}
                        )
                    except OperationalError as error:
                        pytest.fail(f"a writer locked a {table} row before the user's row: {error.orig}")
        join_all(threads)
    assert_contract_codes(paths, statuses)
    assert_everything_of_the_user_ended(api, race)


@pytest.mark.parametrize("round_number", range(4))
def test_racing_every_writer_at_once_never_deadlocks(api: Api, round_number: int) -> None:
    race = set_up(api)
    paths = writers(api, race)

    statuses, threads = run_all(paths, start=threading.Barrier(len(paths)))
    join_all(threads)

    assert_contract_codes(paths, statuses)
    assert_everything_of_the_user_ended(api, race)
