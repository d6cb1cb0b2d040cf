"""A token's session (`sid`) or API key (`client_id`) is read with its user on every request: once ended, 401."""

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from shared.api_keys import new_client_id
from shared.models import ApiKey, User, UserSession
from shared.tokens import AccessTokenIssuer
from users_service.tests.support import (
    Account,
    add_refresh_token,
    add_session,
    assert_unauthorized,
    bearer,
    stored_refresh_token,
    stored_session,
)

StartSession = Callable[[int], tuple[str, str]]


def end_session_row(client: TestClient, session_id: str) -> None:
    """What the auth service does to a session that ends (the refresh tokens aside)."""
    with client.app.state.session_factory() as session:
        session.execute(update(UserSession).where(UserSession.id == session_id).values(ended_at=datetime.now(UTC)))
        session.commit()


def expire_session_row(client: TestClient, session_id: str) -> None:
    with client.app.state.session_factory() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(UserSession).where(UserSession.id == session_id).values(expires_at=past))
        session.commit()


def add_api_key(
    client: TestClient, user_id: int, *, scopes: str = "users:read users:write", expires_at: datetime | None = None
) -> str:
    """An API key row as the users service stores one; its secret is never needed here (tokens are minted)."""
    client_id = new_client_id()
    with client.app.state.session_factory() as session:
        session.add(
            ApiKey(
                user_id=user_id,
                name="liveness test",
                client_id=client_id,
                secret_hash=secrets.token_hex(32),
                scopes=scopes,
                expires_at=expires_at,
            )
        )
        session.commit()
    return client_id


def key_token(issuer: AccessTokenIssuer, user_id: int, client_id: str) -> str:
    return issuer.issue(user_id=user_id, client_id=client_id, scopes=["users:read", "users:write"]).token


def api_key_count(client: TestClient, user_id: int) -> int:
    with client.app.state.session_factory() as session:
        return len(session.scalars(select(ApiKey.id).where(ApiKey.user_id == user_id)).all())


# Every way a token reaches the database: the read routes (one Core statement) and the writes (ORM objects).
REQUESTS = {
    "GET /users/me": lambda client, account, headers: client.get("/users/me", headers=headers),
    "GET /users/{id}": lambda client, account, headers: client.get(f"/users/{account.id}", headers=headers),
    "PATCH /users/me": lambda client, account, headers: client.patch(
        "/users/me", json={"full_name": "x"}, headers=headers
    ),
    "PATCH /users/{id}": lambda client, account, headers: client.patch(
        f"/users/{account.id}", json={"full_name": "x"}, headers=headers
    ),
    "DELETE /users/me": lambda client, account, headers: client.delete("/users/me", headers=headers),
    "DELETE /users/{id}": lambda client, account, headers: client.delete(f"/users/{account.id}", headers=headers),
}
SUCCESS = {"GET": 200, "PATCH": 200, "DELETE": 204}


@pytest.mark.parametrize("request_name", REQUESTS)
def test_a_live_session_token_works_and_an_ended_one_is_401_at_the_next_request(
    client: TestClient, make_account: Callable[..., Account], start_session: StartSession, request_name: str
) -> None:
    send = REQUESTS[request_name]
    account = make_account()
    session_id, token = start_session(account.id)
    ended_id, ended_token = start_session(account.id)

    end_session_row(client, ended_id)

    assert_unauthorized(send(client, account, bearer(ended_token)))
    assert send(client, account, bearer(token)).status_code == SUCCESS[request_name.split()[0]]


@pytest.mark.parametrize("request_name", ["GET /users/me", "GET /users/{id}", "PATCH /users/me"])
def test_an_expired_session_is_401(
    client: TestClient, make_account: Callable[..., Account], start_session: StartSession, request_name: str
) -> None:
    account = make_account()
    session_id, token = start_session(account.id)

    expire_session_row(client, session_id)

    assert_unauthorized(REQUESTS[request_name](client, account, bearer(token)))


def test_a_sid_of_another_users_session_or_an_unknown_sid_is_401(
    client: TestClient, make_account: Callable[..., Account], issuer: AccessTokenIssuer
) -> None:
    account, other = make_account(), make_account()
    others_session = add_session(client, other.id)

    for sid in (others_session, "00000000-0000-4000-8000-000000000000", "not-a-uuid", "x" * 300):
        token = issuer.issue(user_id=account.id, token_version=0, session_id=sid).token
        assert_unauthorized(client.get("/users/me", headers=bearer(token)))
        assert_unauthorized(client.get(f"/users/{other.id}", headers=bearer(token)))
        assert_unauthorized(client.patch("/users/me", json={"full_name": "x"}, headers=bearer(token)))


def test_an_admins_ended_session_cannot_read_another_user(
    client: TestClient, make_admin: Callable[[], Account], make_account: Callable[..., Account], start_session
) -> None:
    admin, account = make_admin(), make_account()
    session_id, token = start_session(admin.id)
    assert client.get(f"/users/{account.id}", headers=bearer(token)).status_code == 200
    assert client.get("/users", headers=bearer(token)).status_code == 200

    end_session_row(client, session_id)

    assert_unauthorized(client.get(f"/users/{account.id}", headers=bearer(token)))
    assert_unauthorized(client.get("/users", headers=bearer(token)))
    assert_unauthorized(client.patch(f"/users/{account.id}", json={"full_name": "x"}, headers=bearer(token)))


def test_a_token_without_sid_or_client_id_is_honoured_with_the_version_check_alone(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    account = make_account()  # its token is minted as older code did: no sid

    assert client.get("/users/me", headers=account.headers).status_code == 200
    assert client.patch("/users/me", json={"full_name": "x"}, headers=account.headers).status_code == 200


def test_a_password_change_ends_every_session_with_its_refresh_tokens(
    client: TestClient, make_account: Callable[..., Account], start_session: StartSession
) -> None:
    account = make_account()
    session_id, token = start_session(account.id)
    other_session, other_token = start_session(account.id)
    refresh_token_id = add_refresh_token(
        client, account.id, expires_at=datetime.now(UTC) + timedelta(days=1), session_id=other_session
    )

    changed = client.patch(
        "/users/me",
        json={"password": "a brand new password", "current_password": account.password},
        headers=bearer(token),
    )

    assert changed.status_code == 200, changed.text
    for ended_session, ended_token in ((session_id, token), (other_session, other_token)):
        assert stored_session(client, ended_session).ended_at is not None
        assert_unauthorized(client.get("/users/me", headers=bearer(ended_token)))
    assert stored_refresh_token(client, refresh_token_id).revoked_at is not None


def test_deactivation_ends_every_session_and_deletes_the_api_keys_for_good(
    client: TestClient,
    admin: Account,
    make_account: Callable[..., Account],
    start_session: StartSession,
    issuer: AccessTokenIssuer,
) -> None:
    account = make_account()
    session_id, token = start_session(account.id)
    client_id = add_api_key(client, account.id)
    minted = key_token(issuer, account.id, client_id)
    assert client.get("/users/me", headers=bearer(minted)).status_code == 200

    deactivated = client.patch(f"/users/{account.id}", json={"is_active": False}, headers=admin.headers)
    reactivated = client.patch(f"/users/{account.id}", json={"is_active": True}, headers=admin.headers)

    assert deactivated.status_code == 200 and reactivated.status_code == 200
    assert stored_session(client, session_id).ended_at is not None
    assert api_key_count(client, account.id) == 0
    assert_unauthorized(client.get("/users/me", headers=bearer(token)))
    assert_unauthorized(client.get("/users/me", headers=bearer(minted)))


def test_deleting_the_user_removes_its_sessions(
    client: TestClient, make_account: Callable[..., Account], start_session: StartSession
) -> None:
    account = make_account()
    session_id, token = start_session(account.id)

    assert client.delete("/users/me", headers=bearer(token)).status_code == 204

    assert stored_session(client, session_id) is None
    assert_unauthorized(client.get("/users/me", headers=bearer(token)))


def test_a_live_key_token_works_and_a_deleted_key_is_401_at_the_next_request(
    client: TestClient, make_account: Callable[..., Account], issuer: AccessTokenIssuer
) -> None:
    account = make_account()
    client_id = add_api_key(client, account.id)
    token = key_token(issuer, account.id, client_id)
    assert client.get("/users/me", headers=bearer(token)).status_code == 200
    assert client.patch("/users/me", json={"full_name": "k"}, headers=bearer(token)).status_code == 200

    with client.app.state.session_factory() as session:
        session.delete(session.scalar(select(ApiKey).where(ApiKey.client_id == client_id)))
        session.commit()

    assert_unauthorized(client.get("/users/me", headers=bearer(token)))
    assert_unauthorized(client.get(f"/users/{account.id}", headers=bearer(token)))
    assert_unauthorized(client.patch("/users/me", json={"full_name": "k"}, headers=bearer(token)))


def test_an_expired_key_or_another_users_key_is_401(
    client: TestClient, make_account: Callable[..., Account], issuer: AccessTokenIssuer
) -> None:
    account, other = make_account(), make_account()
    expired = add_api_key(client, account.id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    others = add_api_key(client, other.id)

    for client_id in (expired, others, "ak_unknown"):
        token = key_token(issuer, account.id, client_id)
        assert_unauthorized(client.get("/users/me", headers=bearer(token)))
        assert_unauthorized(client.patch("/users/me", json={"full_name": "k"}, headers=bearer(token)))


def test_a_key_token_survives_a_password_change_but_not_the_owner_being_inactive(
    client: TestClient,
    admin: Account,
    make_account: Callable[..., Account],
    issuer: AccessTokenIssuer,
    start_session: StartSession,
) -> None:
    account = make_account()
    token = key_token(issuer, account.id, add_api_key(client, account.id))
    _, login_token = start_session(account.id)

    changed = client.patch(
        "/users/me",
        json={"password": "a brand new password", "current_password": account.password},
        headers=bearer(login_token),
    )

    assert changed.status_code == 200, changed.text
    assert client.get("/users/me", headers=bearer(token)).status_code == 200
    with client.app.state.session_factory() as session:
        # Inactive without the deactivation's key deletion: the user row alone must refuse the key's token.
        session.execute(update(User).where(User.id == account.id).values(is_active=False))
        session.commit()
    assert_unauthorized(client.get("/users/me", headers=bearer(token)))
