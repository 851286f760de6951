"""A server behind a reverse proxy it trusts (``serve(trusted_proxies=...)``,
``caresync serve --trusted-proxy``): the proxy's ``X-Forwarded-For`` names each client
for the login throttle's per-address count and the logs, its ``X-Forwarded-Proto`` says
whether the admin page's password came over TLS; from any other peer the headers are
ignored. Real servers on 127.0.0.1, the test's connections standing in for the proxy
(they come from 127.0.0.1 and add the headers a proxy adds)."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from argon2 import PasswordHasher
from tests.cli.clitools import run_main
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD
from websockets.asyncio.client import connect

from caresync.exceptions import AuthenticationError
from caresync.protocol import ErrorCode
from caresync.server import SyncServer
from caresync.throttle import LoginThrottle
from caresync.transport.websocket import WebSocketChannel

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
FREE = 2  # failures an address may make before it is locked


async def _server(tmp_path: Path, proxies: list[str]) -> SyncServer:
    server = await SyncServer.open(
        tmp_path / "server.db",
        password_hasher=CHEAP,
        throttle=LoginThrottle(account_free=100, address_free=FREE, first_lock_s=300),
    )
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "boss", PASSWORD, admin=True)
    await server.serve("127.0.0.1", 0, trusted_proxies=proxies)
    return server


@pytest.fixture
async def behind_proxy(tmp_path: Path) -> AsyncIterator[SyncServer]:
    server = await _server(tmp_path, ["127.0.0.1"])
    try:
        yield server
    finally:
        await server.close()


async def _via_proxy(server: SyncServer, client: str) -> Hostile:
    """A connection from 127.0.0.1 saying, as a proxy would, that ``client`` opened it."""
    connection = await connect(
        server.url, additional_headers=[("X-Forwarded-For", client)], proxy=None
    )
    return await Hostile.over(WebSocketChannel(connection, server.url))


async def _try(server: SyncServer, client: str, username: str, password: str) -> ErrorCode | None:
    """One login through the proxy: the refusal's code, or None if it was let in."""
    hostile = await _via_proxy(server, client)
    try:
        try:
            await hostile.login(username, password, "clinic-a")
        except AuthenticationError:
            assert hostile.protocol.peer_error is not None
            return hostile.protocol.peer_error.code
        return None
    finally:
        await hostile.close()


async def _lock(server: SyncServer, client: str) -> None:
    """Lock ``client``'s address: wrong passwords at names no one has (so no account
    is locked), then one more, refused unchecked."""
    for n in range(FREE + 1):
        assert await _try(server, client, f"nobody-{n}", "wrong") == ErrorCode.BAD_CREDENTIALS
    assert await _try(server, client, "nobody-x", "wrong") == ErrorCode.THROTTLED


async def test_a_guesser_behind_the_proxy_locks_its_own_address_only(
    behind_proxy: SyncServer,
) -> None:
    await _lock(behind_proxy, "203.0.113.7")
    # Locked: even the right password from there is refused unchecked.
    assert await _try(behind_proxy, "203.0.113.7", "dr.a", PASSWORD) == ErrorCode.THROTTLED
    # Every other clinician comes through the same proxy, and is not locked out.
    assert await _try(behind_proxy, "198.51.100.9", "dr.a", PASSWORD) is None
    assert await _try(behind_proxy, "198.51.100.9", "dr.a", "typo") == ErrorCode.BAD_CREDENTIALS


async def test_an_address_the_guesser_writes_itself_is_not_believed(
    behind_proxy: SyncServer,
) -> None:
    # The proxy appends the address it saw (the rightmost): what the client put before
    # it is the client's own word, so changing it does not get the guesser a new count.
    await _lock(behind_proxy, "198.51.100.1, 203.0.113.7")
    assert await _try(behind_proxy, "192.0.2.55, 203.0.113.7", "dr.a", PASSWORD) == (
        ErrorCode.THROTTLED
    )


async def test_without_trusting_the_peer_the_headers_are_ignored(tmp_path: Path) -> None:
    # As before the option: every connection from the proxy is one address, the proxy's.
    server = await _server(tmp_path, ["10.0.0.0/8"])  # a proxy elsewhere, not 127.0.0.1
    try:
        await _lock(server, "203.0.113.7")
        assert await _try(server, "198.51.100.9", "dr.a", PASSWORD) == ErrorCode.THROTTLED
    finally:
        await server.close()


async def test_the_log_names_the_client_and_the_proxy(
    behind_proxy: SyncServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="caresync"):
        assert await _try(behind_proxy, "203.0.113.7", "dr.a", "wrong") == (
            ErrorCode.BAD_CREDENTIALS
        )
    lines = [record.getMessage() for record in caplog.records]
    assert any("203.0.113.7 via 127.0.0.1:" in line for line in lines), lines


def _admin_page(url: str, headers: dict[str, str], context: ssl.SSLContext | None = None) -> int:
    page = url.replace("wss://", "https://").replace("ws://", "http://") + "/admin"
    request = urllib.request.Request(page, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def test_the_admin_password_only_over_tls_to_the_proxy(behind_proxy: SyncServer) -> None:
    basic = "Basic " + base64.b64encode(f"boss@clinic-a:{PASSWORD}".encode()).decode()
    plain = {"Authorization": basic, "X-Forwarded-For": "203.0.113.7"}
    # Plain HTTP from another machine, even through the proxy: refused before the password.
    assert await asyncio.to_thread(_admin_page, behind_proxy.url, plain) == 403
    over_tls = {**plain, "X-Forwarded-Proto": "https"}
    assert await asyncio.to_thread(_admin_page, behind_proxy.url, over_tls) == 200


def test_serve_refuses_a_trusted_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    result = run_main(
        "serve", "--db", tmp_path / "server.db", "--port", "0", "--trusted-proxy", "proxy.lan"
    )
    assert result.code == 2
    assert "--trusted-proxy" in result.stderr
    assert "proxy.lan" in result.stderr
    assert not (tmp_path / "server.db").exists()


async def test_a_proxy_hop_over_tls_says_nothing_of_the_clients(tmp_path: Path) -> None:
    # A proxy that takes plain HTTP from its clients and re-encrypts to this server, but
    # sends no X-Forwarded-Proto: its own TLS is not its client's, so no password.
    ca = trustme.CA()
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    proxy_tls = ssl.create_default_context()
    ca.configure_trust(proxy_tls)
    server = await SyncServer.open(tmp_path / "server.db", password_hasher=CHEAP)
    await server.add_user("clinic-a", "boss", PASSWORD, admin=True)
    await server.serve("127.0.0.1", 0, ssl=server_tls, trusted_proxies=["127.0.0.1"])
    try:
        basic = "Basic " + base64.b64encode(f"boss@clinic-a:{PASSWORD}".encode()).decode()
        said = {"Authorization": basic, "X-Forwarded-For": "203.0.113.7"}
        assert await asyncio.to_thread(_admin_page, server.url, said, proxy_tls) == 403
        over_tls = {**said, "X-Forwarded-Proto": "https"}
        assert await asyncio.to_thread(_admin_page, server.url, over_tls, proxy_tls) == 200
    finally:
        await server.close()
