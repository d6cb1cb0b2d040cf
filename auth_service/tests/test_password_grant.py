"""POST /token with the password grant: the token pair, the claims, refusals, malformed bodies, hash upgrades."""

import statistics
import time

import bcrypt
import jwt
import pytest
from passlib.hash import argon2

from auth_service.tests.conftest import assert_invalid_grant, login, stored_user

RESPONSE_KEYS = {"access_token", "token_type", "expires_in", "refresh_token"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MAX_BODY_BYTES = 65_536


def cache_directives(response) -> set[str]:
    return {part.strip().lower() for part in response.headers.get("cache-control", "").split(",")}


def decode_access_token(token: str, settings) -> dict:
    return jwt.decode(
        token,
        settings.jwt_secret,
        algorithms=["HS256"],
        audience="users-service",
        issuer="auth-service",
        options={"require": ["sub", "iat", "exp", "jti", "iss", "aud", "type"]},
    )


def form_body_of_size(size: int) -> bytes:
    """A well-formed login form of exactly `size` bytes, padded with a field the endpoint ignores."""
    start = b"username=nobody_padded&password=x&padding="
    return start + b"a" * (size - len(start))


@pytest.mark.parametrize("grant_type", ["password", None], ids=["explicit", "absent-defaults-to-password"])
def test_password_grant_issues_a_token_pair(client, settings, make_user, grant_type):
    user = make_user()
    form = {"username": user.username, "password": user.password}
    if grant_type is not None:
        form["grant_type"] = grant_type

    response = client.post("/token", data=form)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_KEYS
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_seconds
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    assert "no-store" in cache_directives(response)


def test_access_token_carries_the_contract_claims_and_a_kid(client, settings, make_user):
    user = make_user()
    before = int(time.time())

    token = login(client, user.username, user.password).json()["access_token"]

    claims = decode_access_token(token, settings)
    assert claims["sub"] == str(user.id)
    assert claims["iss"] == "auth-service"
    assert claims["aud"] == "users-service"
    assert claims["type"] == "access"
    assert isinstance(claims["jti"], str) and claims["jti"]
    assert before - 5 <= claims["iat"] <= time.time() + 5
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_seconds
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert isinstance(header["kid"], str) and header["kid"]


def test_each_access_token_has_its_own_jti(client, settings, make_user):
    user = make_user()
    tokens = [login(client, user.username, user.password).json()["access_token"] for _ in range(2)]

    assert decode_access_token(tokens[0], settings)["jti"] != decode_access_token(tokens[1], settings)["jti"]


@pytest.mark.parametrize("spelling", [str.upper, str.title, str.swapcase], ids=["upper", "title", "swapcase"])
def test_username_is_matched_case_insensitively(client, settings, make_user, spelling):
    user = make_user()

    response = login(client, spelling(user.username), user.password)

    assert response.status_code == 200, response.text
    assert decode_access_token(response.json()["access_token"], settings)["sub"] == str(user.id)


@pytest.mark.parametrize(
    ("username_of", "password_of", "is_active"),
    [
        (lambda user: user.username, lambda user: "not-the-password", True),
        (lambda user: "no_such_" + user.username, lambda user: user.password, True),
        (lambda user: "not a valid username!", lambda user: user.password, True),
        (lambda user: user.username, lambda user: user.password, False),
    ],
    ids=["wrong-password", "unknown-username", "unknown-invalid-username", "inactive-user-right-password"],
)
def test_refused_logins_answer_401_with_one_and_the_same_body(client, make_user, username_of, password_of, is_active):
    reference = login(client, make_user().username, "wrong-password-for-reference")
    user = make_user(is_active=is_active)

    response = login(client, username_of(user), password_of(user))

    assert_invalid_grant(response)
    assert response.json() == reference.json()
    assert "no-store" in cache_directives(response)


# "About the same time": the median of per-pair ratios (unknown name / known name, timed one right after the other,
# so a slow moment of the machine hits both) within this band. A missing dummy hash gives about 0.02; a dummy
# hash cheaper or dearer than the user's by a factor of 1.5 falls outside it.
TIMING_BAND = (0.8, 1.25)
TIMING_PAIRS = 21
# A series is timed again when its median falls outside the band, so one burst of load elsewhere is no failure;
# a real difference falls outside in every series.
TIMING_SERIES = 3


def median_timing_ratio(timed, known_username: str) -> float:
    """Median over TIMING_PAIRS interleaved pairs of (unknown name time / known name time), wrong password both."""

    def seconds(username: str) -> float:
        started = time.perf_counter()
        response = login(timed, username, "wrong password!")
        elapsed = time.perf_counter() - started
        assert response.status_code == 401, response.text
        return elapsed

    seconds(known_username)  # warm-up: the first connection of this app's pool
    ratios = []
    for attempt in range(TIMING_PAIRS):
        known = seconds(known_username)
        ratios.append(seconds(f"ghost_{attempt}_{known_username}") / known)
    return statistics.median(ratios)


def assert_about_the_same_time(timed, known_username: str) -> None:
    medians = []
    for _ in range(TIMING_SERIES):
        medians.append(median_timing_ratio(timed, known_username))
        if TIMING_BAND[0] <= medians[-1] <= TIMING_BAND[1]:
            return
    raise AssertionError(f"median unknown-name / known-name time ratios {medians}, outside {TIMING_BAND}")


def test_unknown_username_takes_about_as_long_as_a_wrong_password(make_client, make_user):
    # Limits far above the attempts made, so no answer is a fast 429.
    timed = make_client(login_max_failures_per_username=1000, login_max_failures_per_address=1000)

    assert_about_the_same_time(timed, make_user().username)


def test_unknown_username_takes_about_as_long_as_a_legacy_bcrypt_user(make_client, make_user):
    """A user whose hash is still bcrypt (cost 12, passlib's default): until the next login upgrades it, a wrong
    password is checked against bcrypt, and an unknown name must cost the same."""
    timed = make_client(login_max_failures_per_username=1000, login_max_failures_per_address=1000)
    legacy_hash = bcrypt.hashpw(b"legacy password 1", bcrypt.gensalt(rounds=12)).decode()
    user = make_user(password="legacy password 1", password_hash=legacy_hash)

    assert_about_the_same_time(timed, user.username)


@pytest.mark.parametrize("grant_type", ["authorization_code", "implicit", "bogus"])
def test_unknown_grant_type_is_400_unsupported_grant_type(client, make_user, grant_type):
    user = make_user()

    response = client.post(
        "/token", data={"grant_type": grant_type, "username": user.username, "password": user.password}
    )

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "unsupported_grant_type"
    assert isinstance(body["detail"], str) and body["detail"]


@pytest.mark.parametrize(
    "form",
    [
        {"password": "some-password"},
        {"username": "someone"},
        {},
        {"grant_type": "password", "username": "someone"},
        {"grant_type": "password", "password": "some-password"},
        {"grant_type": "refresh_token"},
        {"grant_type": "refresh_token", "username": "someone", "password": "some-password"},
    ],
    ids=[
        "no-username",
        "no-password",
        "empty",
        "password-grant-no-password",
        "password-grant-no-username",
        "refresh-grant-no-token",
        "refresh-grant-with-credentials-only",
    ],
)
def test_missing_field_is_422(client, form):
    response = client.post("/token", data=form, headers=FORM)

    assert response.status_code == 422, response.text
    assert "detail" in response.json()
    assert "some-password" not in response.text


def test_json_body_instead_of_a_form_is_422(client, make_user):
    user = make_user()

    response = client.post("/token", json={"username": user.username, "password": user.password})

    assert response.status_code == 422, response.text
    assert user.password not in response.text


def test_multipart_form_is_read_as_the_urlencoded_one_is(client, make_user):
    user = make_user()

    response = client.post("/token", files={"username": (None, user.username), "password": (None, user.password)})

    assert response.status_code == 200, response.text
    assert set(response.json()) == RESPONSE_KEYS


def test_an_empty_field_counts_as_absent(client, make_user):
    user = make_user()

    defaulted = client.post(
        "/token", data={"grant_type": "", "username": user.username, "password": user.password}, headers=FORM
    )
    missing = client.post("/token", data={"username": "", "password": user.password}, headers=FORM)

    assert defaulted.status_code == 200, defaulted.text
    assert missing.status_code == 422, missing.text
    assert [error["loc"] for error in missing.json()["detail"]] == [["body", "username"]]


def test_a_file_where_a_field_belongs_is_422_naming_the_field(client, make_user):
    user = make_user()

    response = client.post(
        "/token",
        data={"username": user.username},
        files={"password": ("password.txt", user.password.encode(), "text/plain")},
    )

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "password"]]
    assert user.password not in response.text


def test_an_empty_file_input_counts_as_absent(client, make_user):
    """What a browser sends for a file input left empty, as FastAPI's `Form()` reads it."""
    user = make_user()
    body = (
        b'--x\r\nContent-Disposition: form-data; name="password"\r\n\r\n%s\r\n'
        b'--x\r\nContent-Disposition: form-data; name="username"; filename=""\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\r\n--x--\r\n"
    ) % user.password.encode()

    response = client.post("/token", content=body, headers={"Content-Type": "multipart/form-data; boundary=x"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [{"loc": ["body", "username"], "msg": "Field required", "type": "missing"}]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--x--\r\n", "multipart/form-data; boundary=x"),
        (b"--x\r\nnot a part", "multipart/form-data; boundary=x"),
        (b"a=b", "multipart/form-data"),
        (
            b"".join(b'--x\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n1\r\n' % n for n in range(1001))
            + b"--x--\r\n",
            "multipart/form-data; boundary=x",
        ),
    ],
    ids=["part-without-a-name", "truncated", "no-boundary", "over-1000-fields"],
)
def test_a_multipart_body_the_parser_refuses_is_400_with_its_reason(client, body, content_type):
    response = client.post("/token", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 400, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b"username=%FF%FE&password=x",
        b"username=\xff\xfe&password=x",
        b"username=a&password=%C3%28",
        b"username=ok&pass\xc3word=x",
    ],
    ids=["percent-encoded", "raw-bytes", "percent-encoded-bad-sequence", "raw-bytes-in-a-name"],
)
def test_form_body_with_invalid_utf8_is_422(client, body):
    response = client.post("/token", content=body, headers=FORM)

    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_body_of_exactly_64_kib_is_accepted(client):
    response = client.post("/token", content=form_body_of_size(MAX_BODY_BYTES), headers=FORM)

    assert response.status_code == 401, response.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_64_kib_is_413(client, chunked):
    body = form_body_of_size(MAX_BODY_BYTES + 1)
    content = (body[i : i + 4096] for i in range(0, len(body), 4096)) if chunked else body

    response = client.post("/token", content=content, headers=FORM)

    assert response.status_code == 413, response.text
    assert "detail" in response.json()


LONG_PASSWORDS = {
    "ascii-100-bytes": "p" * 100,
    "two-byte-chars-80-of-them": "é" * 80,
    "mixed-75-bytes": "x" * 72 + "üy",
}


@pytest.mark.parametrize("password", list(LONG_PASSWORDS.values()), ids=list(LONG_PASSWORDS))
def test_password_over_72_bytes_counts_in_full(client, make_user, password):
    user = make_user(password=password)
    differs_only_after_byte_72 = password[:-1] + "Z"
    assert differs_only_after_byte_72.encode()[:72] == password.encode()[:72] != password.encode()

    assert login(client, user.username, password).status_code == 200
    assert_invalid_grant(login(client, user.username, differs_only_after_byte_72))


def argon2_parameters(password_hash: str) -> str:
    return password_hash.split("$")[3]


def expected_argon2_parameters(settings) -> str:
    return f"m={settings.argon2_memory_kib},t={settings.argon2_time_cost},p={settings.argon2_parallelism}"


LEGACY_HASHES = {
    "bcrypt-cost-4": lambda password: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode(),
    "weak-argon2id": lambda password: argon2.using(type="ID", memory_cost=8192, rounds=1).hash(password),
}


@pytest.mark.parametrize("make_hash", list(LEGACY_HASHES.values()), ids=list(LEGACY_HASHES))
def test_outdated_hash_verifies_and_is_upgraded_on_login(client, settings, make_user, make_hash):
    password = "legacy password 1"
    old_hash = make_hash(password)
    user = make_user(password=password, password_hash=old_hash)

    response = login(client, user.username, password)

    assert response.status_code == 200, response.text
    new_hash = stored_user(client, user.id).password_hash
    assert new_hash != old_hash
    assert new_hash.startswith("$argon2id$")
    assert argon2_parameters(new_hash) == expected_argon2_parameters(settings)
    assert login(client, user.username, password).status_code == 200
    assert_invalid_grant(login(client, user.username, "legacy password 2"))


@pytest.mark.parametrize("make_hash", list(LEGACY_HASHES.values()), ids=list(LEGACY_HASHES))
def test_outdated_hash_is_kept_when_the_password_is_wrong(client, make_user, make_hash):
    old_hash = make_hash("legacy password 1")
    user = make_user(password="legacy password 1", password_hash=old_hash)

    assert_invalid_grant(login(client, user.username, "legacy password 2"))
    assert stored_user(client, user.id).password_hash == old_hash
