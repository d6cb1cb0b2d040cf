"""Fixtures of the end-to-end suite: both services as real gunicorn processes, or the ones at AUTH_URL/USERS_URL.

With AUTH_URL and USERS_URL set (the containers' check does it), the suite drives those and logs in as
ADMIN_USERNAME/ADMIN_PASSWORD for admin flows; otherwise it starts its own pair on free ports.
"""

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from shared.testing import new_test_secret, postgresql_database_url  # noqa: F401  (fixtures)
from shared.testing_mail import mail_catcher  # noqa: F401  (fixture)
from tests.processes import ServiceProcess, free_port


@dataclass
class Stack:
    auth_url: str
    users_url: str
    admin_username: str
    admin_password: str
    processes: list[ServiceProcess] = field(default_factory=list)
    # The mail catcher's inbox (deploy/mailcatcher.py) the services send to; MAIL_INBOX_URL for a given stack.
    mail_inbox_url: str | None = None
    # The address the services see this suite's requests come from: E2E_CLIENT_ADDRESS for a given stack (behind
    # the compose proxy, its network's gateway, through which the published ports arrive).
    client_address: str = "127.0.0.1"

    @property
    def started_here(self) -> bool:
        return bool(self.processes)


@dataclass
class Account:
    id: int
    username: str
    password: str


def service_env(database_url: str, **overrides: str) -> dict[str, str]:  # noqa: F811
    # No mail sender unless a test gives one an SMTP server (the stack does): none writes into the repo's var/mail.
    return {
        "DATABASE_URL": database_url,
        "APP_ENV": "production",
        "JWT_SECRET": new_test_secret(),
        "MAIL_SENDER_ENABLED": "false",
        **overrides,
    }


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, logs_dir: Path) -> Iterator[Stack]:
    if os.environ.get("AUTH_URL") and os.environ.get("USERS_URL"):
        yield Stack(
            auth_url=os.environ["AUTH_URL"].rstrip("/"),
            users_url=os.environ["USERS_URL"].rstrip("/"),
            admin_username=os.environ["ADMIN_USERNAME"],
            admin_password=os.environ["ADMIN_PASSWORD"],
            mail_inbox_url=os.environ.get("MAIL_INBOX_URL"),
            client_address=os.environ.get("E2E_CLIENT_ADDRESS", "127.0.0.1"),
        )
        return
    url = request.getfixturevalue("database_url")
    admin_password = secrets.token_urlsafe(16)
    catcher = request.getfixturevalue("mail_catcher")
    env = service_env(url, ADMIN_USERNAME="e2e-admin", ADMIN_PASSWORD=admin_password, **catcher.env())
    auth = ServiceProcess("auth", free_port(), env, logs_dir / "auth.log")
    users = ServiceProcess("users", free_port(), env, logs_dir / "users.log")
    started = []
    try:
        for process in (auth, users):
            started.append(process.start())
        yield Stack(
            auth.url, users.url, "e2e-admin", admin_password, processes=started, mail_inbox_url=catcher.inbox_url
        )
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def api(stack: Stack) -> "Api":
    return Api(stack)


class Api:
    """The two services as a client sees them; each call is one real HTTP request."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = requests.Session()

    def sign_up(self, **fields: object) -> Account:
        username = str(fields.pop("username", f"e2e_{secrets.token_hex(5)}"))
        password = str(fields.pop("password", f"pw-{secrets.token_hex(8)}"))
        response = self.http.post(
            f"{self.stack.users_url}/users", json={"username": username, "password": password, **fields}
        )
        assert response.status_code == 201, response.text
        return Account(response.json()["id"], username.lower(), password)

    def login(self, username: str, password: str, **headers: str) -> requests.Response:
        return self.http.post(
            f"{self.stack.auth_url}/token", data={"username": username, "password": password}, headers=headers
        )

    def tokens(self, account: Account) -> dict:
        response = self.login(account.username, account.password)
        assert response.status_code == 200, response.text
        return response.json()

    def refresh(self, refresh_token: str) -> requests.Response:
        return self.http.post(
            f"{self.stack.auth_url}/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    def users(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, f"{self.stack.users_url}{path}", headers=headers, **kwargs)

    def admin_token(self) -> str:
        response = self.login(self.stack.admin_username, self.stack.admin_password)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With AUTH_URL/USERS_URL (containers, deploy/topology-check.sh), only the tests of that stack run.

    The others start services or tools of their own, on this machine's database: `make test` runs them already,
    and they would say nothing about the stack given.
    """
    if not (os.environ.get("AUTH_URL") and os.environ.get("USERS_URL")):
        return
    skip = pytest.mark.skip(reason="does not use the stack at AUTH_URL/USERS_URL (runs in `make test`)")
    # E2E_REPLICATED: the stack is several replicas of each service behind a load balancer (topology-check).
    replicated = os.environ.get("E2E_REPLICATED") == "1"
    skip_replicated = pytest.mark.skip(reason="needs one process per service; the stack is replicated behind a proxy")
    for item in items:
        if "stack" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
        elif replicated and item.get_closest_marker("one_replica"):
            item.add_marker(skip_replicated)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "one_replica: reads state kept per process (/metrics), so one replica per service must answer"
    )
