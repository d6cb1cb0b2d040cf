"""End to end: gunicorn's SIGTERM (graceful stop) and SIGHUP (worker reload) lose no request in flight.

Each test starts its own gunicorn masters (never the shared `stack`) and signals them while about
20 slow requests (Argon2 sign-ups or logins, made slower still with ARGON2_TIME_COST) are being
served. Every request uses a fresh connection and records when its request was sent and when its
answer came, so the test can show the requests really were in flight when the signal went.
"""

import http.client
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import create_engine, insert

from shared.models import User
from shared.passwords import PasswordHasher
from shared.testing import new_test_secret, settings_for_tests
from tests.processes import ServiceProcess, free_port

IN_FLIGHT = 20
# SIGHUP: clients sending back to back. More would overrun the per-worker Argon2 queue (a 503 by design)
# on two cores, the more so while the new workers start.
RELOAD_CLIENTS = 8
# Slower hashes: each login or sign-up then takes ~100 ms on this machine, so 20 of them on 2 workers
# (one hash at a time each) keep the workers busy for about a second.
ARGON2_TIME_COST = "6"
PASSWORD = "graceful password 1"
ANSWER_TIMEOUT = 60
# SIGHUP: requests reset without an answer because they raced an old worker's stop (see the test).
MAX_RESETS_RACING_A_RELOAD = 2


@dataclass
class Outcome:
    sent_at: float | None = None
    answered_at: float | None = None
    status: int | None = None
    body: bytes = b""
    error: str | None = None


@dataclass
class Restartable:
    """A service's gunicorn master started by this test, and how to send it one slow request."""

    process: ServiceProcess
    request: Callable[[], tuple[str, str, bytes, dict[str, str]]]
    expect_status: int
    expect_key: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.process.port

    def send(self, outcome: Outcome, *, started: threading.Event | None = None) -> None:
        """One request on a fresh connection; `sent_at` once the whole request is on the wire."""
        method, path, body, headers = self.request()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=ANSWER_TIMEOUT)
        try:
            connection.request(method, path, body=body, headers={**headers, "Connection": "close"})
            outcome.sent_at = time.monotonic()
            if started is not None:
                started.set()
            response = connection.getresponse()
            outcome.body = response.read()
            outcome.status = response.status
        except (OSError, http.client.HTTPException) as error:
            outcome.error = f"{type(error).__name__}: {error}"
        finally:
            outcome.answered_at = time.monotonic()
            connection.close()
            if started is not None:
                started.set()

    def complete(self, outcome: Outcome) -> bool:
        if outcome.error or outcome.status != self.expect_status:
            return False
        try:
            return self.expect_key in json.loads(outcome.body)
        except ValueError:
            return False


def accept_queue_length(port: int) -> int:
    """Connections waiting in the listening socket's accept queue (rx_queue of a LISTEN row in /proc/net/tcp)."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                waiting += int(fields[4].split(":")[1], 16)
    return waiting


def wait_until_accepted(port: int, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while accept_queue_length(port) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert accept_queue_length(port) == 0, "the workers did not accept every connection in time"


def worker_pids(master_pid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the parent pid is the 2nd field after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
            pids.add(int(entry.name))
    return pids


def wait_for_workers(
    master_pid: int, count: int, *, excluding: set[int] = frozenset(), timeout: float = 30
) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(master_pid)
        if len(pids) == count and not pids & excluding:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"workers of {master_pid} did not become {count} new ones: {worker_pids(master_pid)}")


@pytest.fixture
def service_env(database_url: str) -> dict[str, str]:
    app_env = "local" if database_url.startswith("sqlite") else "production"
    return {
        "DATABASE_URL": database_url,
        "APP_ENV": app_env,
        "JWT_SECRET": new_test_secret(),
        "ARGON2_TIME_COST": ARGON2_TIME_COST,
        # On a busy machine 20 slowed hashes can queue past the default 5 s; this test is about shutdown.
        "PASSWORD_HASH_QUEUE_TIMEOUT_SECONDS": "60",
        "GUNICORN_GRACEFUL_TIMEOUT": "30",
    }


@pytest.fixture
def accounts(database_url: str) -> list[str]:
    """Usernames (password PASSWORD) inserted straight into the database, hashed as the service would."""
    settings = settings_for_tests(database_url, argon2_time_cost=int(ARGON2_TIME_COST))
    password_hash = PasswordHasher(settings).hash(PASSWORD)
    names = [f"gr_{secrets.token_hex(6)}" for _ in range(IN_FLIGHT * 10)]
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(User),
            [
                {
                    "username": name,
                    "password_hash": password_hash,
                    "is_active": True,
                    "is_admin": False,
                    "token_version": 0,
                }
                for name in names
            ],
        )
    engine.dispose()
    return names


@pytest.fixture(params=["auth", "users"])
def restartable(
    request: pytest.FixtureRequest, service_env: dict[str, str], accounts: list[str], tmp_path: Path
) -> Iterator[Restartable]:
    service = request.param
    env = dict(service_env)
    if request.node.get_closest_marker("worker_reload") and not kernel_migrates_queued_connections():
        # With a listening socket per worker (GUNICORN_REUSE_PORT, the default), the connections queued on a
        # stopping worker's socket are reset unless the kernel hands them over (net.ipv4.tcp_migrate_req=1).
        # This machine does not: reload with the one shared socket instead.
        env["GUNICORN_REUSE_PORT"] = "false"
    process = ServiceProcess(service, free_port(), env, tmp_path / f"{service}.log", workers=2).start()
    if service == "auth":
        names = iter(accounts * 50)
        lock = threading.Lock()

        def login() -> tuple[str, str, bytes, dict[str, str]]:
            with lock:
                name = next(names)
            body = urlencode({"username": name, "password": PASSWORD}).encode()
            return "POST", "/token", body, {"Content-Type": "application/x-www-form-urlencoded"}

        target = Restartable(process, login, 200, "access_token")
    else:

        def sign_up() -> tuple[str, str, bytes, dict[str, str]]:
            body = json.dumps({"username": f"gs_{secrets.token_hex(6)}", "password": PASSWORD}).encode()
            return "POST", "/users", body, {"Content-Type": "application/json"}

        target = Restartable(process, sign_up, 201, "id")
    try:
        yield target
    finally:
        process.stop()
        markers = ("Traceback (most recent call last)", "Exception in ASGI application", "unhandled ", "WORKER TIMEOUT")
        unhandled = [line for line in process.log_text().splitlines() if any(marker in line for marker in markers)]
        assert not unhandled, unhandled[:5]


def test_sigterm_lets_every_in_flight_request_finish(restartable: Restartable) -> None:
    master = restartable.process.process
    outcomes = [Outcome() for _ in range(IN_FLIGHT)]
    sent = [threading.Event() for _ in range(IN_FLIGHT)]
    threads = [
        threading.Thread(target=restartable.send, args=(outcome,), kwargs={"started": event}, daemon=True)
        for outcome, event in zip(outcomes, sent)
    ]
    for thread in threads:
        thread.start()
    for event in sent:
        assert event.wait(10), "a request could not even be sent"
    # In flight means accepted by a worker: a connection still in the kernel's accept queue when the
    # listening socket closes is refused by any server, which is what a load balancer's drain is for.
    wait_until_accepted(restartable.port)
    signalled_at = time.monotonic()
    master.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(ANSWER_TIMEOUT)
    exit_code = master.wait(timeout=60)

    in_flight = [outcome for outcome in outcomes if outcome.answered_at is None or outcome.answered_at > signalled_at]
    assert len(in_flight) >= IN_FLIGHT // 2, f"only {len(in_flight)} requests were still in flight at SIGTERM"
    failed = [outcome for outcome in outcomes if not restartable.complete(outcome)]
    assert not failed, [(o.status, o.error, o.body[:200]) for o in failed]
    assert exit_code == 0


def kernel_migrates_queued_connections() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.worker_reload
def test_sighup_reloads_workers_without_losing_a_request(restartable: Restartable) -> None:
    master_pid = restartable.process.process.pid
    old_workers = wait_for_workers(master_pid, 2)
    outcomes: list[Outcome] = []
    outcomes_lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            outcome = Outcome()
            with outcomes_lock:
                outcomes.append(outcome)
            restartable.send(outcome)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(RELOAD_CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.0)
        signalled_at = time.monotonic()
        os.kill(master_pid, signal.SIGHUP)
        new_workers = wait_for_workers(master_pid, 2, excluding=old_workers)
        reloaded_at = time.monotonic()
        # A second reload straight after the first, still under load.
        os.kill(master_pid, signal.SIGHUP)
        wait_for_workers(master_pid, 2, excluding=old_workers | new_workers)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in clients:
            thread.join(ANSWER_TIMEOUT)

    assert restartable.process.process.poll() is None, "the gunicorn master itself exited"
    during = [
        outcome
        for outcome in outcomes
        if outcome.sent_at is not None and outcome.sent_at < reloaded_at and (outcome.answered_at or 0) > signalled_at
    ]
    assert len(during) >= RELOAD_CLIENTS, f"only {len(during)} requests overlapped the reload"
    failed = [outcome for outcome in outcomes if not restartable.complete(outcome)]
    # uvicorn's graceful stop (Server.shutdown) closes every connection without a request in progress, and
    # one it has just accepted but not yet read from looks like that: a request sent at that instant is
    # reset without an answer (seen once, under CI's load with the compose stack running). That, and only a
    # few of it, is allowed here; an error status or a cut-off answer never is.
    raced = [o for o in failed if o.status is None and (o.error or "").startswith("ConnectionResetError")]
    details = (len(failed), len(outcomes), [(o.status, o.error, o.body[:200]) for o in failed[:10]])
    assert failed == raced and len(raced) <= MAX_RESETS_RACING_A_RELOAD, details
