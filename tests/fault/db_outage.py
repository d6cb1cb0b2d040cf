#!/usr/bin/env python3
"""Database outage under load: stop PostgreSQL for N seconds, start it again, report.

    .venv/bin/python tests/fault/db_outage.py [--outage-seconds 10] [--duration 30]

What it does: creates a database of its own, migrates it, starts both services as real gunicorn
processes (2 workers each), drives steady load from a few threads (sign-ups, password logins,
GET /users/me, and probes of /healthz, /readyz and the JWKS), stops the PostgreSQL cluster under
them (`pg_ctl stop -m fast`), waits, starts it again, keeps the load on, and prints what it saw.
The rules (exit status 1 when one is broken):

  - no 5xx other than 503, in any phase; no connection error, reset or client time-out;
  - every 503 is JSON `{"detail": ...}` with a numeric Retry-After, and no SQL or trace in it;
  - no request takes longer than --request-timeout (the services' statement timeout, 15 s);
  - while the database is down: every sign-up, login and /users/me gets 503, /readyz says 503,
    /healthz and the JWKS (which need no database) keep answering 200;
  - within --recovery-limit seconds (5) of the database being back, every kind of request
    succeeds again, with no restart, and keeps succeeding;
  - every sign-up answered 201 is in the database afterwards (checked with SQL): no lost write;
  - no exception reaches the ASGI server or the catch-all handler (the services' logs say so).

The cluster is a throwaway one of its own (tests/fault/own_cluster.py: initdb in a temporary folder, on a
free port, removed afterwards, also on Ctrl-C and SIGTERM), so no PostgreSQL that anybody else uses is
ever stopped. It needs the PostgreSQL server binaries (initdb, pg_ctl) and, as root, the postgres user.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests
from sqlalchemy import bindparam, create_engine, text

from shared.migrate import upgrade_to_head
from shared.testing import create_database, drop_database, new_test_secret
from tests.fault.own_cluster import OwnCluster, own_cluster
from tests.processes import ServiceProcess, free_port

DB_KINDS = ("signup", "login", "me")
SUCCESS_STATUS = {"signup": 201, "login": 200, "me": 200, "healthz": 200, "jwks": 200, "readyz": 200}
PASSWORD = "outage password 1"
UNHANDLED_MARKERS = ("Traceback (most recent call last)", "Exception in ASGI application", "unhandled ")
LEAK_MARKERS = ("Traceback", "psycopg2", "sqlalchemy", "SELECT ", "INSERT ", "UPDATE ", "password_hash")


# --- Recording --------------------------------------------------------------------------------------


@dataclass
class Sample:
    kind: str
    service: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection error or client time-out)
    error: str | None = None
    json_detail: bool = False
    retry_after: str | None = None
    leak: str | None = None
    snippet: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.acknowledged: dict[str, int] = {}  # username -> id, for every sign-up answered 201
        self.unacknowledged: list[str] = []  # sign-ups answered otherwise (503, or no answer)
        self._lock = threading.Lock()

    def add(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def signup(self, username: str, user_id: int | None) -> None:
        with self._lock:
            if user_id is None:
                self.unacknowledged.append(username)
            else:
                self.acknowledged[username] = user_id


def timed_request(
    recorder: Recorder,
    session: requests.Session,
    kind: str,
    service: str,
    method: str,
    url: str,
    timeout: float,
    **kwargs,
) -> requests.Response | None:
    started = time.monotonic()
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as error:
        recorder.add(
            Sample(kind, service, started, time.monotonic(), None, error=f"{type(error).__name__}: {error}"[:300])
        )
        return None
    ended = time.monotonic()
    sample = Sample(kind, service, started, ended, response.status_code, snippet=response.text[:200])
    if response.status_code >= 400:
        try:
            sample.json_detail = response.headers.get("content-type", "").startswith("application/json") and (
                "detail" in response.json()
            )
        except ValueError:
            sample.json_detail = False
        sample.retry_after = response.headers.get("Retry-After")
        sample.leak = next((marker for marker in LEAK_MARKERS if marker in response.text), None)
    recorder.add(sample)
    return response


# --- The run ----------------------------------------------------------------------------------------


@dataclass
class OutageConfig:
    outage_seconds: float = 10.0
    duration: float = 30.0
    warmup: float = 5.0
    recovery_limit: float = 5.0
    request_timeout: float = 15.0
    workers: int = 2
    signup_threads: int = 2
    login_threads: int = 2
    me_threads: int = 2
    pause: float = 0.02
    probe_interval: float = 0.2

    def check(self) -> None:
        needed = self.warmup + self.outage_seconds + self.recovery_limit + 2
        if self.duration < needed:
            raise ValueError(f"--duration must be at least warm-up + outage + recovery limit + 2 s = {needed:g} s")
        if self.outage_seconds <= 0:
            raise ValueError("--outage-seconds must be positive")


@dataclass
class Timeline:
    load_started: float = 0.0
    stop_begun: float = 0.0
    stopped: float = 0.0
    start_begun: float = 0.0
    start_returned: float = 0.0
    up: float = 0.0  # the first moment PostgreSQL accepted connections again
    load_ended: float = 0.0

    def phase(self, sample: Sample) -> str:
        if sample.ended < self.stop_begun:
            return "before"
        if sample.started >= self.stopped and sample.ended <= self.start_begun:
            return "outage"
        if sample.started >= self.up:
            return "after"
        return "transition"


@dataclass
class OutageResult:
    config: OutageConfig
    timeline: Timeline
    samples: list[Sample]
    acknowledged: dict[str, int]
    lost_writes: list[str]
    phantom_writes: list[str]
    recovery: dict[str, float | None]
    log_unhandled: list[str]  # log lines of exceptions that reached the ASGI server or the catch-all handler
    log_dir: Path
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    # Figures the issue asks for, also asserted by the short test.
    @property
    def server_errors_other_than_503(self) -> list[Sample]:
        return [s for s in self.samples if s.status is not None and s.status >= 500 and s.status != 503]

    @property
    def bad_503s(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 503 and not _good_503(s)]

    @property
    def no_answer(self) -> list[Sample]:
        return [s for s in self.samples if s.status is None]

    @property
    def max_latency(self) -> float:
        return max((s.latency for s in self.samples), default=0.0)

    @property
    def recovery_seconds(self) -> float | None:
        values = list(self.recovery.values())
        return None if any(v is None for v in values) or not values else max(values)

    def in_phase(self, phase: str, kind: str | None = None, service: str | None = None) -> list[Sample]:
        return [
            s
            for s in self.samples
            if self.timeline.phase(s) == phase
            and (kind is None or s.kind == kind)
            and (service is None or s.service == service)
        ]


def _good_503(sample: Sample) -> bool:
    return bool(sample.json_detail and sample.retry_after and sample.retry_after.isdigit() and not sample.leak)


@contextmanager
def own_database(admin_url: str, keep: bool) -> Iterator[str]:
    url = create_database(admin_url)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        if not keep:
            drop_database(admin_url, url)


@contextmanager
def services(database_url: str, workers: int, log_dir: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    env = {"DATABASE_URL": database_url, "APP_ENV": "production", "JWT_SECRET": new_test_secret()}
    started: list[ServiceProcess] = []
    try:
        for service in ("auth", "users"):
            process = ServiceProcess(service, free_port(), env, log_dir / f"{service}.log", workers=workers)
            started.append(process.start())
        yield started[0], started[1]
    finally:
        for process in started:
            process.stop()


def _prepare_accounts(users_url: str, auth_url: str, count: int) -> list[tuple[str, str]]:
    """Accounts for the login and /users/me threads: (username, access token)."""
    accounts = []
    for _ in range(count):
        username = f"fo_{secrets.token_hex(6)}"
        response = requests.post(f"{users_url}/users", json={"username": username, "password": PASSWORD}, timeout=30)
        response.raise_for_status()
        login = requests.post(f"{auth_url}/token", data={"username": username, "password": PASSWORD}, timeout=30)
        login.raise_for_status()
        accounts.append((username, login.json()["access_token"]))
    return accounts


def sign_up_until(*, stop: threading.Event, recorder: Recorder, users_url: str, timeout: float, pause: float) -> None:
    """New users one after another on one keep-alive session until `stop`; each acknowledgement recorded."""
    session = requests.Session()
    while not stop.is_set():
        username = f"fs_{secrets.token_hex(8)}"
        response = timed_request(
            recorder,
            session,
            "signup",
            "users",
            "POST",
            f"{users_url}/users",
            timeout,
            json={"username": username, "password": PASSWORD},
        )
        recorder.signup(
            username, response.json()["id"] if response is not None and response.status_code == 201 else None
        )
        stop.wait(pause)


def read_me_until(
    *, stop: threading.Event, recorder: Recorder, users_url: str, token: str, timeout: float, pause: float
) -> None:
    """`GET /users/me` on one keep-alive session (as real clients and proxies do) until `stop`."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        timed_request(recorder, session, "me", "users", "GET", f"{users_url}/users/me", timeout, headers=headers)
        stop.wait(pause)


def _load_threads(
    config: OutageConfig, recorder: Recorder, auth_url: str, users_url: str, stop: threading.Event
) -> list[threading.Thread]:
    accounts = _prepare_accounts(users_url, auth_url, max(config.login_threads, config.me_threads))
    timeout = config.request_timeout

    def logins(username: str) -> Callable[[], None]:
        def run() -> None:
            session = requests.Session()
            while not stop.is_set():
                timed_request(
                    recorder,
                    session,
                    "login",
                    "auth",
                    "POST",
                    f"{auth_url}/token",
                    timeout,
                    data={"username": username, "password": PASSWORD},
                )
                stop.wait(config.pause)

        return run

    def probes() -> None:
        session = requests.Session()
        targets = [
            ("readyz", "auth", f"{auth_url}/readyz"),
            ("readyz", "users", f"{users_url}/readyz"),
            ("healthz", "auth", f"{auth_url}/healthz"),
            ("healthz", "users", f"{users_url}/healthz"),
            ("jwks", "auth", f"{auth_url}/.well-known/jwks.json"),
        ]
        while not stop.is_set():
            for kind, service, url in targets:
                timed_request(recorder, session, kind, service, "GET", url, timeout)
            stop.wait(config.probe_interval)

    load = {"stop": stop, "recorder": recorder, "users_url": users_url, "timeout": timeout, "pause": config.pause}
    targets: list[Callable[[], None]] = [functools.partial(sign_up_until, **load)] * config.signup_threads
    targets += [logins(accounts[i][0]) for i in range(config.login_threads)]
    targets += [functools.partial(read_me_until, token=accounts[i][1], **load) for i in range(config.me_threads)]
    targets.append(probes)
    return [threading.Thread(target=target, name=f"load-{i}", daemon=True) for i, target in enumerate(targets)]


def _check_writes(database_url: str, recorder: Recorder) -> tuple[list[str], list[str]]:
    """(acknowledged sign-ups missing from the database, unacknowledged ones that were stored anyway)."""
    engine = create_engine(database_url)
    query = text("SELECT username, id FROM users WHERE username IN :names").bindparams(
        bindparam("names", expanding=True)
    )
    try:
        with engine.connect() as connection:
            names = list(recorder.acknowledged)
            stored = dict(connection.execute(query, {"names": names}).all()) if names else {}
            unacked = recorder.unacknowledged
            phantom = [row[0] for row in connection.execute(query, {"names": unacked}).all()] if unacked else []
    finally:
        engine.dispose()
    lost = [name for name, user_id in recorder.acknowledged.items() if stored.get(name) != user_id]
    return lost, phantom


def run_outage(config: OutageConfig, *, log: Callable[[str], None] = print) -> OutageResult:
    """The whole experiment, on a throwaway PostgreSQL cluster that is gone when this returns or raises."""
    config.check()
    log_dir = Path(tempfile.mkdtemp(prefix="db-outage-"))
    recorder = Recorder()
    timeline = Timeline()
    stop = threading.Event()
    with own_cluster() as cluster:
        log(
            f"db_outage: PostgreSQL {cluster}; outage {config.outage_seconds:g} s "
            f"within {config.duration:g} s of load; logs in {log_dir}"
        )
        with own_database(cluster.admin_url, keep=False) as database_url:
            with services(database_url, config.workers, log_dir) as (auth, users):
                threads = _load_threads(config, recorder, auth.url, users.url, stop)
                try:
                    timeline.load_started = time.monotonic()
                    for thread in threads:
                        thread.start()
                    time.sleep(config.warmup)
                    log(f"  t={time.monotonic() - timeline.load_started:5.1f} s  stopping PostgreSQL")
                    timeline.stop_begun = time.monotonic()
                    cluster.stop()
                    timeline.stopped = time.monotonic()
                    time.sleep(config.outage_seconds)
                    log(f"  t={time.monotonic() - timeline.load_started:5.1f} s  starting PostgreSQL")
                    timeline.start_begun = time.monotonic()
                    with _first_moment_up(cluster) as first_up:
                        cluster.start()
                        if not cluster.wait_up(60):
                            raise RuntimeError("PostgreSQL did not come back within 60 s")
                        timeline.start_returned = time.monotonic()
                    timeline.up = first_up[0] if first_up else timeline.start_returned
                    log(
                        f"  t={timeline.start_returned - timeline.load_started:5.1f} s  PostgreSQL started "
                        f"(accepting connections since t={timeline.up - timeline.load_started:.1f} s)"
                    )
                    remaining = config.duration - (time.monotonic() - timeline.load_started)
                    time.sleep(max(remaining, config.recovery_limit + 2))
                finally:
                    stop.set()
                    try:
                        # Up again whatever happened, so the writes can be checked and the database dropped.
                        cluster.ensure_running()
                    finally:
                        for thread in threads:
                            thread.join(config.request_timeout + 5)
                        timeline.load_ended = time.monotonic()
                lost, phantom = _check_writes(database_url, recorder)
                logs = auth.log_text() + users.log_text()
    result = OutageResult(
        config=config,
        timeline=timeline,
        samples=recorder.samples,
        acknowledged=recorder.acknowledged,
        lost_writes=lost,
        phantom_writes=phantom,
        recovery=_recovery(recorder.samples, timeline),
        log_unhandled=[line for line in logs.splitlines() if any(marker in line for marker in UNHANDLED_MARKERS)],
        log_dir=log_dir,
    )
    result.violations = _violations(result)
    return result


@contextmanager
def _first_moment_up(cluster: OwnCluster) -> Iterator[list[float]]:
    """Polls pg_isready while the cluster starts: 'back' is when it first accepts connections,
    which can be well before `pg_ctlcluster start` returns on a busy machine."""
    moments: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if cluster.is_up():
                moments.append(time.monotonic())
                return
            done.wait(0.05)

    poller = threading.Thread(target=poll, name="pg-up-poller", daemon=True)
    poller.start()
    try:
        yield moments
    finally:
        poller.join(5)
        done.set()


def _recovery(samples: list[Sample], timeline: Timeline) -> dict[str, float | None]:
    """Per kind of request that needs the database: seconds from 'PostgreSQL is up' to the first success."""
    recovery: dict[str, float | None] = {}
    for kind, service in [
        ("signup", "users"),
        ("login", "auth"),
        ("me", "users"),
        ("readyz", "auth"),
        ("readyz", "users"),
    ]:
        firsts = [
            s.ended
            for s in samples
            if s.kind == kind and s.service == service and s.started >= timeline.up and s.status == SUCCESS_STATUS[kind]
        ]
        recovery[f"{kind}@{service}"] = (min(firsts) - timeline.up) if firsts else None
    return recovery


def _violations(result: OutageResult) -> list[str]:
    config, timeline = result.config, result.timeline
    found = []
    if result.server_errors_other_than_503:
        found.append(f"{len(result.server_errors_other_than_503)} answers were 5xx other than 503")
    if result.bad_503s:
        first = result.bad_503s[0]
        found.append(
            f"{len(result.bad_503s)} 503s lacked JSON detail, a numeric Retry-After or leaked internals "
            f"(e.g. {first.kind}: Retry-After={first.retry_after!r}, leak={first.leak!r}, body={first.snippet!r})"
        )
    if result.no_answer:
        t = result.timeline
        first = [
            f"{s.kind} sent at t={s.started - t.load_started:.2f} s ({t.phase(s)}), "
            f"after {s.latency * 1000:.0f} ms: {s.error}"
            for s in result.no_answer[:3]
        ]
        found.append(f"{len(result.no_answer)} requests got no HTTP answer (hang, reset or refused): {first}")
    slow = [s for s in result.samples if s.latency > config.request_timeout]
    if slow:
        found.append(f"{len(slow)} requests took longer than the {config.request_timeout:g} s request timeout")
    for kind in DB_KINDS:
        outage = result.in_phase("outage", kind)
        if not outage:
            found.append(f"no {kind} request ran entirely inside the outage: the load did not test it")
        wrong = Counter(s.status for s in outage if s.status != 503)
        if wrong:
            found.append(f"{kind} during the outage answered {dict(wrong)} instead of 503")
    for service in ("auth", "users"):
        readyz = result.in_phase("outage", "readyz", service)
        if not readyz or any(s.status != 503 for s in readyz):
            found.append(
                f"/readyz of {service} during the outage: {dict(Counter(s.status for s in readyz))}, expected only 503"
            )
        healthz = [s for s in result.samples if s.kind == "healthz" and s.service == service]
        if any(s.status != 200 for s in healthz):
            found.append(
                f"/healthz of {service} answered {dict(Counter(s.status for s in healthz))}, expected only 200"
            )
    jwks = [s for s in result.samples if s.kind == "jwks"]
    if any(s.status != 200 for s in jwks):
        found.append(f"the JWKS (no database needed) answered {dict(Counter(s.status for s in jwks))}")
    before = [s for s in result.in_phase("before") if s.status != SUCCESS_STATUS[s.kind]]
    if before:
        found.append(
            f"{len(before)} requests failed before the outage: {dict(Counter((s.kind, s.status) for s in before))}"
        )
    for name, seconds in result.recovery.items():
        if seconds is None:
            found.append(f"{name} never succeeded after PostgreSQL was back")
        elif seconds > config.recovery_limit:
            found.append(
                f"{name} first succeeded {seconds:.2f} s after PostgreSQL was back (limit {config.recovery_limit:g} s)"
            )
    deadline = timeline.up + config.recovery_limit
    late = [s for s in result.in_phase("after") if s.started > deadline and s.status != SUCCESS_STATUS[s.kind]]
    if late:
        found.append(
            f"{len(late)} requests still failed more than {config.recovery_limit:g} s after PostgreSQL was back: "
            f"{dict(Counter((s.kind, s.status) for s in late))}"
        )
    if result.log_unhandled:
        found.append(
            f"{len(result.log_unhandled)} unhandled exceptions in the service logs, "
            f"e.g. {result.log_unhandled[0][:200]}"
        )
    if not result.acknowledged:
        found.append("no sign-up was acknowledged at all: nothing to check for lost writes")
    if result.lost_writes:
        found.append(
            f"{len(result.lost_writes)} sign-ups answered 201 are missing from the database: {result.lost_writes[:5]}"
        )
    return found


# --- Report -----------------------------------------------------------------------------------------

PHASES = ("before", "transition", "outage", "after")


def format_report(result: OutageResult) -> str:
    t = result.timeline

    def at(moment: float) -> str:
        return f"{moment - t.load_started:.2f}"

    lines = [
        "",
        "== Database outage under load ==",
        (
            f"timeline (s from load start): stop begun {at(t.stop_begun)}, stopped {at(t.stopped)}, "
            f"start begun {at(t.start_begun)}, accepting connections {at(t.up)}, "
            f"start returned {at(t.start_returned)}, load ended {at(t.load_ended)}"
        ),
        (
            f"PostgreSQL down for {t.up - t.stop_begun:.2f} s: stop command {t.stopped - t.stop_begun:.2f} s, "
            f"stopped {t.start_begun - t.stopped:.2f} s, start command {t.start_returned - t.start_begun:.2f} s "
            f"(accepting connections after {t.up - t.start_begun:.2f} s)"
        ),
        (
            "phases: before = answered before the stop; outage = sent after the cluster was down and answered "
            "before the start; after = sent once it accepted connections again; transition = the rest"
        ),
        "",
        "answers by phase (status: count; 'none' = no HTTP answer); max latency in the phase",
    ]
    kinds = [
        ("signup", "users"),
        ("login", "auth"),
        ("me", "users"),
        ("readyz", "auth"),
        ("readyz", "users"),
        ("healthz", "auth"),
        ("healthz", "users"),
        ("jwks", "auth"),
    ]
    header = f"  {'request':<16}" + "".join(f"{phase:<34}" for phase in PHASES)
    lines.append(header)
    for kind, service in kinds:
        cells = []
        for phase in PHASES:
            samples = result.in_phase(phase, kind, service)
            counts = Counter("none" if s.status is None else str(s.status) for s in samples)
            text_counts = " ".join(f"{status}:{count}" for status, count in sorted(counts.items())) or "-"
            latency = max((s.latency for s in samples), default=0.0)
            cells.append(f"{text_counts} ({latency * 1000:.0f} ms)" if samples else "-")
        lines.append(f"  {kind + '@' + service:<16}" + "".join(f"{cell:<34}" for cell in cells))
    total_503 = sum(1 for s in result.samples if s.status == 503)
    recovery = "never" if result.recovery_seconds is None else f"{result.recovery_seconds:.2f} s"
    lines += [
        "",
        (
            f"requests: {len(result.samples)}; 503s: {total_503}, of which JSON with detail and numeric "
            f"Retry-After: {total_503 - len(result.bad_503s)}"
        ),
        f"5xx other than 503: {len(result.server_errors_other_than_503)}",
        f"no HTTP answer (refused, reset, client time-out): {len(result.no_answer)}",
        f"max latency: {result.max_latency * 1000:.0f} ms (request timeout {result.config.request_timeout:g} s)",
        "recovery (first success after PostgreSQL was back): "
        + ", ".join(f"{name} {'never' if s is None else f'{s:.2f} s'}" for name, s in result.recovery.items()),
        f"recovery time: {recovery} (limit {result.config.recovery_limit:g} s)",
        f"acknowledged sign-ups (201): {len(result.acknowledged)}; lost acknowledged writes: {len(result.lost_writes)}",
        (
            "sign-ups not acknowledged but stored anyway (client saw 503 or no answer; a retry gets 409): "
            f"{len(result.phantom_writes)}"
        ),
        f"unhandled exceptions in the service logs: {len(result.log_unhandled)} (logs: {result.log_dir})",
        *[f"    {line[:240]}" for line in result.log_unhandled[:3]],
    ]
    lines.append("")
    if result.ok:
        lines.append("RESULT: PASS - every rule held")
    else:
        lines.append("RESULT: FAIL")
        lines += [f"  - {violation}" for violation in result.violations]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-seconds", type=float, default=10.0, help="how long PostgreSQL stays stopped (10)")
    parser.add_argument("--duration", type=float, default=30.0, help="total seconds of load, outage included (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the stop (5)")
    parser.add_argument("--recovery-limit", type=float, default=5.0, help="seconds allowed to recover (5)")
    parser.add_argument(
        "--request-timeout", type=float, default=15.0, help="client timeout = longest allowed answer (15)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per service (2)")
    args = parser.parse_args(argv)
    config = OutageConfig(
        outage_seconds=args.outage_seconds,
        duration=args.duration,
        warmup=args.warmup,
        recovery_limit=args.recovery_limit,
        request_timeout=args.request_timeout,
        workers=args.workers,
    )

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        result = run_outage(config)
    except (RuntimeError, ValueError) as error:
        print(f"db_outage: cannot run: {error}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
