"""a login's session, first refresh token and cleared throttle failures stored by one PL/pgSQL function

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 01:00:00

Before, `STORE_LOGIN` was one SQL statement (an INSERT in a WITH, two more behind it) that PostgreSQL parsed and
planned on every login. `store_login` does the same three steps in one call, so still one round trip and one
transaction, and PL/pgSQL prepares each of its statements once per server connection (docs/performance.md).

The steps keep their order and their conditions: the session only while the user is active and at the token
version the password was checked against (its row locked FOR SHARE against a concurrent password change or
deactivation, shared/revocation.py), its first refresh token only with it, the failures cleared only then. It
returns the refresh token's id, or NULL when the user had changed (nothing stored). At READ COMMITTED each
statement takes its own snapshot, so the clearing can also see a failure of the same name and address committed
while the session was being stored; such a failure was decided at the same moment as this login and goes as
one decided just before it would.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The parameters are variables in the body: none is named like a column of the tables it touches.
CREATE = """
CREATE FUNCTION store_login(
    new_session_id varchar,
    login_user_id integer,
    checked_token_version integer,
    stored_at timestamptz,
    session_expires_at timestamptz,
    client_user_agent varchar,
    client_ip_address varchar,
    refresh_token_hash varchar,
    throttle_key varchar,
    client_address varchar,
    login_attempt_id integer,
    stale_before timestamptz
) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    stored_refresh_token_id integer;
BEGIN
    INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent, ip_address)
    SELECT new_session_id, users.id, stored_at, stored_at, session_expires_at, client_user_agent, client_ip_address
    FROM users
    WHERE users.id = login_user_id AND users.token_version = checked_token_version AND users.is_active IS true
    FOR SHARE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at)
    VALUES (refresh_token_hash, new_session_id, login_user_id, stored_at, session_expires_at)
    RETURNING refresh_tokens.id INTO stored_refresh_token_id;
    -- The throttle's CLEAR_FAILURES (shared/throttle.py): decided failures, stale pending ones, and this attempt.
    DELETE FROM login_failures
    WHERE login_failures.username = throttle_key
        AND login_failures.address = client_address
        AND (
            login_failures.pending IS false
            OR login_failures.occurred_at <= stale_before
            OR login_failures.id = login_attempt_id
        );
    RETURN stored_refresh_token_id;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION store_login(varchar, integer, integer, timestamptz, timestamptz, varchar, varchar, varchar,"
            " varchar, varchar, integer, timestamptz)"
        )
