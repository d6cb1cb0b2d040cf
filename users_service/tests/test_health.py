"""`/healthz` and `/readyz`, and 503 with `Retry-After` (never 500) while the database cannot be reached."""

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from shared.testing import settings_for_tests
from shared.tokens import AccessTokenIssuer
from users_service.app import create_app
from users_service.tests.support import Account, assert_retry_later, bearer

# Nothing listens on port 1: connections are refused at once.
UNREACHABLE_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:1/x"


def test_healthz_is_200(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_is_200_when_the_database_answers(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200, response.text


@dataclass
class DatabaseDown:
    client: TestClient
    token: str


@pytest.fixture(scope="module")
def database_down() -> Iterator[DatabaseDown]:
    settings = settings_for_tests(UNREACHABLE_DATABASE_URL)
    # raise_server_exceptions=False: a 500 must show up as a failed status check, not as a raised error.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield DatabaseDown(client, AccessTokenIssuer(settings).issue(user_id=1, token_version=0).token)


def test_healthz_stays_200_without_the_database(database_down: DatabaseDown) -> None:
    assert database_down.client.get("/healthz").status_code == 200


def test_readyz_is_503_with_retry_after_without_the_database(database_down: DatabaseDown) -> None:
    response = database_down.client.get("/readyz")

    assert_retry_later(response)
    assert "127.0.0.1" not in response.text and "psycopg2" not in response.text


REQUESTS_NEEDING_THE_DATABASE = [
    pytest.param(method, path, body, id=f"{method} {path}")
    for method, path, body in [
        ("GET", "/users/me", None),
        ("PATCH", "/users/me", {"full_name": "x"}),
        ("DELETE", "/users/me", None),
        ("GET", "/users", None),
        ("GET", "/users/1", None),
        ("POST", "/users", {"username": "nodatabase", "password": "password-123"}),
    ]
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS_NEEDING_THE_DATABASE)
def test_requests_needing_the_database_are_503_with_retry_after(
    database_down: DatabaseDown, method: str, path: str, body: dict | None
) -> None:
    response = database_down.client.request(method, path, json=body, headers=bearer(database_down.token))

    assert_retry_later(response)
    assert "password-123" not in response.text and "SELECT" not in response.text


class TcpRelay:
    """Forwards a local port to PostgreSQL while open: the database "comes back" on enter and "goes away" on exit."""

    def __init__(self, listen_port: int, target: tuple[str, int]) -> None:
        self._listen_port = listen_port
        self._target = target
        self._connections: list[socket.socket] = []
        self._closed = threading.Event()

    def __enter__(self) -> "TcpRelay":
        self._listener = socket.create_server(("127.0.0.1", self._listen_port))
        self._listener.settimeout(0.05)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closed.set()
        self._listener.close()
        for connection in self._connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._connections += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass


def unused_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_service_recovers_by_itself_when_the_database_comes_back(
    database_url: str, make_account: Callable[..., Account]
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("a database server that goes and comes back is a PostgreSQL matter")
    account = make_account()
    real = make_url(database_url)
    port = unused_local_port()
    settings = settings_for_tests(real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False))
    token = bearer(AccessTokenIssuer(settings).issue(user_id=account.id, token_version=0).token)

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert_retry_later(client.get("/readyz"))
        assert_retry_later(client.get("/users/me", headers=token))
        with TcpRelay(port, (real.host or "127.0.0.1", real.port or 5432)):
            assert client.get("/readyz").status_code == 200
            assert client.get("/users/me", headers=token).status_code == 200
        # Gone again: the pooled connections are now dead, and must not turn into 500s.
        assert_retry_later(client.get("/users/me", headers=token))
        with TcpRelay(port, (real.host or "127.0.0.1", real.port or 5432)):
            assert client.get("/users/me", headers=token).json()["id"] == account.id
            assert client.get("/readyz").status_code == 200


def test_an_exhausted_pool_answers_503_with_retry_after_then_recovers(
    database_url: str, make_account: Callable[..., Account]
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("the DB_POOL_* settings size the PostgreSQL engine's pool only")
    account = make_account()
    settings = settings_for_tests(database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.5)
    token = bearer(AccessTokenIssuer(settings).issue(user_id=account.id, token_version=0).token)

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        with client.app.state.engine.connect():  # holds the pool's only connection
            assert_retry_later(client.get("/users/me", headers=token))
        assert client.get("/users/me", headers=token).status_code == 200
