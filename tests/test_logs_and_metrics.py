"""End to end: JSON request logs without secrets, X-Request-ID, and Prometheus metrics across workers."""

import json
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, select

from shared.models import User
from tests.conftest import Api, Stack, service_env
from tests.processes import ServiceProcess, free_port


@pytest.fixture
def own_stack(database_url: str, tmp_path: Path):
    """A pair of our own, so the test can read every line both services logged."""
    env = service_env(database_url, LOG_LEVEL="DEBUG")
    auth = ServiceProcess("auth", free_port(), env, tmp_path / "auth.log").start()
    users = ServiceProcess("users", free_port(), env, tmp_path / "users.log").start()
    try:
        yield Stack(auth.url, users.url, "", "", processes=[auth, users]), env["JWT_SECRET"]
    finally:
        users.stop()
        auth.stop()


def exercise_every_secret_path(api: Api) -> list[str]:
    """Sign-up, logins right and wrong, refresh, reuse, password change, bad tokens, revoke: the secrets seen.

    Each step's status is checked: a step that failed early never sent the secret the log is searched for.
    """
    account = api.sign_up(password="first secret password")
    tokens = api.tokens(account)
    assert api.login(account.username, "wrong secret password").status_code == 401
    rotated_response = api.refresh(tokens["refresh_token"])
    assert rotated_response.status_code == 200, rotated_response.text
    rotated = rotated_response.json()
    changed = api.users(
        "PATCH",
        "/users/me",
        rotated["access_token"],
        json={"password": "second secret password", "current_password": "first secret password"},
    )
    assert changed.status_code == 200, changed.text
    # Issued before the password change: refused from now on.
    assert api.users("GET", "/users/me", rotated["access_token"]).status_code == 401
    assert api.users("GET", "/users/me", rotated["access_token"] + "tampered").status_code == 401
    # Reuse of the retired token: refused (the family is revoked, by the password change already).
    assert api.refresh(tokens["refresh_token"]).status_code == 401
    assert api.users("POST", "/users", json={"username": "x", "password": "short"}).status_code == 422
    assert requests.post(f"{api.stack.auth_url}/revoke", data={"token": rotated["refresh_token"]}).status_code == 200
    return [
        "first secret password",
        "wrong secret password",
        "second secret password",
        tokens["access_token"],
        tokens["refresh_token"],
        rotated["access_token"],
        rotated["refresh_token"],
    ]


def test_logs_are_json_lines_without_secrets(own_stack, database_url: str) -> None:
    stack, jwt_secret = own_stack
    seen = exercise_every_secret_path(Api(stack))
    engine = create_engine(database_url)
    with engine.connect() as connection:
        hashes = list(connection.scalars(select(User.password_hash)))
    engine.dispose()
    for process in stack.processes:
        process.stop()
    logs = "\n".join(process.log_text() for process in stack.processes)
    for secret in [*seen, jwt_secret, *hashes, "$argon2id$"]:
        assert secret not in logs
    request_lines = []
    for line in filter(None, logs.splitlines()):
        entry = json.loads(line)
        if entry["message"] == "request":
            request_lines.append(entry)
    assert len(request_lines) >= 10
    for entry in request_lines:
        assert {"request_id", "method", "route", "status", "duration_ms"} <= set(entry)
    assert any(entry.get("user_id") for entry in request_lines if entry["route"] == "/users/me")
    assert {entry["route"] for entry in request_lines} >= {"/token", "/users", "/users/me", "/revoke"}


def test_request_id_is_kept_when_sane_and_replaced_otherwise(own_stack) -> None:
    stack, _ = own_stack
    kept = requests.get(f"{stack.users_url}/healthz", headers={"X-Request-ID": "trace-42.a_b"})
    assert kept.headers["X-Request-ID"] == "trace-42.a_b"
    replaced = requests.get(f"{stack.users_url}/healthz", headers={"X-Request-ID": "x" * 300})
    assert replaced.headers["X-Request-ID"] != "x" * 300 and len(replaced.headers["X-Request-ID"]) == 32
    generated = requests.get(f"{stack.auth_url}/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    for process in stack.processes:
        process.stop()
    assert '"request_id": "trace-42.a_b"' in stack.processes[1].log_text()


def test_generated_request_ids_are_unique_across_workers(stack: Stack) -> None:
    # A new connection each time, until both workers answered: ids drawn from one random state copied into
    # every worker by fork would repeat from one worker to the next.
    ids, workers = [], set()
    while (len(ids) < 60 or len(workers) < 2) and len(ids) < MAX_ROUNDS_TO_REACH_BOTH_WORKERS:
        response = requests.get(f"{stack.users_url}/healthz", timeout=10)
        ids.append(response.headers["X-Request-ID"])
        workers.add(response.headers["X-Worker"])
    assert len(workers) >= 2, f"{len(ids)} requests on new connections all reached worker {workers}"
    assert all(len(request_id) == 32 for request_id in ids)
    assert len(set(ids)) == len(ids)


def metric_value(text: str, name: str, **labels: str) -> float:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.one_replica
def test_metrics_count_logins_and_requests_across_workers(api: Api) -> None:
    """Every request on a connection of its own, until each service's answers came from two workers or more;
    the counters, read from one worker's /metrics, then hold exactly what both workers did."""
    bases = (api.stack.auth_url, api.stack.users_url)
    before = {base: requests.get(f"{base}/metrics", timeout=10).text for base in bases}
    account = api.sign_up()
    for _ in range(3):
        failed = requests.post(
            f"{api.stack.auth_url}/token", data={"username": account.username, "password": "wrong"}, timeout=10
        )
        assert failed.status_code == 401, failed.text
    tokens = api.tokens(account)
    assert api.refresh(tokens["refresh_token"]).status_code == 200
    assert api.refresh(tokens["refresh_token"]).status_code == 401
    auth_workers: set[str] = set()
    users_workers: set[str] = set()
    logins = reads = 0
    while (len(auth_workers) < 2 or len(users_workers) < 2) and logins < MAX_ROUNDS_TO_REACH_BOTH_WORKERS:
        login = requests.post(
            f"{api.stack.auth_url}/token", data={"username": account.username, "password": account.password}, timeout=10
        )
        assert login.status_code == 200, login.text
        logins += 1
        auth_workers.add(login.headers["X-Worker"])
        me = requests.get(
            f"{api.stack.users_url}/users/me",
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            timeout=10,
        )
        assert me.status_code == 200, me.text
        reads += 1
        users_workers.add(me.headers["X-Worker"])
    assert len(auth_workers) >= 2 and len(users_workers) >= 2, (auth_workers, users_workers)

    auth_after = requests.get(f"{api.stack.auth_url}/metrics", timeout=10).text
    users_after = requests.get(f"{api.stack.users_url}/metrics", timeout=10).text
    auth_before, users_before = before[api.stack.auth_url], before[api.stack.users_url]

    def grew(name: str, before_text: str, after_text: str, **labels: str) -> float:
        return metric_value(after_text, name, **labels) - metric_value(before_text, name, **labels)

    assert grew("auth_login_attempts_total", auth_before, auth_after, outcome="failure") == 3
    # The logins of the loop, and api.tokens() above.
    assert grew("auth_login_attempts_total", auth_before, auth_after, outcome="success") == logins + 1
    assert grew("auth_refresh_token_reuse_detected_total", auth_before, auth_after) == 1
    assert grew("http_requests_total", users_before, users_after, route="/users/me", status="200") == reads
    assert "http_request_duration_seconds_bucket" in users_after and "db_pool_connections_in_use" in users_after


# New connections spread over the workers unevenly (one listening socket, whoever accepts first): enough tries
# that a service whose every worker serves cannot miss one, few enough to fail fast when one never does.
MAX_ROUNDS_TO_REACH_BOTH_WORKERS = 200
