"""Starting and stopping the services as real gunicorn processes, for the end-to-end suite and scripts.

Each service runs exactly as in production: gunicorn, `uvicorn_worker.UvicornWorker`, deploy/gunicorn.conf.py.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONFIG = REPO / "deploy" / "gunicorn.conf.py"
APP_OF_SERVICE = {"auth": "auth_service.app:app", "users": "users_service.app:app"}


# Tries, each on a new free port, when the port was taken between free_port() and gunicorn's bind.
PORT_ATTEMPTS = 3
# Workers write their log lines every 0.1 s; a line not there after this long is missing.
LOG_WAIT_SECONDS = 10.0


class PortTaken(RuntimeError):
    """Gunicorn could not bind its port: another process holds it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServiceProcess:
    """One gunicorn master serving one service on 127.0.0.1, its output in a log file."""

    service: str
    port: int
    env: dict[str, str]
    log_path: Path
    workers: int = 2
    # Another ASGI app than the service's own (the bench's reference app), as "module:attribute".
    app: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    _log_offset: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> "ServiceProcess":
        for attempt in range(PORT_ATTEMPTS):
            self._spawn()
            try:
                self._wait_healthy(timeout)
                return self
            except PortTaken:
                # free_port() closed its probe before gunicorn bound: someone else took the port meanwhile.
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        env = {
            **os.environ,
            # One listening socket, bound once: with SO_REUSEPORT a second process (another suite running
            # beside this one) could bind the same free port and take half of this one's connections.
            "GUNICORN_REUSE_PORT": "false",
            **self.env,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(self.workers),
            "PYTHONUNBUFFERED": "1",
        }
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(GUNICORN_CONFIG),
            self.app or APP_OF_SERVICE[self.service],
        ]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(gunicorn, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _wait_healthy(self, timeout: float) -> None:
        """Until /healthz answers 200 from one of this master's own workers (not whoever else holds the port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Connection in use" in self.log_text()[self._log_offset :]:
                    raise PortTaken(self.port)
                raise RuntimeError(f"{self.service} exited with {self.process.returncode}; see {self.log_path}")
            try:
                response = requests.get(f"{self.url}/healthz", timeout=1)
                if response.status_code == 200 and self._answered_by_own_worker(response):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.service} did not become healthy in {timeout} s; see {self.log_path}")

    def _answered_by_own_worker(self, response: requests.Response) -> bool:
        if self.app is not None:
            # Another app (the bench's reference app) sends no X-Worker header.
            return True
        worker = response.headers.get("X-Worker", "")
        return worker.isdigit() and int(worker) in self.worker_pids()

    def worker_pids(self) -> set[int]:
        """The pids of this master's workers now."""
        master = self.process.pid
        try:
            return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
        except OSError:
            return set()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM (gunicorn's graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_request_lines(self, *request_ids: str, timeout: float = LOG_WAIT_SECONDS) -> str:
        """The log once the request line of each of `request_ids` is in it (workers write lines in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            missing = [rid for rid in request_ids if f'"request_id": "{rid}"' not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.service}: no log line for requests {missing} in {timeout} s")
            time.sleep(0.05)

    def wait_until_logged(self, *, timeout: float = LOG_WAIT_SECONDS) -> str:
        """The log once every worker has written what it logged before this call.

        A request with an id of its own goes to each worker (new connections until every worker answered one);
        a worker writes its lines in order, so once that request's line is there, all earlier ones are too.
        """
        workers = {str(pid) for pid in self.worker_pids()}
        marker_of_worker: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while not workers <= set(marker_of_worker):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.service}: workers {workers - set(marker_of_worker)} answered no request")
            request_id = f"log-marker-{secrets.token_hex(8)}"
            response = requests.get(f"{self.url}/healthz", headers={"X-Request-ID": request_id}, timeout=timeout)
            marker_of_worker.setdefault(response.headers.get("X-Worker", ""), request_id)
        return self.wait_for_request_lines(*marker_of_worker.values(), timeout=timeout)


def run_migrations(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "shared.migrate", "upgrade", "head"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url, "APP_ENV": "local"},
        check=True,
        capture_output=True,
    )
