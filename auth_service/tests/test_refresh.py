"""POST /token with the refresh_token grant: rotation, reuse detection, expiry, races, opaque refresh tokens."""

import secrets
import threading
import time
from datetime import datetime, timedelta

import jwt
import pytest
from sqlalchemy import create_engine, select, text

from auth_service.service import hash_refresh_token
from auth_service.tests.conftest import assert_invalid_grant, login, refresh, set_user_active
from shared.models import RefreshToken, User, as_utc
from shared.tokens import AccessTokenVerifier, InvalidAccessToken, build_key_source


def login_pair(client, user) -> dict:
    response = login(client, user.username, user.password)
    assert response.status_code == 200, response.text
    return response.json()


def test_refresh_returns_a_new_pair_with_a_new_refresh_token(client, settings, make_user):
    user = make_user()
    first = login_pair(client, user)

    response = refresh(client, first["refresh_token"])

    assert response.status_code == 200, response.text
    assert "no-store" in response.headers["cache-control"].lower()
    second = response.json()
    assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["token_type"].lower() == "bearer"
    assert second["expires_in"] == settings.access_token_ttl_seconds
    assert second["refresh_token"] != first["refresh_token"]
    claims = jwt.decode(second["access_token"], settings.jwt_secret, algorithms=["HS256"], audience="users-service")
    assert claims["sub"] == str(user.id)
    assert claims["type"] == "access"


def test_new_refresh_token_keeps_rotating(client, make_user):
    token = login_pair(client, make_user())["refresh_token"]
    seen = {token}

    for _ in range(3):
        response = refresh(client, token)
        assert response.status_code == 200, response.text
        token = response.json()["refresh_token"]
        assert token not in seen
        seen.add(token)


def test_reusing_a_retired_refresh_token_revokes_its_family_only(client, make_user):
    user = make_user()
    retired = login_pair(client, user)["refresh_token"]
    newest = refresh(client, retired).json()["refresh_token"]
    other_login = login_pair(client, user)["refresh_token"]

    assert_invalid_grant(refresh(client, retired))
    assert_invalid_grant(refresh(client, newest))
    assert refresh(client, other_login).status_code == 200


def test_reuse_of_an_older_generation_revokes_the_whole_family(client, make_user):
    first = login_pair(client, make_user())["refresh_token"]
    second = refresh(client, first).json()["refresh_token"]
    third = refresh(client, second).json()["refresh_token"]

    assert_invalid_grant(refresh(client, first))
    assert_invalid_grant(refresh(client, third))


def test_expired_refresh_token_is_refused(make_client, make_user):
    ttl = 3600
    timed = make_client(refresh_token_ttl_seconds=ttl)
    token = login_pair(timed, make_user())["refresh_token"]
    issued_at, expires_at = stored_token_times(timed, token)
    assert abs((expires_at - issued_at).total_seconds() - ttl) < 5

    # Its lifetime moved into the past instead of the test sleeping through it: a minute left, then expired.
    move_token_back(timed, token, seconds=ttl - 60)
    still_live = refresh(timed, token)
    assert still_live.status_code == 200, still_live.text
    expired = still_live.json()["refresh_token"]
    move_token_back(timed, expired, seconds=ttl + 1)

    assert_invalid_grant(refresh(timed, expired))


def stored_token_times(client, token: str) -> tuple[datetime, datetime]:
    with client.app.state.session_factory() as session:
        row = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(token))).one()
        return as_utc(row.issued_at), as_utc(row.expires_at)


def move_token_back(client, token: str, *, seconds: float) -> None:
    """Computed in Python: SQLite cannot subtract an interval from a stored time."""
    with client.app.state.session_factory() as session:
        row = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(token))).one()
        row.issued_at = as_utc(row.issued_at) - timedelta(seconds=seconds)
        row.expires_at = as_utc(row.expires_at) - timedelta(seconds=seconds)
        session.commit()


UNKNOWN_REFRESH_TOKENS = {
    "random": lambda: secrets.token_urlsafe(32),
    "long": lambda: "r" * 2000,
    "non-ascii": lambda: "jeton-périmé-🔑",
    "jwt-shaped": lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
}


@pytest.mark.parametrize("make_token", list(UNKNOWN_REFRESH_TOKENS.values()), ids=list(UNKNOWN_REFRESH_TOKENS))
def test_unknown_refresh_token_is_refused(client, make_token):
    assert_invalid_grant(refresh(client, make_token()))


def test_access_token_is_not_accepted_as_a_refresh_token(client, make_user):
    access_token = login_pair(client, make_user())["access_token"]

    assert_invalid_grant(refresh(client, access_token))


def race_refreshes(client, token: str, racers: int) -> list[tuple[int, dict]]:
    """`racers` threads present `token` at the same moment; their statuses and bodies."""
    start = threading.Barrier(racers)
    answers: list[tuple[int, dict]] = []

    def race() -> None:
        start.wait()
        response = refresh(client, token)
        answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def race_outcome(client, answers: list[tuple[int, dict]], racers: int) -> str | None:
    """What broke the rule, or None: every racer answered, exactly one got a new pair, all the others 401; the
    losers presented a token the winner had retired, so the family is revoked and the winner's token refused."""
    statuses = sorted(status for status, _ in answers)
    if statuses != [200] + [401] * (racers - 1):
        return f"statuses {statuses}"
    winner = next(body for status, body in answers if status == 200)
    after = refresh(client, winner["refresh_token"])
    if after.status_code != 401 or after.json().get("error") != "invalid_grant":
        return f"the winner's new refresh token got {after.status_code} after the losers replayed the retired one"
    return None


def test_racing_refreshes_with_one_token_give_exactly_one_new_pair_then_revoke(client, make_user):
    # A race goes wrong only in some interleavings (a few percent of rounds): many short rounds, several generations.
    user, racers, rounds = make_user(), 8, 30
    wrong = []
    for round_number in range(rounds):
        token = login_pair(client, user)["refresh_token"]
        for _ in range(1 + round_number % 3):
            token = refresh(client, token).json()["refresh_token"]
        broken = race_outcome(client, race_refreshes(client, token, racers), racers)
        if broken:
            wrong.append(broken)

    assert not wrong, f"{len(wrong)} of {rounds} rounds broke 'exactly one 200, the rest 401, then revoked': {wrong}"


def deactivate(client, user_id: int) -> None:
    set_user_active(client, user_id, False)


def delete(client, user_id: int) -> None:
    with client.app.state.session_factory() as session:
        session.delete(session.get(User, user_id))
        session.commit()


@pytest.mark.parametrize("change", [deactivate, delete], ids=["deactivated", "deleted"])
def test_refresh_for_a_user_deactivated_or_deleted_meanwhile_is_refused(client, make_user, change):
    user = make_user()
    token = login_pair(client, user)["refresh_token"]

    change(client, user.id)

    assert_invalid_grant(refresh(client, token))
    assert_invalid_grant(login(client, user.username, user.password))


def test_refresh_token_is_opaque_and_not_an_access_token(client, settings, make_user):
    token = login_pair(client, make_user())["refresh_token"]
    verifier = AccessTokenVerifier(settings, build_key_source(settings))

    assert "." not in token
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(token, settings.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
    with pytest.raises(InvalidAccessToken):
        verifier.verify(token)


def backends_waiting_for_a_lock(engine) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )


def test_two_retired_tokens_of_one_family_replayed_at_once_both_get_401(client, settings, make_user):
    """A thief and the owner replaying two old tokens of one login at the same moment: both refused with 401 (not
    a 503 for a deadlock), and the family revoked. The test holds both tokens' rows until both requests wait."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("row locks are a PostgreSQL matter")
    user = make_user()
    first = login_pair(client, user)["refresh_token"]
    second = refresh(client, first).json()["refresh_token"]
    live = refresh(client, second).json()["refresh_token"]
    hashes = [hash_refresh_token(token) for token in (first, second)]
    holder = create_engine(settings.database_url)
    statuses: dict[str, int] = {}

    def present(token: str) -> None:
        statuses[token] = refresh(client, token).status_code

    try:
        with holder.connect() as connection, connection.begin():
            connection.execute(
                text("SELECT id FROM refresh_tokens WHERE token_hash IN (:a, :b) FOR UPDATE"),
                {"a": hashes[0], "b": hashes[1]},
            )
            threads = [threading.Thread(target=present, args=(token,)) for token in (first, second)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while backends_waiting_for_a_lock(holder) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        for thread in threads:
            thread.join(timeout=30)
    finally:
        holder.dispose()

    assert sorted(statuses.values()) == [401, 401], statuses
    assert_invalid_grant(refresh(client, live))
