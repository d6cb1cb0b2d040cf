"""Database connections killed under load (what a Neon compute suspension or a failover does to a pool).

Only this test's own database is touched: its server connections are terminated with
`pg_terminate_backend` every few milliseconds while clients with keep-alive connections read and
sign up. Every request must still get an HTTP answer (its success, or 503 JSON with Retry-After),
no unhandled exception may reach the ASGI server, and once the killing stops the services answer
again by themselves. No cluster is stopped, so nothing else on the machine notices.
"""

import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.testing import admin_database_url, postgres_answers
from tests.fault.db_outage import (
    PASSWORD,
    Recorder,
    _check_writes,
    own_database,
    read_me_until,
    services,
    sign_up_until,
)

KILL_SECONDS = 6.0
KILL_INTERVAL = 0.03
CLIENTS = 4
RECOVERY_LIMIT = 5.0


@pytest.fixture(scope="module")
def admin_url() -> str:
    url = admin_database_url()
    if not postgres_answers(url):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and no PostgreSQL answers at TEST_DATABASE_URL")
        pytest.skip("needs PostgreSQL (TEST_DATABASE_URL)")
    return url


@pytest.fixture(scope="module")
def killed(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    log_dir = tmp_path_factory.mktemp("killed-logs")
    recorder = Recorder()
    with own_database(admin_url, keep=False) as database_url, services(database_url, 2, Path(log_dir)) as (auth, users):
        username = f"kc_{secrets.token_hex(6)}"
        requests.post(
            f"{users.url}/users", json={"username": username, "password": PASSWORD}, timeout=30
        ).raise_for_status()
        token = requests.post(
            f"{auth.url}/token", data={"username": username, "password": PASSWORD}, timeout=30
        ).json()["access_token"]
        stop = threading.Event()
        killing = threading.Event()
        kills = Counter()

        def killer() -> None:
            engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            name = make_url(database_url).database
            try:
                with engine.connect() as connection:
                    while killing.is_set():
                        kills["terminated"] += connection.execute(
                            text(
                                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = :name AND pid <> pg_backend_pid()"
                            ),
                            {"name": name},
                        ).scalar_one()
                        time.sleep(KILL_INTERVAL)
            finally:
                engine.dispose()

        load = {"stop": stop, "recorder": recorder, "users_url": users.url, "timeout": 15}
        threads = [
            threading.Thread(target=read_me_until, kwargs={"token": token, "pause": 0.005, **load}, daemon=True)
            for _ in range(CLIENTS)
        ]
        threads.append(threading.Thread(target=sign_up_until, kwargs={"pause": 0, **load}, daemon=True))
        for thread in threads:
            thread.start()
        killing.set()
        killer_thread = threading.Thread(target=killer, daemon=True)
        killer_thread.start()
        time.sleep(KILL_SECONDS)
        killing.clear()
        killer_thread.join(10)
        stopped_killing = time.monotonic()
        time.sleep(RECOVERY_LIMIT + 1)
        stop.set()
        for thread in threads:
            thread.join(20)
        lost, _ = _check_writes(database_url, recorder)
        logs = auth.log_text() + users.log_text()
    yield {
        "recorder": recorder,
        "stopped_killing": stopped_killing,
        "lost": lost,
        "logs": logs,
        "kills": kills["terminated"],
    }


def test_connections_were_really_killed(killed: dict) -> None:
    assert killed["kills"] > 0


def test_every_request_gets_an_answer(killed: dict) -> None:
    """A dead connection must not cost a client its HTTP connection (and with it the next request)."""
    no_answer = [s for s in killed["recorder"].samples if s.status is None]
    assert not no_answer, (
        len(no_answer),
        len(killed["recorder"].samples),
        Counter(s.error for s in no_answer).most_common(3),
    )


def test_only_success_or_503(killed: dict) -> None:
    statuses = Counter((s.kind, s.status) for s in killed["recorder"].samples if s.status is not None)
    unexpected = {key: count for key, count in statuses.items() if key[1] not in (200, 201, 503)}
    assert not unexpected, statuses
    bad_503 = [s for s in killed["recorder"].samples if s.status == 503 and not (s.json_detail and s.retry_after)]
    assert not bad_503, [s.snippet for s in bad_503[:3]]


def test_no_unhandled_exception_reaches_the_server(killed: dict) -> None:
    logs = killed["logs"]
    unhandled = [line for line in logs.splitlines() if "Exception in ASGI application" in line or "unhandled " in line]
    assert not unhandled, (len(unhandled), unhandled[:3])


def test_recovers_once_the_killing_stops(killed: dict) -> None:
    after = [s for s in killed["recorder"].samples if s.started > killed["stopped_killing"] + RECOVERY_LIMIT]
    assert after, "no request was sent after the recovery limit"
    assert {s.status for s in after} <= {200, 201}, Counter(s.status for s in after)


def test_no_acknowledged_sign_up_is_lost(killed: dict) -> None:
    assert killed["recorder"].acknowledged
    assert not killed["lost"], killed["lost"]
