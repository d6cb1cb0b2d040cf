"""DB_STATEMENT_TIMEOUT_MS holds inside transactions and leaves nothing on the connection for the next client.

What a transaction-mode pooler (PgBouncer, Neon's `-pooler` URL) needs: a session-level SET would stay on the
server connection for whoever gets it next. tests/test_pgbouncer.py shows the same through a real PgBouncer.
"""

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.database import build_engine, run_statement
from shared.testing import settings_for_tests, terminate_backends

TIMEOUT_MS = 1234


@pytest.fixture(autouse=True)
def _postgresql_only(database_url: str) -> None:
    """SQLite has no statement_timeout (nor SET LOCAL, nor backends to terminate): the module is PostgreSQL's."""
    if database_url.startswith("sqlite"):
        pytest.skip("statement_timeout is a PostgreSQL matter")


@pytest.fixture
def engine(database_url: str):
    engine = build_engine(settings_for_tests(database_url, db_statement_timeout_ms=TIMEOUT_MS, db_pool_size=1))
    yield engine
    engine.dispose()


def server_default(database_url: str) -> str:
    plain = create_engine(database_url)
    with plain.connect() as connection:
        value = connection.execute(text("SHOW statement_timeout")).scalar_one()
    plain.dispose()
    return value


def test_a_transaction_runs_under_the_timeout(engine) -> None:
    with engine.begin() as connection:
        assert connection.execute(text("SHOW statement_timeout")).scalar_one() == f"{TIMEOUT_MS}ms"


def long_statement_error_code(url: str) -> str:
    """The SQLSTATE of a 2 s statement in a transaction of an engine whose timeout is 200 ms."""
    engine = build_engine(settings_for_tests(url, db_statement_timeout_ms=200))
    try:
        with pytest.raises(OperationalError) as cancelled, engine.begin() as connection:
            connection.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()
    return cancelled.value.orig.pgcode


def test_a_long_statement_in_a_transaction_is_cancelled(database_url: str) -> None:
    assert long_statement_error_code(database_url) == "57014"  # query_canceled


def test_the_pooled_connection_keeps_no_timeout_after_its_transactions(engine, database_url: str) -> None:
    with engine.begin() as connection:
        connection.execute(text("SELECT 1"))

    # The pool has one connection: the same server session the transaction ran on, as the next client of a
    # transaction-mode pooler would get it.
    with engine.connect() as connection:
        after = run_statement(connection, text("SHOW statement_timeout"))[0][0]

    assert after == server_default(database_url)


def test_a_connection_lost_before_the_timeout_is_set_is_a_sqlalchemy_error_and_is_replaced(database_url: str) -> None:
    """The SET LOCAL runs in SQLAlchemy's `begin` event, which SQLAlchemy does not wrap: a connection lost there must
    still be a DBAPIError (a 503 to the client), not a bare driver error (a 500), and be discarded."""
    engine = build_engine(
        settings_for_tests(database_url, db_statement_timeout_ms=TIMEOUT_MS, db_pool_size=1, db_pool_pre_ping=False)
    )
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        terminate_backends(pid)
        with pytest.raises(DBAPIError) as lost, engine.begin():
            pass
        assert lost.value.connection_invalidated
        with engine.begin() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()
