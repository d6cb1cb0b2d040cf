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
    """Sign-up, logins right and wrong, refresh, reuse, password change, bad tokens, revoke: the secrets seen."""
    account = api.sign_up(password="first secret password")
    tokens = api.tokens(account)
    api.login(account.username, "wrong secret password")
    rotated = api.refresh(tokens["refresh_token"]).json()
    api.refresh(tokens["refresh_token"])
    api.users(
        "PATCH",
        "/users/me",
        rotated["access_token"],
        json={"password": "second secret password", "current_password": "first secret password"},
    )
    api.users("GET", "/users/me", rotated["access_token"])
    api.users("GET", "/users/me", rotated["access_token"] + "tampered")
    api.users("POST", "/users", json={"username": "x", "password": "short"})
    requests.post(f"{api.stack.auth_url}/revoke", data={"token": rotated["refresh_token"]})
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
    # A new connection each time, so both workers answer: ids drawn from one random state copied into
    # every worker by fork would repeat from one worker to the next.
    ids = [requests.get(f"{stack.users_url}/healthz", timeout=10).headers["X-Request-ID"] for _ in range(60)]
    assert all(len(request_id) == 32 for request_id in ids)
    assert len(set(ids)) == len(ids)


def metric_value(text: str, name: str, **labels: str) -> float:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_logins_and_requests_across_workers(api: Api) -> None:
    before = requests.get(f"{api.stack.auth_url}/metrics").text
    account = api.sign_up()
    for _ in range(3):
        api.login(account.username, "wrong password")
    tokens = api.tokens(account)
    api.refresh(tokens["refresh_token"])
    api.refresh(tokens["refresh_token"])
    for _ in range(6):
        api.users("GET", "/users/me", api.tokens(account)["access_token"])
    after = requests.get(f"{api.stack.auth_url}/metrics").text
    assert (
        metric_value(after, "auth_login_attempts_total", outcome="failure")
        - metric_value(before, "auth_login_attempts_total", outcome="failure")
        >= 3
    )
    assert metric_value(after, "auth_refresh_token_reuse_detected_total") > metric_value(
        before, "auth_refresh_token_reuse_detected_total"
    )
    users_metrics = requests.get(f"{api.stack.users_url}/metrics").text
    assert metric_value(users_metrics, "http_requests_total", route="/users/me", status="200") >= 6
    assert "http_request_duration_seconds_bucket" in users_metrics and "db_pool_connections_in_use" in users_metrics
