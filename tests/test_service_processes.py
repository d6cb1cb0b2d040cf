"""The suites' own plumbing: a service started on a port another process holds never shares that port."""

from pathlib import Path

import requests

from tests.conftest import service_env
from tests.processes import ServiceProcess, free_port


def test_a_second_service_on_a_taken_port_moves_to_another_and_takes_nothing(database_url: str, tmp_path: Path) -> None:
    env = service_env(database_url)
    first = ServiceProcess("users", free_port(), env, tmp_path / "users.log").start()
    taken = first.port
    second = ServiceProcess("auth", taken, env, tmp_path / "auth.log")
    try:
        second.start()
        # Without SO_REUSEPORT the second bind fails, and the process starts again on a port of its own.
        assert second.port != taken
        # Every connection to the taken port still reaches the first service's own workers.
        for _ in range(20):
            response = requests.get(f"http://127.0.0.1:{taken}/openapi.json", timeout=10)
            assert response.json()["info"]["title"] == "Users service"
            assert int(response.headers["X-Worker"]) in first.worker_pids()
        assert requests.get(f"{second.url}/openapi.json", timeout=10).json()["info"]["title"] == "Auth service"
    finally:
        second.stop()
        first.stop()
