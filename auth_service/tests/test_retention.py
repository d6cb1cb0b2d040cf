"""Retention (shared/retention.py): what each rule deletes and keeps, reuse detection inside and after the retention,
the background thread's bound and its silence while idle, and passes of two workers at once.

On a database of its own, so that counts of deleted rows are this module's rows only.
"""

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine, create_engine, func, insert, select, text

from auth_service.app import create_app
from auth_service.tests.conftest import assert_invalid_grant, refresh
from shared.models import LoginFailure, OneTimeToken, OutboxEmail, RefreshToken, User, UserSession, utc_now
from shared.retention import run_retention_pass
from shared.settings import Settings
from shared.testing import settings_for_tests

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def engine(own_postgres_database: str) -> Iterator[Engine]:
    engine = create_engine(own_postgres_database)
    yield engine
    engine.dispose()


@pytest.fixture
def make_app(own_postgres_database: str) -> Iterator[Callable[..., TestClient]]:
    """An auth app on the module's database; retention off unless the test turns it on."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        values = {"retention_interval_seconds": 0, "mail_sender_enabled": False, **overrides}
        client = TestClient(create_app(settings_for_tests(own_postgres_database, **values)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def retention_settings(own_postgres_database: str, **overrides: object) -> Settings:
    return settings_for_tests(own_postgres_database, **overrides)


def new_user(engine: Engine) -> int:
    with engine.begin() as connection:
        return connection.execute(
            insert(User.__table__).returning(User.id),
            {
                "username": f"keep_{secrets.token_hex(5)}",
                "password_hash": "not-a-hash",
                "is_active": True,
                "is_admin": False,
                "token_version": 0,
                "created_at": utc_now(),
                "updated_at": utc_now(),
            },
        ).scalar_one()


def new_session(engine: Engine, *, user_id: int, expires_at: datetime, ended_at: datetime | None = None) -> str:
    session_id = str(uuid.uuid4())
    with engine.begin() as connection:
        connection.execute(
            insert(UserSession.__table__),
            {
                "id": session_id,
                "user_id": user_id,
                "created_at": expires_at - 14 * DAY,
                "last_used_at": expires_at - 14 * DAY,
                "expires_at": expires_at,
                "ended_at": ended_at,
            },
        )
    return session_id


def new_refresh_token(
    engine: Engine,
    *,
    session_id: str,
    user_id: int,
    expires_at: datetime,
    used_at: datetime | None = None,
    revoked_at: datetime | None = None,
) -> str:
    """Stores a refresh token as the auth service does (its SHA-256) and returns the token itself."""
    token = secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(
            insert(RefreshToken.__table__),
            {
                "token_hash": hashlib.sha256(token.encode()).hexdigest(),
                "family_id": session_id,
                "user_id": user_id,
                "issued_at": expires_at - 14 * DAY,
                "expires_at": expires_at,
                "used_at": used_at,
                "revoked_at": revoked_at,
            },
        )
    return token


def token_exists(engine: Engine, token: str) -> bool:
    digest = hashlib.sha256(token.encode()).hexdigest()
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).where(RefreshToken.token_hash == digest)) == 1


def session_exists(engine: Engine, session_id: str) -> bool:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).where(UserSession.id == session_id)) == 1


def new_one_time_token(engine: Engine, *, user_id: int, expires_at: datetime, used_at: datetime | None = None) -> int:
    with engine.begin() as connection:
        return connection.execute(
            insert(OneTimeToken.__table__).returning(OneTimeToken.id),
            {
                "token_hash": secrets.token_hex(32),
                "purpose": "password_reset",
                "user_id": user_id,
                "email": "someone@example.com",
                "created_at": expires_at - HOUR,
                "expires_at": expires_at,
                "used_at": used_at,
            },
        ).scalar_one()


def new_mail(engine: Engine, *, created_at: datetime, sent_at: datetime | None = None, dead_at=None) -> int:
    with engine.begin() as connection:
        return connection.execute(
            insert(OutboxEmail.__table__).returning(OutboxEmail.id),
            {
                "message_id": f"<{uuid.uuid4()}@example.com>",
                "kind": "password_reset",
                "recipient": "someone@example.com",
                "subject": "subject",
                "body_text": "body",
                "created_at": created_at,
                "next_attempt_at": created_at,
                "attempts": 1,
                "sent_at": sent_at,
                "dead_at": dead_at,
            },
        ).scalar_one()


def new_login_failure(engine: Engine, *, occurred_at: datetime) -> int:
    with engine.begin() as connection:
        return connection.execute(
            insert(LoginFailure.__table__).returning(LoginFailure.id),
            {"username": "someone", "address": "192.0.2.1", "occurred_at": occurred_at, "pending": False},
        ).scalar_one()


def ids_left(engine: Engine, model: type, ids: list[int]) -> set[int]:
    with engine.connect() as connection:
        return set(connection.scalars(select(model.id).where(model.id.in_(ids))))


def deleted_metric(table: str) -> float:
    return REGISTRY.get_sample_value("retention_rows_deleted_total", {"table": table}) or 0.0


def test_each_rule_deletes_what_is_past_its_retention_and_keeps_the_rest(
    engine: Engine, own_postgres_database: str
) -> None:
    settings = retention_settings(own_postgres_database)  # the defaults: 7 days, 1 day, 7 days, the 15-minute window
    now = utc_now()
    user_id = new_user(engine)
    retention = timedelta(seconds=settings.ended_session_retention_seconds)
    ended_long_ago = new_session(engine, user_id=user_id, expires_at=now + DAY, ended_at=now - retention - HOUR)
    ended_tokens = [
        new_refresh_token(engine, session_id=ended_long_ago, user_id=user_id, expires_at=now + DAY, revoked_at=now)
        for _ in range(3)
    ]
    expired_long_ago = new_session(engine, user_id=user_id, expires_at=now - retention - HOUR)
    expired_token = new_refresh_token(
        engine, session_id=expired_long_ago, user_id=user_id, expires_at=now - retention - HOUR
    )
    ended_lately = new_session(engine, user_id=user_id, expires_at=now - DAY, ended_at=now - DAY)
    # Revoked and long expired, but its session ended lately: it goes with its session, not before.
    revoked_in_recent_family = new_refresh_token(
        engine, session_id=ended_lately, user_id=user_id, expires_at=now - 30 * DAY, revoked_at=now - DAY
    )
    live = new_session(engine, user_id=user_id, expires_at=now + 14 * DAY)
    retired_long_ago = new_refresh_token(
        engine, session_id=live, user_id=user_id, expires_at=now - retention - HOUR, used_at=now - 21 * DAY
    )
    retired_lately = new_refresh_token(
        engine, session_id=live, user_id=user_id, expires_at=now - retention + HOUR, used_at=now - 14 * DAY
    )
    live_token = new_refresh_token(engine, session_id=live, user_id=user_id, expires_at=now + 14 * DAY)
    one_time = [
        new_one_time_token(engine, user_id=user_id, expires_at=now - DAY - HOUR),
        new_one_time_token(engine, user_id=user_id, expires_at=now - DAY - HOUR, used_at=now - 2 * DAY),
        new_one_time_token(engine, user_id=user_id, expires_at=now - HOUR, used_at=now - 2 * HOUR),
        new_one_time_token(engine, user_id=user_id, expires_at=now + HOUR),
    ]
    mails = [
        new_mail(engine, created_at=now - 8 * DAY, sent_at=now - 8 * DAY),
        new_mail(engine, created_at=now - 9 * DAY, dead_at=now - 8 * DAY),
        new_mail(engine, created_at=now - 6 * DAY, sent_at=now - 6 * DAY),
        new_mail(engine, created_at=now - 30 * DAY),  # neither sent nor dead yet: never deleted
    ]
    window = timedelta(seconds=settings.login_failure_window_seconds)
    failures = [
        new_login_failure(engine, occurred_at=now - window - HOUR),
        new_login_failure(engine, occurred_at=now - window + timedelta(minutes=1)),
    ]
    metric_before = deleted_metric("refresh_tokens")

    deleted = run_retention_pass(engine=engine, settings=settings, now=now)

    assert not session_exists(engine, ended_long_ago) and not any(token_exists(engine, t) for t in ended_tokens)
    assert not session_exists(engine, expired_long_ago) and not token_exists(engine, expired_token)
    assert session_exists(engine, ended_lately) and token_exists(engine, revoked_in_recent_family)
    assert session_exists(engine, live) and not token_exists(engine, retired_long_ago)
    assert token_exists(engine, retired_lately) and token_exists(engine, live_token)
    assert ids_left(engine, OneTimeToken, one_time) == set(one_time[2:])
    assert ids_left(engine, OutboxEmail, mails) == set(mails[2:])
    assert ids_left(engine, LoginFailure, failures) == {failures[1]}
    assert deleted == {
        "sessions": 2,
        "refresh_tokens": 5,
        "one_time_tokens": 2,
        "outbox_emails": 2,
        "login_failures": 1,
    }
    assert deleted_metric("refresh_tokens") - metric_before == 5
    assert run_retention_pass(engine=engine, settings=settings, now=now) == dict.fromkeys(deleted, 0)


def login_and_refresh(client: TestClient, engine: Engine, times: int) -> list[str]:
    """The refresh tokens of one login, oldest first: all retired but the last."""
    user_id = new_user(engine)
    session_id = new_session(engine, user_id=user_id, expires_at=utc_now() + 14 * DAY)
    tokens = [new_refresh_token(engine, session_id=session_id, user_id=user_id, expires_at=utc_now() + 14 * DAY)]
    for _ in range(times):
        response = refresh(client, tokens[-1])
        assert response.status_code == 200, response.text
        tokens.append(response.json()["refresh_token"])
    return tokens


def test_a_retired_token_replayed_inside_the_retention_still_revokes_its_family(
    make_app: Callable[..., TestClient], engine: Engine, own_postgres_database: str
) -> None:
    client = make_app()
    settings = client.app.state.settings
    tokens = login_and_refresh(client, engine, times=2)
    # A pass long after the tokens' expiry, but inside the retention after it: they are all kept.
    later = utc_now() + timedelta(seconds=settings.refresh_token_ttl_seconds + settings.ended_session_retention_seconds)
    run_retention_pass(engine=engine, settings=settings, now=later - HOUR)
    assert all(token_exists(engine, token) for token in tokens)

    assert_invalid_grant(refresh(client, tokens[0]))

    assert_invalid_grant(refresh(client, tokens[-1]))


def test_a_replay_of_a_token_deleted_after_its_retention_is_unknown_and_revokes_nothing(
    make_app: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_app()
    settings = client.app.state.settings
    retention = timedelta(seconds=settings.ended_session_retention_seconds)
    now = utc_now()
    user_id = new_user(engine)
    session_id = new_session(engine, user_id=user_id, expires_at=now + 14 * DAY)
    old = new_refresh_token(
        engine, session_id=session_id, user_id=user_id, expires_at=now - retention - HOUR, used_at=now - 20 * DAY
    )
    current = new_refresh_token(engine, session_id=session_id, user_id=user_id, expires_at=now + 14 * DAY)
    run_retention_pass(engine=engine, settings=settings, now=now)
    assert not token_exists(engine, old)

    assert_invalid_grant(refresh(client, old))

    response = refresh(client, current)
    assert response.status_code == 200, response.text


def test_the_thread_deletes_within_a_bound_and_sends_no_query_while_the_worker_is_idle(
    make_app: Callable[..., TestClient], engine: Engine
) -> None:
    interval = 0.3
    client = make_app(retention_interval_seconds=interval, ended_session_retention_seconds=1)
    # The first pass may come whenever the app used the database on its way up; then it is idle.
    time.sleep(3 * interval)
    user_id = new_user(engine)
    session_id = new_session(engine, user_id=user_id, expires_at=utc_now() + DAY, ended_at=utc_now() - 2 * HOUR)

    time.sleep(5 * interval)
    assert session_exists(engine, session_id), "a pass ran although no request used the database"

    assert_invalid_grant(refresh(client, secrets.token_urlsafe(32)))  # a request that reads the database
    started = time.monotonic()
    while session_exists(engine, session_id):
        assert time.monotonic() - started < 10 * interval + 5, "not deleted within the bound"
        time.sleep(0.05)


def insert_expired_rows(engine: Engine, *, count: int, now: datetime) -> dict[str, int]:
    """`count` rows past their retention in every table (two refresh tokens a session), in one statement each."""
    user_id = new_user(engine)
    long_ago = now - 60 * DAY
    statements = [
        "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at)"
        " SELECT :prefix || g, :user_id, :long_ago, :long_ago, :long_ago FROM generate_series(1, :count) AS g",
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at)"
        " SELECT md5(:prefix || g), :prefix || (g % :count + 1), :user_id, :long_ago, :long_ago"
        " FROM generate_series(1, 2 * :count) AS g",
        "INSERT INTO one_time_tokens (token_hash, purpose, user_id, email, created_at, expires_at)"
        " SELECT md5(:prefix || g), 'password_reset', :user_id, 'a@example.com', :long_ago, :long_ago"
        " FROM generate_series(1, :count) AS g",
        "INSERT INTO outbox_emails (message_id, kind, recipient, subject, body_text, created_at, next_attempt_at,"
        " attempts, sent_at) SELECT :prefix || g, 'k', 'a@example.com', 's', 'b', :long_ago, :long_ago, 1, :long_ago"
        " FROM generate_series(1, :count) AS g",
        "INSERT INTO login_failures (username, address, occurred_at, pending)"
        " SELECT 'someone', '192.0.2.1', :long_ago, false FROM generate_series(1, :count) AS g",
    ]
    parameters = {"prefix": f"bulk-{secrets.token_hex(4)}-", "user_id": user_id, "long_ago": long_ago, "count": count}
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), parameters)
    expected = {"sessions": count, "refresh_tokens": 2 * count}
    return expected | {"one_time_tokens": count, "outbox_emails": count, "login_failures": count}


def test_two_passes_at_once_delete_every_row_exactly_once_without_an_error(
    engine: Engine, own_postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = utc_now()
    # Earlier tests' rows first, so that the counts below are this test's.
    settings = retention_settings(own_postgres_database, retention_batch_size=100)
    run_retention_pass(engine=engine, settings=settings, now=now)
    expected = insert_expired_rows(engine, count=3_000, now=now)
    engines = [create_engine(own_postgres_database) for _ in range(2)]
    results: list[dict[str, int]] = []
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def one_pass(worker_engine: Engine) -> None:
        try:
            start.wait()
            results.append(run_retention_pass(engine=worker_engine, settings=settings, now=now))
        except BaseException as error:  # noqa: BLE001
            failures.append(error)

    threads = [threading.Thread(target=one_pass, args=(worker_engine,)) for worker_engine in engines]
    with caplog.at_level("WARNING"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for worker_engine in engines:
        worker_engine.dispose()

    assert failures == [] and len(results) == 2
    assert [record.getMessage() for record in caplog.records if record.levelname != "INFO"] == []
    assert {table: results[0][table] + results[1][table] for table in expected} == expected
    assert run_retention_pass(engine=engine, settings=settings, now=now) == dict.fromkeys(expected, 0)
