"""Sign-up (`POST /users`): the user returned, what is stored, conflicts, and every field's validation."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from users_service.tests.support import (
    Account,
    assert_error,
    assert_public_user,
    count_users_named,
    stored_user,
    unique_email,
    unique_username,
)

# Never expected in any response body: the 422 checks look for it.
SECRET_PASSWORD = "Sup3r-Secret-Pw-42"
SIGNUP_RACERS = 8


def sign_up(client: TestClient, **fields: object) -> Response:
    body = {"username": unique_username(), "password": SECRET_PASSWORD, **fields}
    return client.post("/users", json=body)


def test_sign_up_returns_201_with_exactly_the_public_fields(client: TestClient) -> None:
    username = unique_username("Mixed_Case")
    email = unique_email()
    response = client.post(
        "/users", json={"username": username, "password": SECRET_PASSWORD, "email": email, "full_name": "Ada L."}
    )

    assert response.status_code == 201, response.text
    body = assert_public_user(response.json())
    assert body["username"] == username.lower()
    assert body["email"] == email
    assert body["full_name"] == "Ada L."
    assert body["is_active"] is True and body["is_admin"] is False
    assert "password" not in response.text and "$argon2" not in response.text and "$2b$" not in response.text


def test_sign_up_stores_the_username_lower_case(client: TestClient) -> None:
    username = unique_username("UPPER")
    user_id = client.post("/users", json={"username": username, "password": SECRET_PASSWORD}).json()["id"]

    assert stored_user(client, user_id).username == username.lower()


def test_password_is_stored_only_as_a_salted_slow_hash(client: TestClient) -> None:
    first, second = sign_up(client).json()["id"], sign_up(client).json()["id"]
    first_hash, second_hash = stored_user(client, first).password_hash, stored_user(client, second).password_hash

    assert first_hash.startswith(("$argon2id$", "$2b$")), first_hash
    assert SECRET_PASSWORD not in first_hash
    assert first_hash != second_hash  # salted: the same password hashes differently


@pytest.mark.parametrize(
    ("first", "second"), [(str.title, str.lower), (str.lower, str.upper)], ids=["Alice-then-alice", "alice-then-ALICE"]
)
def test_username_taken_in_another_case_is_409(client: TestClient, first: Callable, second: Callable) -> None:
    username = unique_username("alice")
    assert sign_up(client, username=first(username)).status_code == 201

    assert_error(sign_up(client, username=second(username)), 409)
    assert count_users_named(client, username.lower()) == 1


@pytest.mark.parametrize(
    ("first", "second"), [(str.title, str.lower), (str.lower, str.upper)], ids=["Bob@-then-bob@", "bob@-then-BOB@"]
)
def test_email_taken_in_another_case_is_409(client: TestClient, first: Callable, second: Callable) -> None:
    email = unique_email("bob")
    assert sign_up(client, email=first(email)).status_code == 201

    assert_error(sign_up(client, email=second(email)), 409)


def test_duplicate_username_mentioning_email_is_reported_as_a_username_conflict(client: TestClient) -> None:
    # The service's own error codes tell the two 409s apart; a username containing "email" must not confuse them.
    username = unique_username("email")
    assert sign_up(client, username=username).status_code == 201

    body = assert_error(sign_up(client, username=username), 409)
    assert body.get("error") == "username_taken", body


def test_concurrent_sign_ups_of_one_username_make_exactly_one_user(client: TestClient) -> None:
    username = unique_username("race")
    start_together = threading.Barrier(SIGNUP_RACERS)

    def race(index: int) -> int:
        spelled = username.upper() if index % 2 else username
        start_together.wait()
        return client.post("/users", json={"username": spelled, "password": f"{SECRET_PASSWORD}-{index}"}).status_code

    with ThreadPoolExecutor(SIGNUP_RACERS) as pool:
        statuses = list(pool.map(race, range(SIGNUP_RACERS)))

    assert sorted(statuses) == [201] + [409] * (SIGNUP_RACERS - 1), statuses
    assert count_users_named(client, username) == 1


VALID_FIELDS = {
    "username of 3 characters": lambda: {"username": unique_username()[-3:]},
    "username of 64 characters": lambda: {"username": unique_username().ljust(64, "x")},
    "username with . - _ and digits": lambda: {"username": f"a.b-c_{unique_username()}9"},
    "password of 8 characters": lambda: {"password": "p" * 8},
    "password of 128 characters": lambda: {"password": "p" * 128},
    "password of 128 two-byte characters": lambda: {"password": "é" * 128},
    "password of 8 emoji": lambda: {"password": "\N{KEY}" * 8},
    "password with spaces only": lambda: {"password": " " * 10},
    "full_name of 200 characters": lambda: {"full_name": "ü" * 200},
    "email and full_name null": lambda: {"email": None, "full_name": None},
}


@pytest.mark.parametrize("fields", VALID_FIELDS.values(), ids=VALID_FIELDS.keys())
def test_sign_up_accepts_boundary_values(client: TestClient, fields: Callable[[], dict]) -> None:
    response = sign_up(client, **fields())

    assert response.status_code == 201, response.text
    assert_public_user(response.json())


def test_a_password_longer_than_72_bytes_counts_in_full(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    password = "é" * 80  # 160 bytes: bcrypt would silently keep only the first 72
    account = make_account(password=password)
    stored_hash = stored_user(client, account.id).password_hash
    hasher = client.app.state.hasher

    assert hasher.verify(password=password, password_hash=stored_hash)
    assert not hasher.verify(password=password.encode()[:72].decode(), password_hash=stored_hash)
    assert not hasher.verify(password=password[:-1] + "e", password_hash=stored_hash)


INVALID_FIELDS = {
    "username of 2 characters": {"username": "ab"},
    "username of 65 characters": {"username": "a" * 65},
    "username with a space": {"username": "bad name"},
    "username with @": {"username": "bad@name"},
    "username with a trailing newline": {"username": "goodname\n"},
    "username with a non-ASCII letter": {"username": "ålice"},
    "username empty": {"username": ""},
    "username not a string": {"username": 12345},
    "username missing": {"username": None},
    "password of 7 characters": {"password": "p" * 7},
    "password of 129 characters": {"password": "p" * 129},
    "password missing": {"password": None},
    "email without @": {"email": "not-an-email"},
    "email with two @": {"email": "two@@example.com"},
    "email without domain": {"email": "someone@"},
    "full_name of 201 characters": {"full_name": "f" * 201},
    "full_name with a NUL byte": {"full_name": "nul\x00name"},
    "unknown field": {"nickname": "x"},
    "is_admin at sign-up": {"is_admin": True},
}


@pytest.mark.parametrize("fields", INVALID_FIELDS.values(), ids=INVALID_FIELDS.keys())
def test_sign_up_refuses_invalid_fields_with_422_without_echoing_the_password(client: TestClient, fields: dict) -> None:
    body = {"username": unique_username(), "password": SECRET_PASSWORD, **fields}
    body = {name: value for name, value in body.items() if value is not None}

    response = client.post("/users", json=body)

    assert_error(response, 422)
    sent_password = body.get("password", SECRET_PASSWORD)
    assert sent_password not in response.text and SECRET_PASSWORD not in response.text
