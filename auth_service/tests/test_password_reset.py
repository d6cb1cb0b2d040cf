"""Password reset: POST /password-reset and /password-reset/confirm; mail goes to a real SMTP server process."""

import json
import logging
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, func, select

from auth_service.tests.conftest import Credentials, insert_user, login, unique_address
from auth_service.tests.test_client_credentials import GRANT, make_key, stored_key  # noqa: F401  (fixture)
from auth_service.tests.test_login_races import BACKEND_STATES, client_with_named_connections
from shared.models import LoginFailure, OutboxEmail, User
from shared.one_time_tokens import EMAIL_VERIFICATION, PASSWORD_RESET, new_token
from shared.testing import admin_database_url, migrated_database, postgres_answers
from shared.testing_mail import MailCatcher, add_token, mail_catcher  # noqa: F401  (fixture)

RESET_SUBJECT = "Reset your password"
CHANGED_SUBJECT = "Your password was changed"


@pytest.fixture
def mail_client(make_client: Callable[..., TestClient], mail_catcher: MailCatcher) -> TestClient:  # noqa: F811
    """An auth app whose mail sender delivers to the session's SMTP server."""
    return make_client(**mail_catcher.settings())


def add_mail_user(client: TestClient, *, is_active: bool = True) -> Credentials:
    """A user with an email address in `client`'s database, inserted as the users service would."""
    return insert_user(client, is_active=is_active, with_email=True)


@pytest.fixture
def make_mail_user(client: TestClient) -> Callable[..., Credentials]:
    return lambda **options: add_mail_user(client, **options)


def email_of(user: Credentials) -> str:
    return f"{user.username}@example.com"


def request_reset(client: TestClient, email: str):
    return client.post("/password-reset", json={"email": email})


def confirm(client: TestClient, token: str, new_password: str = "a brand new password"):
    # json.dumps escapes a lone surrogate as JSON allows ("\ud800"), which the client's own encoder refuses.
    body = json.dumps({"token": token, "new_password": new_password})
    return client.post("/password-reset/confirm", content=body, headers={"Content-Type": "application/json"})


def assert_invalid_token(response) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_token" and isinstance(body["detail"], str)


def outbox_rows_to(client: TestClient, recipient: str) -> list[OutboxEmail]:
    with client.app.state.session_factory() as session:
        return list(session.scalars(select(OutboxEmail).where(OutboxEmail.recipient == recipient)))


def test_a_reset_mails_a_token_that_sets_the_password_once(mail_client, make_mail_user, mail_catcher) -> None:  # noqa: F811
    user = make_mail_user()
    old = login(mail_client, user.username, user.password).json()

    response = request_reset(mail_client, email_of(user).upper())

    assert response.status_code == 202 and response.json() == {}
    [mail] = mail_catcher.wait_for(email_of(user), subject=RESET_SUBJECT)
    assert mail.message["Message-ID"].startswith("<") and mail.message["Message-ID"].endswith("@localhost>")
    assert mail.html is not None and mail.token in mail.html
    assert confirm(mail_client, mail.token, "the new password").status_code == 204
    assert login(mail_client, user.username, "the new password").status_code == 200
    assert login(mail_client, user.username, user.password).status_code == 401
    # Every session of the user ended: its refresh token is refused.
    refreshed = mail_client.post("/token", data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]})
    assert refreshed.status_code == 401
    assert_invalid_token(confirm(mail_client, mail.token, "yet another password"))
    [notice] = mail_catcher.wait_for(email_of(user), subject=CHANGED_SUBJECT)
    assert user.username in notice.text
    with mail_client.app.state.session_factory() as session:
        stored = session.get(User, user.id)
        assert stored.email_verified is True and stored.token_version == 1


def test_a_reset_ends_the_access_tokens_of_other_sessions(mail_client, make_mail_user, mail_catcher) -> None:  # noqa: F811
    user = make_mail_user()
    elsewhere = login(mail_client, user.username, user.password).json()
    bearer = {"Authorization": f"Bearer {elsewhere['access_token']}"}
    assert mail_client.get("/sessions", headers=bearer).status_code == 200

    assert request_reset(mail_client, email_of(user)).status_code == 202
    [mail] = mail_catcher.wait_for(email_of(user), subject=RESET_SUBJECT)
    assert confirm(mail_client, mail.token).status_code == 204

    assert mail_client.get("/sessions", headers=bearer).status_code == 401


@pytest.mark.parametrize("who", ["unknown", "inactive"])
def test_addresses_of_nobody_active_get_the_same_202_and_no_mail(client, make_mail_user, who) -> None:
    if who == "unknown":
        email = f"ghost_{secrets.token_hex(5)}@example.com"
    else:
        email = email_of(make_mail_user(is_active=False))

    response = request_reset(client, email)

    assert response.status_code == 202 and response.json() == {}
    assert outbox_rows_to(client, email) == []


@pytest.mark.parametrize(
    "body",
    [{"email": "not an address"}, {"email": ""}, {}, {"email": "a@example.com", "extra": 1}, {"email": 5}],
    ids=["malformed", "empty", "missing", "extra-field", "number"],
)
def test_a_malformed_request_is_422(client, body) -> None:
    response = client.post("/password-reset", json=body)
    assert response.status_code == 422, response.text


def test_at_most_one_mail_per_user_per_minute(client, make_mail_user) -> None:
    user = make_mail_user()

    statuses = [request_reset(client, email_of(user)).status_code for _ in range(3)]

    assert statuses == [202, 202, 202]
    assert len(outbox_rows_to(client, email_of(user))) == 1


def test_parallel_requests_for_one_user_queue_one_mail(make_client, make_mail_user) -> None:
    racing = make_client(login_max_failures_per_address=100)
    if racing.app.state.engine.dialect.name == "sqlite":
        pytest.skip("row locks are a PostgreSQL matter (on SQLite parallel requests can each send a mail)")
    user = make_mail_user()
    start_together = threading.Barrier(8)

    def request(_: int) -> int:
        start_together.wait()
        return request_reset(racing, email_of(user)).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(request, range(8)))

    assert statuses == [202] * 8
    assert len(outbox_rows_to(racing, email_of(user))) == 1


def test_requests_are_throttled_per_client_address(make_client, make_mail_user) -> None:
    address = unique_address()
    throttled = make_client(address=address, login_max_failures_per_address=3)

    statuses = [request_reset(throttled, f"nobody{n}@example.com").status_code for n in range(4)]

    assert statuses == [202, 202, 202, 429]
    refused = request_reset(throttled, "nobody@example.com")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["detail"]
    # Another address is not held back, and logins from this one are counted apart.
    assert request_reset(make_client(login_max_failures_per_address=3), "nobody@example.com").status_code == 202
    user = make_mail_user()
    assert login(throttled, user.username, user.password).status_code == 200


def _bad_tokens(client: TestClient, user: Credentials) -> dict[str, str]:
    live = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)
    used = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)
    assert confirm(client, used).status_code == 204
    return {
        "unknown": new_token(),
        "used": used,
        "expired": add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET, made_ago=120),
        "verification-token": add_token(client, user_id=user.id, email=email_of(user), purpose=EMAIL_VERIFICATION),
        "truncated": live[:-1],
        "nul": live + "\x00",
        "ten-kb": live * 250,
        "empty": "",
        "lone-surrogate": live + "\ud800",
    }


def test_bad_tokens_are_400_invalid_token(client, make_mail_user) -> None:
    user = make_mail_user()
    for name, token in _bad_tokens(client, user).items():
        response = confirm(client, token)
        assert response.status_code == 400, (name, response.text)
        assert_invalid_token(response)


def test_a_confirm_without_a_token_or_with_a_number_is_422(client) -> None:
    assert client.post("/password-reset/confirm", json={"new_password": "long enough"}).status_code == 422
    assert client.post("/password-reset/confirm", json={"token": 5, "new_password": "long enough"}).status_code == 422


@pytest.mark.parametrize("new_password", ["short", "x" * 129, 12345678], ids=["7-chars", "129-chars", "number"])
def test_a_bad_new_password_is_422_and_the_token_still_works(client, make_mail_user, new_password) -> None:
    user = make_mail_user()
    token = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)

    response = client.post("/password-reset/confirm", json={"token": token, "new_password": new_password})

    assert response.status_code == 422, response.text
    assert confirm(client, token).status_code == 204


def test_two_confirms_of_one_token_at_once_give_exactly_one_204(client, make_mail_user) -> None:
    user = make_mail_user()
    token = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)
    start_together = threading.Barrier(2)

    def confirm_now(password: str) -> int:
        start_together.wait()
        return confirm(client, token, password).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(confirm_now, ["first new password", "second new password"]))

    assert statuses == [204, 400]


def test_confirms_of_two_tokens_of_one_user_at_once_give_one_204(client, make_mail_user) -> None:
    user = make_mail_user()
    tokens = [add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET) for _ in range(2)]
    start_together = threading.Barrier(2)

    def confirm_now(token: str) -> int:
        start_together.wait()
        return confirm(client, token).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(confirm_now, tokens))

    # The first voids the other: no deadlock (a 503), no second reset.
    assert statuses == [204, 400]


def test_a_reset_clears_the_login_throttle_of_the_username(make_client, make_mail_user) -> None:
    throttled = make_client(login_max_failures_per_username=2)
    user = make_mail_user()
    for _ in range(2):
        assert login(throttled, user.username, "wrong password").status_code == 401
    assert login(throttled, user.username, user.password).status_code == 429
    token = add_token(throttled, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)

    assert confirm(throttled, token, "the new password").status_code == 204

    assert login(throttled, user.username, "the new password").status_code == 200
    with throttled.app.state.session_factory() as session:
        failures = select(func.count()).select_from(LoginFailure).where(LoginFailure.username == user.username)
        left = session.scalar(failures)
    assert left == 0


def test_a_reset_voids_the_other_reset_tokens_and_verifies_the_address(client, make_mail_user) -> None:
    user = make_mail_user()
    first = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)
    second = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)

    assert confirm(client, first).status_code == 204

    assert_invalid_token(confirm(client, second))
    with client.app.state.session_factory() as session:
        assert session.get(User, user.id).email_verified is True


def test_unknown_addresses_take_about_as_long_as_known_ones(make_client, make_mail_user) -> None:
    timed = make_client(login_max_failures_per_address=1000)

    def seconds(email: str) -> float:
        started = time.perf_counter()
        response = request_reset(timed, email)
        elapsed = time.perf_counter() - started
        assert response.status_code == 202, response.text
        return elapsed

    def median_ratio(attempts: int = 7) -> float:
        known, unknown = [], []
        for attempt in range(attempts):  # interleaved, so a slow moment of the machine hits both sides
            known.append(seconds(email_of(make_mail_user())))  # a new user each time: a token and a mail each
            unknown.append(seconds(f"ghost_{attempt}_{secrets.token_hex(4)}@example.com"))
        return statistics.median(unknown) / statistics.median(known)

    seconds("warm-up@example.com")
    # The same bounds as the login's enumeration test.
    ratios = []
    for _ in range(3):
        ratios.append(median_ratio())
        if 0.5 <= ratios[-1] <= 2.0:
            break
    assert 0.5 <= ratios[-1] <= 2.0, f"median unknown / known address time ratios: {ratios}"


# Delivery: each test on a database of its own, so that its sender meets no mail another test left waiting.


@pytest.fixture
def own_database() -> Iterator[str]:
    admin_url = admin_database_url()
    if not postgres_answers(admin_url):
        pytest.skip("needs PostgreSQL")
    with migrated_database(admin_url) as url:
        yield url


@pytest.fixture
def own_catcher() -> Iterator[Callable[..., MailCatcher]]:
    started: list[MailCatcher] = []

    def start(**options: int) -> MailCatcher:
        catcher = MailCatcher(**options).start()
        started.append(catcher)
        return catcher

    yield start
    for catcher in started:
        catcher.stop()


@pytest.fixture
def sending_client(make_client, own_database, own_catcher) -> Callable[..., tuple[TestClient, MailCatcher]]:
    """An auth app on its own database whose sender delivers to an SMTP server of its own."""

    def make(*, drop_first: int = 0, **overrides: object) -> tuple[TestClient, MailCatcher]:
        catcher = own_catcher(drop_first=drop_first)
        return make_client(url=own_database, **{**catcher.settings(), **overrides}), catcher

    return make


def test_smtp_down_during_a_request_is_202_at_once_and_the_mail_arrives_when_it_is_back(sending_client) -> None:
    sending, catcher = sending_client()
    user = add_mail_user(sending)
    catcher.stop()

    started = time.perf_counter()
    response = request_reset(sending, email_of(user))
    elapsed = time.perf_counter() - started

    assert response.status_code == 202 and elapsed < 1.0, elapsed
    # Wait for a failed attempt to be recorded, then bring the server back.
    deadline = time.monotonic() + 10
    while outbox_rows_to(sending, email_of(user))[0].attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox_rows_to(sending, email_of(user))[0].last_error
    catcher.start()
    [mail] = catcher.wait_for(email_of(user), subject=RESET_SUBJECT)
    assert confirm(sending, mail.token).status_code == 204


def test_a_server_that_drops_the_connection_mid_message_gets_the_mail_once(sending_client) -> None:
    sending, catcher = sending_client(drop_first=1)
    user = add_mail_user(sending)

    assert request_reset(sending, email_of(user)).status_code == 202

    catcher.wait_for(email_of(user))
    time.sleep(1.5)  # several retry intervals: a second delivery would have come by now
    assert len(catcher.mails_to(email_of(user))) == 1
    [row] = outbox_rows_to(sending, email_of(user))
    assert row.attempts == 2 and row.sent_at is not None and row.dead_at is None
    assert "@" not in row.last_error if row.last_error else True


def test_a_mail_is_dead_after_its_last_attempt_with_no_address_in_the_log(sending_client, caplog) -> None:
    sending, catcher = sending_client(mail_max_attempts=2)
    catcher.stop()
    # The app's logging set-up replaced the root's handlers, pytest's capture among them.
    logging.getLogger().addHandler(caplog.handler)
    user = add_mail_user(sending)

    dead_before = REGISTRY.get_sample_value("mail_dead_total", {"kind": "password_reset"}) or 0

    def given_up() -> list:
        return [record for record in caplog.records if record.levelname == "WARNING" and "given up" in record.message]

    with caplog.at_level("INFO", logger="shared.mail"):
        assert request_reset(sending, email_of(user)).status_code == 202
        deadline = time.monotonic() + 10
        while not given_up() and time.monotonic() < deadline:
            time.sleep(0.05)

    [row] = outbox_rows_to(sending, email_of(user))
    assert row.dead_at is not None and row.sent_at is None and row.attempts == 2
    assert row.last_error and "@" not in row.last_error
    assert len(given_up()) == 1 and f"mail {row.id} (password_reset)" in given_up()[0].getMessage()
    assert REGISTRY.get_sample_value("mail_dead_total", {"kind": "password_reset"}) == dead_before + 1
    assert not [record for record in caplog.records if email_of(user) in record.getMessage()]


def test_without_an_smtp_host_each_mail_is_an_eml_file(make_client, own_database, tmp_path) -> None:
    writing = make_client(url=own_database, mail_sender_enabled=True, mail_dir=tmp_path)
    user = add_mail_user(writing)

    assert request_reset(writing, email_of(user)).status_code == 202

    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("*.eml")) and time.monotonic() < deadline:
        time.sleep(0.05)
    [written] = list(tmp_path.glob("*.eml"))
    text = written.read_text()
    assert f"To: {email_of(user)}" in text and "/password-reset/confirm" in text


def test_a_confirm_holds_no_transaction_open_while_the_new_password_is_hashed(make_client, database_url) -> None:
    """Behind Neon's pooler in transaction mode, an open transaction pins a server connection for the hash's time."""
    confirming, application_name = client_with_named_connections(make_client, database_url)
    user = add_mail_user(confirming)
    token = add_token(confirming, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)
    observer = create_engine(database_url)
    states_during_hash: list[str] = []
    hasher = confirming.app.state.hasher
    argon2 = hasher._context  # noqa: SLF001

    class ObservedContext:
        def hash(self, password: str) -> str:
            with observer.connect() as connection:
                states_during_hash.extend(connection.scalars(BACKEND_STATES, {"name": application_name}))
            return argon2.hash(password)

    hasher._context = ObservedContext()  # noqa: SLF001
    try:
        assert confirm(confirming, token).status_code == 204
    finally:
        observer.dispose()
    assert states_during_hash and "idle in transaction" not in states_during_hash, states_during_hash


def test_a_reset_deletes_the_users_api_keys(client, make_mail_user, make_key) -> None:  # noqa: F811
    """Every older access token ends, a key's too: the account may have been taken over, and a key an intruder made
    must not outlive its recovery."""
    user = make_mail_user()
    key = make_key(user=user)
    assert client.post("/token", data=GRANT, headers=key.basic).status_code == 200
    token = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)

    assert confirm(client, token).status_code == 204

    assert stored_key(client, key.id) is None
    refused = client.post("/token", data=GRANT, headers=key.basic)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"


def test_a_reset_token_mailed_to_an_address_the_user_no_longer_has_is_refused(client, make_mail_user) -> None:
    user = make_mail_user()
    token = add_token(client, user_id=user.id, email=email_of(user), purpose=PASSWORD_RESET)
    with client.app.state.session_factory() as session:
        session.get(User, user.id).email = f"moved.{secrets.token_hex(5)}@example.com"
        session.commit()

    assert_invalid_token(confirm(client, token))
    assert login(client, user.username, user.password).status_code == 200
