"""End to end: refresh rotation and reuse detection, revocation, and login throttling across workers."""

import concurrent.futures

import requests

from tests.conftest import Api


def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    account = api.sign_up()
    first = api.tokens(account)
    second = api.refresh(first["refresh_token"])
    assert second.status_code == 200 and second.headers["Cache-Control"] == "no-store"
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert api.users("GET", "/users/me", rotated["access_token"]).status_code == 200
    replay = api.refresh(first["refresh_token"])
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_grant"
    assert replay.headers["WWW-Authenticate"] == "Bearer"
    # The thief's replay revoked the whole family, including the owner's newest token.
    assert api.refresh(rotated["refresh_token"]).status_code == 401


def test_racing_refreshes_have_exactly_one_winner_whose_token_is_then_revoked(api: Api) -> None:
    refresh_token = api.tokens(api.sign_up())["refresh_token"]
    # A connection per request (no shared session), so the racers reach both workers.
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: refresh_over_new_connection(api, refresh_token), range(6)))
    assert sorted(status for status, _ in answers) == [200, 401, 401, 401, 401, 401], answers
    winner = next(body for status, body in answers if status == 200)
    # The losers presented a token the winner had retired: that is reuse, so the whole family is revoked.
    after = api.refresh(winner["refresh_token"])
    assert after.status_code == 401 and after.json()["error"] == "invalid_grant", after.text


def refresh_over_new_connection(api: Api, refresh_token: str) -> tuple[int, dict]:
    response = requests.post(
        f"{api.stack.auth_url}/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}, timeout=30
    )
    return response.status_code, response.json()


def test_revoke_kills_the_family(api: Api) -> None:
    account = api.sign_up()
    first = api.tokens(account)
    rotated = api.refresh(first["refresh_token"]).json()
    revoked = requests.post(f"{api.stack.auth_url}/revoke", data={"token": first["refresh_token"]})
    assert revoked.status_code == 200
    assert api.refresh(rotated["refresh_token"]).status_code == 401
    assert requests.post(f"{api.stack.auth_url}/revoke", data={"token": "garbage"}).status_code == 200
    other_login = api.tokens(account)
    assert api.refresh(other_login["refresh_token"]).status_code == 200


def test_failed_logins_are_throttled_across_workers(api: Api) -> None:
    account = api.sign_up()
    # Five failures spread over both gunicorn workers by separate connections; the count lives in the database.
    for _ in range(5):
        assert (
            requests.post(
                f"{api.stack.auth_url}/token", data={"username": account.username, "password": "wrong password"}
            ).status_code
            == 401
        )
    throttled = requests.post(
        f"{api.stack.auth_url}/token", data={"username": account.username, "password": account.password}
    )
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 0 and "detail" in throttled.json()
