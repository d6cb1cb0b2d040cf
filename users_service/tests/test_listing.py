"""`GET /users` for admins: the page's shape, its bounds on `limit`/`offset`, and that paging walks the table."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from users_service.tests.support import Account, assert_error, assert_public_user, count_users

DEFAULT_LIMIT = 50


def list_users(client: TestClient, admin: Account, **query: object) -> dict:
    response = client.get("/users", params=query, headers=admin.headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_page_has_items_total_limit_and_offset_with_defaults(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    make_account()

    page = list_users(client, admin)

    assert set(page) == {"items", "total", "limit", "offset"}
    assert (page["limit"], page["offset"]) == (DEFAULT_LIMIT, 0)
    assert page["total"] == count_users(client)
    assert 1 <= len(page["items"]) <= DEFAULT_LIMIT
    assert len(page["items"]) == min(DEFAULT_LIMIT, page["total"])
    for item in page["items"]:
        assert_public_user(item)


@pytest.mark.parametrize("limit", [1, 100])
def test_limit_bounds_are_accepted(client: TestClient, admin: Account, limit: int) -> None:
    page = list_users(client, admin, limit=limit)

    assert page["limit"] == limit
    assert len(page["items"]) <= limit


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": 10**30},
        {"limit": "ten"},
        {"offset": -1},
        {"offset": 10**30},
        {"offset": "first"},
    ],
    ids=str,
)
def test_out_of_range_paging_is_422(client: TestClient, admin: Account, query: dict) -> None:
    assert_error(client.get("/users", params=query, headers=admin.headers), 422)


def test_offset_skips_and_limit_caps(client: TestClient, admin: Account, make_account: Callable[..., Account]) -> None:
    for _ in range(3):
        make_account()
    first_three = [user["id"] for user in list_users(client, admin, limit=3)["items"]]

    second_page = list_users(client, admin, limit=2, offset=1)

    assert len(first_three) == 3
    assert [user["id"] for user in second_page["items"]] == first_three[1:3]
    assert (second_page["limit"], second_page["offset"]) == (2, 1)


def test_an_offset_past_the_end_gives_an_empty_page_with_the_total(client: TestClient, admin: Account) -> None:
    total = count_users(client)

    page = list_users(client, admin, offset=total + 10)

    assert page["items"] == [] and page["total"] == total
