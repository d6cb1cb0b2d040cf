"""Raw request bodies: size limit (with and without Content-Length), content types, malformed JSON and UTF-8."""

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from users_service.tests.support import assert_error, assert_public_user, unique_username

MAX_BODY_BYTES = 65_536
SECRET_PASSWORD = "Sup3r-Secret-Pw-42"


def signup_body_of_size(size: int) -> bytes:
    """A valid sign-up body, padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps({"username": unique_username("size"), "password": SECRET_PASSWORD}).encode()
    return body + b" " * (size - len(body))


def in_chunks(body: bytes, chunk_size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(body), chunk_size):
        yield body[start : start + chunk_size]


def post_json_bytes(client: TestClient, body: bytes, content_type: str = "application/json") -> Response:
    return client.post("/users", content=body, headers={"Content-Type": content_type})


def post_chunked(client: TestClient, body: bytes) -> Response:
    request = client.build_request(
        "POST", "/users", content=in_chunks(body), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers  # the server learns the size only by reading
    return client.send(request)


def test_a_body_of_exactly_64_kib_is_accepted(client: TestClient) -> None:
    response = post_json_bytes(client, signup_body_of_size(MAX_BODY_BYTES))

    assert response.status_code == 201, response.text
    assert_public_user(response.json())


@pytest.mark.parametrize(("method", "path"), [("POST", "/users"), ("PATCH", "/users/me"), ("PATCH", "/users/1")])
def test_a_body_one_byte_over_64_kib_is_413(client: TestClient, method: str, path: str) -> None:
    response = client.request(
        method, path, content=signup_body_of_size(MAX_BODY_BYTES + 1), headers={"Content-Type": "application/json"}
    )

    assert_error(response, 413)


def test_a_chunked_body_over_64_kib_is_413(client: TestClient) -> None:
    assert_error(post_chunked(client, signup_body_of_size(MAX_BODY_BYTES + 4096)), 413)


def test_a_chunked_body_within_64_kib_is_accepted(client: TestClient) -> None:
    response = post_chunked(client, signup_body_of_size(20_000))

    assert response.status_code == 201, response.text


MALFORMED_BODIES = {
    "truncated JSON": b'{"username": "someone", "password": "' + SECRET_PASSWORD.encode(),
    "single-quoted JSON": b"{'username': 'someone', 'password': '" + SECRET_PASSWORD.encode() + b"'}",
    "trailing comma": b'{"username": "someone", "password": "' + SECRET_PASSWORD.encode() + b'",}',
    "empty body": b"",
    "JSON array": b'["someone", "' + SECRET_PASSWORD.encode() + b'"]',
    "JSON string": b'"' + SECRET_PASSWORD.encode() + b'"',
    "JSON number": b"42",
    "JSON null": b"null",
    "JSON true": b"true",
    "deeply nested arrays": b"[" * 20_000 + b"]" * 20_000,
    "deeply nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep nesting inside a field": (
        b'{"username": "someone", "password": "'
        + SECRET_PASSWORD.encode()
        + b'", "full_name": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}"
    ),
    "invalid UTF-8": b'{"username": "bad\xff\xfename", "password": "' + SECRET_PASSWORD.encode() + b'"}',
    "a lone UTF-8 continuation byte": b'{"username": "someone", "password": "' + SECRET_PASSWORD.encode() + b'\x80"}',
    "lone UTF-16 surrogate escape": b'{"username": "someone", "password": "' + SECRET_PASSWORD.encode() + b'\\ud800"}',
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_malformed_json_bodies_are_422_without_echoing_the_password(
    client: TestClient, body: bytes, content_type: str
) -> None:
    response = post_json_bytes(client, body, content_type)

    assert_error(response, 422)
    assert SECRET_PASSWORD not in response.text


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", json.dumps({"username": "plaintext", "password": SECRET_PASSWORD}).encode()),
        ("application/x-www-form-urlencoded", f"username=formuser&password={SECRET_PASSWORD}".encode()),
        ("application/xml", f"<user><password>{SECRET_PASSWORD}</password></user>".encode()),
    ],
    ids=["text/plain", "form", "xml"],
)
def test_another_content_type_is_422(client: TestClient, content_type: str, body: bytes) -> None:
    # docs/api.md allows 415 or 422 here; the services answer 422, one code for every JSON endpoint.
    response = post_json_bytes(client, body, content_type)

    assert_error(response, 422)
    assert SECRET_PASSWORD not in response.text


@pytest.mark.parametrize(("method", "path"), [("GET", "/no/such/route"), ("PUT", "/users/me"), ("POST", "/users/me")])
def test_unknown_routes_and_methods_answer_json_errors(client: TestClient, method: str, path: str) -> None:
    assert_error(client.request(method, path), {404, 405})
