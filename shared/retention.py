"""Retention: rows past their keeping time deleted in small batches, by a background thread in every service worker.

What goes, and when (`now` minus the retention is the cutoff):
- sessions ended or expired before ENDED_SESSION_RETENTION_SECONDS ago, with all their refresh tokens at once;
- refresh tokens of live sessions (retired by rotation, or expired) whose own expiry is that long past; revoked
  ones stay until their session goes, so a family is never left with its revocation marks partly deleted;
- one-time tokens expired ONE_TIME_TOKEN_RETENTION_SECONDS ago (a used one expires soon after its use anyway);
- outbox mails sent or given up (dead) OUTBOX_RETENTION_SECONDS ago;
- login failures outside the throttling window.

Each batch is one short transaction of its own that takes its rows with FOR UPDATE SKIP LOCKED: passes of many
workers and replicas at once each delete different rows, and a pass never waits for a row a request holds. No
session state is used (transaction-mode PgBouncer): only SET LOCAL, which ends with its transaction.
"""

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    event,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from shared.database_failures import log_database_failure
from shared.models import LoginFailure, OneTimeToken, OutboxEmail, RefreshToken, UserSession, utc_now
from shared.observability import RETENTION_ROWS_DELETED
from shared.settings import Settings

logger = logging.getLogger("shared.retention")

SESSIONS = UserSession.__table__
REFRESH_TOKENS = RefreshToken.__table__
ONE_TIME_TOKENS = OneTimeToken.__table__
OUTBOX_EMAILS = OutboxEmail.__table__
LOGIN_FAILURES = LoginFailure.__table__

_CUTOFF = bindparam("cutoff", type_=DateTime(timezone=True))
_BATCH_SIZE = bindparam("batch_size")
# A session takes its refresh tokens with it (up to a couple of thousand for a client refreshing every 15 minutes
# over the token's lifetime and the retention): a twentieth of the batch size keeps its transaction short too.
SESSION_BATCH_DIVISOR = 20
# How long a batch may wait for a row lock (PostgreSQL; SET LOCAL, so it ends with the transaction). Only the
# deletion of a session's tokens can wait, for a request that holds one of them; then the pass tries again later.
LOCK_TIMEOUT = "1s"
# A pass starts after the interval times a factor drawn from this range, so the workers of a fleet spread out.
JITTER = (0.75, 1.25)
STOP_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Rule:
    """Rows of `table` matching `condition` (with the `cutoff` bind) once `retention(settings)` has passed."""

    table: Table
    condition: ColumnElement[bool]
    retention: Callable[[Settings], float]
    # The indexed column the condition compares, if one: batches walk its index, oldest first. Without it each
    # batch's scan starts at the table's first page again and reads past the rows earlier batches deleted.
    oldest_first: ColumnElement | None = None

    @property
    def name(self) -> str:
        return self.table.name


SESSION_RULE = Rule(
    SESSIONS,
    or_(SESSIONS.c.ended_at < _CUTOFF, SESSIONS.c.expires_at < _CUTOFF),
    lambda settings: settings.ended_session_retention_seconds,
)
# Sessions first: what they take with them is then not deleted token by token.
ROW_RULES = (
    Rule(
        REFRESH_TOKENS,
        and_(REFRESH_TOKENS.c.revoked_at.is_(None), REFRESH_TOKENS.c.expires_at < _CUTOFF),
        lambda settings: settings.ended_session_retention_seconds,
        REFRESH_TOKENS.c.expires_at,
    ),
    Rule(
        ONE_TIME_TOKENS,
        ONE_TIME_TOKENS.c.expires_at < _CUTOFF,
        lambda settings: settings.one_time_token_retention_seconds,
        ONE_TIME_TOKENS.c.expires_at,
    ),
    Rule(
        OUTBOX_EMAILS,
        or_(OUTBOX_EMAILS.c.sent_at < _CUTOFF, OUTBOX_EMAILS.c.dead_at < _CUTOFF),
        lambda settings: settings.outbox_retention_seconds,
    ),
    Rule(
        LOGIN_FAILURES,
        LOGIN_FAILURES.c.occurred_at < _CUTOFF,
        lambda settings: settings.login_failure_window_seconds,
        LOGIN_FAILURES.c.occurred_at,
    ),
)


def _rows_past_retention(rule: Rule, *columns: ColumnElement) -> Select:
    # SKIP LOCKED: rows another pass (or a request) holds are left to it. SQLite (`make run`) has no row locks
    # and SQLAlchemy leaves the clause out there.
    found = select(*(columns or (rule.table.c.id,))).select_from(rule.table).where(rule.condition)
    if rule.oldest_first is not None:
        found = found.order_by(rule.oldest_first)
    return found.limit(_BATCH_SIZE).with_for_update(skip_locked=True)


_CTID = literal_column("ctid")
# One statement a batch. PostgreSQL: DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... LIMIT n FOR UPDATE SKIP
# LOCKED)), a TID scan of the rows found (`id IN (SELECT ...)` is planned as a hash join over the whole table).
# The rows are locked by the inner select, so their ctid cannot change before the delete. SQLite: by id.
POSTGRESQL_BATCH_DELETES = {
    rule.name: delete(rule.table).where(
        _CTID == func.any(func.array(_rows_past_retention(rule, _CTID).scalar_subquery()))
    )
    for rule in ROW_RULES
}
BATCH_DELETES = {
    rule.name: delete(rule.table).where(rule.table.c.id.in_(_rows_past_retention(rule).scalar_subquery()))
    for rule in ROW_RULES
}
SESSIONS_PAST_RETENTION = _rows_past_retention(SESSION_RULE)


def _limit_lock_waits(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


def delete_session_batch(*, connection: Connection, cutoff: datetime, batch_size: int) -> tuple[int, int]:
    """Up to `batch_size` sessions past their retention and all their refresh tokens; (sessions, tokens) deleted."""
    with connection.begin():
        _limit_lock_waits(connection)
        found = connection.execute(SESSIONS_PAST_RETENTION, {"cutoff": cutoff, "batch_size": batch_size})
        session_ids = [row.id for row in found]
        if not session_ids:
            return 0, 0
        # The tokens explicitly rather than by the foreign key's cascade, so that they are counted.
        tokens = connection.execute(delete(REFRESH_TOKENS).where(REFRESH_TOKENS.c.family_id.in_(session_ids)))
        sessions = connection.execute(delete(SESSIONS).where(SESSIONS.c.id.in_(session_ids)))
        return sessions.rowcount, tokens.rowcount


def delete_row_batch(*, connection: Connection, rule: Rule, cutoff: datetime, batch_size: int) -> int:
    """Up to `batch_size` rows of the rule's table past their retention; the number deleted."""
    with connection.begin():
        _limit_lock_waits(connection)
        statements = POSTGRESQL_BATCH_DELETES if connection.dialect.name == "postgresql" else BATCH_DELETES
        result = connection.execute(statements[rule.name], {"cutoff": cutoff, "batch_size": batch_size})
        return result.rowcount


def run_retention_pass(
    *, engine: Engine, settings: Settings, now: datetime, stopping: threading.Event | None = None
) -> dict[str, int]:
    """Deletes, batch after batch, every row past its retention at `now`; rows deleted by table.

    A table whose batch fails (the database gone, a lock wait timed out) is left for the next pass; the cause is
    logged. `stopping` set ends the pass after the batch in flight.
    """
    deleted = {SESSIONS.name: 0} | {rule.name: 0 for rule in ROW_RULES}
    batch_size = settings.retention_batch_size
    session_batch_size = max(1, batch_size // SESSION_BATCH_DIVISOR)

    def cutoff(rule: Rule) -> datetime:
        return now - timedelta(seconds=rule.retention(settings))

    def count(table: str, rows: int) -> None:
        deleted[table] += rows
        if rows:
            RETENTION_ROWS_DELETED.labels(table).inc(rows)

    with engine.connect() as connection:
        try:
            while not (stopping and stopping.is_set()):
                sessions, tokens = delete_session_batch(
                    connection=connection, cutoff=cutoff(SESSION_RULE), batch_size=session_batch_size
                )
                count(SESSIONS.name, sessions)
                count(REFRESH_TOKENS.name, tokens)
                if sessions < session_batch_size:
                    break
        except SQLAlchemyError as error:
            log_database_failure(error, engine=engine, where="retention of sessions")
        for rule in ROW_RULES:
            try:
                while not (stopping and stopping.is_set()):
                    rows = delete_row_batch(
                        connection=connection, rule=rule, cutoff=cutoff(rule), batch_size=batch_size
                    )
                    count(rule.name, rows)
                    if rows < batch_size:
                        break
            except SQLAlchemyError as error:
                log_database_failure(error, engine=engine, where=f"retention of {rule.name}")
    if any(deleted.values()):
        logger.info("retention pass", extra={"fields": {"deleted": deleted}})
    return deleted


class RetentionThread:
    """Runs a retention pass about every `settings.retention_interval_seconds`, while the worker runs.

    A pass runs only if the worker used the database (a request, the mail sender) since the last one: an idle
    service sends no query at all, so Neon can suspend its compute; nothing is written while idle, so the rows
    waiting meanwhile do not grow.
    """

    def __init__(self, *, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._stopping = threading.Event()
        self._database_used = False
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        event.listen(engine, "checkout", self._note_checkout)

    def _note_checkout(self, *_: object) -> None:
        if threading.current_thread() is not self._thread:
            self._database_used = True

    def start(self) -> "RetentionThread":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(STOP_WAIT_SECONDS)
        event.remove(self._engine, "checkout", self._note_checkout)

    def _run(self) -> None:
        while not self._stopping.wait(self._settings.retention_interval_seconds * random.uniform(*JITTER)):  # noqa: S311
            if not self._database_used:
                continue
            self._database_used = False
            try:
                run_retention_pass(engine=self._engine, settings=self._settings, now=utc_now(), stopping=self._stopping)
            except Exception:
                # The thread must outlive any one pass; the next one tries again.
                logger.exception("retention pass failed")


def start_retention(*, engine: Engine, settings: Settings) -> RetentionThread | None:
    """The worker's retention thread, started; None when RETENTION_INTERVAL_SECONDS is 0 (off)."""
    if not settings.retention_interval_seconds:
        return None
    return RetentionThread(engine=engine, settings=settings).start()
