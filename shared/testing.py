"""Test support both services' suites and the end-to-end suite use: a throwaway, migrated database.

`python -m shared.testing` prints which database the tests will use (the first line of `make test`).
Each suite creates its own database from TEST_DATABASE_URL, migrates it with Alembic and drops it.
Where no PostgreSQL answers, suites run on a SQLite file, except under CI=true, where that is a failure.
"""

import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from shared.migrate import upgrade_to_head
from shared.settings import Settings, normalise_database_url

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_database_url() -> str:
    return normalise_database_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL))


def postgres_answers(url: str) -> bool:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


def terminate_backends(*pids: int) -> None:
    """Ends these PostgreSQL backends from outside, as a failover or a suspended Neon compute would.

    Returns once they are gone (waiting up to 5 s each, PostgreSQL 14+), so the caller's next step meets them dead.
    """
    engine = create_engine(admin_database_url())
    with engine.connect() as connection:
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    engine.dispose()


def new_test_secret() -> str:
    return secrets.token_urlsafe(48)


def create_database(admin_url: str) -> str:
    """Creates `test_<random>` beside the admin URL's database and returns its URL."""
    name = f"test_{secrets.token_hex(6)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@contextmanager
def migrated_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database beside the admin URL's, migrated to head, dropped on exit."""
    url = create_database(admin_url)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        drop_database(admin_url, url)


def _session_database(*, sqlite_fallback: bool) -> Iterator[str]:
    admin_url = admin_database_url()
    if postgres_answers(admin_url):
        with migrated_database(admin_url) as url:
            yield url
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and no PostgreSQL answers at TEST_DATABASE_URL ({make_url(admin_url).host})")
    if not sqlite_fallback:
        pytest.skip(f"needs PostgreSQL: none answers at TEST_DATABASE_URL ({make_url(admin_url).host})")
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'test.db'}"
        upgrade_to_head(url)
        yield url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database for this test session, PostgreSQL when one answers, else SQLite (the in-process suites)."""
    yield from _session_database(sqlite_fallback=True)


@pytest.fixture(scope="session", name="database_url")
def postgresql_database_url() -> Iterator[str]:
    """`database_url` for a suite that runs the services as production does: PostgreSQL, or its tests are skipped."""
    yield from _session_database(sqlite_fallback=False)


@pytest.fixture(scope="module")
def own_postgres_database() -> Iterator[str]:
    """A migrated PostgreSQL database of one test module alone, for counts no other test's rows disturb.

    The module is skipped where no PostgreSQL answers: what it tests (row locks, the planner's estimates) is
    PostgreSQL's.
    """
    admin_url = admin_database_url()
    if not postgres_answers(admin_url):
        pytest.skip("needs PostgreSQL")
    with migrated_database(admin_url) as url:
        yield url


def settings_for_tests(database_url: str, **overrides: object) -> Settings:
    """Settings as production has them, on the test database, with a fresh secret."""
    values: dict[str, object] = {
        "database_url": database_url,
        "jwt_secret": new_test_secret(),
        "app_env": "local" if database_url.startswith("sqlite") else "production",
        # Off unless a test asks for it (with SMTP settings for its own server): senders of several apps on one
        # database would otherwise take each other's mails, or write them into the repository's var/mail.
        "mail_sender_enabled": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def main() -> None:
    admin_url = admin_database_url()
    shown = make_url(admin_url).render_as_string(hide_password=True)
    if postgres_answers(admin_url):
        print(f"tests: PostgreSQL at {shown}; each suite makes and drops its own database")
        return
    if os.environ.get("CI") == "true":
        print(f"tests: FAIL: CI=true and no PostgreSQL answers at {shown}")
        sys.exit(1)
    print(f"tests: no PostgreSQL answers at {shown}: RUNNING ON SQLITE (set TEST_DATABASE_URL to use PostgreSQL)")


if __name__ == "__main__":
    main()


def at_once(calls: list[Callable[[], object]], *, timeout_seconds: float = 120) -> list:
    """Runs each call on its own thread, all released together (real parallelism on the database); their results."""
    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    done = [False] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        start.wait()
        results[index] = call()
        done[index] = True

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_seconds)
    assert all(done), f"{done.count(False)} of {len(calls)} calls did not finish"
    return results
