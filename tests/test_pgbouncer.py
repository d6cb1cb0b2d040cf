"""Through a real PgBouncer in transaction mode (Neon's pooled URL): the statement timeout holds in the app's
transactions and never reaches another client of the same server connection.

Skipped where PgBouncer is not installed (`apt-get install pgbouncer`), except under CI=true: there it fails.
"""

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.database import build_engine, build_session_factory, run_statement
from shared.testing import settings_for_tests
from tests.processes import free_port
from users_service.tests.test_statement_timeout import long_statement_error_code

PGBOUNCER = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
TIMEOUT_MS = 1234
# Under CI a missing PgBouncer is a failure (the fixture says so): a skip would leave the pooler untested.
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None and os.environ.get("CI") != "true", reason="PgBouncer is not installed"
)


@pytest.fixture
def pooled_url(database_url: str) -> Iterator[str]:
    """The test database behind a PgBouncer of one server connection in transaction mode."""
    if PGBOUNCER is None:
        pytest.fail("CI=true and PgBouncer is not installed (.ci/run installs it: apt-get install pgbouncer)")
    direct = make_url(database_url)
    if direct.get_backend_name() != "postgresql":
        pytest.skip("needs PostgreSQL")
    port = free_port()
    # PgBouncer refuses to run as root and drops to `postgres`, which must be able to read its files.
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{direct.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={direct.host} port={direct.port or 5432}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\npool_mode = transaction\n"
        "default_pool_size = 1\nmax_client_conn = 50\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    log = (folder / "pgbouncer.log").open("wb")
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    process = subprocess.Popen([PGBOUNCER, *user, str(folder / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT)
    url = direct.set(port=port).render_as_string(hide_password=False)
    try:
        _wait_until_it_answers(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_it_answers(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg2.connect(_dsn(url)).close()
            return
        except psycopg2.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def another_clients_statement_timeout(url: str) -> str:
    """What a fresh client of the pooler sees: with one server connection, the one the app used."""
    connection = psycopg2.connect(_dsn(url))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def test_the_timeout_never_reaches_another_client_of_the_pooler(pooled_url: str) -> None:
    before = another_clients_statement_timeout(pooled_url)
    engine = build_engine(settings_for_tests(pooled_url, db_statement_timeout_ms=TIMEOUT_MS))
    try:
        with build_session_factory(engine)() as session, session.begin():
            assert session.execute(text("SHOW statement_timeout")).scalar_one() == f"{TIMEOUT_MS}ms"
        with engine.connect() as connection:
            run_statement(connection, text("SELECT 1"))

        assert another_clients_statement_timeout(pooled_url) == before
    finally:
        engine.dispose()


def test_a_long_statement_in_a_transaction_is_cancelled_through_the_pooler(pooled_url: str) -> None:
    assert long_statement_error_code(pooled_url) == "57014"  # query_canceled
