"""Nothing secret reaches the logs: no password, token or hash, whatever the request and its outcome."""

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from shared.observability import JsonLogFormatter
from users_service.tests.support import Account, bearer, stored_user, unique_username

SECRET_PASSWORD = "Log-Secret-Password-77"
JSON = {"Content-Type": "application/json"}


def test_requests_with_secrets_leave_none_in_the_logs(
    client: TestClient, make_account: Callable[..., Account], caplog: pytest.LogCaptureFixture
) -> None:
    account = make_account(password=SECRET_PASSWORD)
    forged = account.token[:-4] + "AAAA"
    caplog.set_level(logging.DEBUG)

    client.post("/users", json={"username": unique_username(), "password": SECRET_PASSWORD + "x" * 120})  # 422
    client.post("/users", json={"username": account.username, "password": SECRET_PASSWORD})  # 409
    client.post("/users", content=f'{{"password": "{SECRET_PASSWORD}"'.encode(), headers=JSON)  # malformed
    wrong_current = {"password": "new-password", "current_password": SECRET_PASSWORD[::-1]}
    client.patch("/users/me", json=wrong_current, headers=account.headers)  # 400
    client.get("/users/me", headers=bearer(forged))  # 401
    client.get("/users/me", headers=account.headers)  # 200

    lines = [JsonLogFormatter().format(record) for record in caplog.records]
    assert any('"status": 401' in line for line in lines), lines  # the capture did see the requests
    secrets = [SECRET_PASSWORD, SECRET_PASSWORD[::-1], account.token, forged, account.token.split(".")[2]]
    secrets.append(stored_user(client, account.id).password_hash)
    for line in lines:
        assert not any(secret in line for secret in secrets), line
