"""Liveness and readiness, and 503 (never 500) with Retry-After on every request that needs an unreachable database."""

import secrets

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from auth_service.tests.conftest import login
from shared.testing import admin_database_url, drop_database, terminate_backends

DATABASE_DOWN_URL = "postgresql+psycopg2://postgres@127.0.0.1:1/x"
NEEDS_THE_DATABASE = {
    "readyz": ("GET", "/readyz", None),
    "password-grant": ("POST", "/token", {"username": "someone", "password": "some password"}),
    "refresh-grant": ("POST", "/token", {"grant_type": "refresh_token", "refresh_token": "some-refresh-token"}),
    "revoke": ("POST", "/revoke", {"token": "some-refresh-token"}),
}


@pytest.fixture
def database_down(make_client):
    return make_client(url=DATABASE_DOWN_URL, raise_server_exceptions=False)


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_answer_200(client, path):
    response = client.get(path)

    assert response.status_code == 200, response.text


def test_liveness_does_not_need_the_database(database_down):
    assert database_down.get("/healthz").status_code == 200


@pytest.mark.parametrize(("method", "path", "form"), list(NEEDS_THE_DATABASE.values()), ids=list(NEEDS_THE_DATABASE))
def test_unreachable_database_is_503_with_retry_after(database_down, method, path, form):
    response = database_down.request(method, path, data=form)

    assert response.status_code == 503, response.text
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_readiness_recovers_without_a_restart_when_the_database_appears(make_client, settings):
    if settings.database_url.startswith("sqlite"):
        pytest.skip("a database server that appears later is a PostgreSQL matter")
    admin_url = admin_database_url()
    url = make_url(admin_url).set(database=f"test_{secrets.token_hex(6)}").render_as_string(hide_password=False)
    late = make_client(url=url)
    try:
        assert late.get("/readyz").status_code == 503

        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{make_url(url).database}"'))
        admin.dispose()

        assert late.get("/readyz").status_code == 200
    finally:
        late.app.state.engine.dispose()
        drop_database(admin_url, url)


def test_service_recovers_when_its_pooled_connections_are_killed(make_client, make_user, settings):
    if settings.database_url.startswith("sqlite"):
        pytest.skip("pg_terminate_backend is a PostgreSQL matter")
    app_client = make_client()
    user = make_user()
    assert login(app_client, user.username, user.password).status_code == 200
    engine = app_client.app.state.engine
    pooled = [engine.connect() for _ in range(engine.pool.checkedin())]
    backend_ids = [connection.execute(text("SELECT pg_backend_pid()")).scalar_one() for connection in pooled]
    assert backend_ids
    for connection in pooled:
        connection.close()

    terminate_backends(*backend_ids)

    assert app_client.get("/readyz").status_code == 200
    assert login(app_client, user.username, user.password).status_code == 200
