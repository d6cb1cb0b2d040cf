"""the throttle's attempt counts as a PostgreSQL function planned without bitmap scans

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 18:35:00

Every successful login or key grant deletes its pending attempt row. A bitmap index scan returns the index entries
of deleted rows until vacuum and never marks them dead, so the counts of one busy client address read thousands of
them on every attempt. A plain index scan marks them dead the first time it finds them so, and skips them after.
The function's `SET enable_bitmapscan = off` holds only while it runs: nothing is left on the connection, as a
pooler in transaction mode needs. The four counts are the ones `shared.throttle.ATTEMPT_COUNTS` makes (SQLite runs
that statement itself); a test compares the two.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CREATE_COUNTS_FUNCTION = """
CREATE FUNCTION throttle_attempt_counts(
    throttle_key varchar,
    client_address varchar,
    attempt_id integer,
    window_start timestamptz,
    stale_before timestamptz
) RETURNS TABLE (key_failures bigint, key_ahead bigint, address_failures bigint, address_ahead bigint)
LANGUAGE sql STABLE
SET enable_bitmapscan = off
AS $$
SELECT
    (SELECT count(*) FROM login_failures AS f
     WHERE f.occurred_at > window_start AND f.id <> attempt_id AND f.username = throttle_key
       AND (f.pending IS false OR f.occurred_at <= stale_before)),
    (SELECT count(*) FROM login_failures AS f
     WHERE f.occurred_at > window_start AND f.id <> attempt_id AND f.username = throttle_key
       AND f.pending IS true AND f.occurred_at > stale_before AND f.id < attempt_id),
    (SELECT count(*) FROM login_failures AS f
     WHERE f.occurred_at > window_start AND f.id <> attempt_id AND f.address = client_address
       AND (f.pending IS false OR f.occurred_at <= stale_before)),
    (SELECT count(*) FROM login_failures AS f
     WHERE f.occurred_at > window_start AND f.id <> attempt_id AND f.address = client_address
       AND f.pending IS true AND f.occurred_at > stale_before AND f.id < attempt_id)
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE_COUNTS_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION throttle_attempt_counts(varchar, varchar, integer, timestamptz, timestamptz)")
