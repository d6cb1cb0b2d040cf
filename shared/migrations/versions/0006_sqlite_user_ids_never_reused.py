"""SQLite only: user ids are never handed out again

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 23:30:00

Without AUTOINCREMENT, SQLite (`make run`) gives a new row the largest id in the table plus one, so deleting the
newest user made the next sign-up that user again, by id, at token version 0: an access token without a session (as
older code issued) would have passed for the new account. SQLite adds AUTOINCREMENT only by rebuilding the table
(Alembic's batch mode), which reflects no index on an expression: the index on lower(email) is dropped and made
again. PostgreSQL's sequence never hands an id out twice: nothing changes there.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _rebuild_users(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.drop_index("uq_users_email_lower", table_name="users")
    with op.batch_alter_table("users", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass
    op.create_index("uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True)


def upgrade() -> None:
    _rebuild_users(autoincrement=True)


def downgrade() -> None:
    _rebuild_users(autoincrement=False)
