"""Email verification: a mail on sign-up and on every email change, resend, confirm; delivered to a real SMTP server."""

import json
import secrets
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.models import OneTimeToken, OutboxEmail
from shared.one_time_tokens import EMAIL_VERIFICATION, PASSWORD_RESET, new_token
from shared.settings import Settings
from shared.testing import settings_for_tests
from shared.testing_mail import MailCatcher, add_token, mail_catcher  # noqa: F401  (fixture)
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import Account, assert_public_user, unique_email, unique_username

SUBJECT = "Confirm your email address"


@pytest.fixture(scope="module")
def mail_settings(database_url: str, mail_catcher: MailCatcher) -> Settings:  # noqa: F811
    return settings_for_tests(database_url, **mail_catcher.settings())


@pytest.fixture(scope="module")
def mail_client(mail_settings: Settings) -> Iterator[TestClient]:
    """A users app whose mail sender delivers to the session's SMTP server."""
    with TestClient(create_app(mail_settings)) as test_client:
        yield test_client


@pytest.fixture
def sign_up(mail_client: TestClient, mail_settings: Settings) -> Callable[..., tuple[Account, dict]]:
    issuer = AccessTokenIssuer(mail_settings)

    def make(**fields: object) -> tuple[Account, dict]:
        username, password = unique_username(), f"pw-{secrets.token_hex(8)}"
        response = mail_client.post("/users", json={"username": username, "password": password, **fields})
        assert response.status_code == 201, response.text
        body = response.json()
        token = issuer.issue(user_id=body["id"], token_version=0).token
        return Account(id=body["id"], username=username, password=password, token=token), body

    return make


def confirm(client: TestClient, token: str):
    # json.dumps escapes a lone surrogate as JSON allows; the client's own encoder refuses one.
    body = json.dumps({"token": token})
    return client.post("/email-verification/confirm", content=body, headers={"Content-Type": "application/json"})


def assert_invalid_token(response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_token" and response.json()["detail"]


def verification_tokens_of(client: TestClient, user_id: int) -> int:
    with client.app.state.session_factory() as session:
        query = select(func.count()).select_from(OneTimeToken).where(OneTimeToken.user_id == user_id)
        return session.scalar(query.where(OneTimeToken.purpose == EMAIL_VERIFICATION))


def test_sign_up_mails_a_token_that_verifies_the_address_once(mail_client, sign_up, mail_catcher) -> None:  # noqa: F811
    email = unique_email()
    account, body = sign_up(email=email)
    assert body["email_verified"] is False

    [mail] = mail_catcher.wait_for(email, subject=SUBJECT)
    assert account.username in mail.text and mail.html is not None and mail.token in mail.html
    response = confirm(mail_client, mail.token)

    assert response.status_code == 200, response.text
    assert assert_public_user(response.json())["email_verified"] is True and response.json()["id"] == account.id
    assert mail_client.get("/users/me", headers=account.headers).json()["email_verified"] is True
    assert_invalid_token(confirm(mail_client, mail.token))


def test_a_sign_up_without_an_email_queues_no_mail(mail_client, sign_up) -> None:
    account, body = sign_up()

    assert body["email_verified"] is False
    assert verification_tokens_of(mail_client, account.id) == 0


def test_an_email_change_unverifies_and_only_the_new_address_token_works(mail_client, sign_up, mail_catcher) -> None:  # noqa: F811
    old_email, new_email = unique_email("old"), unique_email("new")
    account, _ = sign_up(email=old_email)
    [old_mail] = mail_catcher.wait_for(old_email)
    assert confirm(mail_client, old_mail.token).status_code == 200
    second_old_token = add_token(mail_client, user_id=account.id, email=old_email, purpose=EMAIL_VERIFICATION)

    changed = mail_client.patch("/users/me", json={"email": new_email}, headers=account.headers)

    assert changed.status_code == 200 and changed.json()["email_verified"] is False
    [new_mail] = mail_catcher.wait_for(new_email, subject=SUBJECT)
    assert_invalid_token(confirm(mail_client, second_old_token))
    assert confirm(mail_client, new_mail.token).json()["email_verified"] is True


def test_setting_the_same_address_again_keeps_it_verified_and_sends_nothing(mail_client, sign_up, mail_catcher) -> None:  # noqa: F811
    email = unique_email()
    account, _ = sign_up(email=email)
    assert confirm(mail_client, mail_catcher.wait_for(email)[0].token).status_code == 200

    response = mail_client.patch("/users/me", json={"email": email.upper()}, headers=account.headers)

    assert response.status_code == 200 and response.json()["email_verified"] is True
    assert verification_tokens_of(mail_client, account.id) == 1


def test_resend_sends_at_most_one_mail_a_minute(mail_client, sign_up) -> None:
    account, _ = sign_up()
    assert mail_client.patch("/users/me", json={"email": unique_email()}, headers=account.headers).status_code == 200
    assert verification_tokens_of(mail_client, account.id) == 1
    # The mail of the change went less than 60 s ago: 202, nothing more sent.
    response = mail_client.post("/users/me/email-verification", headers=account.headers)

    assert response.status_code == 202 and response.json() == {}
    assert verification_tokens_of(mail_client, account.id) == 1


def test_resend_after_a_minute_sends_another_mail(mail_client, sign_up, mail_catcher) -> None:  # noqa: F811
    email = unique_email()
    account, _ = sign_up(email=email)
    mail_catcher.wait_for(email)
    with mail_client.app.state.session_factory() as session:
        for token in session.scalars(select(OneTimeToken).where(OneTimeToken.user_id == account.id)):
            token.created_at = token.created_at.replace(year=token.created_at.year - 1)
        session.commit()

    response = mail_client.post("/users/me/email-verification", headers=account.headers)

    assert response.status_code == 202
    second = mail_catcher.wait_for(email, count=2)[-1]
    assert confirm(mail_client, second.token).status_code == 200


def test_resend_is_409_without_an_email_or_when_already_verified(mail_client, sign_up, mail_catcher) -> None:  # noqa: F811
    no_email, _ = sign_up()
    response = mail_client.post("/users/me/email-verification", headers=no_email.headers)
    assert response.status_code == 409 and response.json()["detail"]

    email = unique_email()
    verified, _ = sign_up(email=email)
    assert confirm(mail_client, mail_catcher.wait_for(email)[0].token).status_code == 200
    assert mail_client.post("/users/me/email-verification", headers=verified.headers).status_code == 409


def test_resend_needs_a_login_not_an_api_key(mail_client, sign_up, mail_settings) -> None:
    account, _ = sign_up(email=unique_email())
    key_token = AccessTokenIssuer(mail_settings).issue(
        user_id=account.id, client_id="ak_" + secrets.token_hex(8), scopes=frozenset({"users:read", "users:write"})
    )

    response = mail_client.post("/users/me/email-verification", headers={"Authorization": f"Bearer {key_token.token}"})

    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"
    assert mail_client.post("/users/me/email-verification").status_code == 401


def test_bad_tokens_are_400_invalid_token(mail_client, sign_up, mail_catcher) -> None:  # noqa: F811
    email = unique_email()
    account, _ = sign_up(email=email)
    live = mail_catcher.wait_for(email)[0].token
    reset_token = add_token(mail_client, user_id=account.id, email=email, purpose=PASSWORD_RESET)
    expired = add_token(mail_client, user_id=account.id, email=email, purpose=EMAIL_VERIFICATION, made_ago=120)
    for name, token in {
        "unknown": new_token(),
        "reset-token": reset_token,
        "expired": expired,
        "truncated": live[:-1],
        "nul": live + "\x00",
        "ten-kb": live * 250,
        "empty": "",
        "lone-surrogate": live + "\ud800",
    }.items():
        response = confirm(mail_client, token)
        assert response.status_code == 400, (name, response.text)
        assert_invalid_token(response)
    assert confirm(mail_client, live).status_code == 200


@pytest.mark.parametrize("body", [{}, {"token": 5}, {"token": "x", "extra": 1}], ids=["missing", "number", "extra"])
def test_a_malformed_confirm_is_422(client, body) -> None:
    assert client.post("/email-verification/confirm", json=body).status_code == 422


def test_the_sign_up_mail_is_in_the_sign_up_transaction(client, make_account) -> None:
    """A sign-up refused as a duplicate leaves neither a token nor a mail behind."""
    email = unique_email()
    make_account(email=email)

    duplicate = client.post("/users", json={"username": unique_username(), "password": "long enough", "email": email})

    assert duplicate.status_code == 409
    with client.app.state.session_factory() as session:
        rows = session.scalar(select(func.count()).select_from(OutboxEmail).where(OutboxEmail.recipient == email))
    assert rows == 1
