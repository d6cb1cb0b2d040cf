"""End to end: a burst far beyond the thread and connection pools is queued (or refused with 503), never deadlocked."""

import concurrent.futures
import secrets
from pathlib import Path

import requests

from tests.conftest import service_env
from tests.processes import ServiceProcess, free_port


def test_burst_beyond_the_pools_is_served_or_refused_never_stuck(database_url: str, tmp_path: Path) -> None:
    # Two connections and two threads per worker, one worker, sixty requests at once.
    env = service_env(database_url, DB_POOL_SIZE="2", DB_MAX_OVERFLOW="0", DB_POOL_TIMEOUT_SECONDS="10")
    auth = ServiceProcess("auth", free_port(), env, tmp_path / "auth.log", workers=1).start()
    users = ServiceProcess("users", free_port(), env, tmp_path / "users.log", workers=1).start()
    try:
        username = f"burst_{secrets.token_hex(4)}"
        assert (
            requests.post(f"{users.url}/users", json={"username": username, "password": "password123"}).status_code
            == 201
        )
        token = requests.post(f"{auth.url}/token", data={"username": username, "password": "password123"}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}

        def one(index: int) -> int:
            if index % 3 == 0:
                response = requests.patch(
                    f"{users.url}/users/me", json={"full_name": f"n{index}"}, headers=headers, timeout=30
                )
            else:
                response = requests.get(f"{users.url}/users/me", headers=headers, timeout=30)
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
            statuses = list(pool.map(one, range(60)))
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 30, statuses
        # And the service is still healthy afterwards.
        assert requests.get(f"{users.url}/users/me", headers=headers, timeout=10).status_code == 200
    finally:
        users.stop()
        auth.stop()
