"""The read path's connections (`run_read_only`): statements outside transactions, and the pool left as it was.

A pool of one connection, so the read and the session after it are sure to share it.
"""

import asyncio
import secrets
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from sqlalchemy import Connection, func, select, text

from shared.database import run_read_only
from shared.models import User
from shared.settings import Settings
from users_service.app import create_app


@pytest.fixture
def one_connection_app(settings: Settings) -> Iterator[FastAPI]:
    if settings.database_url.startswith("sqlite"):
        pytest.skip("autocommit reads are a PostgreSQL (psycopg2) matter")
    app = create_app(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    yield app
    app.state.engine.dispose()


def read(app: FastAPI, work, **arguments):  # noqa: ANN001, ANN201
    return asyncio.run(run_read_only(SimpleNamespace(app=app), work, **arguments))


def transaction_start_times(*, connection: Connection) -> tuple[object, object]:
    # now() is the start of the current transaction: the same for two statements of one transaction.
    first = connection.scalar(text("SELECT now()"))
    connection.execute(text("SELECT pg_sleep(0.02)"))
    return first, connection.scalar(text("SELECT now()"))


def test_each_read_statement_runs_outside_a_transaction(one_connection_app: FastAPI) -> None:
    first, second = read(one_connection_app, transaction_start_times)
    assert first != second


def test_a_session_after_a_read_still_gets_a_transaction(one_connection_app: FastAPI) -> None:
    read(one_connection_app, transaction_start_times)
    username = f"rollback_{secrets.token_hex(4)}"
    with one_connection_app.state.session_factory() as session:
        first, second = transaction_start_times(connection=session.connection())
        assert first == second
        session.add(User(username=username, password_hash="x", is_active=True, is_admin=False, token_version=0))
        session.flush()
        session.rollback()
    with one_connection_app.state.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.username == username)) == 0
