"""The client's address as both services see it: the socket peer, or X-Forwarded-For behind trusted proxies.

Addresses come out normalised (an IPv4-mapped IPv6 address as IPv4, no IPv6 scope id), so one client has one
address, an IPv4 range matches it whichever way it arrived, and it always fits the 64-character columns.
"""

import ipaddress
from collections.abc import Iterable, Sequence

from fastapi import Request

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The width of the address columns (login_failures.address and the like).
MAX_ADDRESS_LENGTH = 64


def parse_trusted_proxies(entries: Iterable[str], *, skip_invalid: bool = False) -> tuple[IpNetwork, ...]:
    """TRUSTED_PROXIES as networks, parsed once when the app is built; ValueError names an entry that is neither.

    A typo there would otherwise trust nobody silently, and every client behind the ingress would share one
    address (and one login throttle).
    """
    networks = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            if skip_invalid:
                continue
            raise ValueError(f"TRUSTED_PROXIES: {entry!r} is not an address or a CIDR range") from None
        # `::ffff:10.0.0.0/104` means 10.0.0.0/8: addresses are compared unwrapped.
        if network.version == 6 and network.network_address.ipv4_mapped and network.prefixlen >= 96:
            network = ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
        networks.append(network)
    return tuple(networks)


def normalised_ip(text: str) -> IpAddress | None:
    """`text` as an address, IPv4-mapped IPv6 unwrapped and any scope id (`%eth0`) dropped; None if not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        # Rebuilt from its integer: the same address without the scope id, at most 39 characters.
        return ipaddress.IPv6Address(int(ip))
    return ip


def _is_trusted(address: str | IpAddress, trusted_proxies: Sequence[str | IpNetwork]) -> bool:
    ip = normalised_ip(address) if isinstance(address, str) else address
    if ip is None:
        return False
    networks = _as_networks(trusted_proxies)
    return any(ip in network for network in networks)


def _as_networks(trusted_proxies: Sequence[str | IpNetwork]) -> Sequence[IpNetwork]:
    # Strings still work for callers that hold the raw setting; the app parses it once (app.state).
    if all(not isinstance(entry, str) for entry in trusted_proxies):
        return trusted_proxies  # type: ignore[return-value]
    return parse_trusted_proxies((str(entry) for entry in trusted_proxies), skip_invalid=True)


def client_address(
    *,
    socket_address: str | None,
    forwarded_for: str | Sequence[str] | None,
    trusted_proxies: Sequence[str | IpNetwork],
) -> str:
    """The client's address: the socket peer, unless that peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For (every header line, in order, as one list) is read from the right,
    skipping trusted hops; the first untrusted address is the client. Anything unparsable falls back to the
    socket peer.
    """
    peer_ip = normalised_ip(socket_address) if socket_address else None
    peer = str(peer_ip) if peer_ip is not None else (socket_address or "unknown")[:MAX_ADDRESS_LENGTH]
    lines = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for or ())
    networks = _as_networks(trusted_proxies)
    if not lines or peer_ip is None or not _is_trusted(peer_ip, networks):
        return peer
    hops = [hop for line in lines for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        ip = normalised_ip(hop)
        if ip is None:
            return peer
        if not _is_trusted(ip, networks):
            return str(ip)
    return peer


def request_client_address(request: Request) -> str:
    """`client_address` of a request, with the networks its app parsed from TRUSTED_PROXIES at start-up."""
    return client_address(
        socket_address=request.client.host if request.client else None,
        forwarded_for=request.headers.getlist("x-forwarded-for"),
        trusted_proxies=request.app.state.trusted_proxies,
    )
