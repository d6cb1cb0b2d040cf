"""Test support for mail: a real SMTP server process (deploy/mailcatcher.py) on free ports, and what it received.

The suites read delivered messages from the catcher's inbox over HTTP, as a person would; nothing is mocked.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_string, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from shared.one_time_tokens import new_token, store_token

CATCHER = Path(__file__).resolve().parent.parent / "deploy" / "mailcatcher.py"
# A token in a mail: in a link (`token=...`) or in the curl command the mail shows without one (`"token": "..."`).
TOKEN_IN_MAIL = re.compile(r'(?:token=|"token": ")([A-Za-z0-9_-]{20,})')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class CaughtMail:
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        return self.message.get_body(preferencelist=("plain",)).get_content()

    @property
    def html(self) -> str | None:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else None

    @property
    def token(self) -> str:
        found = TOKEN_IN_MAIL.search(self.text)
        assert found, f"no token in the mail {self.message['Subject']!r}"
        return found.group(1)


class MailInbox:
    """A catcher's inbox read over HTTP (deploy/mailcatcher.py's `/messages`), wherever the catcher runs."""

    def __init__(self, inbox_url: str) -> None:
        self.inbox_url = inbox_url.rstrip("/")

    def mails(self) -> list[CaughtMail]:
        response = requests.get(f"{self.inbox_url}/messages", timeout=5)
        response.raise_for_status()
        return [
            CaughtMail(recipients=entry["rcpt_tos"], message=message_from_string(entry["raw"], policy=policy.default))
            for entry in response.json()
        ]

    def mails_to(self, recipient: str) -> list[CaughtMail]:
        return [mail for mail in self.mails() if recipient.lower() in (r.lower() for r in mail.recipients)]

    def wait_for(
        self, recipient: str, *, count: int = 1, timeout: float = 15.0, subject: str | None = None
    ) -> list[CaughtMail]:
        """The mails to `recipient` (with `subject`, if given), once there are at least `count` of them."""
        return wait_until(lambda: self._matching(recipient, subject), count=count, timeout=timeout)

    def _matching(self, recipient: str, subject: str | None) -> list[CaughtMail]:
        return [mail for mail in self.mails_to(recipient) if subject is None or mail.message["Subject"] == subject]


class MailCatcher(MailInbox):
    """deploy/mailcatcher.py as a process of its own: `stop()` takes the SMTP server down, `start()` brings it back
    on the same ports (what it had received is gone with the process; read it before)."""

    def __init__(self, *, drop_first: int = 0) -> None:
        self.smtp_port = free_port()
        self.http_port = free_port()
        super().__init__(f"http://127.0.0.1:{self.http_port}")
        self.drop_first = drop_first
        self.process: subprocess.Popen | None = None

    def settings(self) -> dict[str, object]:
        """Settings overrides that send through this catcher with the in-process sender on, retrying fast."""
        return {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.smtp_port,
            "smtp_tls": "none",
            "smtp_timeout_seconds": 5.0,
            "mail_sender_enabled": True,
            "mail_retry_base_seconds": 0.2,
            "mail_retry_max_seconds": 1.0,
        }

    def env(self) -> dict[str, str]:
        return {
            name.upper(): str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in self.settings().items()
        }

    def start(self, *, timeout: float = 15.0) -> "MailCatcher":
        command = [
            sys.executable,
            str(CATCHER),
            "--smtp-port",
            str(self.smtp_port),
            "--http-port",
            str(self.http_port),
            "--drop-first",
            str(self.drop_first),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the mail catcher exited with {self.process.returncode}")
            try:
                requests.get(f"{self.inbox_url}/messages", timeout=1).raise_for_status()
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                    return self
            except (requests.RequestException, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the mail catcher did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until(read: Callable[[], list], *, count: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)} of {count} mails arrived within {timeout} s"
            return found
        time.sleep(0.1)


def add_token(client: TestClient, *, user_id: int, email: str, purpose: str, made_ago: int = 0) -> str:
    """A token stored as the services store them, made `made_ago` seconds ago with a lifetime of 60 s."""
    token = new_token()
    with client.app.state.session_factory() as session:
        made = datetime.now(UTC) - timedelta(seconds=made_ago)
        store_token(
            session=session, token=token, purpose=purpose, user_id=user_id, email=email, ttl_seconds=60, now=made
        )
        session.commit()
    return token


@pytest.fixture(scope="session")
def mail_catcher() -> Iterator[MailCatcher]:
    """One catcher for the test session; tests tell their mails apart by their unique recipients."""
    catcher = MailCatcher().start()
    try:
        yield catcher
    finally:
        catcher.stop()
