"""The SQLAlchemy engine and sessions, built from Settings; nothing here knows a route."""

import contextlib
import functools
import logging
import select
import time
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection, Engine, Executable, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler

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
    # psycopg2 (production's driver) gets the pre-ping of _replace_dead_connections instead of SQLAlchemy's.
    own_pre_ping = database_url.get_driver_name() == "psycopg2"
    engine = create_engine(
        database_url,
        pool_pre_ping=settings.db_pool_pre_ping and not own_pre_ping,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=settings.db_pool_recycle_seconds,
        connect_args=connect_args,
    )
    if own_pre_ping:
        _rest_connections_in_autocommit(engine)
        _replace_dead_connections(
            engine,
            pre_ping=settings.db_pool_pre_ping,
            ping_after_idle_seconds=settings.db_pool_pre_ping_idle_seconds,
        )
    if settings.db_statement_timeout_ms:
        _time_out_statements_in_transactions(engine, settings.db_statement_timeout_ms)
    return engine


def _rest_connections_in_autocommit(engine: Engine) -> None:
    """Pooled psycopg2 connections wait in autocommit; an SQLAlchemy transaction turns it off while it lasts.

    A statement on its own (`run_statement`) then goes without a BEGIN before it and a COMMIT or ROLLBACK after
    it: a read with the pre-ping is 2 round trips instead of 4, which counts double over the network to Neon. Nor
    does it switch the flag at all (the pre-ping switches it on and off around its SELECT 1 outside autocommit).
    SQLAlchemy's AUTOCOMMIT isolation level would add a SET on the way in and on the way out.
    """

    @event.listens_for(engine, "connect")
    def _start_in_autocommit(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.autocommit = True

    @event.listens_for(engine, "begin")
    def _transaction_outside_autocommit(connection: Connection) -> None:
        # Before the first statement, so psycopg2 sends its BEGIN: sessions and Connection.begin() get transactions.
        connection.connection.dbapi_connection.autocommit = False

    @event.listens_for(engine, "checkin")
    def _back_to_autocommit(dbapi_connection, record) -> None:  # noqa: ANN001
        if dbapi_connection is None or dbapi_connection.autocommit:
            return
        try:
            dbapi_connection.autocommit = True
        except Exception:  # noqa: BLE001
            # Closed or broken: a connection that cannot be put back into its resting state is never reused.
            record.invalidate()


# When the pool opened a connection and when it last took it back (monotonic seconds), kept in the pool entry's
# `info`, which a reconnect empties.
_OPENED_AT = "opened_at"
_CHECKED_IN_AT = "checked_in_at"


def _replace_dead_connections(engine: Engine, *, pre_ping: bool, ping_after_idle_seconds: float) -> None:
    """Pooled connections the server has closed are replaced before a request meets them.

    The pre-ping: a `SELECT 1` before a connection is used, if it rested in the pool `ping_after_idle_seconds` or
    longer, or if the server sent it anything while it rested (a connection at rest expects nothing: what comes is
    the server's notice that it ends the connection, or the end of the connection itself; a look at the socket, no
    round trip). A connection busy a moment ago goes without: under load that is every one, and a round trip per
    request was the pre-ping's whole cost (the same bypass window as HikariCP's `aliveBypassWindowMs`).

    And once a connection turns out lost, every pooled connection opened before it is replaced at its next
    checkout: a server that dropped one (a restart, a suspended Neon compute) dropped the older ones too, so one
    request fails, not one per pooled connection. `Connection.execute` does this itself on a disconnect;
    `run_statement` runs on the driver's cursor and reports the loss with `Connection.invalidate(error)`, whose
    pool `invalidate` event lands here. A `DisconnectionError` raised at checkout makes the pool replace that
    connection and try again (SQLAlchemy's documented way for a checkout listener to refuse a connection).
    """
    dialect = engine.dialect
    lost_at = 0.0

    @event.listens_for(engine, "connect")
    def _note_opening(_dbapi_connection, record) -> None:  # noqa: ANN001
        record.info[_OPENED_AT] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _note_rest(_dbapi_connection, record) -> None:  # noqa: ANN001
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "invalidate")
    def _note_loss(dbapi_connection, record, error) -> None:  # noqa: ANN001
        nonlocal lost_at
        lost = isinstance(error, DisconnectionError) or (
            isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(error, dbapi_connection, None)
        )
        # A connection from before the last loss failing too says nothing new (as SQLAlchemy's pool reasons).
        if lost and record.info.get(_OPENED_AT, 0.0) >= lost_at:
            lost_at = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_before_use(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        info = record.info
        if info.get(_OPENED_AT, 0.0) < lost_at:
            raise DisconnectionError("opened before a connection to the same server was lost")
        checked_in_at = info.get(_CHECKED_IN_AT)
        # None: opened for this checkout, nothing to check yet.
        if not pre_ping or checked_in_at is None:
            return
        rested = time.monotonic() - checked_in_at
        if rested < ping_after_idle_seconds and not _has_something_to_read(dbapi_connection):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            raise DisconnectionError(f"pre-ping failed: {type(error).__name__}") from error


def _has_something_to_read(dbapi_connection) -> bool:  # noqa: ANN001
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _time_out_statements_in_transactions(engine: Engine, timeout_ms: int) -> None:
    """`SET LOCAL statement_timeout` as the first statement of every transaction: it ends with the transaction.

    Behind PgBouncer in transaction mode (Neon's pooled URL) a session-level SET (on connect, or the `options`
    startup parameter, which PgBouncer refuses) lands on whichever server connection is current, stays there for
    other clients and misses this client's next transactions. A statement of its own per transaction; the
    statements `run_statement` sends alone (index lookups, each its own transaction) get the role's or server's
    `statement_timeout` instead, so the hot reads pay no extra round trip.
    """

    # Registered after _rest_connections_in_autocommit's "begin": the connection has left autocommit, so the
    # driver sends its BEGIN first and the SET LOCAL runs inside the transaction.
    statement = f"SET LOCAL statement_timeout = {int(timeout_ms)}"
    dialect = engine.dialect

    @event.listens_for(engine, "begin")
    def _set_local_timeout(connection: Connection) -> None:
        dbapi_connection = connection.connection.dbapi_connection
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)
        except dialect.loaded_dbapi.Error as error:
            # SQLAlchemy does not wrap what a `begin` listener raises: wrapped here, a connection lost between the
            # checkout and this statement is a DBAPIError (503, connection invalidated), not a bare driver error (500).
            lost = dialect.is_disconnect(error, dbapi_connection, None)
            if lost:
                connection.invalidate(error)
            raise DBAPIError.instance(
                statement, None, error, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
            ) from error


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


async def run_on_connection(request: Request, work: Callable[..., Result], /, **arguments: Any) -> Result:
    """`work(connection=..., **arguments)` like `run_in_session`, on a Core connection.

    For work whose statements each stand alone (`run_statement`): the read routes, and a login, whose throttle
    counts must see its attempt committed and which holds no transaction open while its password is hashed.
    And for Core statements built once and run in `connection.begin()`: the refresh grant, the revocation.
    """
    return await _run_in_thread(request.app.state.engine.connect, "connection", work, arguments)


@functools.lru_cache(maxsize=256)
def _compiled(statement: Executable, dialect: Dialect) -> SQLCompiler:
    """The statement compiled once; what the checks read are `SQLCompiler`'s documented attributes (its API reference
    in SQLAlchemy's "Core Internals"), which say what `Connection.execute` would add at execution time."""
    compiled = statement.compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler):
        raise ValueError("run_statement runs SQL statements (SELECT, INSERT, UPDATE, DELETE), not DDL")
    if compiled.post_compile_params or compiled.literal_execute_params:
        raise ValueError("run_statement runs statements whose SQL is final once compiled, without expanding IN lists")
    if compiled.insert_prefetch or compiled.update_prefetch:
        raise ValueError("run_statement applies no Python-side column defaults: give every such column a value")
    if compiled.implicit_returning:
        # SQLAlchemy adds a RETURNING of the primary key to an INSERT for itself; rows only where asked for.
        raise ValueError("run_statement runs an INSERT with .returning(...) or .inline(), not implicit RETURNING")
    return compiled


@functools.lru_cache(maxsize=256)
def _row_type(column_names: tuple[str, ...]) -> type:
    # rename: a column PostgreSQL names `?column?` becomes `_0` rather than an error after the statement ran.
    return namedtuple("Row", column_names, rename=True)  # noqa: PYI024


def run_statement(connection: Connection, statement: Executable, parameters: Mapping[str, Any] | None = None) -> list:
    """Runs one Core statement as a transaction of its own and returns its rows (SELECT or RETURNING).

    Never inside an SQLAlchemy transaction (ValueError): what the statement did is committed when it returns.
    On psycopg2 (production's driver) it runs on the DBAPI cursor, compiled once, and its rows are named tuples
    of the driver's values: SQLAlchemy's execution and result machinery cost a primary-key read as much Python
    time as the round trip (docs/performance.md), and a pooled connection rests in autocommit, so there is no
    BEGIN or COMMIT to send either. Bind values go to the driver
    as they are, so a write must give a value to every column with a Python-side default, and every parameter
    must be one of the statement's (ValueError, whatever the driver). Other drivers (SQLite, `make run`) go
    through `Connection.execute` and a commit, with SQLAlchemy's type processing. Driver errors are raised as
    `Connection.execute` raises them: a lost connection is invalidated, and the pool retires every connection
    older than it.
    """
    if connection.in_transaction():
        raise ValueError("run_statement commits what it runs: not inside an SQLAlchemy transaction")
    dialect = connection.dialect
    compiled = _compiled(statement, dialect)
    if parameters and not parameters.keys() <= compiled.binds.keys():
        raise ValueError(f"not parameters of the statement: {sorted(parameters.keys() - compiled.binds.keys())}")
    if dialect.driver != "psycopg2":
        with connection.begin():
            result = connection.execute(statement, parameters or {})
            return list(result) if result.returns_rows else []
    # Every bind with its value: the caller's, and those the statement holds itself (a literal LIMIT, say).
    values = compiled.construct_params(parameters)
    dbapi_connection = connection.connection
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.string, values)
            # No description: a write without RETURNING (SQLAlchemy's implicit one is refused in _compiled).
            if cursor.description is None:
                rows = []
            else:
                row_type = _row_type(tuple(column.name for column in cursor.description))
                rows = [row_type._make(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
        # Nothing to send at rest in autocommit; on a connection outside it, ends the driver's implicit transaction.
        dbapi_connection.commit()
        return rows
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, dbapi_connection.dbapi_connection, None)
        if lost:
            # As Connection.execute does on a disconnect: this connection is discarded, and through the pool's
            # invalidate event the pooled ones opened before it are replaced too (see build_engine).
            connection.invalidate(error)
        else:
            # Outside autocommit, the driver's implicit transaction is aborted: end it (nothing to do in autocommit).
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                dbapi_connection.rollback()
        raise DBAPIError.instance(
            compiled.string,
            values,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from error


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
