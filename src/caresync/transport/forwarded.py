"""Who a request came from when a trusted reverse proxy stands in front of the server.

Behind a load balancer every connection comes from the balancer's address, so the login
throttle's per-address count (:mod:`caresync.throttle`), the logs and the admin page's
"TLS or this machine" rule would all see one client. A proxy the operator names as
trusted (:func:`trusted_proxies`) says who its client was in ``X-Forwarded-For`` and
whether that client used TLS in ``X-Forwarded-Proto``; from any other peer those
headers are ignored (anyone can send them).

``X-Forwarded-For`` is read from its right end: each proxy appends the address it was
connected from, so the rightmost entries are the trusted proxies' own; the first entry,
from the right, that is not a trusted proxy is the client. Entries left of it were sent
by the client itself and prove nothing. A header that cannot be read there (a value
that is not an address) leaves the connection's own peer as the client, so a proxy
that forwards no usable header changes nothing. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from caresync.exceptions import InvalidInputError

__all__ = ["ClientAddress", "TrustedProxies", "forwarded_client", "trusted_proxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TrustedProxies = tuple[_Network, ...]
"""The networks whose connections may say who their client was (:func:`trusted_proxies`)."""

_MAX_ENTRIES = 64  # X-Forwarded-For entries looked at, from the right


class ClientAddress(NamedTuple):
    """Who a connection or request came from (:func:`forwarded_client`)."""

    host: str | None
    """The client's address (no port), or None if unknown."""
    tls: bool
    """True when the client used TLS: to this server, or, through a trusted proxy that
    says so (``X-Forwarded-Proto: https``), to that proxy."""
    via_proxy: bool
    """True when the address is one a trusted proxy gave."""


def trusted_proxies(entries: Iterable[str]) -> TrustedProxies:
    """The networks named by ``entries`` (addresses or CIDR networks: ``10.0.0.5``,
    ``10.0.0.0/24``, ``::1``); InvalidInputError naming an entry that is neither."""
    networks: list[_Network] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidInputError(
                f"a trusted proxy must be an address or a network, not {entry!r}"
            )
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise InvalidInputError(
                f"a trusted proxy must be an address or a network (10.0.0.5, 10.0.0.0/24, "
                f"::1), not {entry!r:.100}"
            ) from None
    return tuple(networks)


def forwarded_client(
    peer_host: str | None,
    tls: bool,
    headers: Sequence[tuple[str, str]],
    proxies: TrustedProxies,
) -> ClientAddress:
    """The client of a connection from ``peer_host`` (``tls``: over TLS to this server)
    whose request carried ``headers``: the peer itself, unless it is one of ``proxies``
    and says who its client was (see the module docstring)."""
    mine = ClientAddress(peer_host, tls, via_proxy=False)
    if not proxies or not _trusted(peer_host, proxies):
        return mine
    chain = [
        part.strip()
        for name, value in headers
        if name.lower() == "x-forwarded-for"
        for part in value.split(",")
    ]
    client: str | None = None
    for entry in reversed(chain[-_MAX_ENTRIES:]):
        address = _address(entry)
        if address is None:
            return mine  # not what a proxy writes: nothing of the chain is trusted
        if not _trusted(address, proxies):
            client = address
            break
    if client is None:
        return mine
    protos = [
        part.strip().lower()
        for name, value in headers
        if name.lower() == "x-forwarded-proto"
        for part in value.split(",")
    ]
    # Not said: not TLS. The proxy's own hop (``tls``) says nothing of its client's: a
    # proxy may take plain HTTP and re-encrypt to this server.
    forwarded_tls = bool(protos) and protos[-1] in ("https", "wss")
    return ClientAddress(client, forwarded_tls, via_proxy=True)


def _address(entry: str) -> str | None:
    """``entry`` as a canonical address (an IPv6 address may come in brackets, with a
    port after them; an IPv4 one with ``:port``), or None if it is not one. An IPv6
    zone (``fe80::1%eth0``: the proxy's link, any text) is dropped, and an IPv4-mapped
    address is its IPv4 one: one client is one throttle count, and nothing but an
    address reaches the logs."""
    text = entry
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or ipaddress.IPv6Address(int(address))
    return str(address)


def _trusted(host: str | None, proxies: TrustedProxies) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)
