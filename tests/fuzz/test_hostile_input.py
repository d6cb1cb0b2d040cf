"""Targeted hostile input that random fuzzing rarely produces, against real gunicorn processes.

tests/test_errors.py already covers: bodies over 64 KiB (with and without Content-Length), a body
of exactly 64 KiB, malformed JSON, invalid UTF-8 in one JSON field, arrays nested 10,000 deep,
a wrong content type, invalid UTF-8 in a form field, a missing form field, bad bearer tokens.
This file adds: NUL bytes and invalid UTF-8 (raw bytes, percent-escaped, overlong, CESU surrogates,
JSON `\\u0000` and lone-surrogate escapes) in every string field of every JSON and form body; objects
nested deep, nesting inside field values, over-long integers; huge and odd `limit`/`offset`/ids;
CR/LF and control characters in X-Request-ID and other headers, request smuggling shapes, forged
log lines. The rule everywhere: a 4xx JSON `{"detail": ...}` (or the endpoint's documented answer),
never a 5xx, never a stack trace in the logs, and the service still answers afterwards.
"""

import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

import pytest
import requests

from tests.fuzz.conftest import FUZZ_PASSWORD, FuzzStack, unhandled_lines

TIMEOUT = 15
SANE_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,256}$")


@dataclass(frozen=True)
class Body:
    """One JSON or form body of one endpoint, valid as it stands; `fields` are its string fields."""

    name: str
    service: str
    method: str
    path: str
    kind: str  # "json" or "form"
    fields: tuple[str, ...]
    auth: str | None = None  # None, "self": a token of the user whose id is in the path
    ok_statuses: tuple[int, ...] = ()  # besides 422: what a field with NUL may legitimately get


BODIES = [
    Body("sign-up", "users", "POST", "/users", "json", ("username", "password", "email", "full_name")),
    Body(
        "patch-me",
        "users",
        "PATCH",
        "/users/me",
        "json",
        ("email", "full_name", "password", "current_password"),
        "self",
    ),
    Body(
        "patch-user",
        "users",
        "PATCH",
        "/users/{id}",
        "json",
        ("email", "full_name", "password", "current_password"),
        "self",
    ),
    # Form fields are free text to the OAuth2 endpoints: a NUL is a wrong credential or an unknown
    # grant or token, not malformed form encoding, so 400/401 (/token) and 200 (/revoke) are right too.
    Body(
        "token-password",
        "auth",
        "POST",
        "/token",
        "form",
        ("grant_type", "username", "password"),
        ok_statuses=(400, 401),
    ),
    # `scope` is accepted and ignored (no scopes exist), whatever it holds.
    Body("token-scope", "auth", "POST", "/token", "form", ("scope",), ok_statuses=(200,)),
    Body("token-refresh", "auth", "POST", "/token", "form", ("grant_type", "refresh_token"), ok_statuses=(400, 401)),
    Body("revoke", "auth", "POST", "/revoke", "form", ("token", "token_type_hint"), ok_statuses=(200,)),
]
FIELD_CASES = [(body, field) for body in BODIES for field in body.fields]
FIELD_IDS = [f"{body.name}.{field}" for body, field in FIELD_CASES]

# Byte sequences that are not UTF-8: a stray byte, an overlong '/', a CESU-8 surrogate, a truncated sequence.
INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"]
INVALID_UTF8_IDS = ["stray-ff", "overlong", "surrogate", "truncated"]


@dataclass
class Prepared:
    url: str
    values: dict[str, str]
    headers: dict[str, str]


def _base_url(stack: FuzzStack, service: str) -> str:
    return stack.auth_url if service == "auth" else stack.users_url


def _prepare(stack: FuzzStack, body: Body) -> Prepared:
    """The endpoint's URL, a valid body for it, and the headers (a token where one is needed)."""
    user_id, username = stack.new_user()
    path = body.path.replace("{id}", str(user_id))
    headers = {"Authorization": f"Bearer {stack.token_for(user_id)}"} if body.auth else {}
    values = {
        "sign-up": {
            "username": f"hi_{secrets.token_hex(5)}",
            "password": "valid password 1",
            "email": f"someone.{secrets.token_hex(4)}@example.org",
            "full_name": "Some One",
        },
        "patch-me": {
            "email": f"other.{secrets.token_hex(4)}@example.org",
            "full_name": "Other Name",
            "password": "a new password 1",
            "current_password": FUZZ_PASSWORD,
        },
        "token-password": {"grant_type": "password", "username": username, "password": FUZZ_PASSWORD},
        "token-scope": {"grant_type": "password", "username": username, "password": FUZZ_PASSWORD, "scope": "openid"},
        "token-refresh": {"grant_type": "refresh_token", "refresh_token": secrets.token_urlsafe(32)},
        "revoke": {"token": secrets.token_urlsafe(32), "token_type_hint": "refresh_token"},
    }
    values["patch-user"] = dict(values["patch-me"])
    return Prepared(f"{_base_url(stack, body.service)}{path}", values[body.name], headers)


def _json_bytes(values: dict[str, str], field: str, raw: bytes) -> bytes:
    """A JSON object whose `field` holds `raw` verbatim between the quotes (raw may be invalid JSON text)."""
    marker = "@@FIELD@@"
    text = json.dumps({**values, field: marker}).encode()
    return text.replace(marker.encode(), raw)


def _form_bytes(values: dict[str, str], field: str, raw: bytes) -> bytes:
    parts = []
    for name, value in values.items():
        encoded = raw if name == field else quote_from_bytes(value.encode()).encode()
        parts.append(name.encode() + b"=" + encoded)
    return b"&".join(parts)


def _send(prepared: Prepared, body: Body, payload: bytes) -> requests.Response:
    content_type = "application/json" if body.kind == "json" else "application/x-www-form-urlencoded"
    return requests.request(
        body.method,
        prepared.url,
        data=payload,
        headers={**prepared.headers, "Content-Type": content_type},
        timeout=TIMEOUT,
    )


def assert_json_error(response: requests.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    if response.status_code >= 400:
        assert "detail" in body, body
        assert "Traceback" not in response.text and "psycopg2" not in response.text and "SELECT" not in response.text


@pytest.fixture(autouse=True)
def _services_survive(fuzz_stack: FuzzStack) -> Iterator[None]:
    yield
    for base in (fuzz_stack.auth_url, fuzz_stack.users_url):
        assert requests.get(f"{base}/healthz", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("body", BODIES, ids=[body.name for body in BODIES])
def test_valid_body_is_accepted(fuzz_stack: FuzzStack, body: Body) -> None:
    """The baseline the other tests change one field of is itself fine (else a 422 below proves nothing)."""
    prepared = _prepare(fuzz_stack, body)
    if body.kind == "json":
        payload = json.dumps(prepared.values).encode()
    else:
        payload = _form_bytes(prepared.values, "", b"")
    response = _send(prepared, body, payload)
    # A made-up refresh token is refused (401); everything else is a success.
    assert response.status_code == (401 if body.name == "token-refresh" else 201 if body.name == "sign-up" else 200), (
        response.text
    )


# Passwords are only hashed, never stored as text, and may hold any Unicode (docs/api.md): a NUL in one
# is a character like any other. A wrong current_password is 400.
NUL_ALLOWED_IN_JSON = {"password": (200, 201), "current_password": (400,)}


@pytest.mark.parametrize(("body", "field"), FIELD_CASES, ids=FIELD_IDS)
@pytest.mark.parametrize("where", ["alone", "inside"])
def test_nul_in_every_string_field(fuzz_stack: FuzzStack, body: Body, field: str, where: str) -> None:
    prepared = _prepare(fuzz_stack, body)
    value = prepared.values[field] or "x"
    nul_value = "\x00" if where == "alone" else value[:3] + "\x00" + value[3:]
    if body.kind == "json":
        # The JSON escape (valid JSON text), then a raw NUL byte (a control character JSON forbids).
        escaped = json.dumps({**prepared.values, field: nul_value}).encode()
        assert_json_error(_send(prepared, body, escaped), 422, *NUL_ALLOWED_IN_JSON.get(field, ()))
        raw = _json_bytes(prepared.values, field, nul_value.encode())
        assert_json_error(_send(prepared, body, raw), 422)
    else:
        for encoded in (quote_from_bytes(nul_value.encode()).encode(), nul_value.encode()):
            response = _send(prepared, body, _form_bytes(prepared.values, field, encoded))
            assert_json_error(response, 422, *body.ok_statuses)


@pytest.mark.parametrize(("body", "field"), FIELD_CASES, ids=FIELD_IDS)
@pytest.mark.parametrize("bad", INVALID_UTF8, ids=INVALID_UTF8_IDS)
def test_invalid_utf8_in_every_string_field(fuzz_stack: FuzzStack, body: Body, field: str, bad: bytes) -> None:
    prepared = _prepare(fuzz_stack, body)
    if body.kind == "json":
        assert_json_error(_send(prepared, body, _json_bytes(prepared.values, field, b"ab" + bad + b"cd")), 422)
    else:
        for encoded in (b"ab" + bad + b"cd", b"ab" + quote_from_bytes(bad).encode() + b"cd"):
            assert_json_error(_send(prepared, body, _form_bytes(prepared.values, field, encoded)), 422)


JSON_FIELD_CASES = [(case, case_id) for case, case_id in zip(FIELD_CASES, FIELD_IDS) if case[0].kind == "json"]


@pytest.mark.parametrize(
    ("body", "field"), [case for case, _ in JSON_FIELD_CASES], ids=[i for _, i in JSON_FIELD_CASES]
)
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "ab\\ud83dcd"], ids=["high", "low", "half-pair"])
def test_lone_surrogate_escape_in_every_json_field(fuzz_stack: FuzzStack, body: Body, field: str, escape: str) -> None:
    """`"\\ud800"` is valid JSON text (ASCII) but no Unicode string PostgreSQL or UTF-8 can hold: 422, not 500."""
    prepared = _prepare(fuzz_stack, body)
    assert_json_error(_send(prepared, body, _json_bytes(prepared.values, field, escape.encode())), 422)


def test_password_with_nul_works_whole_and_is_not_cut_at_the_nul(fuzz_stack: FuzzStack) -> None:
    """Where NUL is accepted in a password, all of it counts: no C-string truncation in hashing or form parsing."""
    username = f"nul_{secrets.token_hex(5)}"
    password = "before\x00after-nul"
    signed_up = requests.post(
        f"{fuzz_stack.users_url}/users", json={"username": username, "password": password}, timeout=TIMEOUT
    )
    if signed_up.status_code == 422:
        pytest.skip("NUL is refused in passwords (422): nothing can be cut at it")
    assert signed_up.status_code == 201, signed_up.text
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    login = f"{fuzz_stack.auth_url}/token"

    def attempt(secret: str) -> int:
        body = f"username={username}&password={quote_from_bytes(secret.encode())}".encode()
        return requests.post(login, data=body, headers=form, timeout=TIMEOUT).status_code

    assert attempt(password) == 200
    assert attempt("before") == 401
    assert attempt("before\x00") == 401
    assert attempt("before\x00after-nuX") == 401


# --- Nesting and over-long numbers -----------------------------------------------------------------


def _nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


JSON_ENDPOINTS = [body for body in BODIES if body.kind == "json"]


@pytest.mark.parametrize("body", JSON_ENDPOINTS, ids=[body.name for body in JSON_ENDPOINTS])
@pytest.mark.parametrize(
    "payload",
    [
        _nested_object(6_000),  # 36 KB, well past Python's recursion limit
        b"[" * 30_000 + b"]" * 30_000,  # 60 KB, under the body limit
        b'{"username": ' + b"[" * 20_000 + b"]" * 20_000 + b', "password": "valid password 1"}',
        b'{"full_name": ' + _nested_object(5_000) + b"}",
        b'{"username": "abc", "password": "valid password 1", "email": ' + b"9" * 20_000 + b"}",
        b'{"username": "abc", "password": "valid password 1", "full_name": -' + b"1" * 5_000 + b"e99999}",
    ],
    ids=["objects", "arrays", "array-in-field", "object-in-field", "20000-digit-int", "huge-float"],
)
def test_deep_or_huge_json_is_422(fuzz_stack: FuzzStack, body: Body, payload: bytes) -> None:
    prepared = _prepare(fuzz_stack, body)
    assert len(payload) <= 65_536
    assert_json_error(_send(prepared, body, payload), 422)


# --- limit, offset, ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=100", 200),
        ("limit=1&offset=2147483647", 200),
        ("limit=101", 422),
        ("limit=0", 422),
        ("limit=-1", 422),
        ("offset=-1", 422),
        ("limit=" + "9" * 40, 422),
        ("offset=" + "9" * 40, 422),
        ("offset=2147483648", 422),
        ("offset=9223372036854775808", 422),
        ("limit=" + "9" * 5000, 422),
        ("limit=1e3", 422),
        ("limit=NaN", 422),
        ("limit=Infinity", 422),
        ("limit=0x10", 422),
        ("limit=", 422),
        ("limit=%00", 422),
        ("limit=5%00", 422),
        ("limit=%FF", 422),
        ("limit=1&limit=1000", 200),  # FastAPI takes the last? either way never 5xx; checked below
    ],
)
def test_huge_and_odd_limit_offset(fuzz_stack: FuzzStack, query: str, status: int) -> None:
    token = fuzz_stack.fresh_token(is_admin=True)
    response = requests.get(
        f"{fuzz_stack.users_url}/users?{query}", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    if query == "limit=1&limit=1000":
        # Repeated parameters: whichever one the framework takes, the cap holds.
        assert response.status_code in (200, 422), response.text
        if response.status_code == 200:
            assert response.json()["limit"] <= 100 and len(response.json()["items"]) <= 100
        return
    assert_json_error(response, status)
    if status == 200:
        page = response.json()
        assert page["limit"] <= 100 and len(page["items"]) <= page["limit"]


@pytest.mark.parametrize(
    ("user_id", "status"),
    [
        ("2147483647", 404),
        ("2147483648", 422),
        ("9223372036854775808", 422),
        ("9" * 5000, 422),
        ("0", 422),
        ("-1", 422),
        ("1.5", 422),
        ("1e3", 422),
        ("%00", 422),
        ("1%00", 422),
        ("%FF", 422),
        ("me%00", 422),
    ],
)
def test_huge_and_odd_user_ids(fuzz_stack: FuzzStack, user_id: str, status: int) -> None:
    token = fuzz_stack.fresh_token(is_admin=True)
    for method in ("GET", "PATCH", "DELETE"):
        response = requests.request(
            method,
            f"{fuzz_stack.users_url}/users/{user_id}",
            headers={"Authorization": f"Bearer {token}"},
            json={} if method == "PATCH" else None,
            timeout=TIMEOUT,
        )
        assert_json_error(response, status)


# --- Headers: CR/LF injection, control characters, smuggling ----------------------------------------


# A refusal of garbage takes the server no time: a 4xx or a closed connection within this, else it hangs.
ANSWER_SECONDS = 2.0


def raw_request(port: int, request: bytes, *, timeout: float = ANSWER_SECONDS) -> bytes:
    """Sends bytes as they are on a fresh connection; returns what the server sent.

    The server must, within `timeout`, close the connection (after an answer or without one) or send at least
    one complete response (it may then keep the connection open). Neither is a hung worker: the test fails.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            # Closed while the request was still going out: a refusal without an answer.
            return b""
        while (remaining := deadline - time.monotonic()) > 0:
            connection.settimeout(remaining)
            try:
                chunk = connection.recv(65_536)
            except ConnectionResetError:
                return b"".join(chunks)
            except TimeoutError:
                break
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    raw = b"".join(chunks)
    responses = split_responses(raw)
    complete = responses and b"\r\n\r\n" in raw and len(responses[0][2]) == _content_length(responses[0][1])
    assert complete, f"no complete answer and no close within {timeout} s: {raw[:500]!r}"
    return raw


def split_responses(raw: bytes) -> list[tuple[int, dict[bytes, list[bytes]], bytes]]:
    """Every HTTP/1.1 response in `raw` (status, headers, body): more than one means a smuggled request was answered."""
    responses = []
    rest = raw
    while rest.startswith(b"HTTP/1.1 "):
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = _content_length(headers)
        body, rest = rest[:length], rest[length:]
        responses.append((status, headers, body))
    return responses


def _content_length(headers: dict[bytes, list[bytes]]) -> int:
    return int(headers.get(b"content-length", [b"0"])[0])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _get(path: str, extra_headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra_headers + b"Connection: close\r\n\r\n"


HOSTILE_REQUEST_IDS = {
    "crlf-set-cookie": b"abc\r\nSet-Cookie: injected=1",
    "lf-only": b"abc\nX-Injected: 1",
    "cr-only": b"abc\rX-Injected: 1",
    "encoded-crlf": b"abc%0d%0aSet-Cookie:%20injected=1",
    "obs-fold": b"abc\r\n X-Injected: 1",
    "nul": b"abc\x00def",
    "control": b"abc\x1b[31mred\x7f",
    "non-ascii": "ид-запроса-☃".encode(),
    "invalid-utf8": b"abc\xff\xfe",
    "spaces-quotes": b'a b "c" <script>',
    "json-breaker": b'abc","level":"critical","msg":"forged',
    "too-long": b"r" * 8_000,
    "empty": b"",
}


@pytest.mark.parametrize("service", ["auth", "users"])
@pytest.mark.parametrize("value", list(HOSTILE_REQUEST_IDS.values()), ids=list(HOSTILE_REQUEST_IDS))
def test_hostile_x_request_id(fuzz_stack: FuzzStack, service: str, value: bytes) -> None:
    """Never split the response or echo an unsafe id; either refuse the request (400) or answer it normally."""
    raw = raw_request(_port(_base_url(fuzz_stack, service)), _get("/healthz", b"X-Request-ID: " + value + b"\r\n"))
    responses = split_responses(raw)
    assert len(responses) == 1, raw[:2000]
    status, headers, _ = responses[0]
    assert status in (200, 400), raw[:2000]
    assert b"set-cookie" not in headers and b"x-injected" not in headers, headers
    if status == 400:
        return
    for echoed in headers.get(b"x-request-id", []):
        assert SANE_REQUEST_ID.match(echoed.decode("latin-1")), echoed
        if not re.fullmatch(rb"[\x21-\x7e]{1,128}", value):
            assert echoed != value, "an unsafe X-Request-ID was echoed back as it came"


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer abc\r\nX-Injected: 1\r\n",
        b"Authorization: Bearer abc\x00def\r\n",
        b"Authorization: Bearer \xff\xfe\r\n",
        b"Authorization: Bearer " + b"a" * 8_000 + b"\r\n",
        b"Authorization: Bearer a\rb\r\n",
        b"Authorization:  \t Bearer\t \r\n",
        b"X Bad Name: 1\r\n",
        b"X-Many: " + b"v" * 100 + b"\r\n" * 1 + b"".join(b"X-H%d: v\r\n" % i for i in range(200)),
        b"X-Huge: " + b"h" * 70_000 + b"\r\n",
        b"Content-Type: application/json\x00\r\n",
    ],
    ids=["crlf", "nul", "invalid-utf8", "long-token", "bare-cr", "whitespace", "bad-name", "many", "huge", "nul-ct"],
)
def test_hostile_headers_on_an_authenticated_route(fuzz_stack: FuzzStack, header: bytes) -> None:
    raw = raw_request(_port(fuzz_stack.users_url), _get("/users/me", header))
    responses = split_responses(raw)
    # A parser may also just close the connection on garbage; what it must not do is answer 2xx or 5xx.
    assert len(responses) <= 1, raw[:2000]
    if responses:
        status, headers, _ = responses[0]
        assert status in (400, 401, 413, 422, 431), raw[:2000]
        assert b"x-injected" not in headers


SMUGGLING = {
    "cl-and-te": (
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /users/me HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "two-content-lengths": (
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Content-Length: 40\r\n\r\n{}GET /users/me HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "te-obfuscated": (
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: xchunked\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    ),
    "negative-length": b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    "huge-length": b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
    "bad-chunk-size": (
        b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff\r\n{}\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_request_smuggling_shapes_are_refused(fuzz_stack: FuzzStack, request_bytes: bytes) -> None:
    raw = raw_request(_port(fuzz_stack.users_url), request_bytes)
    responses = split_responses(raw)
    assert len(responses) <= 1, f"a smuggled request got its own answer: {raw[:2000]!r}"
    for status, _, _ in responses:
        assert 400 <= status < 500, raw[:2000]


@pytest.mark.parametrize("service", ["auth", "users"])
def test_newlines_cannot_forge_log_lines(fuzz_stack: FuzzStack, service: str) -> None:
    """A percent-encoded newline in the path, query or a header is logged escaped, never as a line of its own."""
    marker = f"FORGED-{secrets.token_hex(6)}"
    forged = f'{{"level":"CRITICAL","message":"{marker}"}}'
    encoded = requests.utils.quote("\n" + forged + "\n", safe="")
    base = _base_url(fuzz_stack, service)
    request_ids = [f"forge-{secrets.token_hex(6)}" for _ in range(2)]
    first = requests.get(
        f"{base}/no-such-path/{encoded}?q={encoded}",
        headers={"User-Agent": encoded, "X-Request-ID": request_ids[0]},
        timeout=TIMEOUT,
    )
    second = requests.get(f"{base}/users/{encoded}", headers={"X-Request-ID": request_ids[1]}, timeout=TIMEOUT)
    # /users/{id} exists only on the users service, where it wants a token first.
    expected = (404, 401 if service == "users" else 404)
    assert (first.status_code, second.status_code) == expected, (first.text, second.text)
    process = fuzz_stack.auth if service == "auth" else fuzz_stack.users
    # Read only once both requests' own lines are written, or a forged line could still be on its way.
    log = process.wait_for_request_lines(*request_ids)
    for line in log.splitlines():
        assert not line.startswith(forged[:20]) or marker not in line, line
        assert line.strip() != forged


def test_hostile_input_left_no_trace_in_logs(fuzz_stack: FuzzStack) -> None:
    logs = [process.wait_until_logged() for process in (fuzz_stack.auth, fuzz_stack.users)]
    unhandled = unhandled_lines(fuzz_stack.auth, fuzz_stack.users)
    assert not unhandled, unhandled[:5]
    assert "RecursionError" not in "".join(logs)
