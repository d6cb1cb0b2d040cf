"""Fixtures of the fuzz suites: their own database and their own pair of real gunicorn services.

The fuzzers create users with random names and send every kind of garbage; they get a database
of their own so nothing they leave behind reaches the other end-to-end tests.
"""

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import Engine

from shared.models import User
from shared.passwords import PasswordHasher
from shared.testing import (
    admin_database_url,
    migrated_database,
    new_test_secret,
    postgres_answers,
    settings_for_tests,
)
from shared.tokens import AccessTokenIssuer
from tests.processes import ServiceProcess, free_port

FUZZ_PASSWORD = "fuzz-password-1"
# What an exception that escaped the error handlers leaves in the services' logs (plain or JSON lines).
UNHANDLED_MARKERS = (
    "Traceback (most recent call last)",
    "Exception in ASGI application",
    "unhandled ",
    "WORKER TIMEOUT",
)


def unhandled_lines(*processes: ServiceProcess) -> list[str]:
    text = "".join(process.log_text() for process in processes)
    return [line for line in text.splitlines() if any(marker in line for marker in UNHANDLED_MARKERS)]


@dataclass
class FuzzStack:
    auth: ServiceProcess
    users: ServiceProcess
    database_url: str
    engine: Engine
    issuer: AccessTokenIssuer
    password_hash: str

    @property
    def auth_url(self) -> str:
        return self.auth.url

    @property
    def users_url(self) -> str:
        return self.users.url

    def new_user(self, *, is_admin: bool = False) -> tuple[int, str]:
        """A fresh active user straight in the database (password FUZZ_PASSWORD); its id and username."""
        username = f"fz_{secrets.token_hex(6)}"
        with self.engine.begin() as connection:
            user_id = connection.execute(
                insert(User)
                .values(
                    username=username,
                    password_hash=self.password_hash,
                    is_active=True,
                    is_admin=is_admin,
                    token_version=0,
                )
                .returning(User.id)
            ).scalar_one()
        return user_id, username

    def token_for(self, user_id: int) -> str:
        """An access token exactly as the auth service signs one (same key, issuer, audience, kid)."""
        return self.issuer.issue(user_id=user_id, token_version=0).token

    def fresh_token(self, *, is_admin: bool = False) -> str:
        user_id, _ = self.new_user(is_admin=is_admin)
        return self.token_for(user_id)


@pytest.fixture(scope="session")
def fuzz_database_url() -> Iterator[str]:
    admin_url = admin_database_url()
    if not postgres_answers(admin_url):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and no PostgreSQL answers at TEST_DATABASE_URL")
        pytest.skip("the fuzz suites need PostgreSQL (TEST_DATABASE_URL)")
    with migrated_database(admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def fuzz_stack(fuzz_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    logs = tmp_path_factory.mktemp("fuzz-logs")
    secret = new_test_secret()
    env = {
        "DATABASE_URL": fuzz_database_url,
        "APP_ENV": "production",
        "JWT_SECRET": secret,
        # Every fuzzed login comes from 127.0.0.1: the per-address limit (50) would soon turn every
        # /token answer into 429. The per-username limit stays at its default and gets fuzzed.
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000",
    }
    settings = settings_for_tests(fuzz_database_url, jwt_secret=secret)
    started: list[ServiceProcess] = []
    engine = create_engine(fuzz_database_url)
    try:
        for service in ("auth", "users"):
            started.append(ServiceProcess(service, free_port(), env, logs / f"{service}.log").start())
        yield FuzzStack(
            auth=started[0],
            users=started[1],
            database_url=fuzz_database_url,
            engine=engine,
            issuer=AccessTokenIssuer(settings),
            password_hash=PasswordHasher(settings).hash(FUZZ_PASSWORD),
        )
    finally:
        for process in started:
            process.stop()
        engine.dispose()
