"""`make bench`: both services and a reference app under wrk, as production runs them, on a seeded database.

Starts PostgreSQL if needed, makes its own database, seeds users, starts the auth service, the users service
and tests/perf/reference_app.py with gunicorn + deploy/gunicorn.conf.py on free ports, drives each endpoint
with wrk (tests/perf/wrk/*.lua), prints one table with ratios and writes it as JSON and Markdown under
results/. Everything it started is stopped and its database dropped, also on Ctrl-C or SIGTERM.
Figures are compared as ratios within one run: absolute numbers drift on a shared machine.

    python -m tests.perf.bench [--workers 2] [--duration 8] [--repeats 3] [--scenarios a,b] [--profile name]
"""

import argparse
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, create_engine, text

from shared.api_keys import CLIENT_ID_PREFIX, CLIENT_SECRET_PREFIX, SCOPES, hash_client_secret
from shared.passwords import PasswordHasher
from shared.settings import Settings
from shared.testing import (
    admin_database_url,
    create_database,
    drop_database,
    new_test_secret,
    postgres_answers,
    settings_for_tests,
)
from shared.tokens import AccessTokenIssuer
from tests.processes import REPO, ServiceProcess, free_port, run_migrations

PERF_DIR = Path(__file__).resolve().parent
WRK_SCRIPTS = PERF_DIR / "wrk"
REFERENCE_APP = "tests.perf.reference_app:app"

SEED_PASSWORD = "bench-password-1"
BENCH_KEY_SECRET = CLIENT_SECRET_PREFIX + "bench-secret-of-every-seeded-key"
PACKAGES_OF_NOTE = (
    "fastapi",
    "starlette",
    "uvicorn",
    "gunicorn",
    "sqlalchemy",
    "psycopg2-binary",
    "pydantic",
    "argon2-cffi",
)
ADMIN_ID = 1
MIB = 1024 * 1024
# Before each wrk run: quiet means the services and PostgreSQL together use under a tenth of a core.
QUIET_CORES = 0.1
QUIET_INTERVAL_SECONDS = 0.25
QUIET_WAIT_SECONDS = 15
# The hash-bound ceiling: bursts of Argon2 on every core, each about this long. Bursts of 4 verifies per core
# (about 0.12 s) moved by up to a fifth from one to the next on a quiet machine; second-long ones by a few hundredths.
CEILING_BURST_SECONDS = 1.0
CEILING_BURSTS = 2


@dataclass(frozen=True)
class BenchConfig:
    workers: int = 2
    duration_seconds: int = 8
    warmup_seconds: int = 2
    repeats: int = 3
    connections: int = 32
    # Logins: more connections than request and hash threads, so the hash queue is always full; and no more than
    # one worker admits at once (PASSWORD_HASH_MAX_IN_FLIGHT, 32), even if every connection lands on it: past
    # that the service sheds logins with 503s, which is load shedding at work, not the ceiling measured here.
    storm_connections: int = 32
    wrk_threads: int = 1
    users: int = 10_000
    scaling: bool = True
    scenarios: tuple[str, ...] = ()
    profile: tuple[str, ...] = ()
    results_dir: Path = REPO / "results"
    keep_logs: bool = False
    # GET /users/me runs this long instead when set: past the pool timeout (5 s), so that requests stuck
    # waiting for a connection or a thread show up as 503s instead of merely as a slow run.
    burst_seconds: int = 0
    # Turn the kernel's autogroup scheduling off for the run (as root); the smoke test leaves the machine alone.
    autogroup_off: bool = True
    # Connections (and threads) per worker: the services' default (DB_POOL_SIZE) unless set.
    db_pool_size: int | None = None

    @classmethod
    def smoke(cls, results_dir: Path) -> "BenchConfig":
        """A few seconds per endpoint, enough to see every request succeed, too short for figures.

        48 connections over 2 workers: more requests at once than each worker has threads and connections together
        (4 + 4 here). Small pools: with the end-to-end suite's services up beside it (and perhaps another suite on
        the same server), the default pools would reach PostgreSQL's max_connections (100 by default).
        """
        return cls(
            duration_seconds=3,
            warmup_seconds=0,
            repeats=1,
            connections=48,
            storm_connections=24,
            users=200,
            scaling=False,
            results_dir=results_dir,
            burst_seconds=7,
            autogroup_off=False,
            db_pool_size=4,
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    service: str
    script: str
    path: str
    # Called before every run: the wrk script's arguments (and any seeding the run needs).
    script_args: Callable[["BenchRun"], list[str]]
    storm: bool = False
    # Hashes a password per request: run on the storm's connections, within what a worker admits at once
    # (PASSWORD_HASH_MAX_IN_FLIGHT), so the figures are of hashing, not of load shedding.
    hashes: bool = False


# ---------------------------------------------------------------------------------------------- machine


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def wrk_path() -> str | None:
    """wrk, installed from Debian's package if missing (as root; `apt-get update` first)."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 300}
    print("bench: installing wrk with apt-get", flush=True)
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=apt_env, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=apt_env, **quiet)
    except subprocess.TimeoutExpired:
        return None
    return shutil.which("wrk")


@contextmanager
def postgres_running(admin_url: str) -> Iterator[None]:
    """PostgreSQL answering at `admin_url`; a local cluster started here is stopped again on exit."""
    if postgres_answers(admin_url):
        yield
        return
    clusters = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if not clusters or not shutil.which("pg_ctlcluster"):
        raise RuntimeError("no PostgreSQL answers at TEST_DATABASE_URL and no local cluster to start")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main"]
    print(f"bench: starting PostgreSQL {clusters[-1]}", flush=True)
    subprocess.run([*command, "start"], check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 30
        while not postgres_answers(admin_url):
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL started but does not answer")
            time.sleep(0.5)
        yield
    finally:
        subprocess.run([*command, "stop"], check=False, capture_output=True, timeout=60)


AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


@contextmanager
def scheduler_autogroup_off() -> Iterator[str]:
    """The kernel's autogroup scheduling off for the run (as root), restored after; yields what was done.

    Autogroup shares the CPU equally between sessions: the machine's PostgreSQL (its own session) against
    this bench with its load generator and services (another). Under that load PostgreSQL backends sat
    runnable for seconds (/proc/PID/schedstat), and so did the requests waiting for their answers
    (docs/performance.md, "How `make bench` measures"). In production the database runs elsewhere, and
    containers are never autogrouped (only tasks in the root cgroup are).
    """
    try:
        before = AUTOGROUP.read_text().strip()
    except OSError:
        yield "no autogroup in this kernel"
        return
    if before != "1":
        yield "autogroup off"
        return
    try:
        AUTOGROUP.write_text("0")
    except OSError:
        print("bench: kernel.sched_autogroup_enabled=1 and not root: expect multi-second tails", flush=True)
        yield "autogroup ON (not root): tails include PostgreSQL waiting for CPU"
        return
    try:
        yield "autogroup turned off for the run"
    finally:
        AUTOGROUP.write_text(before)


def machine_description(database_url: str) -> dict[str, object]:
    def first(pattern: str, path: str) -> str | None:
        try:
            match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
        except OSError:
            return None
        return match.group(1).strip() if match else None

    engine = create_engine(database_url)
    with engine.connect() as connection:
        server_version = connection.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    from importlib.metadata import version

    return {
        "cpu": first(r"^model name\s*:\s*(.*)$", "/proc/cpuinfo"),
        "cores": cpu_count(),
        "memory_gib": round(int(first(r"^MemTotal:\s*(\d+)", "/proc/meminfo") or 0) / MIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": server_version,
        "wrk": wrk_version,
        "packages": {name: version(name) for name in PACKAGES_OF_NOTE},
        "commit": (commit.stdout.strip() or "unknown") + (" (with local changes)" if dirty else ""),
    }


# ---------------------------------------------------------------------------------------------- memory


def worker_pids(process: ServiceProcess) -> list[int]:
    master = process.process.pid
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU time each process has used so far (threads included); processes gone are left out."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds_by_pid(pids).values())


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on the machine (the bench's backends among them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def wait_until_quiet(run: "BenchRun") -> float:
    """Waits (at most QUIET_WAIT_SECONDS) until the services and PostgreSQL use next to no CPU; returns the wait.

    wrk stops sending when its time is up, but the requests it leaves in flight still run: after the login
    storm, about a second of Argon2 on both cores, which the endpoint measured next would otherwise share.
    """
    pids = [pid for process in run.processes.values() for pid in worker_pids(process)] + postgres_pids()
    started = time.monotonic()
    used_before = cpu_seconds_by_pid(pids)
    while time.monotonic() - started < QUIET_WAIT_SECONDS:
        time.sleep(QUIET_INTERVAL_SECONDS)
        used_now = cpu_seconds_by_pid(pids)
        # Per process, so that a PostgreSQL backend ending meanwhile does not pass for quiet.
        used = sum(seconds - used_before[pid] for pid, seconds in used_now.items() if pid in used_before)
        if used < QUIET_CORES * QUIET_INTERVAL_SECONDS:
            break
        used_before = used_now
    return time.monotonic() - started


def machine_cpu() -> tuple[int, int]:
    """(all, idle) jiffies of the whole machine since boot, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]


class PeakMemory:
    """The peak RSS of each worker of one service during a run.

    The kernel's high-water mark (VmHWM), reset before the run through /proc/PID/clear_refs, misses nothing;
    where that reset is not allowed, RSS sampled every 50 ms stands in.
    """

    def __init__(self, process: ServiceProcess) -> None:
        self._pids = worker_pids(process)
        self._sampled: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.kernel_peak = all(self._reset_peak(pid) for pid in self._pids)

    @staticmethod
    def _reset_peak(pid: int) -> bool:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._pids:
                rss = _status_kib(pid, "VmRSS") or 0
                self._sampled[pid] = max(self._sampled.get(pid, 0), rss)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mib_per_worker(self) -> float:
        peaks = []
        for pid in self._pids:
            peak = _status_kib(pid, "VmHWM") if self.kernel_peak else None
            peaks.append(max(peak or 0, self._sampled.get(pid, 0)))
        return round(max(peaks, default=0) / 1024, 1)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class BenchRun:
    """Everything one bench run set up: database, keys, data files, processes."""

    config: BenchConfig
    work_dir: Path
    database_url: str
    settings: Settings
    wrk: str
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    tokens_file: Path | None = None
    usernames_file: Path | None = None
    # API keys: one per seeded user, "client_id secret" lines, and access tokens minted from them.
    client_keys_file: Path | None = None
    key_tokens_file: Path | None = None
    emails_file: Path | None = None
    admin_token: str = ""
    password_hash: str = ""
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    load_average_at_start: list[str] = field(default_factory=lambda: Path("/proc/loadavg").read_text().split()[:3])
    _files: int = 0

    def data_file(self, stem: str, lines: list[str]) -> Path:
        self._files += 1
        path = self.work_dir / f"{stem}-{self._files}.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def service_env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "APP_ENV": "production",
            "JWT_SECRET": self.settings.jwt_secret,
            # wrk stands in for a proxy: the reset requests come "from" many addresses (X-Forwarded-For), as they
            # would from many clients, instead of all from one address that the per-address throttle stops.
            "TRUSTED_PROXIES": "127.0.0.1",
            # The reset mails, written as files (no SMTP server here) by the workers' senders, off the request path.
            "MAIL_DIR": str(self.work_dir / "mail"),
            "DB_POOL_SIZE": str(self.settings.db_pool_size),
            # A listening socket per worker, as production runs (deploy/gunicorn.conf.py); the test processes'
            # shared socket let all of wrk's connections land on one worker in some rounds, the other idle.
            "GUNICORN_REUSE_PORT": "true",
        }


def seed(run: BenchRun) -> str:
    """The admin (id 1) and `users` users (ids 2...) in one INSERT, sharing one precomputed Argon2 hash (returned)."""
    hasher = PasswordHasher(run.settings)
    password_hash = hasher.hash(SEED_PASSWORD)
    engine = create_engine(run.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, email, full_name, password_hash, is_active, is_admin, token_version,"
                " created_at, updated_at)"
                " SELECT g, CASE WHEN g = 1 THEN 'bench_admin' ELSE 'bench_' || lpad((g - 1)::text, 5, '0') END,"
                " 'bench' || g || '@example.org', 'Bench User ' || g, :hash, true, g = 1, 0, now(), now()"
                " FROM generate_series(1, :count) AS g"
            ),
            {"hash": password_hash, "count": run.config.users + 1},
        )
        connection.execute(text("SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))"))
        # A live session per user: the access tokens carry its `sid`, so every request checks it as a login's would.
        connection.execute(
            text(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent, ip_address)"
                " SELECT 'bench-session-' || g, g, now(), now(), now() + interval '1 day', 'bench', '127.0.0.1'"
                " FROM generate_series(1, :count) AS g"
            ),
            {"count": run.config.users + 1},
        )
        client_keys = seed_api_keys(connection, user_ids=range(ADMIN_ID + 1, run.config.users + 2))
        connection.execute(text("ANALYZE users"))
        connection.execute(text("ANALYZE sessions"))
        connection.execute(text("ANALYZE api_keys"))
    engine.dispose()

    issuer = AccessTokenIssuer(run.settings)
    user_ids = range(ADMIN_ID + 1, run.config.users + 2)
    run.tokens_file = run.data_file(
        "access-tokens",
        [issuer.issue(user_id=i, token_version=0, session_id=f"bench-session-{i}").token for i in user_ids],
    )
    run.usernames_file = run.data_file("usernames", [f"bench_{i - 1:05d}" for i in user_ids])
    run.emails_file = run.data_file("emails", [f"bench{i}@example.org" for i in user_ids])
    run.client_keys_file = run.data_file(
        "api-keys", [f"{client_id} {BENCH_KEY_SECRET}" for _, client_id in client_keys]
    )
    run.key_tokens_file = run.data_file(
        "key-access-tokens",
        [issuer.issue(user_id=i, client_id=client_id, scopes=list(SCOPES)).token for i, client_id in client_keys],
    )
    # Longer than the whole run, so no admin token expires mid-bench.
    run.admin_token = issuer.issue(user_id=ADMIN_ID, token_version=0, session_id=f"bench-session-{ADMIN_ID}").token
    return password_hash


def seed_api_keys(connection: Connection, *, user_ids: range) -> list[tuple[int, str]]:
    """An API key per user, stored as the users service stores them (HMAC of the secret), all with one secret;
    returns (user_id, client_id) pairs."""
    client_ids = [f"{CLIENT_ID_PREFIX}{user_id:032x}" for user_id in user_ids]
    connection.execute(
        text(
            "INSERT INTO api_keys (user_id, name, client_id, secret_hash, scopes, created_at)"
            " SELECT key.user_id, 'bench', key.client_id, key.secret_hash, :scopes, now()"
            " FROM unnest(CAST(:user_ids AS integer[]), CAST(:client_ids AS text[]), CAST(:hashes AS text[]))"
            " AS key(user_id, client_id, secret_hash)"
        ),
        {
            "scopes": " ".join(SCOPES),
            "user_ids": list(user_ids),
            "client_ids": client_ids,
            "hashes": [hash_client_secret(client_id=c, client_secret=BENCH_KEY_SECRET) for c in client_ids],
        },
    )
    return list(zip(user_ids, client_ids, strict=True))


def one_verify_seconds(settings: Settings, password_hash: str) -> float:
    """One verify's time with the configured parameters, the median of several, on a quiet machine: the unit of
    the login ceiling."""
    hasher = PasswordHasher(settings)
    timings = []
    for _ in range(9):
        started = time.perf_counter()
        assert hasher.verify(password=SEED_PASSWORD, password_hash=password_hash)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def all_cores_verify_rate(
    settings: Settings, password_hash: str, *, cores: int, verify_seconds: float, rounds: int
) -> float:
    """Verifies per second with one running on every core at once and nothing else (the median of `rounds` bursts
    of about CEILING_BURST_SECONDS each): what Argon2 itself gets out of the machine when its hashes share the
    caches and the memory bus."""
    hasher = PasswordHasher(settings.model_copy(update={"password_hash_concurrency": cores}))
    per_core = max(4, math.ceil(CEILING_BURST_SECONDS / verify_seconds))

    def verify_in_turn() -> None:
        for _ in range(per_core):
            assert hasher.verify(password=SEED_PASSWORD, password_hash=password_hash)

    rates = []
    for _ in range(rounds):
        threads = [threading.Thread(target=verify_in_turn) for _ in range(cores)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates.append(cores * per_core / (time.perf_counter() - started))
    return statistics.median(rates)


def seed_refresh_tokens(run: BenchRun, count: int) -> Path:
    """`count` live refresh tokens of distinct logins, stored as the auth service stores them (SHA-256 only)."""
    from auth_service.service import hash_refresh_token

    now = datetime.now(UTC)
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    rows = [
        {
            "token_hash": hash_refresh_token(token),
            "family_id": str(uuid.uuid4()),
            "user_id": ADMIN_ID + 1 + index % run.config.users,
            "issued_at": now,
            "expires_at": now + timedelta(days=1),
        }
        for index, token in enumerate(tokens)
    ]
    engine = create_engine(run.database_url)
    with engine.begin() as connection:
        # Each login's session first: a refresh token's family is its session.
        connection.execute(
            text(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at)"
                " VALUES (:family_id, :user_id, :issued_at, :issued_at, :expires_at)"
            ),
            rows,
        )
        connection.execute(
            text(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at)"
                " VALUES (:token_hash, :family_id, :user_id, :issued_at, :expires_at)"
            ),
            rows,
        )
    engine.dispose()
    return run.data_file("refresh-tokens", tokens)


def _refresh_args(run: BenchRun) -> list[str]:
    # Two per connection: every connection starts with one, and a spare covers the first answers in flight.
    tokens = seed_refresh_tokens(run, 2 * max(run.config.connections, run.config.storm_connections))
    return [str(tokens), str(run.config.wrk_threads)]


SCENARIOS = [
    Scenario("ref_floor", "reference GET /floor (async, no I/O)", "reference", "get.lua", "/floor", lambda run: []),
    Scenario(
        "ref_db",
        "reference GET /me (PyJWT + psycopg2)",
        "reference",
        "bearer_get.lua",
        "/me",
        lambda run: ["/me", str(run.tokens_file)],
    ),
    Scenario(
        "users_me",
        "GET /users/me",
        "users",
        "bearer_get.lua",
        "/users/me",
        lambda run: ["/users/me", str(run.tokens_file)],
    ),
    Scenario(
        "users_me_key",
        "GET /users/me, API-key token",
        "users",
        "bearer_get.lua",
        "/users/me",
        lambda run: ["/users/me", str(run.key_tokens_file)],
    ),
    Scenario(
        "users_by_id",
        "GET /users/{id} as admin",
        "users",
        "admin_get_user.lua",
        "/users/2",
        lambda run: [run.admin_token, str(ADMIN_ID + 1), str(ADMIN_ID + run.config.users)],
    ),
    Scenario(
        "users_patch_me", "PATCH /users/me", "users", "patch_me.lua", "/users/me", lambda run: [str(run.tokens_file)]
    ),
    Scenario(
        "users_sign_up",
        "POST /users (sign-up, hashes)",
        "users",
        "sign_up.lua",
        "/users",
        lambda run: [run.nonce + secrets.token_hex(2)],
        hashes=True,
    ),
    Scenario(
        "token_password",
        "POST /token password (login storm)",
        "auth",
        "login.lua",
        "/token",
        lambda run: [str(run.usernames_file), SEED_PASSWORD],
        storm=True,
    ),
    Scenario("token_refresh", "POST /token refresh_token", "auth", "refresh.lua", "/token", _refresh_args),
    Scenario(
        "token_client_credentials",
        "POST /token client_credentials",
        "auth",
        "client_credentials.lua",
        "/token",
        lambda run: [str(run.client_keys_file)],
    ),
    Scenario(
        "password_reset",
        "POST /password-reset",
        "auth",
        "password_reset.lua",
        "/password-reset",
        lambda run: [str(run.emails_file)],
    ),
]
SCALING_SCENARIOS = ("ref_db", "users_me", "token_password")


def run_wrk(
    run: BenchRun, scenario: Scenario, seconds: int, *, profile_to: Path | None = None, warm_up: bool = False
) -> dict[str, object]:
    process = run.processes[scenario.service]
    connections = run.config.storm_connections if scenario.storm or scenario.hashes else run.config.connections
    command = [
        run.wrk,
        "-t",
        str(run.config.wrk_threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPTS / scenario.script),
        process.url + scenario.path,
        "--",
        *scenario.script_args(run),
    ]
    quiet_after = wait_until_quiet(run)
    # The login ceiling, measured again around each login storm: the machine's speed drifts over minutes, and a
    # ceiling from the start of the run would not match. One verify's time for `cores / verify`, and the rate
    # Argon2 itself reaches with every core verifying at once, which is what bounds logins.
    measures_ceiling = scenario.storm and not warm_up
    verify_before = one_verify_seconds(run.settings, run.password_hash) if measures_ceiling else None
    all_cores_before = storm_ceiling(run, verify_before) if verify_before else None
    workers = worker_pids(process)
    with ExitStack() as stack:
        memory = stack.enter_context(PeakMemory(process))
        if profile_to is not None:
            stack.enter_context(profiling(process, seconds, profile_to))
        database = postgres_pids()
        by_worker_before = cpu_seconds_by_pid(workers)
        database_before, machine_before = cpu_seconds(database), machine_cpu()
        started = time.monotonic()
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        elapsed = time.monotonic() - started
        by_worker = cpu_seconds_by_pid(workers)
        machine_after = machine_cpu()
        worker_cpu = [by_worker[pid] - by_worker_before[pid] for pid in by_worker if pid in by_worker_before]
        cpu_used = sum(worker_cpu)
        database_used = cpu_seconds(database) - database_before
    summary_line = next((line for line in finished.stdout.splitlines() if line.startswith("BENCH_JSON ")), None)
    if finished.returncode != 0 or summary_line is None:
        raise RuntimeError(f"wrk failed for {scenario.name} ({finished.returncode}): {finished.stderr.strip()[:500]}")
    all_cores_after = quiet_after_storm = None
    if verify_before:
        # Once the logins wrk left in flight are done, the ceiling again: the round lies between the two.
        quiet_after_storm = wait_until_quiet(run)
        all_cores_after = storm_ceiling(run, verify_before)
    figures = json.loads(summary_line.removeprefix("BENCH_JSON "))
    seconds_measured = figures["duration_us"] / 1e6
    socket_errors = sum(figures[name] for name in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "requests": figures["requests"],
        "rps": figures["requests"] / seconds_measured if seconds_measured else 0.0,
        "p50_ms": figures["latency_p50_us"] / 1000,
        "p90_ms": figures["latency_p90_us"] / 1000,
        "p99_ms": figures["latency_p99_us"] / 1000,
        "max_ms": figures["latency_max_us"] / 1000,
        "non2xx": figures["non2xx"],
        "non2xx_statuses": figures["non2xx_statuses"],
        "socket_errors": socket_errors,
        "peak_rss_mib_per_worker": memory.peak_mib_per_worker(),
        # Worker CPU per request: steadier than req/s when other processes share the machine.
        "cpu_ms_per_request": 1000 * cpu_used / figures["requests"] if figures["requests"] else 0.0,
        # PostgreSQL's share of the same machine: its processes' CPU per request (backends started mid-run missed).
        "database_cpu_ms_per_request": 1000 * database_used / figures["requests"] if figures["requests"] else 0.0,
        # How many cores the service's workers used, and how busy the whole machine was (other processes too).
        "worker_cores_used": cpu_used / elapsed if elapsed else 0.0,
        # Each worker's share of that CPU: a worker that got none of wrk's connections shows as 0.
        "worker_cpu_shares": [round(ratio(one, cpu_used), 2) for one in worker_cpu],
        "machine_busy": 1 - ratio(machine_after[1] - machine_before[1], machine_after[0] - machine_before[0]),
        "connections": connections,
        "quiet_after_seconds": quiet_after,
        "verify_seconds_before": verify_before,
        "all_cores_verifies_before": all_cores_before,
        "all_cores_verifies_after": all_cores_after,
        "quiet_after_storm_seconds": quiet_after_storm,
        # The round's hash-bound ceiling: Argon2 alone on every core, the mean of the measurements around it.
        "all_cores_verifies_mean": (all_cores_before + all_cores_after) / 2 if all_cores_after else None,
    }


def storm_ceiling(run: BenchRun, verify_seconds: float) -> float:
    """Argon2 alone on every core, as measured on either side of a login storm's round."""
    return all_cores_verify_rate(
        run.settings, run.password_hash, cores=cpu_count(), verify_seconds=verify_seconds, rounds=CEILING_BURSTS
    )


def start_processes(run: BenchRun, workers: int, logs: Path) -> None:
    for name in ("reference", "users", "auth"):
        log = logs / f"{name}-{workers}w.log"
        app = REFERENCE_APP if name == "reference" else None
        run.processes[name] = ServiceProcess(name, free_port(), run.service_env, log, workers=workers, app=app).start(
            timeout=60
        )


def event_loops(run: BenchRun, *, timeout: float = 10.0) -> dict[str, str]:
    """The event loop each started process's workers run on, from their "worker started" log lines: the
    reference app must run on the services' stack for the ratios to mean anything."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, set[str]] = {name: set() for name in run.processes}
        for name, process in run.processes.items():
            for line in process.log_text().splitlines():
                if line.startswith("{") and '"worker started"' in line:
                    found[name].add(json.loads(line).get("event_loop", "?"))
        if all(found.values()) or time.monotonic() > deadline:
            return {name: " and ".join(sorted(loops)) or "unknown" for name, loops in found.items()}
        time.sleep(0.2)


def stop_processes(run: BenchRun) -> None:
    for process in run.processes.values():
        process.stop()
    run.processes.clear()


def measure(run: BenchRun, scenarios: list[Scenario], *, phase: str) -> dict[str, dict[str, object]]:
    """Every scenario `repeats` times, round-robin so that drift hits all alike; medians per scenario."""
    config = run.config
    if config.warmup_seconds:
        for scenario in scenarios:
            print(f"bench: [{phase}] warm-up {scenario.name}", flush=True)
            warm = run_wrk(run, scenario, config.warmup_seconds, warm_up=True)
            # Warm-up failures count too: zero non-2xx means zero from the first request on.
            warm_errors = {"non2xx": warm["non2xx"], "socket_errors": warm["socket_errors"]}
            run.work_dir.joinpath(f"warmup-{phase}-{scenario.name}.json").write_text(json.dumps(warm_errors))
    samples: dict[str, list[dict[str, object]]] = {scenario.name: [] for scenario in scenarios}
    for repeat in range(config.repeats):
        # Every other round in reverse order: a drift in one direction through the run then favours neither
        # the first nor the second of two endpoints compared round by round (the reference and a read route).
        for scenario in scenarios if repeat % 2 == 0 else scenarios[::-1]:
            seconds = config.burst_seconds if config.burst_seconds and scenario.name == "users_me" else None
            figures = run_wrk(run, scenario, seconds or config.duration_seconds)
            samples[scenario.name].append(figures)
            print(
                f"bench: [{phase}] {repeat + 1}/{config.repeats} {scenario.name:15} {figures['rps']:8.1f} req/s"
                f"  p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms  non-2xx {figures['non2xx']}"
                f"  (quiet after {figures['quiet_after_seconds']:.2f} s)",
                flush=True,
            )
    results = {}
    for scenario in scenarios:
        runs = samples[scenario.name]
        warm_file = run.work_dir / f"warmup-{phase}-{scenario.name}.json"
        warm = json.loads(warm_file.read_text()) if warm_file.exists() else {"non2xx": 0, "socket_errors": 0}
        statuses: Counter[str] = Counter()
        for one in runs:
            statuses.update(one["non2xx_statuses"])
        results[scenario.name] = {
            "label": scenario.label,
            "service": scenario.service,
            "connections": runs[0]["connections"],
            "rps": statistics.median(one["rps"] for one in runs),
            "p50_ms": statistics.median(one["p50_ms"] for one in runs),
            "p99_ms": statistics.median(one["p99_ms"] for one in runs),
            "non2xx": sum(one["non2xx"] for one in runs) + warm["non2xx"],
            "non2xx_statuses": dict(statuses),
            "socket_errors": sum(one["socket_errors"] for one in runs) + warm["socket_errors"],
            "peak_rss_mib_per_worker": max(one["peak_rss_mib_per_worker"] for one in runs),
            "cpu_ms_per_request": statistics.median(one["cpu_ms_per_request"] for one in runs),
            "database_cpu_ms_per_request": statistics.median(one["database_cpu_ms_per_request"] for one in runs),
            "worker_cores_used": statistics.median(one["worker_cores_used"] for one in runs),
            "machine_busy": statistics.median(one["machine_busy"] for one in runs),
            "requests": sum(one["requests"] for one in runs),
            "repeats": runs,
        }
    return results


# ---------------------------------------------------------------------------------------------- profiling


@contextmanager
def profiling(process: ServiceProcess, seconds: int, out_dir: Path) -> Iterator[None]:
    """py-spy samples every worker of `process` for `seconds`; collapsed stacks and a summary go to `out_dir`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for pid in worker_pids(process):
        raw = out_dir / f"worker-{pid}.txt"
        # --gil: only the thread holding the GIL, i.e. where the worker's Python CPU time goes.
        command = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--nonblocking",
            "--gil",
        ]
        recorders.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw))
    try:
        yield
    finally:
        for recorder, _raw in recorders:
            try:
                recorder.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
    summarise_profile([raw for _recorder, raw in recorders if raw.exists()], out_dir / "summary.txt")


def _package_of(frame: str) -> str:
    """`function (sqlalchemy/orm/session.py:12)` -> `sqlalchemy`; a standard-library module keeps its file name."""
    location = frame.rpartition("(")[2].rstrip(")").rsplit(":", 1)[0]
    parts = location.split("/")
    return parts[0] if len(parts) > 1 else location


def summarise_profile(raw_files: list[Path], summary_path: Path, top: int = 40) -> None:
    """Self and inclusive sample shares per function, over all workers' collapsed stacks."""
    self_samples: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for raw in raw_files:
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame for frame in stack.split(";") if frame]
            if not frames:
                continue
            total += count
            self_samples[frames[-1]] += count
            by_package[_package_of(frames[-1])] += count
            for frame in set(frames):
                inclusive[frame] += count
    lines = [f"{total} samples of the thread holding the GIL", "", "self %  package or module"]
    lines += [f"{100 * n / total:6.1f}  {package}" for package, n in by_package.most_common(25)] if total else []
    lines += ["", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in self_samples.most_common(top)] if total else []
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in inclusive.most_common(top)] if total else []
    summary_path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- report


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


# Issue 6's target for the read routes against the reference and for logins against the hash-bound ceiling; also
# the client-credentials grant's against the refresh grant's.
RATIO_TARGET = 0.85
# A read with an API key's token checks the key where a login's checks its session: within 10 % of it.
KEY_READ_TARGET = 0.9


def paired_ratio(main: dict, numerator: str, denominator: str) -> float:
    """The median over the rounds of `numerator` / `denominator` req/s, the two measured in the same round.

    A ratio of the two medians could pair figures from different rounds, and the machine's speed drifts between
    rounds more than between two endpoints measured within seconds of each other.
    """
    pairs = zip(main[numerator]["repeats"], main[denominator]["repeats"], strict=True)
    return statistics.median(ratio(top["rps"], bottom["rps"]) for top, bottom in pairs)


def storm_verify_seconds(storm: dict) -> list[float]:
    return [one["verify_seconds_before"] for one in storm["repeats"]]


def login_ceiling_ratio(storm: dict) -> float:
    """The median over the login storm's rounds of its login rate / the rate of Argon2 alone on every core, the mean
    of its measurements just before and just after the round: the hash-bound ceiling."""
    return statistics.median(ratio(one["rps"], one["all_cores_verifies_mean"]) for one in storm["repeats"])


def perfect_scaling_ratio(storm: dict, cores: int) -> float:
    """The median over the login storm's rounds of its login rate / (cores / the verify timed just before it)."""
    return statistics.median(ratio(one["rps"], cores / one["verify_seconds_before"]) for one in storm["repeats"])


def build_report(
    run: BenchRun, verify_seconds: float, all_cores_verifies: float, main: dict, scaling: dict | None, machine: dict
) -> dict:
    cores = cpu_count()
    ceiling = cores / verify_seconds
    settings = run.settings

    def rps(name: str) -> float:
        return main[name]["rps"] if name in main else 0.0

    checks = []

    def check(name: str, value: float, target: str, ok: bool | None) -> None:
        checks.append({"name": name, "value": round(value, 3), "target": target, "met": ok})

    def check_ratio_target(name: str, value: float) -> None:
        check(name, value, f">= {RATIO_TARGET}", value >= RATIO_TARGET)

    storm_verifies = storm_verify_seconds(main["token_password"]) if "token_password" in main else []
    if "users_me" in main and "ref_db" in main:
        check_ratio_target("GET /users/me / reference DB route", paired_ratio(main, "users_me", "ref_db"))
    if "users_by_id" in main and "ref_db" in main:
        check_ratio_target("GET /users/{id} / reference DB route", paired_ratio(main, "users_by_id", "ref_db"))
    if "users_me_key" in main and "users_me" in main:
        key_reads = paired_ratio(main, "users_me_key", "users_me")
        check(
            "GET /users/me, API-key token / login token",
            key_reads,
            f">= {KEY_READ_TARGET}",
            key_reads >= KEY_READ_TARGET,
        )
    if storm_verifies:
        check_ratio_target(
            "login rate / hash-bound ceiling (Argon2 alone on every core)", login_ceiling_ratio(main["token_password"])
        )
    if "token_client_credentials" in main and "token_refresh" in main:
        check_ratio_target(
            "client-credentials grant / refresh grant", paired_ratio(main, "token_client_credentials", "token_refresh")
        )
    if "password_reset" in main and "token_password" in main:
        resets = paired_ratio(main, "password_reset", "token_password")
        check("POST /password-reset / login rate", resets, ">= 1", resets >= 1)
    if "users_me" in main:
        spread = ratio(main["users_me"]["p99_ms"], main["users_me"]["p50_ms"])
        check("GET /users/me p99 / p50", spread, "< 10", spread < 10)
    if "token_password" in main:
        peak = main["token_password"]["peak_rss_mib_per_worker"]
        check("peak RSS per auth worker in the login storm (MiB)", peak, "< 150", peak < 150)
    failures = sum(one["non2xx"] + one["socket_errors"] for one in main.values())
    check("non-2xx and socket errors under load", failures, "0", failures == 0)
    # The same ratios unpaired, as the medians of the table give them.
    for name in ("users_me", "users_by_id"):
        if name in main and "ref_db" in main:
            label = main[name]["label"]
            check(
                f"{label} / reference DB route, ratio of the medians",
                ratio(rps(name), rps("ref_db")),
                "(context)",
                None,
            )
    if storm_verifies:
        # The ceiling if hashes scaled perfectly: one verify per core per verify time.
        check(
            "login rate / (cores / one verify), each round's",
            perfect_scaling_ratio(main["token_password"], cores),
            "(context)",
            None,
        )
    if "ref_db" in main and "ref_floor" in main:
        check("reference DB route / reference floor", ratio(rps("ref_db"), rps("ref_floor")), "(context)", None)
    if storm_verifies:
        # What the code controls when other processes share the cores: the part of the auth workers' CPU that
        # goes into Argon2. On an otherwise idle machine the login ratio above tends to this.
        hash_share = ratio(statistics.median(storm_verifies) * 1000, main["token_password"]["cpu_ms_per_request"])
        check("one verify / auth worker CPU per login (hash share)", hash_share, "(context)", None)
        check(
            "cores the auth workers got in the login storm",
            main["token_password"]["worker_cores_used"],
            f"(of {cores})",
            None,
        )
        # How far Argon2 alone on every core falls short of perfect scaling (the cores share caches and memory).
        # Both timed before the load, within seconds of each other.
        check(
            "Argon2 alone, every core verifying / (cores / one verify), before the load",
            ratio(all_cores_verifies, ceiling),
            "(context)",
            None,
        )
        if "users_sign_up" in main:
            # Sign-ups hash too; against Argon2's all-core rate measured around each storm round, as the logins are.
            storms = main["token_password"]["repeats"]
            ceiling_of_storms = statistics.median(one["all_cores_verifies_mean"] for one in storms)
            check(
                "sign-up rate / hash-bound ceiling", ratio(rps("users_sign_up"), ceiling_of_storms), "(context)", None
            )
    scaling_rows = {}
    if scaling:
        for name, one in scaling.items():
            if name in main:
                scaling_rows[name] = {
                    "rps_1_worker": one["rps"],
                    "rps_2_workers": main[name]["rps"],
                    "speed_up": ratio(main[name]["rps"], one["rps"]),
                }
    busy = [one["machine_busy"] for one in main.values()]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": run.load_average_at_start,
        "machine_busy_median": statistics.median(busy) if busy else 0.0,
        "machine": machine,
        "config": {
            **{k: v for k, v in asdict(run.config).items() if k != "results_dir"},
            "db_pool_size": settings.db_pool_size,
            "db_max_overflow": settings.db_max_overflow,
            "threadpool_size": settings.effective_threadpool_size,
            "password_hash_concurrency": settings.password_hash_concurrency,
            "argon2": {
                "memory_kib": settings.argon2_memory_kib,
                "time_cost": settings.argon2_time_cost,
                "parallelism": settings.argon2_parallelism,
            },
        },
        "verify_ms": verify_seconds * 1000,
        "perfect_scaling_ceiling_rps": ceiling,
        "verify_ms_before_storms": [seconds * 1000 for seconds in storm_verifies],
        "all_cores_verifies_around_storms": [
            (one["all_cores_verifies_before"], one["all_cores_verifies_after"])
            for one in main.get("token_password", {}).get("repeats", [])
        ],
        "all_cores_verifies_per_second": all_cores_verifies,
        "scenarios": main,
        "scaling": scaling_rows,
        "checks": checks,
    }


def format_table(report: dict) -> str:
    config = report["config"]
    machine = report["machine"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; Python {machine['python']},"
        f" PostgreSQL {machine['postgresql']}, {machine['wrk']}; commit {machine['commit']};"
        f" scheduler: {machine.get('scheduler', 'not recorded')}",
        f"Each service and the reference: gunicorn + UvicornWorker on"
        f" {', '.join(f'{name} {loop}' for name, loop in machine.get('event_loops', {}).items())},"
        f" {config['workers']} workers, DB pool"
        f" {config['db_pool_size']}+{config['db_max_overflow']}, threadpool {config['threadpool_size']};"
        f" Argon2id m={config['argon2']['memory_kib']} KiB t={config['argon2']['time_cost']}"
        f" p={config['argon2']['parallelism']}, {config['password_hash_concurrency']} hashes at once per worker.",
        f"wrk -t{config['wrk_threads']}, {config['duration_seconds']} s x {config['repeats']} (medians), after"
        f" {config['warmup_seconds']} s warm-up; {config['users']} seeded users. Load average at start"
        f" {' '.join(report['load_average_at_start'])}; machine CPU busy during the runs (median)"
        f" {100 * report['machine_busy_median']:.0f} %.",
        "",
        "| endpoint | conns | req/s | p50 ms | p99 ms | p99/p50 | non-2xx | peak RSS/worker MiB | worker CPU ms/req"
        " | PostgreSQL CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for one in report["scenarios"].values():
        errors = one["non2xx"] + one["socket_errors"]
        lines.append(
            f"| {one['label']} | {one['connections']} | {one['rps']:.0f} | {one['p50_ms']:.2f} | {one['p99_ms']:.2f}"
            f" | {ratio(one['p99_ms'], one['p50_ms']):.1f} | {errors} | {one['peak_rss_mib_per_worker']:.0f}"
            f" | {one['cpu_ms_per_request']:.2f} | {one['database_cpu_ms_per_request']:.2f} |"
        )
    around_storms = ", ".join(
        f"{before:.1f}/{after:.1f}" for before, after in report.get("all_cores_verifies_around_storms", [])
    )
    lines += [
        "",
        f"The hash-bound login ceiling is Argon2 alone with every core verifying at once:"
        f" {report['all_cores_verifies_per_second']:.1f} verifies/s before the load, and"
        f" {around_storms or 'not measured'}"
        " just before/just after each round of the login storm, each the median of"
        f" {CEILING_BURSTS} bursts of about {CEILING_BURST_SECONDS:.0f} s (the login ratio is the median of the rounds'"
        " login rate / the mean of that round's two)."
        f" One Argon2 verify: {report['verify_ms']:.1f} ms before the load ({machine['cores']}"
        f" cores / verify = {report['perfect_scaling_ceiling_rps']:.1f} logins/s if hashes scaled perfectly), and"
        f" {', '.join(f'{ms:.1f}' for ms in report.get('verify_ms_before_storms', [])) or 'not timed'} ms just before"
        " each round of the storm."
        " Read ratios: the median of the rounds' ratios, both routes measured in the same round (every other round"
        " in reverse order).",
        "",
        "| ratio | value | target | met |",
        "|---|---:|---|---|",
    ]
    for one in report["checks"]:
        met = {True: "met", False: "NOT MET", None: "-"}[one["met"]]
        lines.append(f"| {one['name']} | {one['value']:.2f} | {one['target']} | {met} |")
    if report["scaling"]:
        lines += ["", "| 1 -> 2 workers | 1 worker req/s | 2 workers req/s | speed-up |", "|---|---:|---:|---:|"]
        for name, one in report["scaling"].items():
            label = report["scenarios"][name]["label"]
            lines.append(
                f"| {label} | {one['rps_1_worker']:.0f} | {one['rps_2_workers']:.0f} | {one['speed_up']:.2f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- entry points


def run_bench(config: BenchConfig, *, wrk: str, work_dir: Path) -> dict:
    """One full bench run; returns the report (also written under `config.results_dir`)."""
    chosen = [s for s in SCENARIOS if not config.scenarios or s.name in config.scenarios]
    unknown = set(config.scenarios) - {s.name for s in SCENARIOS}
    if unknown:
        raise ValueError(f"unknown scenarios: {sorted(unknown)}; known: {[s.name for s in SCENARIOS]}")
    admin_url = admin_database_url()
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        cleanup.enter_context(postgres_running(admin_url))
        scheduler = cleanup.enter_context(scheduler_autogroup_off()) if config.autogroup_off else "left as it was"
        database_url = create_database(admin_url)
        cleanup.callback(drop_database, admin_url, database_url)
        run_migrations(database_url)
        pool = {"db_pool_size": config.db_pool_size} if config.db_pool_size else {}
        settings = settings_for_tests(database_url, jwt_secret=new_test_secret(), **pool)
        run = BenchRun(config=config, work_dir=work_dir, database_url=database_url, settings=settings, wrk=wrk)
        print(f"bench: seeding {config.users} users", flush=True)
        run.password_hash = seed(run)
        verify_seconds = one_verify_seconds(settings, run.password_hash)
        all_cores_verifies = all_cores_verify_rate(
            settings, run.password_hash, cores=cpu_count(), verify_seconds=verify_seconds, rounds=3
        )
        machine = {**machine_description(database_url), "scheduler": scheduler}
        cleanup.callback(stop_processes, run)
        start_processes(run, config.workers, logs)
        machine["event_loops"] = event_loops(run)
        main = measure(run, chosen, phase=f"{config.workers} workers")
        for name in config.profile:
            scenario = next(s for s in SCENARIOS if s.name == name)
            out = config.results_dir / f"profile-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            print(f"bench: profiling {name} with py-spy -> {out}", flush=True)
            run_wrk(run, scenario, config.duration_seconds, profile_to=out)
        scaling = None
        scaling_chosen = [s for s in chosen if s.name in SCALING_SCENARIOS]
        if config.scaling and config.workers != 1 and scaling_chosen:
            stop_processes(run)
            start_processes(run, 1, logs)
            scaling = measure(run, scaling_chosen, phase="1 worker")
        report = build_report(run, verify_seconds, all_cores_verifies, main, scaling, machine)
    return report


def write_report(report: dict, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = results_dir / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    (results_dir / f"bench-{stamp}.md").write_text(format_table(report) + "\n")
    shutil.copyfile(json_path, results_dir / "bench-latest.json")
    return json_path


def parse_args(argv: list[str]) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.bench", description=__doc__.split("\n")[0])
    defaults = BenchConfig()
    parser.add_argument("--workers", type=int, default=int(os.environ.get("BENCH_WORKERS", defaults.workers)))
    parser.add_argument("--duration", type=int, default=defaults.duration_seconds, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_seconds, help="seconds of warm-up per endpoint")
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--storm-connections", type=int, default=defaults.storm_connections)
    parser.add_argument("--wrk-threads", type=int, default=defaults.wrk_threads)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1-worker runs")
    names = ",".join(scenario.name for scenario in SCENARIOS)
    parser.add_argument("--scenarios", default="", help=f"comma-separated subset of {names}")
    parser.add_argument("--profile", default="", help="comma-separated scenarios to sample with py-spy afterwards")
    parser.add_argument("--results", type=Path, default=defaults.results_dir)
    parser.add_argument("--keep-logs", action="store_true", help="copy the services' logs under the results folder")
    args = parser.parse_args(argv)
    split = lambda value: tuple(part for part in value.split(",") if part)  # noqa: E731
    return replace(
        defaults,
        workers=args.workers,
        duration_seconds=args.duration,
        warmup_seconds=args.warmup,
        repeats=args.repeats,
        connections=args.connections,
        storm_connections=args.storm_connections,
        wrk_threads=args.wrk_threads,
        users=args.users,
        scaling=not args.no_scaling,
        scenarios=split(args.scenarios),
        profile=split(args.profile),
        results_dir=args.results,
        keep_logs=args.keep_logs,
    )


def keep_logs(work_dir: Path, results_dir: Path, why: str) -> None:
    logs = work_dir / "logs"
    if logs.exists():
        kept = results_dir / f"{why}-{time.strftime('%Y%m%d-%H%M%S')}-logs"
        shutil.copytree(logs, kept)
        print(f"bench: service logs kept in {kept}", file=sys.stderr)


def main(argv: list[str]) -> int:
    config = parse_args(argv)
    wrk = wrk_path()
    if wrk is None:
        print("bench: wrk is missing and could not be installed (apt-get install wrk, as root)", file=sys.stderr)
        return 2

    def stop_on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        try:
            report = run_bench(config, wrk=wrk, work_dir=Path(work))
        except KeyboardInterrupt:
            print("bench: interrupted; everything it started is stopped", file=sys.stderr)
            return 130
        except Exception:
            keep_logs(Path(work), config.results_dir, "failed")
            raise
        if config.keep_logs:
            keep_logs(Path(work), config.results_dir, "run")
    path = write_report(report, config.results_dir)
    print()
    print(format_table(report))
    print(f"\nbench: {time.monotonic() - started:.0f} s; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
