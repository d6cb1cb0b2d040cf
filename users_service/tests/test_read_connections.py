"""Statements on their own (`run_on_connection`, `run_statement`): each its own transaction, committed when it
returns; SQLAlchemy's statements on the same connection inside one; rows and errors as SQLAlchemy's own would be.

A pool of one connection, so the read and the session after it are sure to share it.
"""

import asyncio
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from sqlalchemy import Connection, bindparam, create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from shared.database import run_on_connection, run_statement
from shared.models import Base, User
from shared.settings import Settings
from shared.testing import terminate_backends
from users_service.app import create_app
from users_service.service import CALLER_AND_USER_BY_ID, USER_BY_ID, USER_ROWS, USERS


@pytest.fixture
def one_connection_app(settings: Settings) -> Iterator[FastAPI]:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("autocommit reads are a PostgreSQL (psycopg2) matter")
    app = create_app(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    yield app
    app.state.engine.dispose()


# Every column with a Python-side default given a value; SQLAlchemy would add a RETURNING of the id by itself.
NEW_USER_ROW = USERS.insert().values(
    {
        name: bindparam(name)
        for name in ("username", "password_hash", "is_active", "is_admin", "token_version", "email_verified")
    }
    | {"created_at": bindparam("now"), "updated_at": bindparam("now")}
)
NEW_USER = NEW_USER_ROW.returning(USERS.c.id)


def new_user_values(username: str) -> dict[str, object]:
    return {
        "username": username,
        "password_hash": "x",
        "is_active": True,
        "is_admin": False,
        "token_version": 0,
        "email_verified": False,
        "now": datetime.now(UTC),
    }


def backend_pid(*, connection: Connection) -> int:
    return run_statement(connection, select(func.pg_backend_pid().label("pid")))[0].pid


def read(app: FastAPI, work, **arguments):  # noqa: ANN001, ANN201
    return asyncio.run(run_on_connection(SimpleNamespace(app=app), work, **arguments))


def fetched_transaction_start_times(*, connection: Connection) -> tuple[object, object]:
    # now() is the start of the current transaction: the same for two statements of one transaction.
    first = run_statement(connection, select(func.now().label("now")))[0].now
    run_statement(connection, select(func.pg_sleep(0.02).label("slept")))
    return first, run_statement(connection, select(func.now().label("now")))[0].now


def executed_transaction_start_times(*, connection: Connection) -> tuple[object, object]:
    first = connection.scalar(text("SELECT now()"))
    connection.execute(text("SELECT pg_sleep(0.02)"))
    return first, connection.scalar(text("SELECT now()"))


def test_each_fetched_statement_runs_outside_a_transaction(one_connection_app: FastAPI) -> None:
    first, second = read(one_connection_app, fetched_transaction_start_times)
    assert first != second


def test_sqlalchemy_statements_on_the_same_connection_get_a_transaction(one_connection_app: FastAPI) -> None:
    read(one_connection_app, fetched_transaction_start_times)
    first, second = read(one_connection_app, executed_transaction_start_times)
    assert first == second


def test_a_session_after_a_read_still_gets_a_transaction(one_connection_app: FastAPI) -> None:
    read(one_connection_app, fetched_transaction_start_times)
    username = f"rollback_{secrets.token_hex(4)}"
    with one_connection_app.state.session_factory() as session:
        first, second = executed_transaction_start_times(connection=session.connection())
        assert first == second
        session.add(User(username=username, password_hash="x", is_active=True, is_admin=False, token_version=0))
        session.flush()
        session.rollback()
    with one_connection_app.state.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.username == username)) == 0
    # And the connection is back in autocommit for the next read.
    first, second = read(one_connection_app, fetched_transaction_start_times)
    assert first != second


def test_run_statement_gives_the_rows_sqlalchemy_gives(one_connection_app: FastAPI) -> None:
    with one_connection_app.state.session_factory() as session:
        users = [
            User(username=f"rows_{secrets.token_hex(4)}", full_name=name, password_hash="x", is_active=True)
            for name in ("Ada", None)
        ]
        session.add_all(users)
        session.commit()
    parameters = {"caller_id": users[0].id, "user_id": users[1].id}

    def both(*, connection: Connection) -> tuple[list, list]:
        return (
            run_statement(connection, CALLER_AND_USER_BY_ID, parameters),
            list(connection.execute(CALLER_AND_USER_BY_ID, parameters)),
        )

    fetched, executed = read(one_connection_app, both)
    assert fetched and [tuple(row) for row in fetched] == [tuple(row) for row in executed]
    assert [row._asdict() for row in fetched] == [row._asdict() for row in executed]


def test_on_sqlite_run_statement_commits_what_it_runs(tmp_path: Path) -> None:
    """`make run`'s SQLite goes through `Connection.execute`: a write is committed when run_statement returns."""
    engine = create_engine(f"sqlite:///{tmp_path / 'local.db'}")
    Base.metadata.create_all(engine)
    with engine.connect() as connection, engine.connect() as elsewhere:
        user_id = run_statement(connection, NEW_USER, new_user_values("ada"))[0].id
        assert not connection.in_transaction()
        assert elsewhere.scalar(select(func.count()).select_from(USERS)) == 1
        fetched = run_statement(connection, USER_BY_ID, {"user_id": user_id})
    engine.dispose()
    assert [(row.username, row.is_active) for row in fetched] == [("ada", True)]


def look_from_another_connection(settings: Settings, username: str) -> int:
    elsewhere = create_engine(settings.database_url)
    try:
        with elsewhere.connect() as other:
            return other.scalar(select(func.count()).select_from(USERS).where(USERS.c.username == username))
    finally:
        elsewhere.dispose()


def test_a_write_is_committed_when_run_statement_returns(one_connection_app: FastAPI, settings: Settings) -> None:
    username = f"alone_{secrets.token_hex(4)}"

    def write_then_look(*, connection: Connection) -> tuple[int, int]:
        user_id = run_statement(connection, NEW_USER, new_user_values(username))[0].id
        # Still checked out: the pool's rollback on return has not happened yet.
        return user_id, look_from_another_connection(settings, username)

    user_id, seen = read(one_connection_app, write_then_look)
    assert user_id > 0 and seen == 1


def test_a_write_after_a_sqlalchemy_transaction_on_the_same_connection_is_committed_too(
    one_connection_app: FastAPI, settings: Settings
) -> None:
    """After a transaction the connection is out of autocommit until it goes back to the pool: the commit counts."""
    username = f"after_{secrets.token_hex(4)}"

    def transaction_then_write_then_look(*, connection: Connection) -> int:
        with connection.begin():
            connection.execute(text("SELECT 1"))
        run_statement(connection, NEW_USER, new_user_values(username))
        return look_from_another_connection(settings, username)

    assert read(one_connection_app, transaction_then_write_then_look) == 1


def test_run_statement_refuses_to_run_inside_a_sqlalchemy_transaction(one_connection_app: FastAPI) -> None:
    def inside_a_transaction(*, connection: Connection) -> None:
        with connection.begin():
            run_statement(connection, USER_BY_ID, {"user_id": 1})

    with pytest.raises(ValueError, match="transaction"):
        read(one_connection_app, inside_a_transaction)


@pytest.mark.parametrize(
    ("statement", "parameters", "refusal"),
    [
        (USERS.insert().values(username=bindparam("username")).returning(USERS.c.id), {"username": "x"}, "default"),
        (NEW_USER_ROW, new_user_values("x"), "implicit RETURNING"),
        (USER_BY_ID, {"user_id": 1, "email": "a@example.org"}, "not parameters of the statement"),
    ],
    ids=["python-side-defaults-left-out", "implicit-returning", "unknown-parameter"],
)
def test_run_statement_refuses_what_the_driver_would_get_wrong(
    one_connection_app: FastAPI, statement, parameters: dict, refusal: str
) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=refusal):
        read(one_connection_app, lambda *, connection: run_statement(connection, statement, parameters))


def test_a_connection_lost_during_a_read_is_a_sqlalchemy_error_and_is_replaced(one_connection_app: FastAPI) -> None:
    def read_after_the_backend_is_killed(*, connection: Connection) -> None:
        terminate_backends(backend_pid(connection=connection))
        run_statement(connection, USER_BY_ID, {"user_id": 1})

    with pytest.raises(OperationalError) as lost:
        read(one_connection_app, read_after_the_backend_is_killed)
    # Wrapped like Connection.execute's errors, so the 503 handler answers; the pool's only connection is new.
    assert lost.value.connection_invalidated
    assert read(one_connection_app, lambda *, connection: run_statement(connection, USER_ROWS.limit(1)))


def test_a_lost_connection_retires_the_older_pooled_connections_too(settings: Settings) -> None:
    """As `Connection.execute` does: after a server dropped its connections, one failure, not one per connection."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL matter")
    # Without the pre-ping, which would find each dead connection before use.
    app = create_app(settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 0, "db_pool_pre_ping": False}))
    engine = app.state.engine
    try:
        with engine.connect() as first, engine.connect() as second:
            pids = [backend_pid(connection=first), backend_pid(connection=second)]
        terminate_backends(*pids)
        with pytest.raises(OperationalError):
            read(app, backend_pid)
        # The other dead connection is still in the pool, older than the failure: replaced on checkout.
        assert read(app, backend_pid) not in pids
    finally:
        engine.dispose()


def test_run_statement_refuses_statements_rendered_anew_for_each_execution(one_connection_app: FastAPI) -> None:
    expanding = select(USERS.c.id).where(USERS.c.id.in_([1, 2]))
    with pytest.raises(ValueError, match="expanding"):
        read(one_connection_app, lambda *, connection: run_statement(connection, expanding))


def one_connection_app_with(settings: Settings, **pool: object) -> FastAPI:
    return create_app(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0, **pool}))


@pytest.mark.parametrize("idle_seconds", [0.0, 1.0, 60.0])
def test_the_pre_ping_replaces_a_pooled_connection_the_server_closed(settings: Settings, idle_seconds: float) -> None:
    """Within its idle window a connection goes without the ping's round trip, but not once the server has closed it:
    the server's notice that it ends the connection is there to read."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL matter")
    app = one_connection_app_with(settings, db_pool_pre_ping=True, db_pool_pre_ping_idle_seconds=idle_seconds)
    try:
        dead = read(app, backend_pid)
        terminate_backends(dead)
        assert read(app, backend_pid) != dead
    finally:
        app.state.engine.dispose()


def test_without_the_pre_ping_a_closed_connection_fails_one_request(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL matter")
    app = one_connection_app_with(settings, db_pool_pre_ping=False)
    try:
        terminate_backends(read(app, backend_pid))
        with pytest.raises(OperationalError):
            read(app, backend_pid)
        assert read(app, backend_pid)
    finally:
        app.state.engine.dispose()


def counted_pings(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections the engine's pre-ping sends `SELECT 1` on from now on (the real ping still runs)."""
    pinged: list[object] = []
    dialect = app.state.engine.dialect
    ping = dialect.do_ping

    def counting_ping(dbapi_connection: object) -> bool:
        pinged.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counting_ping)
    return pinged


@pytest.mark.parametrize(
    ("idle_seconds", "rest_seconds", "pings"), [(60.0, 0.0, 0), (0.2, 0.3, 1), (0.0, 0.0, 1)], ids=str
)
def test_the_pre_ping_round_trip_goes_only_to_a_connection_that_rested(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, idle_seconds: float, rest_seconds: float, pings: int
) -> None:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL matter")
    app = one_connection_app_with(settings, db_pool_pre_ping=True, db_pool_pre_ping_idle_seconds=idle_seconds)
    try:
        # Opened by this read: a new connection is never pinged.
        first = read(app, backend_pid)
        pinged = counted_pings(app, monkeypatch)
        time.sleep(rest_seconds)
        assert read(app, backend_pid) == first
        assert len(pinged) == pings
    finally:
        app.state.engine.dispose()
