"""End to end over real HTTP, both services as gunicorn processes with their real mail senders and an SMTP server:
sign-up -> verification mail -> confirm; forgot password -> mail -> confirm -> old sessions dead -> new password."""

import secrets

import pytest

from shared.testing_mail import MailInbox
from tests.conftest import Api, Stack


@pytest.fixture
def inbox(stack: Stack) -> MailInbox:
    if stack.mail_inbox_url is None:
        pytest.skip("MAIL_INBOX_URL is not set for the stack at AUTH_URL/USERS_URL")
    return MailInbox(stack.mail_inbox_url)


def test_sign_up_then_verify_the_address_from_the_mail(api: Api, inbox: MailInbox) -> None:
    email = f"e2e.{secrets.token_hex(5)}@example.com"
    account = api.sign_up(email=email)
    access = api.tokens(account)["access_token"]
    assert api.users("GET", "/users/me", access).json()["email_verified"] is False

    [mail] = inbox.wait_for(email, subject="Confirm your email address", timeout=30)
    confirmed = api.http.post(f"{api.stack.users_url}/email-verification/confirm", json={"token": mail.token})

    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["email_verified"] is True
    assert api.users("GET", "/users/me", access).json()["email_verified"] is True


def test_forgot_password_then_reset_from_the_mail_ends_the_old_sessions(api: Api, inbox: MailInbox) -> None:
    email = f"e2e.{secrets.token_hex(5)}@example.com"
    account = api.sign_up(email=email)
    old_session = api.tokens(account)
    assert api.users("GET", "/users/me", old_session["access_token"]).status_code == 200

    requested = api.http.post(f"{api.stack.auth_url}/password-reset", json={"email": email})
    assert requested.status_code == 202 and requested.json() == {}
    [mail] = inbox.wait_for(email, subject="Reset your password", timeout=30)
    confirmed = api.http.post(
        f"{api.stack.auth_url}/password-reset/confirm", json={"token": mail.token, "new_password": "recovered at last"}
    )

    assert confirmed.status_code == 204, confirmed.text
    assert api.users("GET", "/users/me", old_session["access_token"]).status_code == 401
    assert api.refresh(old_session["refresh_token"]).status_code == 401
    assert api.login(account.username, account.password).status_code == 401
    new_session = api.login(account.username, "recovered at last")
    assert new_session.status_code == 200, new_session.text
    me = api.users("GET", "/users/me", new_session.json()["access_token"])
    assert me.status_code == 200 and me.json()["email_verified"] is True
    inbox.wait_for(email, subject="Your password was changed", timeout=30)
