"""the throttle's attempt counts function in PL/pgSQL, which keeps its prepared query between calls

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 20:10:00

A SQL-language function that carries a `SET` clause is never inlined, and PostgreSQL parses, analyses and plans its
body anew on every call: for these four counts, several times what running them costs, on every login and key
grant. A PL/pgSQL function prepares its query once per server connection and keeps it (and its plan, once a generic
plan serves as well as the custom ones). The counts, their columns and `SET enable_bitmapscan = off` (migration
0003 says why) are unchanged.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SIGNATURE = """throttle_attempt_counts(
    throttle_key varchar,
    client_address varchar,
    attempt_id integer,
    window_start timestamptz,
    stale_before timestamptz
) RETURNS TABLE (key_failures bigint, key_ahead bigint, address_failures bigint, address_ahead bigint)"""
COUNTS = """SELECT
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
       AND f.pending IS true AND f.occurred_at > stale_before AND f.id < attempt_id)"""
# In PL/pgSQL the parameters and the OUT columns are variables: none is named like a column of login_failures, so no
# name in the body is ambiguous.
CREATE_PLPGSQL = f"""
CREATE OR REPLACE FUNCTION {SIGNATURE}
LANGUAGE plpgsql STABLE
SET enable_bitmapscan = off
AS $$
BEGIN
    RETURN QUERY {COUNTS};
END
$$
"""
CREATE_SQL = f"""
CREATE OR REPLACE FUNCTION {SIGNATURE}
LANGUAGE sql STABLE
SET enable_bitmapscan = off
AS $$
{COUNTS}
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE_PLPGSQL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE_SQL)
