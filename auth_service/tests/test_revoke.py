"""POST /revoke (RFC 7009) and the users service's revocation of all of a user's refresh tokens."""

import secrets
from datetime import UTC, datetime

import pytest

from auth_service.tests.conftest import login, refresh
from shared.revocation import revoke_refresh_tokens_of_user


def login_pair(client, user) -> dict:
    response = login(client, user.username, user.password)
    assert response.status_code == 200, response.text
    return response.json()


def revoke(client, token: str):
    return client.post("/revoke", data={"token": token})


def assert_invalid_grant(response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_grant"


def test_revoked_refresh_token_no_longer_works(client, make_user):
    token = login_pair(client, make_user())["refresh_token"]

    response = revoke(client, token)

    assert response.status_code == 200, response.text
    assert_invalid_grant(refresh(client, token))


def test_revoking_an_earlier_token_of_a_family_revokes_its_later_tokens(client, make_user):
    first = login_pair(client, make_user())["refresh_token"]
    second = refresh(client, first).json()["refresh_token"]
    third = refresh(client, second).json()["refresh_token"]

    assert revoke(client, first).status_code == 200

    assert_invalid_grant(refresh(client, third))


def test_revoking_one_login_leaves_other_logins_working(client, make_user):
    user = make_user()
    revoked = login_pair(client, user)["refresh_token"]
    kept = login_pair(client, user)["refresh_token"]

    assert revoke(client, revoked).status_code == 200

    assert refresh(client, kept).status_code == 200


def test_revoking_twice_is_still_200(client, make_user):
    token = login_pair(client, make_user())["refresh_token"]

    assert revoke(client, token).status_code == 200
    assert revoke(client, token).status_code == 200


@pytest.mark.parametrize(
    "token",
    ["garbage", secrets.token_urlsafe(32), "x" * 4000, "jeton-inconnu-é", "a.b.c"],
    ids=["word", "random", "long", "non-ascii", "dotted"],
)
def test_revoking_an_unknown_token_is_200(client, token):
    response = revoke(client, token)

    assert response.status_code == 200, response.text


def test_revoking_an_access_token_is_200_and_breaks_nothing(client, make_user):
    pair = login_pair(client, make_user())

    response = revoke(client, pair["access_token"])

    assert response.status_code == 200, response.text
    assert refresh(client, pair["refresh_token"]).status_code == 200


@pytest.mark.parametrize("form", [{}, {"token_type_hint": "refresh_token"}], ids=["empty", "hint-only"])
def test_revoke_without_token_is_422(client, form):
    response = client.post("/revoke", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_revoking_all_refresh_tokens_of_a_user(client, make_user):
    user, bystander = make_user(), make_user()
    rotated = refresh(client, login_pair(client, user)["refresh_token"]).json()["refresh_token"]
    fresh = login_pair(client, user)["refresh_token"]
    bystanders_token = login_pair(client, bystander)["refresh_token"]

    with client.app.state.session_factory() as session:
        revoke_refresh_tokens_of_user(session=session, user_id=user.id, now=datetime.now(UTC))
        session.commit()

    assert_invalid_grant(refresh(client, rotated))
    assert_invalid_grant(refresh(client, fresh))
    assert refresh(client, bystanders_token).status_code == 200
    assert refresh(client, login_pair(client, user)["refresh_token"]).status_code == 200
