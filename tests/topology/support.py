"""What the topology tests share: the stack deploy/topology-check.sh started, clients with a source address of
their own, a load generator that records every answer, and a scan of PgBouncer's server connections."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import requests
from requests.adapters import HTTPAdapter

# Settings a statement of the services could leave behind on a pooled server connection.
SESSION_SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "search_path",
    "TimeZone",
    "DateStyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "synchronous_commit",
    "work_mem",
    "role",
)


@dataclass(frozen=True)
class Replica:
    name: str
    url: str
    pid: int

    def worker_pids(self) -> set[int]:
        try:
            return {int(pid) for pid in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()}
        except OSError:
            return set()

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{self.pid}").exists() and "zombie" not in _state(self.pid)

    def kill(self) -> set[int]:
        """SIGKILL to the master and every worker at once, as the kernel's OOM killer or a node loss would."""
        victims = {self.pid, *self.worker_pids()}
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        return victims


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "gone"


@dataclass(frozen=True)
class Topology:
    auth_url: str
    users_url: str
    replicas: dict[str, list[Replica]]
    admin_username: str
    # Throwaway secrets, still kept out of pytest's failure output.
    admin_password: str = field(repr=False)
    per_username: int
    per_address: int
    direct_url: str = field(repr=False)
    pooled_url: str = field(repr=False)
    database_password: str = field(repr=False)
    pgbouncer_pidfile: Path
    pgbouncer_start: list[str]
    logs: Path

    @classmethod
    def load(cls, path: str) -> Topology:
        data = json.loads(Path(path).read_text())
        return cls(
            auth_url=data["proxy"]["auth"],
            users_url=data["proxy"]["users"],
            replicas={
                service: [Replica(r["name"], r["url"], int(r["pid"])) for r in replicas]
                for service, replicas in data["replicas"].items()
            },
            admin_username=data["admin"]["username"],
            admin_password=data["admin"]["password"],
            per_username=int(data["limits"]["per_username"]),
            per_address=int(data["limits"]["per_address"]),
            direct_url=data["database"]["direct_url"],
            pooled_url=data["database"]["pooled_url"],
            database_password=data["database"]["password"],
            pgbouncer_pidfile=Path(data["pgbouncer"]["pidfile"]),
            pgbouncer_start=list(data["pgbouncer"]["start"]),
            logs=Path(data["logs"]),
        )

    def replica_of_worker(self, service: str, worker: str) -> str | None:
        for replica in self.replicas[service]:
            if worker.isdigit() and int(worker) in replica.worker_pids():
                return replica.name
        return None

    def pgbouncer_pid(self) -> int:
        return int(self.pgbouncer_pidfile.read_text().split()[0])

    def stop_pgbouncer(self) -> None:
        """SIGTERM: PgBouncer 1.18's immediate shutdown; every client and server connection drops."""
        pid = self.pgbouncer_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not Path(f"/proc/{pid}").exists(), f"PgBouncer {pid} did not stop"

    def start_pgbouncer(self) -> None:
        subprocess.run(self.pgbouncer_start, check=True, timeout=30)


def client(source_address: str | None = None) -> requests.Session:
    """A requests session whose connections leave from `source_address` (a loopback address: 127.0.0.2, ...),
    so that nginx sees a client of that address."""
    session = requests.Session()
    if source_address is not None:
        session.mount("http://", SourceAddressAdapter(source_address))
    return session


class SourceAddressAdapter(HTTPAdapter):
    def __init__(self, source_address: str) -> None:
        self._source_address = source_address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs["source_address"] = (self._source_address, 0)
        super().init_poolmanager(*args, **kwargs)


def sign_up(topology: Topology, http: requests.Session | None = None) -> tuple[str, str]:
    username, password = f"topo_{secrets.token_hex(5)}", f"pw-{secrets.token_hex(8)}"
    response = (http or requests).post(
        f"{topology.users_url}/users", json={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 201, response.text
    return username, password


def login(base_url: str, username: str, password: str, http: requests.Session | None = None) -> requests.Response:
    return (http or requests).post(f"{base_url}/token", data={"username": username, "password": password}, timeout=30)


def refresh(base_url: str, refresh_token: str) -> requests.Response:
    return requests.post(
        f"{base_url}/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}, timeout=30
    )


def claims_of(access_token: str) -> dict:
    """The token's claims, unverified: the test only reads which session it belongs to."""
    payload = access_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---- load ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    started: float
    finished: float
    status: int  # 0: no HTTP answer at all (connection refused or reset)
    retry_after: str | None
    worker: str | None
    request_id: str | None = None


@dataclass
class LoadRun:
    outcomes: list[Outcome] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)

    def statuses(self) -> Counter:
        return Counter(outcome.status for outcome in self.outcomes)

    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == 0 or outcome.status >= 500]

    def figures(self, title: str) -> str:
        failures = self.failures()
        codes = Counter(outcome.status for outcome in failures)
        last = max((outcome.finished for outcome in failures), default=None)
        lines = [
            f"{title}: {len(self.outcomes)} requests, answers by status {dict(sorted(self.statuses().items()))}",
            f"  5xx or no answer by code: {dict(sorted(codes.items()))}",
            "  events (s from start): " + ", ".join(f"{name} {at:.2f}" for name, at in self.events.items()),
        ]
        if last is not None:
            lines.append(f"  last failed request finished at {last:.2f} s")
        odd = [o for o in failures if o.status not in (502, 503)]
        lines += [f"  unexpected {o.status} at {o.started:.2f} s, request id {o.request_id}" for o in odd[:5]]
        return "\n".join(lines)


def run_load(
    *,
    requests_of_thread: list[Callable[[requests.Session], requests.Response]],
    seconds: float,
    script: Callable[[Callable[[str], None]], None],
) -> LoadRun:
    """One thread per entry of `requests_of_thread`, each sending its request again and again for `seconds`,
    while `script(mark)` runs in this thread (`mark(name)` notes when something happened)."""
    run = LoadRun()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def mark(name: str) -> None:
        run.events[name] = time.monotonic() - start

    def worker(send: Callable[[requests.Session], requests.Response]) -> None:
        http = requests.Session()
        while time.monotonic() < deadline:
            began = time.monotonic() - start
            try:
                response = send(http)
                outcome = Outcome(
                    began,
                    time.monotonic() - start,
                    response.status_code,
                    response.headers.get("Retry-After"),
                    response.headers.get("X-Worker"),
                    response.headers.get("X-Request-ID"),
                )
            except requests.RequestException:
                outcome = Outcome(began, time.monotonic() - start, 0, None, None)
                http = requests.Session()
                time.sleep(0.05)
            with lock:
                run.outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(send,), daemon=True) for send in requests_of_thread]
    for thread in threads:
        thread.start()
    try:
        script(mark)
    finally:
        for thread in threads:
            thread.join(timeout=seconds + 60)
    return run


# ---- session state on PgBouncer's server connections -----------------------------------------------------------


def show_settings(cursor) -> dict[str, str]:  # noqa: ANN001
    values = {}
    for name in SESSION_SETTINGS:
        cursor.execute(f"SHOW {name}")
        values[name] = cursor.fetchone()[0]
    return values


def server_pids(topology: Topology) -> set[int]:
    """The backend pids of PgBouncer's server connections to the database now (its admin console)."""
    admin = psycopg2.connect(topology.pooled_url.rsplit("/", 1)[0] + "/pgbouncer?sslmode=require")
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SHOW SERVERS")
            columns = [column.name for column in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        admin.close()
    return {int(row["remote_pid"]) for row in rows if row["database"] == "topology"}


def scan_server_connections(topology: Topology, *, reset: bool = False) -> dict[int, dict[str, str]]:
    """The settings of every server connection PgBouncer holds: as many clients as it has servers, each in a
    transaction at once, so each is handed a server of its own. `reset`: RESET ALL on each, committed."""
    wanted = server_pids(topology)
    seen: dict[int, dict[str, str]] = {}
    for _ in range(3):
        connections = [psycopg2.connect(topology.pooled_url) for _ in range(max(len(wanted), 1))]
        try:
            for connection in connections:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    pid = cursor.fetchone()[0]
                    seen[pid] = show_settings(cursor)
                    if reset:
                        cursor.execute("RESET ALL")
            for connection in connections:
                if reset:
                    connection.commit()
                else:
                    connection.rollback()
        finally:
            for connection in connections:
                connection.close()
        if wanted <= seen.keys():
            break
        # A server busy with a service's query was not handed out; look again for the ones missed.
        wanted |= server_pids(topology)
        time.sleep(0.2)
    missed = wanted - seen.keys()
    assert not missed, f"server connections not inspected: {missed}"
    return seen


def direct_defaults(topology: Topology) -> dict[str, str]:
    """The settings a fresh session of the services' role gets from PostgreSQL itself."""
    connection = psycopg2.connect(topology.direct_url.replace("postgres://", "postgresql://", 1))
    try:
        with connection.cursor() as cursor:
            return show_settings(cursor)
    finally:
        connection.close()
