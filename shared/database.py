"""The SQLAlchemy engine and sessions, built from Settings; nothing here knows a route."""

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings

logger = logging.getLogger("shared.database")


def build_engine(settings: Settings, *, url: str | None = None) -> Engine:
    """An engine whose pool survives Neon suspending its compute and closing idle connections."""
    database_url = make_url(url or settings.database_url)
    if database_url.get_backend_name() == "sqlite":
        return _build_sqlite_engine(database_url.render_as_string(hide_password=False))
    connect_args: dict[str, object] = {}
    if "connect_timeout" not in database_url.query:
        connect_args["connect_timeout"] = settings.db_connect_timeout_seconds
    engine = create_engine(
        database_url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=settings.db_pool_recycle_seconds,
        connect_args=connect_args,
    )
    if settings.db_statement_timeout_ms:
        _set_statement_timeout(engine, settings.db_statement_timeout_ms)

    if engine.dialect.driver == "psycopg2":

        @event.listens_for(engine, "checkin")
        def _end_autocommit(dbapi_connection, record) -> None:  # noqa: ANN001
            # `run_read_only` turns autocommit on for its connection; everyone else expects transactions.
            if dbapi_connection is None:
                return
            try:
                dbapi_connection.autocommit = False
            except Exception:  # noqa: BLE001
                # Closed or broken: a connection that cannot be put back into transactions is never reused.
                record.invalidate()

    return engine


def _set_statement_timeout(engine: Engine, timeout_ms: int) -> None:
    # A SET on connect, not the `options` startup parameter, which PgBouncer (Neon's pooler) refuses.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {int(timeout_ms)}")
        dbapi_connection.commit()


def _build_sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def build_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def database_answers(engine: Engine) -> bool:
    """True when a round trip to the database works; what `/readyz` reports."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return True


Result = TypeVar("Result")


async def run_in_session(request: Request, work: Callable[..., Result], /, **arguments: Any) -> Result:
    """`work(session=..., **arguments)` in one worker thread, in a session opened and closed in that thread.

    One thread-pool hop per request (a `def` endpoint with a `yield` session dependency takes three), and the
    connection is back in the pool before the thread is free: no request ever holds a connection while it
    waits for a thread, which with as many threads as connections deadlocks under a burst.
    """
    return await _run_in_thread(request.app.state.session_factory, "session", work, arguments)


async def run_read_only(request: Request, work: Callable[..., Result], /, **arguments: Any) -> Result:
    """`work(connection=..., **arguments)` like `run_in_session`, on a Core connection: rows, no ORM objects.

    For reads only: each statement runs on its own, outside any transaction.
    """
    engine = request.app.state.engine
    return await _run_in_thread(lambda: _open_read_connection(engine), "connection", work, arguments)


def _open_read_connection(engine: Engine) -> Connection:
    connection = engine.connect()
    if engine.dialect.driver == "psycopg2":
        # A lone SELECT needs no transaction. In autocommit, psycopg2 sends no BEGIN before it and no ROLLBACK
        # when the connection goes back: 2 round trips with the pre-ping instead of 4. SQLAlchemy's pre-ping
        # flips the same flag; its AUTOCOMMIT isolation level would instead add a SET on the way in and out.
        # build_engine's "checkin" listener turns it off again before the pool hands the connection on.
        try:
            connection.connection.dbapi_connection.autocommit = True
        except BaseException:
            connection.close()
            raise
    return connection


async def _run_in_thread(
    open_resource: Callable[[], Session | Connection], name: str, work: Callable[..., Result], arguments: dict
) -> Result:
    def in_one_thread() -> Result:
        resource = open_resource()
        try:
            return work(**{name: resource}, **arguments)
        finally:
            try:
                resource.close()
            except DBAPIError:
                # The connection died after the work finished; its transaction is over either way, and
                # the pool discards the connection. Raising here would break an answer already decided.
                logger.warning("database connection lost while closing a %s", name)

    return await run_in_threadpool(in_one_thread)
