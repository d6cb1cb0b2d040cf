"""`GET /users` pages: by offset or by keyset (`after`), and a total that stays cheap on a big table."""

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, select, text

from shared.database import run_statement
from shared.errors import ApiError
from shared.models import User
from users_service.schemas import UserPublic

# Above this many users (by the planner's estimate) `total` is that estimate rather than a count.
EXACT_TOTAL_LIMIT = 100_000

USERS = User.__table__
PAGE_ROWS = select(*(USERS.c[name] for name in UserPublic.model_fields)).order_by(USERS.c.id)
# Each fetches one row more than the page holds: whether a next page exists, without counting.
PAGE_BY_OFFSET = PAGE_ROWS.limit(bindparam("rows")).offset(bindparam("offset"))
# The primary key's index goes straight to the first id after `after`: the same cost at any depth.
PAGE_AFTER = PAGE_ROWS.where(USERS.c.id > bindparam("after")).limit(bindparam("rows"))
EXACT_TOTAL = select(func.count().label("total")).select_from(USERS)
# PostgreSQL: the planner's row estimate of `users` (pg_class, kept by autovacuum's ANALYZE), scaled to the
# table's current size as the planner scales it; no table scan. Only at or below the limit (or with no estimate
# yet: -1) is the table counted; the count is an uncorrelated subquery, which PostgreSQL runs only if the CASE
# takes its branch.
ESTIMATED_TOTAL = text(
    """
    SELECT CASE WHEN estimate.estimated_rows > :exact_limit THEN estimate.estimated_rows
                ELSE (SELECT count(*) FROM users) END AS total,
           estimate.estimated_rows > :exact_limit AS estimated
    FROM (
        SELECT CASE WHEN c.reltuples < 0 OR c.relpages = 0 THEN -1
                    ELSE CAST(c.reltuples / c.relpages
                              * (pg_relation_size(c.oid) / CAST(current_setting('block_size') AS float8)) AS bigint)
               END AS estimated_rows
        FROM pg_class AS c
        WHERE c.oid = CAST('users' AS regclass)
    ) AS estimate
    """
)


@dataclass(frozen=True)
class UserListing:
    users: list
    total: int
    total_is_exact: bool
    # The id to pass as `after` for the next page; None on the last page.
    next_after: int | None


def check_paging(*, after: int | None, offset: int) -> None:
    """`after` continues from a previous page: an offset on top of it would skip rows nobody asked to skip."""
    if after is not None and offset != 0:
        raise ApiError(
            422,
            [{"loc": ["query", "offset"], "msg": "offset must be 0 when after is given", "type": "value_error"}],
        )


def user_total(*, connection: Connection) -> tuple[int, bool]:
    """(total, exact): a count while the table is small, the planner's estimate above EXACT_TOTAL_LIMIT."""
    if connection.dialect.name != "postgresql":
        row = run_statement(connection, EXACT_TOTAL)[0]
        return row.total, True
    row = run_statement(connection, ESTIMATED_TOTAL, {"exact_limit": EXACT_TOTAL_LIMIT})[0]
    return row.total, not row.estimated


def user_page(*, connection: Connection, limit: int, offset: int, after: int | None) -> UserListing:
    """Users ordered by id: `limit` of them after the id `after`, or from `offset` when `after` is None."""
    if after is None:
        rows = run_statement(connection, PAGE_BY_OFFSET, {"rows": limit + 1, "offset": offset})
    else:
        rows = run_statement(connection, PAGE_AFTER, {"rows": limit + 1, "after": after})
    total, exact = user_total(connection=connection)
    users = rows[:limit]
    return UserListing(
        users=users,
        total=total,
        total_is_exact=exact,
        next_after=users[-1].id if len(rows) > limit else None,
    )
