"""`GET /users` above 100,000 users: `total` is the planner's estimate, flagged `total_is_exact: false`.

On a database of its own: the 100,001 users inserted here must not change what the rest of the suite counts.
"""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.listing import EXACT_TOTAL_LIMIT
from users_service.tests.support import ADMIN_PASSWORD, bearer

MANY_USERS = EXACT_TOTAL_LIMIT + 1


@pytest.fixture(scope="module")
def app_client(own_postgres_database: str) -> Iterator[TestClient]:
    settings = settings_for_tests(own_postgres_database, admin_username="estimate-admin", admin_password=ADMIN_PASSWORD)
    with TestClient(create_app(settings)) as client:
        client.headers.update(bearer(AccessTokenIssuer(settings).issue(user_id=1, token_version=0).token))
        yield client


def insert_users(database_url: str, count: int) -> None:
    """`count` users in one statement, then ANALYZE (autovacuum would, a little later)."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (username, password_hash, is_active, is_admin, email_verified, token_version,"
                " created_at, updated_at)"
                " SELECT 'many_' || g, 'not-a-hash', true, false, false, 0, now(), now()"
                " FROM generate_series(1, :count) AS g"
            ),
            {"count": count},
        )
        connection.execute(text("ANALYZE users"))
    engine.dispose()


def test_total_is_exact_while_small_and_an_estimate_flagged_so_above_the_limit(
    app_client: TestClient, own_postgres_database: str
) -> None:
    small = app_client.get("/users", params={"limit": 1})
    assert small.status_code == 200, small.text
    assert small.json()["total"] == 1 and small.json()["total_is_exact"] is True

    insert_users(own_postgres_database, MANY_USERS)
    response = app_client.get("/users", params={"limit": 1})

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total_is_exact"] is False
    assert abs(page["total"] - (MANY_USERS + 1)) <= MANY_USERS // 20, page["total"]
    deep = app_client.get("/users", params={"limit": 2, "after": MANY_USERS - 1}).json()
    assert [user["id"] for user in deep["items"]] == [MANY_USERS, MANY_USERS + 1]
    assert deep["next_after"] is None and deep["total_is_exact"] is False
