"""Who a connection came from behind a trusted proxy (caresync.transport.forwarded)."""

from __future__ import annotations

import pytest

from caresync.exceptions import InvalidInputError
from caresync.transport.forwarded import ClientAddress, forwarded_client, trusted_proxies

PROXY = trusted_proxies(["10.0.0.0/24", "::1"])


def xff(*values: str) -> tuple[tuple[str, str], ...]:
    return tuple(("X-Forwarded-For", value) for value in values)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_says() -> None:
    said = xff("203.0.113.7")
    assert forwarded_client("10.0.0.5", False, said, ()) == ClientAddress("10.0.0.5", False, False)
    # A peer that is not a trusted proxy is not believed either.
    assert forwarded_client("192.0.2.1", True, said, PROXY) == ClientAddress(
        "192.0.2.1", True, False
    )


def test_a_trusted_proxy_names_its_client_from_the_right_end() -> None:
    # The client wrote the first entry itself; the proxy appended the address it saw.
    said = xff("198.51.100.1, 203.0.113.7")
    assert forwarded_client("10.0.0.5", False, said, PROXY) == ClientAddress(
        "203.0.113.7", False, True
    )
    # Several proxies of ours in a row: the first address from the right not ours.
    chained = xff("198.51.100.1", "203.0.113.7, 10.0.0.9")
    assert forwarded_client("10.0.0.5", False, chained, PROXY).host == "203.0.113.7"
    # IPv6, bracketed with a port, and IPv4 with a port.
    assert forwarded_client("::1", False, xff("[2001:db8::7]:4431"), PROXY).host == "2001:db8::7"
    assert forwarded_client("::1", False, xff("203.0.113.7:5555"), PROXY).host == "203.0.113.7"
    # An IPv4 proxy seen through an IPv4-mapped IPv6 address is still the proxy.
    mapped = forwarded_client("::ffff:10.0.0.5", False, xff("203.0.113.7"), PROXY)
    assert mapped.host == "203.0.113.7"


@pytest.mark.parametrize(
    ("entry", "client"),
    [
        ("fe80::1%eth0", "fe80::1"),  # a zone names the proxy's link, not the client
        ("fe80::1%a b <i>\x85", "fe80::1"),  # nor may it carry text into logs and keys
        ("[fe80::1%eth1]:4431", "fe80::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # one client, one throttle count
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
    ],
)
def test_the_client_address_is_canonical(entry: str, client: str) -> None:
    assert forwarded_client("10.0.0.5", False, xff(entry), PROXY).host == client


@pytest.mark.parametrize(
    "headers",
    [
        (),
        xff(""),
        xff("not-an-address"),
        xff("203.0.113.7, unknown"),
        xff("10.0.0.7, 10.0.0.8"),  # nothing but our own proxies
    ],
    ids=["absent", "empty", "garbage", "garbage-at-the-right", "only-proxies"],
)
def test_a_header_that_cannot_be_read_leaves_the_peer(headers: tuple[tuple[str, str], ...]) -> None:
    assert forwarded_client("10.0.0.5", True, headers, PROXY) == ClientAddress(
        "10.0.0.5", True, False
    )


def test_the_proxy_says_whether_its_client_used_tls() -> None:
    said = xff("203.0.113.7")
    https = (*said, ("X-Forwarded-Proto", "https"))
    http = (*said, ("X-Forwarded-Proto", "https, http"))  # the rightmost: the proxy's
    assert forwarded_client("10.0.0.5", False, https, PROXY).tls is True
    assert forwarded_client("10.0.0.5", True, http, PROXY).tls is False
    # Not said: not TLS, even over TLS from the proxy (a proxy that takes plain HTTP and
    # re-encrypts to this server says nothing of its client's hop by its own).
    assert forwarded_client("10.0.0.5", True, said, PROXY).tls is False
    # Its own connection, without a client named, is the proxy's own and keeps its TLS.
    assert forwarded_client("10.0.0.5", True, (), PROXY).tls is True
    # From a peer that is not trusted, the header is ignored.
    assert forwarded_client("192.0.2.1", False, https, PROXY).tls is False


@pytest.mark.parametrize("entry", ["", "  ", "proxy.example.org", "10.0.0.0/33", "10.0.0.300"])
def test_a_trusted_proxy_that_is_not_an_address_is_refused(entry: str) -> None:
    with pytest.raises(InvalidInputError, match="trusted proxy"):
        trusted_proxies([entry])


def test_networks_and_addresses_are_taken() -> None:
    assert [str(n) for n in trusted_proxies(["10.0.0.5", "10.0.0.0/24", "::1"])] == [
        "10.0.0.5/32",
        "10.0.0.0/24",
        "::1/128",
    ]
