"""Throttling of failed attempts per key (a username, a client id) and per client address, counted in the database.

Kept in the database so every worker of both services and every replica sees the same counts. Only failures
count against the limits. An attempt is recorded as *pending* before its secret is checked, and waits while the
failures plus the pending attempts ahead of it (smaller id, same key or address) reach a limit: at most
`limit - failures` secrets of one key or address are checked at once, so parallel wrong guesses never get more
than the limit checked, while right ones only wait for each other, never refuse each other. A wrong secret turns
its row into a failure; a right one deletes it (`clear_failures`).

Every statement commits on its own (`run_statement`): no transaction is held while a secret is hashed.
"""

import contextlib
import functools
import hashlib
import math
import time
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError

from shared.database import run_statement
from shared.errors import ApiError
from shared.models import LoginFailure, as_utc
from shared.passwords import PasswordHashingBusy
from shared.settings import Settings

# A pending row older than this belongs to a process that died mid-check: it counts as a failure. Longer than any
# request lives (the worker timeout), so no live attempt is ever counted as one.
PENDING_ATTEMPT_LIFETIME = timedelta(seconds=120)
# Pauses between the counts of an attempt that waits for those ahead of it: short first, as a check takes tens of ms.
FIRST_PAUSE_SECONDS = 0.01
LONGEST_PAUSE_SECONDS = 0.1


class Throttled(Exception):
    """Too many failures for the key or the address in the window: answer 429 with Retry-After."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(retry_after_seconds)
        self.retry_after_seconds = retry_after_seconds

    def api_error(self, detail: str, *, headers: dict[str, str] | None = None) -> ApiError:
        """The 429 every throttled flow answers with: `too_many_attempts` and when to try again."""
        return ApiError(
            429,
            detail,
            error="too_many_attempts",
            headers={"Retry-After": str(self.retry_after_seconds), **(headers or {})},
        )


class AttemptsAheadBusy(PasswordHashingBusy):
    """The attempts ahead of this one were not decided within the wait: a 503 with Retry-After, like a full hash
    queue, and nothing counted (its secret was never checked)."""


@dataclass(frozen=True)
class ThrottleLimits:
    per_key: int
    per_address: int
    window_seconds: int
    # How long an attempt waits for the attempts ahead of it before it gives up (AttemptsAheadBusy).
    wait_seconds: float


def login_limits(settings: Settings) -> ThrottleLimits:
    """Password logins (POST /token, and current_password in PATCH /users/...): per username and per address."""
    return ThrottleLimits(
        per_key=settings.login_max_failures_per_username,
        per_address=settings.login_max_failures_per_address,
        window_seconds=settings.login_failure_window_seconds,
        wait_seconds=settings.password_hash_queue_timeout_seconds,
    )


def throttle_key_for_username(username: str) -> str:
    """The stored key: the lower-cased name, or a digest for anything that could not be a username.

    A digest keeps NUL bytes, over-long input and the like out of the table while still counting them.
    """
    lowered = username.lower()
    if len(lowered) <= 64 and lowered.isascii() and lowered.isprintable():
        return lowered
    return "#" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:40]


ATTEMPTS = LoginFailure.__table__
_ATTEMPT_COLUMNS = ["username", "address", "occurred_at", "pending"]
_NEW_ATTEMPT = select(
    bindparam("throttle_key", type_=String),
    bindparam("address", type_=String),
    bindparam("now", type_=DateTime(timezone=True)),
    true(),
)
# PostgreSQL: the attempt recorded and counted in one round trip, by the function of migration 0005. It takes
# advisory locks on the key and on the address, held by its transaction until its commit: attempts of one key (or
# address) then commit in the order of their ids, and its counts, run after its insert on a snapshot of their own, see
# every attempt with a smaller id. Without the locks a smaller id could commit later, unseen, and both be let through.
# Its transaction commits asynchronously (`synchronous_commit` off for that transaction only), so the locks are
# released without waiting for the WAL flush: attempts from one address (a NAT, a proxy) queue there one after
# another. A crash can lose only attempts still pending then: the statement that decides an attempt commits
# synchronously, which flushes the earlier commit record too, and a failure whose pending row was lost is recorded
# anew.
_BEGUN_ATTEMPT = func.throttle_begin_attempt(
    bindparam("throttle_key", type_=String),
    bindparam("address", type_=String),
    bindparam("now", type_=DateTime(timezone=True)),
    bindparam("window_start", type_=DateTime(timezone=True)),
    bindparam("stale_before", type_=DateTime(timezone=True)),
).table_valued("attempt_id", "key_failures", "key_ahead", "address_failures", "address_ahead", name="begun")
BEGIN_ATTEMPT_BY_FUNCTION = select(_BEGUN_ATTEMPT)
# SQLite (`make run`) has one writer at a time: ids are handed out in commit order already.
RECORD_ATTEMPT = insert(ATTEMPTS).from_select(_ATTEMPT_COLUMNS, _NEW_ATTEMPT).returning(ATTEMPTS.c.id)

BY_KEY = ATTEMPTS.c.username == bindparam("throttle_key")
BY_ADDRESS = ATTEMPTS.c.address == bindparam("address")
IS_FAILURE = or_(ATTEMPTS.c.pending.is_(False), ATTEMPTS.c.occurred_at <= bindparam("stale_before"))
IS_AHEAD = and_(
    ATTEMPTS.c.pending.is_(True),
    ATTEMPTS.c.occurred_at > bindparam("stale_before"),
    ATTEMPTS.c.id < bindparam("attempt_id"),
)
IN_WINDOW = and_(ATTEMPTS.c.occurred_at > bindparam("window_start"), ATTEMPTS.c.id != bindparam("attempt_id"))


def _count(*conditions: object):  # noqa: ANN202
    return select(func.count()).select_from(ATTEMPTS).where(IN_WINDOW, *conditions).scalar_subquery()


# All four counts in one round trip.
ATTEMPT_COUNTS = select(
    _count(BY_KEY, IS_FAILURE).label("key_failures"),
    _count(BY_KEY, IS_AHEAD).label("key_ahead"),
    _count(BY_ADDRESS, IS_FAILURE).label("address_failures"),
    _count(BY_ADDRESS, IS_AHEAD).label("address_ahead"),
)
# PostgreSQL: the same counts from the function of migrations 0003 and 0004, planned without bitmap scans, which
# would read the index entries of every success's deleted row again until vacuum, and prepared once per server
# connection (PL/pgSQL), not parsed and planned from scratch on every call (the migrations' docstrings say why).
ATTEMPT_COUNTS_BY_FUNCTION = select(literal_column("*")).select_from(
    func.throttle_attempt_counts(
        bindparam("throttle_key", type_=String),
        bindparam("address", type_=String),
        bindparam("attempt_id", type_=Integer),
        bindparam("window_start", type_=DateTime(timezone=True)),
        bindparam("stale_before", type_=DateTime(timezone=True)),
    )
)


def _blocking_failure(condition: object, offset_name: str):  # noqa: ANN202
    """The time of the limit-th most recent failure matching `condition` in the window, NULL while there are fewer:
    the count drops below the limit when that one leaves the window. Bind `offset_name` to limit - 1."""
    return (
        select(ATTEMPTS.c.occurred_at)
        .where(condition, IS_FAILURE, IN_WINDOW)
        .order_by(ATTEMPTS.c.occurred_at.desc())
        .offset(bindparam(offset_name))
        .limit(1)
        .scalar_subquery()
    )


BLOCKING_FAILURES = select(
    _blocking_failure(BY_KEY, "key_offset").label("by_key"),
    _blocking_failure(BY_ADDRESS, "address_offset").label("by_address"),
)
RECORD_FAILURE = (
    update(ATTEMPTS).where(ATTEMPTS.c.id == bindparam("attempt_id")).values(pending=False).returning(ATTEMPTS.c.id)
)
# The failure of an attempt whose pending row is gone: a server crash lost its asynchronous commit while a pooler
# (PgBouncer, Neon's) kept this client's connection, so nothing failed on our side.
RECORD_LOST_ATTEMPT_AS_FAILURE = (
    insert(ATTEMPTS)
    .from_select(
        _ATTEMPT_COLUMNS,
        select(
            bindparam("throttle_key", type_=String),
            bindparam("address", type_=String),
            bindparam("now", type_=DateTime(timezone=True)),
            false(),
        ),
    )
    .returning(ATTEMPTS.c.id)
)
FORGET_ATTEMPT = delete(ATTEMPTS).where(ATTEMPTS.c.id == bindparam("attempt_id"))
# Other attempts' pending rows stay: a parallel attempt still being checked must still count if it fails.
CLEAR_FAILURES = delete(ATTEMPTS).where(BY_KEY, BY_ADDRESS, or_(IS_FAILURE, ATTEMPTS.c.id == bindparam("attempt_id")))


def begin_attempt(*, connection: Connection, limits: ThrottleLimits, key: str, address: str, now: datetime) -> int:
    """Records a pending attempt, waits for its turn, and returns its id once its secret may be checked.

    Past either limit (failures only) the attempt is forgotten and Throttled is raised; throttled attempts do not
    extend the lockout. While failures plus the pending attempts ahead of it reach a limit, it waits for those to
    be decided, up to `limits.wait_seconds` (then AttemptsAheadBusy). The caller then ends the attempt with
    `record_failure`, `clear_failures` (success) or `forget_attempt` (not checked after all).
    """
    attempt_id, _ = begin_attempt_and_read(
        connection=connection, limits=limits, key=key, address=address, now=now, read=None
    )
    return attempt_id


def begin_attempt_and_read(
    *,
    connection: Connection,
    limits: ThrottleLimits,
    key: str,
    address: str,
    now: datetime,
    read: Select | None,
    read_parameters: Mapping[str, object] | None = None,
) -> tuple[int, Any]:
    """`begin_attempt`, and the first row of `read` (None if it finds none).

    On PostgreSQL the row comes with the attempt and its first counts, in one round trip, as it was when that
    statement started; an attempt that then had to wait for those ahead of it reads it again. Elsewhere it is read
    once the attempt's turn has come. `read` names no column or parameter like the attempt's statement.
    """
    # Rows outside the window count for nothing (every count reads only the window); the retention pass deletes them
    # (shared.retention), so no attempt pays a statement for it.
    first_counts = found = None
    if connection.dialect.name == "postgresql":
        statement, read_row = (BEGIN_ATTEMPT_BY_FUNCTION, None) if read is None else _begun_with(read)
        parameters = {
            "throttle_key": key,
            "address": address,
            "now": now,
            **_window_parameters(limits=limits, moment=now),
            **(read_parameters if read is not None and read_parameters else {}),
        }
        first_counts = run_statement(connection, statement, parameters)[0]
        attempt_id = first_counts.attempt_id
        if read_row is not None and first_counts.read_found:
            found = read_row._make(first_counts[len(BEGIN_ATTEMPT_BY_FUNCTION.selected_columns) : -1])
    else:
        attempt = {"throttle_key": key, "address": address, "now": now}
        attempt_id = run_statement(connection, RECORD_ATTEMPT, attempt)[0].id
    try:
        waited = _wait_for_turn(
            connection=connection,
            limits=limits,
            key=key,
            address=address,
            now=now,
            attempt_id=attempt_id,
            first_counts=first_counts,
        )
        if read is not None and (waited or first_counts is None):
            rows = run_statement(connection, read, read_parameters)
            found = rows[0] if rows else None
    except BaseException:
        # Throttled, given up, or the database failed: this attempt checked no secret and must not count.
        with contextlib.suppress(DBAPIError):
            forget_attempt(connection=connection, attempt_id=attempt_id)
        raise
    return attempt_id, found


@functools.lru_cache(maxsize=16)
def _begun_with(read: Select) -> tuple[Select, type]:
    """`BEGIN_ATTEMPT_BY_FUNCTION` with `read`'s columns and `read_found` beside the counts (NULLs if it finds no
    row), and the named tuple of `read`'s own columns."""
    names = tuple(read.selected_columns.keys())
    if set(names) & {*BEGIN_ATTEMPT_BY_FUNCTION.selected_columns.keys(), "read_found"}:
        raise ValueError(f"read names a column like the attempt's: {names}")
    if read.compile().params.keys() & BEGIN_ATTEMPT_BY_FUNCTION.compile().params.keys():
        raise ValueError(f"read has a parameter of the attempt's: {sorted(read.compile().params)}")
    found = read.add_columns(true().label("read_found")).subquery("read")
    statement = select(_BEGUN_ATTEMPT, *found.c).select_from(_BEGUN_ATTEMPT.outerjoin(found, true()))
    return statement, namedtuple("Row", names)  # noqa: PYI024


def _window_parameters(*, limits: ThrottleLimits, moment: datetime) -> dict[str, datetime]:
    return {
        "window_start": moment - timedelta(seconds=limits.window_seconds),
        "stale_before": moment - PENDING_ATTEMPT_LIFETIME,
    }


def _wait_for_turn(
    *,
    connection: Connection,
    limits: ThrottleLimits,
    key: str,
    address: str,
    now: datetime,
    attempt_id: int,
    first_counts: Any,
) -> bool:
    """Returns once the attempt may check its secret (True if it had to wait); `first_counts` are its counts at
    `now` when they came with the attempt."""
    counting = ATTEMPT_COUNTS_BY_FUNCTION if connection.dialect.name == "postgresql" else ATTEMPT_COUNTS
    started = time.monotonic()
    pause = FIRST_PAUSE_SECONDS
    counts, waited = first_counts, False
    while True:
        moment = now + timedelta(seconds=time.monotonic() - started)
        parameters = {
            "throttle_key": key,
            "address": address,
            "attempt_id": attempt_id,
            **_window_parameters(limits=limits, moment=moment),
        }
        if counts is None:
            counts = run_statement(connection, counting, parameters)[0]
        if counts.key_failures >= limits.per_key or counts.address_failures >= limits.per_address:
            raise Throttled(_retry_after(connection=connection, limits=limits, parameters=parameters, now=moment))
        if (
            counts.key_failures + counts.key_ahead < limits.per_key
            and counts.address_failures + counts.address_ahead < limits.per_address
        ):
            return waited
        if time.monotonic() - started + pause > limits.wait_seconds:
            raise AttemptsAheadBusy
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
        counts, waited = None, True


def _retry_after(*, connection: Connection, limits: ThrottleLimits, parameters: dict, now: datetime) -> int:
    window = timedelta(seconds=limits.window_seconds)
    blocking = run_statement(
        connection,
        BLOCKING_FAILURES,
        {**parameters, "key_offset": limits.per_key - 1, "address_offset": limits.per_address - 1},
    )[0]
    seconds = [
        math.ceil((as_utc(occurred_at) + window - now).total_seconds()) for occurred_at in blocking if occurred_at
    ]
    return max([1, *seconds])


def record_failure(*, connection: Connection, attempt_id: int, key: str, address: str, now: datetime) -> None:
    """The secret was wrong: the pending attempt becomes a failure, counted for the window.

    If its row is gone (see RECORD_LOST_ATTEMPT_AS_FAILURE), the failure is recorded anew: a checked secret counts.
    """
    if not run_statement(connection, RECORD_FAILURE, {"attempt_id": attempt_id}):
        run_statement(connection, RECORD_LOST_ATTEMPT_AS_FAILURE, {"throttle_key": key, "address": address, "now": now})


def forget_attempt(*, connection: Connection, attempt_id: int) -> None:
    """Deletes an attempt whose secret was never checked (or was right), so that it counts as no failure."""
    run_statement(connection, FORGET_ATTEMPT, {"attempt_id": attempt_id})


def clear_failures(*, connection: Connection, key: str, address: str, attempt_id: int, now: datetime) -> None:
    """After a success: forget this attempt and the key's failures from this address only.

    Failures from other addresses still count, so a success by the owner does not give an attacker elsewhere a
    fresh set of guesses; other attempts still pending stay, so those that fail still count.
    """
    run_statement(
        connection, CLEAR_FAILURES, clearing_parameters(key=key, address=address, attempt_id=attempt_id, now=now)
    )


def clearing_parameters(*, key: str, address: str, attempt_id: int, now: datetime) -> dict[str, object]:
    """The bind values of `CLEAR_FAILURES`; on PostgreSQL a login passes them to `store_login` (migration 0007),
    which repeats that statement in SQL."""
    return {
        "throttle_key": key,
        "address": address,
        "attempt_id": attempt_id,
        "stale_before": now - PENDING_ATTEMPT_LIFETIME,
    }


def begin_login_attempt(
    *, connection: Connection, settings: Settings, username_key: str, address: str, now: datetime
) -> int:
    """`begin_attempt` for a password login of `username_key` (`throttle_key_for_username`) from `address`."""
    return begin_attempt(
        connection=connection, limits=login_limits(settings), key=username_key, address=address, now=now
    )
