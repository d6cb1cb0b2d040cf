"""Sessions: a login starts one (its refresh-token family), `GET/DELETE /sessions` list and end them, and whatever
ends a session makes its access tokens fail at the next request."""

import threading
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy import create_engine, func, select, text, update

from auth_service.tests.conftest import assert_invalid_grant, login, refresh, unique_address
from auth_service.tests.test_keys import NEW_PRIVATE_KEY, write_pem
from auth_service.tests.test_login_races import change_user, during_the_hash
from auth_service.tests.test_refresh import backends_waiting_for_a_lock
from shared.models import RefreshToken, User, UserSession, as_utc
from shared.revocation import end_session, revoke_refresh_tokens_of_user
from shared.tokens import AccessTokenIssuer

SESSION_FIELDS = {"id", "created_at", "last_used_at", "expires_at", "user_agent", "ip_address", "current"}


def login_pair(client, user, **headers: str) -> dict:  # noqa: ANN001
    response = login(client, user.username, user.password, **headers)
    assert response.status_code == 200, response.text
    return response.json()


def sid_of(pair: dict) -> str:
    return jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def list_sessions(client, token: str):  # noqa: ANN001
    return client.get("/sessions", headers=bearer(token))


def stored_session(client, session_id: str) -> UserSession | None:  # noqa: ANN001
    with client.app.state.session_factory() as session:
        return session.get(UserSession, session_id)


def stored_times(client, session_id: str) -> tuple[datetime, datetime, datetime]:  # noqa: ANN001
    """The session's created_at, last_used_at and expires_at, aware on SQLite too (which returns naive ones)."""
    stored = stored_session(client, session_id)
    return as_utc(stored.created_at), as_utc(stored.last_used_at), as_utc(stored.expires_at)


def assert_token_refused(response) -> None:  # noqa: ANN001
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert isinstance(response.json()["detail"], str)


def assert_session_over(client, pair: dict) -> None:  # noqa: ANN001
    """The session's access token is refused at once, its refresh token too, and the row says it ended."""
    assert_token_refused(list_sessions(client, pair["access_token"]))
    assert_invalid_grant(refresh(client, pair["refresh_token"]))
    ended = stored_session(client, sid_of(pair))
    assert ended is None or ended.ended_at is not None


def test_a_login_starts_a_session_its_tokens_belong_to(client, settings, make_user):
    user = make_user()
    before = datetime.now(UTC)

    pair = login_pair(client, user, **{"User-Agent": "curl/8.5.0"})

    session_id = sid_of(pair)
    stored = stored_session(client, session_id)
    assert stored is not None and stored.user_id == user.id and stored.ended_at is None
    assert stored.user_agent == "curl/8.5.0" and stored.ip_address == "testclient"
    created_at, last_used_at, expires_at = stored_times(client, session_id)
    assert created_at == last_used_at and created_at >= before - timedelta(seconds=1)
    ttl = timedelta(seconds=settings.refresh_token_ttl_seconds)
    assert abs(expires_at - (created_at + ttl)) < timedelta(seconds=1)
    with client.app.state.session_factory() as session:
        families = session.scalars(select(RefreshToken.family_id).where(RefreshToken.user_id == user.id)).all()
    assert families == [session_id]


def test_a_refresh_keeps_the_session_and_moves_its_last_use_and_expiry(client, make_user):
    pair = login_pair(client, make_user())
    session_id = sid_of(pair)
    with client.app.state.session_factory() as session:
        earlier = datetime.now(UTC) - timedelta(hours=1)
        session.execute(
            update(UserSession)
            .where(UserSession.id == session_id)
            .values(created_at=earlier, last_used_at=earlier, expires_at=earlier + timedelta(days=14))
        )
        session.commit()

    refreshed = refresh(client, pair["refresh_token"])

    assert refreshed.status_code == 200, refreshed.text
    assert sid_of(refreshed.json()) == session_id
    created_at, last_used_at, expires_at = stored_times(client, session_id)
    assert created_at == earlier
    assert last_used_at > earlier + timedelta(minutes=59)
    assert expires_at > earlier + timedelta(days=14, minutes=59)


def test_the_user_agent_is_kept_to_256_characters(client, make_user):
    pair = login_pair(client, make_user(), **{"User-Agent": "a" * 300})

    assert stored_session(client, sid_of(pair)).user_agent == "a" * 256


def test_the_session_records_the_address_the_throttle_sees(make_client, make_user):
    address = unique_address()
    other = make_client(address=address)

    pair = login_pair(other, make_user())

    assert stored_session(other, sid_of(pair)).ip_address == address


@pytest.mark.parametrize("change", ["password", "deactivation"])
def test_a_login_whose_user_changes_during_the_hash_leaves_no_session(make_client, make_user, change):
    user = make_user()
    other = make_client()
    changes = {"password_hash": other.app.state.hasher.hash("another password 1")} if change == "password" else {}
    during_the_hash(other, lambda: change_user(other, user.id, deactivate=change == "deactivation", **changes))

    assert_invalid_grant(login(other, user.username, user.password))

    with other.app.state.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(UserSession).where(UserSession.user_id == user.id)) == 0


def test_get_sessions_lists_the_callers_live_sessions_newest_first_with_the_current_one_marked(client, make_user):
    user, stranger = make_user(), make_user()
    first = login_pair(client, user, **{"User-Agent": "first device"})
    second = login_pair(client, user, **{"User-Agent": "second device"})
    ended = login_pair(client, user)
    assert client.post("/revoke", data={"token": ended["refresh_token"]}).status_code == 200
    expired = login_pair(client, user)
    with client.app.state.session_factory() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(UserSession).where(UserSession.id == sid_of(expired)).values(expires_at=past))
        session.commit()
    login_pair(client, stranger)

    response = list_sessions(client, first["access_token"])

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    items = response.json()["items"]
    assert [item["id"] for item in items] == [sid_of(second), sid_of(first)]
    assert [item["current"] for item in items] == [False, True]
    assert [item["user_agent"] for item in items] == ["second device", "first device"]
    for item in items:
        assert set(item) == SESSION_FIELDS
        assert item["ip_address"] == "testclient"
        for name in ("created_at", "last_used_at", "expires_at"):
            assert datetime.fromisoformat(item[name]).utcoffset() is not None


def test_delete_a_session_ends_it_and_its_tokens_at_once(client, make_user):
    user = make_user()
    kept, ended = login_pair(client, user), login_pair(client, user)

    response = client.delete(f"/sessions/{sid_of(ended)}", headers=bearer(kept["access_token"]))

    assert response.status_code == 204 and response.content == b""
    assert_session_over(client, ended)
    assert [item["id"] for item in list_sessions(client, kept["access_token"]).json()["items"]] == [sid_of(kept)]
    assert refresh(client, kept["refresh_token"]).status_code == 200


def test_deleting_the_current_session_is_a_logout(client, make_user):
    pair = login_pair(client, make_user())

    assert client.delete(f"/sessions/{sid_of(pair)}", headers=bearer(pair["access_token"])).status_code == 204

    assert_session_over(client, pair)


def test_another_users_unknown_or_ended_session_is_404(client, make_user):
    user, other = make_user(), make_user()
    caller, others = login_pair(client, user), login_pair(client, other)
    ended = login_pair(client, user)
    assert client.delete(f"/sessions/{sid_of(ended)}", headers=bearer(caller["access_token"])).status_code == 204

    for session_id in (sid_of(others), sid_of(ended), "00000000-0000-4000-8000-000000000000", "nope", "%00", "x" * 300):
        response = client.delete(f"/sessions/{session_id}", headers=bearer(caller["access_token"]))
        assert response.status_code == 404, (session_id, response.text)
        assert response.json()["detail"]
    assert refresh(client, others["refresh_token"]).status_code == 200


def test_delete_sessions_ends_every_other_session_and_keeps_the_current_one(client, make_user):
    user, bystander = make_user(), make_user()
    current, second, third = (login_pair(client, user) for _ in range(3))
    bystanders = login_pair(client, bystander)

    response = client.delete("/sessions", headers=bearer(current["access_token"]))

    assert response.status_code == 204 and response.content == b""
    for pair in (second, third):
        assert_session_over(client, pair)
    items = list_sessions(client, current["access_token"]).json()["items"]
    assert [(item["id"], item["current"]) for item in items] == [(sid_of(current), True)]
    assert list_sessions(client, bystanders["access_token"]).status_code == 200
    assert refresh(client, current["refresh_token"]).status_code == 200


def revoke_it(client, pair: dict, user) -> None:  # noqa: ANN001
    assert client.post("/revoke", data={"token": pair["refresh_token"]}).status_code == 200


def reuse_it(client, pair: dict, user) -> None:  # noqa: ANN001
    assert refresh(client, pair["refresh_token"]).status_code == 200
    assert_invalid_grant(refresh(client, pair["refresh_token"]))


def end_all_of_the_user(client, pair: dict, user) -> None:  # noqa: ANN001
    """What a password change, a reset or a deactivation runs (here without the token-version bump, so only the
    session's end can refuse the access token)."""
    with client.app.state.session_factory() as session:
        revoke_refresh_tokens_of_user(session=session, user_id=user.id, now=datetime.now(UTC))
        session.commit()


def delete_the_user(client, pair: dict, user) -> None:  # noqa: ANN001
    with client.app.state.session_factory() as session:
        session.delete(session.get(User, user.id))
        session.commit()


ENDINGS = {
    "revoke": revoke_it,
    "reuse": reuse_it,
    "all of the user's": end_all_of_the_user,
    "deletion": delete_the_user,
}


@pytest.mark.parametrize("end", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_session_ended_any_way_refuses_its_access_token_at_the_next_request(client, make_user, end):
    user = make_user()
    pair = login_pair(client, user)
    assert list_sessions(client, pair["access_token"]).status_code == 200

    end(client, pair, user)

    assert_token_refused(list_sessions(client, pair["access_token"]))
    assert_token_refused(client.delete("/sessions", headers=bearer(pair["access_token"])))
    assert_token_refused(client.delete(f"/sessions/{sid_of(pair)}", headers=bearer(pair["access_token"])))


def test_a_token_from_before_a_password_change_is_401(client, make_user):
    user = make_user()
    pair = login_pair(client, user)
    with client.app.state.session_factory() as session:
        session.get(User, user.id).token_version += 1
        session.commit()

    assert_token_refused(list_sessions(client, pair["access_token"]))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "empty bearer", "basic"],
)
def test_sessions_without_a_bearer_token_is_401_with_a_bearer_challenge(client, headers):
    for response in (
        client.get("/sessions", headers=headers),
        client.delete("/sessions", headers=headers),
        client.delete("/sessions/00000000-0000-4000-8000-000000000000", headers=headers),
    ):
        assert_token_refused(response)
        assert response.headers["www-authenticate"] == "Bearer"


def test_sessions_with_a_forged_or_malformed_token_is_401(client, make_user):
    pair = login_pair(client, make_user())
    forged = jwt.encode({"sub": "1", "sid": sid_of(pair)}, "x" * 32, algorithm="HS256")

    for token in ("garbage", forged, pair["refresh_token"], pair["access_token"] + "x"):
        response = list_sessions(client, token)
        assert_token_refused(response)
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_an_api_key_token_is_403_insufficient_scope(client, settings, make_user):
    user = make_user()
    key_token = AccessTokenIssuer(settings).issue(user_id=user.id, client_id="ak_test", scopes=["users:read"]).token

    for response in (
        list_sessions(client, key_token),
        client.delete("/sessions", headers=bearer(key_token)),
        client.delete("/sessions/00000000-0000-4000-8000-000000000000", headers=bearer(key_token)),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "insufficient_scope" and response.json()["detail"]
        assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'


def test_a_token_without_sid_lists_the_sessions_and_delete_ends_all(client, settings, make_user):
    user = make_user()
    pair = login_pair(client, user)
    legacy = AccessTokenIssuer(settings).issue(user_id=user.id, token_version=0).token
    lonely = make_user()
    lonely_legacy = AccessTokenIssuer(settings).issue(user_id=lonely.id, token_version=0).token

    listed = list_sessions(client, legacy)
    empty = list_sessions(client, lonely_legacy)
    ended = client.delete("/sessions", headers=bearer(legacy))

    assert listed.status_code == 200 and [item["current"] for item in listed.json()["items"]] == [False]
    assert empty.status_code == 200 and empty.json() == {"items": []}
    assert ended.status_code == 204
    assert_session_over(client, pair)


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_with_an_asymmetric_key_sessions_accept_tokens_of_the_current_and_a_previous_key(
    make_client, make_user, tmp_path, algorithm
):
    old_key, new_key = write_pem(tmp_path / "old.pem", NEW_PRIVATE_KEY[algorithm]()), tmp_path / "new.pem"
    write_pem(new_key, NEW_PRIVATE_KEY[algorithm]())
    user = make_user()
    before_rotation = login_pair(make_client(jwt_algorithm=algorithm, jwt_private_key_file=old_key), user)
    rotated = make_client(jwt_algorithm=algorithm, jwt_private_key_file=new_key, jwt_previous_key_files=[str(old_key)])
    unrelated = make_client(jwt_algorithm=algorithm, jwt_private_key_file=new_key)
    after_rotation = login_pair(rotated, user)

    assert list_sessions(rotated, after_rotation["access_token"]).status_code == 200
    assert list_sessions(rotated, before_rotation["access_token"]).status_code == 200
    assert_token_refused(list_sessions(unrelated, before_rotation["access_token"]))


@pytest.mark.parametrize("path", ["/sessions/{other}", "/sessions"])
def test_a_delete_that_waited_for_the_end_of_its_own_session_is_401(client, settings, make_user, path):
    """The caller's session ends (its user's row held, as every ending holds it) while the caller's DELETE waits
    for that row: the DELETE answers 401, and ends nothing in the name of the ended session."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("row locks are a PostgreSQL matter")
    user = make_user()
    caller, other = login_pair(client, user), login_pair(client, user)
    holder = create_engine(settings.database_url)
    answers: list = []

    def delete() -> None:
        url = path.format(other=sid_of(other))
        answers.append(client.delete(url, headers=bearer(caller["access_token"])))

    try:
        with holder.connect() as connection, connection.begin():
            connection.execute(text("SELECT id FROM users WHERE id = :id FOR NO KEY UPDATE"), {"id": user.id})
            thread = threading.Thread(target=delete)
            thread.start()
            deadline = time.monotonic() + 10
            while backends_waiting_for_a_lock(holder) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            end_session(connection=connection, session_id=sid_of(caller), now=datetime.now(UTC))
        thread.join(timeout=30)
    finally:
        holder.dispose()

    assert_token_refused(answers[0])
    assert stored_session(client, sid_of(other)).ended_at is None
    assert refresh(client, other["refresh_token"]).status_code == 200
