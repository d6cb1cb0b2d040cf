"""Starting and stopping the services as real gunicorn processes, for the end-to-end suite and scripts.

Each service runs exactly as in production: gunicorn, `uvicorn_worker.UvicornWorker`, deploy/gunicorn.conf.py.
"""

import os
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> "ServiceProcess":
        env = {
            **os.environ,
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
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(gunicorn, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.process.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.service} did not become healthy in {timeout} s; see {self.log_path}")

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


def run_migrations(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "shared.migrate", "upgrade", "head"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url, "APP_ENV": "local"},
        check=True,
        capture_output=True,
    )
