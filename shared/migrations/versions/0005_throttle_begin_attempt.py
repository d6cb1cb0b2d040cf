"""the throttle's attempt begun and counted by one function: one round trip where there were two

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 22:30:00

`throttle_begin_attempt` takes the key's and the address's advisory locks, records the pending attempt with an
asynchronous commit, and returns its id with the four counts of `throttle_attempt_counts` (migrations 0003 and 0004).
Before, the insert and the counts were two statements, each a round trip and a transaction of its own.

The counts must see every attempt of the key or the address with a smaller id. Ids are handed out under the locks,
and whoever held them before has committed by the time they are granted; the counts then run on a snapshot taken
after the insert, because in a PL/pgSQL function each statement takes a snapshot of its own at READ COMMITTED,
PostgreSQL's default, which the services keep (at REPEATABLE READ or above, a role's default say, the whole call
would share one). A single SQL statement (an INSERT in a WITH, say) could not do this: its one snapshot is taken
before it waits for the locks. The locks are held a little longer (until the counts are done), which only orders
attempts of one key or address a little longer.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The parameters and the OUT columns are variables in the body: none is named like a column of login_failures.
CREATE = """
CREATE FUNCTION throttle_begin_attempt(
    throttle_key varchar,
    client_address varchar,
    attempted_at timestamptz,
    window_start timestamptz,
    stale_before timestamptz
) RETURNS TABLE (
    attempt_id integer, key_failures bigint, key_ahead bigint, address_failures bigint, address_ahead bigint
)
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    -- The key first, then the address, in two lock spaces: no two attempts wait for each other in a cycle.
    PERFORM pg_advisory_xact_lock(1, hashtext(throttle_key));
    PERFORM pg_advisory_xact_lock(2, hashtext(client_address));
    -- For this transaction only: the locks go without waiting for the WAL flush (shared/throttle.py says why).
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO login_failures (username, address, occurred_at, pending)
    VALUES (throttle_key, client_address, attempted_at, true)
    RETURNING login_failures.id INTO attempt_id;
    RETURN QUERY
    SELECT attempt_id, counts.key_failures, counts.key_ahead, counts.address_failures, counts.address_ahead
    FROM throttle_attempt_counts(throttle_key, client_address, attempt_id, window_start, stale_before) AS counts;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION throttle_begin_attempt(varchar, varchar, timestamptz, timestamptz, timestamptz)")
