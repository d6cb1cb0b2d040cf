"""The client address behind proxies: every X-Forwarded-For line, IPv4-mapped peers, normalised and column-sized."""

import pytest
from fastapi import FastAPI, Request

from auth_service.tests.conftest import login
from shared.client_address import MAX_ADDRESS_LENGTH, parse_trusted_proxies, request_client_address

TRUSTED = ["10.0.0.0/8", "fd00::/8"]
LONG_SCOPED = "fe80::1%" + "x" * 100


def request_from(peer: str, *forwarded_for: str, trusted: list[str] = TRUSTED) -> Request:
    """A real Starlette request as the ASGI server hands it over: each X-Forwarded-For line its own header."""
    app = FastAPI()
    app.state.trusted_proxies = parse_trusted_proxies(trusted)
    headers = [(b"x-forwarded-for", line.encode("latin-1")) for line in forwarded_for]
    return Request({"type": "http", "app": app, "headers": headers, "client": (peer, 50000), "method": "GET"})


def test_every_forwarded_for_line_is_read_in_order():
    # The client sent a forged line; the trusted proxy added its own line (rather than appending to the first).
    request = request_from("10.0.0.1", "203.0.113.66", "198.51.100.7")

    assert request_client_address(request) == "198.51.100.7"


def test_trusted_hops_are_skipped_across_lines():
    request = request_from("10.0.0.1", "198.51.100.7, 10.2.3.4", "10.9.9.9")

    assert request_client_address(request) == "198.51.100.7"


def test_an_ipv4_mapped_peer_matches_an_ipv4_range():
    request = request_from("::ffff:10.0.0.1", "198.51.100.7")

    assert request_client_address(request) == "198.51.100.7"


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),
        ("::ffff:198.51.100.8", None, "198.51.100.8"),
        ("10.0.0.1", "fe80::1%eth0", "fe80::1"),
        ("10.0.0.1", LONG_SCOPED, "fe80::1"),
        ("10.0.0.1", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ],
    ids=["mapped-hop", "mapped-peer", "scope-id", "long-scope-id", "uncompressed"],
)
def test_addresses_are_normalised(peer, forwarded_for, expected):
    request = request_from(peer, *([forwarded_for] if forwarded_for else []))

    address = request_client_address(request)

    assert address == expected and len(address) <= MAX_ADDRESS_LENGTH


def test_a_mapped_ipv4_range_in_the_setting_matches_ipv4_peers():
    request = request_from("10.0.0.1", "198.51.100.7", trusted=["::ffff:10.0.0.0/104"])

    assert request_client_address(request) == "198.51.100.7"


def test_a_trusted_proxies_entry_that_is_no_address_stops_the_start():
    with pytest.raises(ValueError, match="not-a-range"):
        parse_trusted_proxies(["10.0.0.0/8", "not-a-range"])


def test_a_forwarded_address_longer_than_the_column_is_no_500(make_client):
    proxy = make_client(address="10.0.0.7", trusted_proxies=["10.0.0.0/8"], raise_server_exceptions=False)

    response = login(proxy, "nobody_here", "wrong password", **{"X-Forwarded-For": LONG_SCOPED})

    assert response.status_code == 401, response.text
