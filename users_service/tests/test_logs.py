"""Nothing secret reaches the logs: no password, token or hash, whatever the request and its outcome."""

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from users_service.tests.support import Account, bearer, stdout_log_lines, stored_user, unique_username

SECRET_PASSWORD = "Log-Secret-Password-77"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def logged_lines(tmp_path: Path) -> Iterator[Callable[[], list[str]]]:
    """Every line logged from now on at DEBUG and above, as the process writes them to stdout; the request lines
    too, which do not go through the logging module's handlers (shared/observability.py)."""
    with stdout_log_lines(tmp_path / "stdout.txt", level="DEBUG") as written:
        yield written


def test_requests_with_secrets_leave_none_in_the_logs(
    client: TestClient, make_account: Callable[..., Account], logged_lines: Callable[[], list[str]]
) -> None:
    account = make_account(password=SECRET_PASSWORD)
    forged = account.token[:-4] + "AAAA"

    client.post("/users", json={"username": unique_username(), "password": SECRET_PASSWORD + "x" * 120})  # 422
    client.post("/users", json={"username": account.username, "password": SECRET_PASSWORD})  # 409
    client.post("/users", content=f'{{"password": "{SECRET_PASSWORD}"'.encode(), headers=JSON)  # malformed
    wrong_current = {"password": "new-password", "current_password": SECRET_PASSWORD[::-1]}
    client.patch("/users/me", json=wrong_current, headers=account.headers)  # 400
    client.get("/users/me", headers=bearer(forged))  # 401
    client.get("/users/me", headers=account.headers)  # 200

    lines = logged_lines()
    assert any('"status": 401' in line for line in lines), lines  # the capture did see the requests
    secrets = [SECRET_PASSWORD, SECRET_PASSWORD[::-1], account.token, forged, account.token.split(".")[2]]
    secrets.append(stored_user(client, account.id).password_hash)
    for line in lines:
        assert not any(secret in line for secret in secrets), line


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_a_request_line_has_the_shape_of_every_other_line(
    client: TestClient, make_account: Callable[..., Account], logged_lines: Callable[[], list[str]]
) -> None:
    account = make_account()
    started = time.time()
    assert client.get("/users/me", headers=account.headers).status_code == 200
    logging.getLogger("users.test").info("after the request")
    entries = [json.loads(line) for line in logged_lines()]
    request = next(entry for entry in entries if entry["message"] == "request" and entry["route"] == "/users/me")
    other = next(entry for entry in entries if entry["message"] == "after the request")
    # Logged outside any request, the other line has no request id.
    assert list(request) == [*other, "request_id", "method", "route", "status", "duration_ms", "user_id"]
    assert request["logger"] == "users.access" and request["level"] == "info" and request["user_id"] == account.id
    for entry in (request, other):
        assert TIMESTAMP.fullmatch(entry["time"]), entry
        logged_at = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        assert started - 0.002 <= logged_at <= time.time() + 0.002


def test_no_request_lines_below_the_configured_level(
    client: TestClient, make_account: Callable[..., Account], logged_lines: Callable[[], list[str]]
) -> None:
    account = make_account()
    # What LOG_LEVEL=WARNING sets (configure_logging).
    logging.getLogger().setLevel(logging.WARNING)
    assert client.get("/users/me", headers=account.headers).status_code == 200
    logging.getLogger("users.test").warning("after the request")
    entries = [json.loads(line) for line in logged_lines()]
    assert any(entry["message"] == "after the request" for entry in entries)
    assert not [entry for entry in entries if entry["message"] == "request" and entry["route"] == "/users/me"]
