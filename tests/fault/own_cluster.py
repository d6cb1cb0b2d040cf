"""A throwaway PostgreSQL cluster for the fault tests: made in a temporary folder, on a free port, then removed.

The outage tests stop and start PostgreSQL; on a cluster of their own they never touch one that anybody else
uses. Needs the server binaries (initdb, pg_ctl: /usr/lib/postgresql/<version>/bin, or on PATH). PostgreSQL
refuses to run as root, so as root the cluster belongs to the `postgres` OS user (runuser).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.settings import normalise_database_url
from tests.processes import free_port

SERVER_OWNER = "postgres"


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: the newest under /usr/lib/postgresql, else the one on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
    for folder in reversed(versions):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def why_no_cluster() -> str | None:
    """Why a throwaway cluster cannot be made here, or None when it can."""
    if server_binaries() is None:
        return "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_OWNER)
        except KeyError:
            return f"running as root and there is no {SERVER_OWNER!r} OS user to run PostgreSQL as"
        if not shutil.which("runuser"):
            return "running as root and runuser (util-linux) is missing"
    return None


@dataclass(frozen=True)
class OwnCluster:
    folder: Path
    port: int
    binaries: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def admin_url(self) -> str:
        return normalise_database_url(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")

    def _run(self, program: str, *arguments: str, timeout: float = 90) -> subprocess.CompletedProcess:
        command = [str(self.binaries / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_OWNER, "--", *command]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)

    def create(self) -> None:
        result = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()[-500:]}")

    def start(self) -> None:
        if self.is_up():
            return
        # fsync off: the cluster is thrown away, and a fast outage test needs no durable disk writes.
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        result = self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "start")
        if result.returncode != 0 and not self.is_up():
            raise RuntimeError(f"could not start PostgreSQL {self}: {result.stderr.strip()}")

    def stop(self, *, mode: str = "fast") -> None:
        # Fast: disconnect clients now (what a crash or a compute suspension looks like to them).
        result = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        if result.returncode != 0 and self.is_up():
            raise RuntimeError(f"could not stop PostgreSQL {self}: {result.stderr.strip()}")

    def is_up(self) -> bool:
        result = subprocess.run(
            [str(self.binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def wait_up(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_up():
                return True
            time.sleep(0.05)
        return False

    def ensure_running(self) -> None:
        """Starts the cluster if it is down: the outage's `finally`, so the writes can still be checked."""
        self.start()
        if not self.wait_up(30):
            raise RuntimeError(f"PostgreSQL {self} did not come back up")

    def __str__(self) -> str:
        return f"throwaway cluster on port {self.port} in {self.folder}"


@contextmanager
def own_cluster() -> Iterator[OwnCluster]:
    """A new cluster, running; stopped and deleted on exit, whatever happened."""
    why = why_no_cluster()
    if why is not None:
        raise RuntimeError(why)
    folder = Path(tempfile.mkdtemp(prefix="fault-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, SERVER_OWNER, SERVER_OWNER)
    cluster = OwnCluster(folder=folder, port=free_port(), binaries=server_binaries())
    try:
        cluster.create()
        cluster.start()
        if not cluster.wait_up(60):
            raise RuntimeError(f"PostgreSQL {cluster} did not start")
        yield cluster
    finally:
        try:
            cluster.stop(mode="immediate")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
