"""`GET /users` for admins: the page's shape, its bounds on `limit`, `offset` and `after`, and walks over the table."""

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

    assert set(page) == {"items", "total", "total_is_exact", "limit", "offset", "next_after"}
    assert (page["limit"], page["offset"]) == (DEFAULT_LIMIT, 0)
    assert page["total"] == count_users(client) and page["total_is_exact"] is True
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
        {"after": -1},
        {"after": 10**30},
        {"after": "last"},
        {"after": 1, "offset": 1},
        {"after": 0, "offset": 5},
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


def ids_of(page: dict) -> list[int]:
    return [user["id"] for user in page["items"]]


def test_after_pages_by_id_and_next_after_is_the_last_id_while_there_is_more(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    for _ in range(3):
        make_account()
    all_ids = ids_of(list_users(client, admin, limit=100))
    assert all_ids == sorted(all_ids)

    first = list_users(client, admin, limit=2)
    second = list_users(client, admin, limit=2, after=first["next_after"])

    assert first["next_after"] == ids_of(first)[-1] == all_ids[1]
    assert ids_of(second) == [user_id for user_id in all_ids if user_id > first["next_after"]][:2]
    assert (second["limit"], second["offset"]) == (2, 0)


def test_next_after_is_null_on_the_last_page_by_after_and_by_offset(client: TestClient, admin: Account) -> None:
    total = count_users(client)
    last_id = max(ids_of(list_users(client, admin, limit=100, offset=max(0, total - 100))))

    assert list_users(client, admin, limit=1, after=last_id - 1)["next_after"] is None
    assert list_users(client, admin, limit=1, after=last_id)["items"] == []
    assert list_users(client, admin, limit=1, offset=total - 1)["next_after"] is None
    assert list_users(client, admin, limit=1, offset=0)["next_after"] is not None or total == 1


def test_offset_and_after_together_are_422_naming_offset(client: TestClient, admin: Account) -> None:
    body = assert_error(client.get("/users", params={"after": 3, "offset": 2}, headers=admin.headers), 422)

    assert body["detail"][0]["loc"] == ["query", "offset"]


def test_walking_by_after_while_users_come_and_go_skips_and_repeats_no_one(
    client: TestClient, admin: Account, make_account: Callable[..., Account]
) -> None:
    # The walk starts just before this test's users, so what other tests left in the suite's table is no matter.
    start = min(make_account().id for _ in range(12)) - 1
    before: set[int] = set()
    page = {"next_after": start}
    while page["next_after"] is not None:
        page = list_users(client, admin, limit=100, after=page["next_after"])
        before.update(ids_of(page))
    seen: list[int] = []
    deleted: set[int] = set()
    added: set[int] = set()
    page = list_users(client, admin, limit=3, after=start)
    while True:
        seen.extend(ids_of(page))
        # Between pages: one user not yet seen and one already seen are deleted, one is added.
        already_seen = next((user_id for user_id in seen if user_id not in deleted | {admin.id}), None)
        for victim in (max(before - deleted - set(seen), default=None), already_seen):
            if victim is not None and victim != admin.id:
                response = client.delete(f"/users/{victim}", headers=admin.headers)
                assert response.status_code == 204, response.text
                deleted.add(victim)
        added.add(make_account().id)
        if page["next_after"] is None:
            break
        page = list_users(client, admin, limit=3, after=page["next_after"])

    assert len(seen) == len(set(seen)), "a user came twice"
    assert seen == sorted(seen)
    kept_throughout = before - deleted
    assert kept_throughout <= set(seen), f"users missed: {sorted(kept_throughout - set(seen))}"
    # Users added meanwhile get higher ids than any before them, so the walk reaches all but the last one added.
    assert (added - {max(added)}) <= set(seen)
