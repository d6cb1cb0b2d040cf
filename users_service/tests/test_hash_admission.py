"""Requests that would hash a password are refused at once (503, Retry-After) when the worker's slots are taken."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from shared.admission import HashingAdmission
from users_service.tests.support import Account, assert_error, unique_username


@pytest.fixture
def all_slots_taken(client: TestClient) -> Iterator[HashingAdmission]:
    admission: HashingAdmission = client.app.state.hashing_admission
    taken = 0
    while admission.try_enter():
        taken += 1
    try:
        yield admission
    finally:
        for _ in range(taken):
            admission.leave()


def assert_shed(response) -> None:
    assert_error(response, 503)
    assert int(response.headers["Retry-After"]) >= 1


def test_sign_up_and_password_changes_are_shed_and_the_rest_is_not(
    client: TestClient, admin: Account, all_slots_taken: HashingAdmission
) -> None:
    account = admin
    new_password = {"password": "new password 123", "current_password": admin.password}

    assert_shed(client.post("/users", json={"username": unique_username(), "password": "password-123"}))
    assert_shed(client.patch("/users/me", json=new_password, headers=account.headers))
    assert_shed(client.patch(f"/users/{account.id}", json={"password": "new password 123"}, headers=account.headers))
    assert client.patch("/users/me", json={"full_name": "Still Served"}, headers=account.headers).status_code == 200
    assert client.get("/users/me", headers=account.headers).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_slot_is_given_back_after_each_request(client: TestClient) -> None:
    admission: HashingAdmission = client.app.state.hashing_admission
    before = admission.in_flight

    for _ in range(3):
        response = client.post("/users", json={"username": unique_username(), "password": "password-123"})
        assert response.status_code == 201, response.text
    client.post("/users", json={"username": "x", "password": "short"})  # 422

    assert admission.in_flight == before
