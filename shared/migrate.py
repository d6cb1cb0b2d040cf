"""Applies the Alembic migrations: `python -m shared.migrate [upgrade head | downgrade -1 | revision -m ...]`.

Uses MIGRATION_DATABASE_URL (Neon's direct, non-pooled URL) when set, else DATABASE_URL.
"""

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from shared.settings import MigrationSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats % as interpolation; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    _ensure_sqlite_folder(database_url)
    command.upgrade(alembic_config(database_url), "head")


def _ensure_sqlite_folder(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def main(argv: list[str]) -> None:
    database_url = MigrationSettings().effective_migration_url
    args = argv or ["upgrade", "head"]
    config = alembic_config(database_url)
    if args[0] == "upgrade":
        _ensure_sqlite_folder(database_url)
        command.upgrade(config, args[1] if len(args) > 1 else "head")
    elif args[0] == "downgrade":
        command.downgrade(config, args[1])
    elif args[0] == "revision":
        command.revision(config, message=" ".join(args[2:]) if args[1:2] == ["-m"] else None, autogenerate=True)
    elif args[0] == "current":
        command.current(config)
    else:
        raise SystemExit(f"unknown command {args[0]!r}; use upgrade, downgrade, revision -m MESSAGE or current")


if __name__ == "__main__":
    main(sys.argv[1:])
