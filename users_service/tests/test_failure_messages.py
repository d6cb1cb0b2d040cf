"""A database failure names no internals to callers; the log has the driver's message, masked, once per cause."""

import json
import logging
import secrets
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from shared import database_failures as database_failures_module
from shared.database_failures import CauseLog, mask_passwords
from shared.observability import JsonLogFormatter
from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import bearer

PASSWORD = f"Db-Password-{secrets.token_hex(6)}"
# The local server authenticates by trust, so libpq refuses it: the case of a pooler that cannot bind channels.
CHANNEL_BINDING_URL = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/postgres?channel_binding=require"
UNREACHABLE_URL = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:1/x"
INTERNAL_WORDS = ("OperationalError", "psycopg2", "127.0.0.1", "5432", "channel", "SELECT", "Error", PASSWORD)


def failing_client(url: str) -> Iterator[tuple[TestClient, str]]:
    settings = settings_for_tests(url)
    token = AccessTokenIssuer(settings).issue(user_id=1, token_version=0).token
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, token


@pytest.fixture(params=[CHANNEL_BINDING_URL, UNREACHABLE_URL], ids=["channel-binding", "unreachable"])
def database_failing(request) -> Iterator[tuple[TestClient, str]]:
    yield from failing_client(request.param)


@pytest.fixture(autouse=True)
def fresh_cause_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no cause logged yet (the process's log remembers causes across tests)."""
    monkeypatch.setattr(database_failures_module, "database_failures", CauseLog())


def database_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = JsonLogFormatter()
    return [formatter.format(r) for r in caplog.records if r.name == "shared.database" and r.levelno >= logging.WARNING]


def test_readyz_names_no_driver_exception_or_host(database_failing) -> None:
    client, _ = database_failing
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable", "checks": {"database": "failing"}}
    assert int(response.headers["Retry-After"]) >= 1


def test_the_503_of_a_request_names_no_driver_exception_or_host(database_failing) -> None:
    client, token = database_failing
    response = client.get("/users/me", headers=bearer(token))

    assert response.status_code == 503
    assert not any(word in response.text for word in INTERNAL_WORDS), response.text


@pytest.fixture
def channel_binding_failing() -> Iterator[tuple[TestClient, str]]:
    # Built in a fixture: building an app configures logging, which would unhook the test's log capture.
    yield from failing_client(CHANNEL_BINDING_URL)


@pytest.fixture
def unreachable_failing() -> Iterator[tuple[TestClient, str]]:
    yield from failing_client(UNREACHABLE_URL)


def test_the_log_has_the_driver_message_once_per_cause_and_no_password(
    channel_binding_failing, caplog: pytest.LogCaptureFixture
) -> None:
    client, token = channel_binding_failing
    caplog.set_level(logging.INFO)
    for _ in range(3):
        assert client.get("/readyz").status_code == 503
        assert client.get("/users/me", headers=bearer(token)).status_code == 503

    lines = database_lines(caplog)
    # Six failures of one cause, by /readyz and by the error handler: one line, with libpq's own words.
    assert len(lines) == 1, lines
    message = json.loads(lines[0])["message"]
    assert "channel binding required" in message, message
    assert all(PASSWORD not in line for line in (JsonLogFormatter().format(r) for r in caplog.records))


def test_a_new_cause_is_logged_though_another_was_just_logged(
    channel_binding_failing, unreachable_failing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for client, _ in (channel_binding_failing, unreachable_failing):
        client.get("/readyz")
        client.get("/readyz")

    messages = [json.loads(line)["message"] for line in database_lines(caplog)]
    assert len(messages) == 2, messages
    assert "channel binding required" in messages[0] and "Connection refused" in messages[1], messages
    assert all(PASSWORD not in message for message in messages)


def test_a_cause_is_logged_again_after_a_quiet_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = CauseLog(quiet_seconds=0.2)

    first = [log.warning(cause="refused", where="/readyz") for _ in range(5)]
    time.sleep(0.3)
    again = log.warning(cause="refused", where="/readyz")

    assert first == [True, False, False, False, False] and again
    assert "seen 4 more times" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    "message",
    [
        f"invalid dsn: host=db user=app password={PASSWORD} dbname=x",
        f"invalid dsn: password='{PASSWORD}' host=db",
        f"could not parse postgresql://app:{PASSWORD}@db/x",
    ],
)
def test_passwords_in_driver_messages_are_masked(message: str) -> None:
    masked = mask_passwords(message)

    assert PASSWORD not in masked and "***" in masked


def test_the_urls_own_password_is_masked_wherever_it_appears() -> None:
    assert mask_passwords(f"role failed near {PASSWORD}", known=(PASSWORD,)) == "role failed near ***"
