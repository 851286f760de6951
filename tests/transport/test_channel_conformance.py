"""One conformance suite for every channel: websockets on 127.0.0.1 and the in-memory twin.

The suite itself is public (:mod:`caresync.testing.channel_suite`), so that a third-party
transport runs the same tests; what only sockets show (refused connections, TLS) is here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trustme

from caresync import ConnectionLostError, InvalidInputError
from caresync.testing.channel_suite import ChannelSuite
from caresync.transport import (
    Channel,
    MemoryChannel,
    MemoryNetwork,
    WebSocketChannel,
    connect_websocket,
    serve_websockets,
)


@asynccontextmanager
async def websocket_pair(max_frame_bytes: int) -> AsyncIterator[tuple[Channel, Channel]]:
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)
        await done.wait()

    listener = await serve_websockets(handler, "127.0.0.1", 0, max_frame_bytes=max_frame_bytes)
    client = await connect_websocket(listener.url, max_frame_bytes=max_frame_bytes)
    server = await accepted.get()
    try:
        yield client, server
    finally:
        done.set()
        await client.close()
        await listener.close()


@asynccontextmanager
async def memory_pair(max_frame_bytes: int) -> AsyncIterator[tuple[Channel, Channel]]:
    network = MemoryNetwork()
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)
        await done.wait()

    listener = await network.host("server").listen(
        handler, max_frame_bytes=max_frame_bytes, max_queued_frames=16
    )
    link = network.link("laptop")
    client = await link.connect(listener.url)
    client.set_limits(max_frame_bytes=max_frame_bytes, max_queued_frames=16)
    server = await accepted.get()
    try:
        yield client, server
    finally:
        done.set()
        await client.close()
        await listener.close()


class TestWebSocketChannel(ChannelSuite):
    def pair(self, max_frame_bytes: int) -> AbstractAsyncContextManager[tuple[Channel, Channel]]:
        return websocket_pair(max_frame_bytes)

    async def cut(self, client: Channel, server: Channel) -> None:
        # A network failure: the TCP connection is aborted, no closing handshake.
        assert isinstance(client, WebSocketChannel)
        client._connection.transport.abort()


class TestMemoryChannel(ChannelSuite):
    def pair(self, max_frame_bytes: int) -> AbstractAsyncContextManager[tuple[Channel, Channel]]:
        return memory_pair(max_frame_bytes)

    async def cut(self, client: Channel, server: Channel) -> None:
        assert isinstance(client, MemoryChannel)
        client.cut()


async def test_connecting_to_nothing_is_connection_lost() -> None:
    listener = await serve_websockets(lambda ch: asyncio.sleep(0), "127.0.0.1", 0)
    url = listener.url
    await listener.close()
    with pytest.raises(ConnectionLostError):
        await connect_websocket(url, open_timeout=5)
    with pytest.raises(InvalidInputError):
        await connect_websocket("http://127.0.0.1:1")


async def test_tls_with_a_trusted_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(channel: Channel) -> None:
        await got.put(await channel.recv())

    listener = await serve_websockets(handler, "127.0.0.1", 0, ssl=server_ctx)
    assert listener.url.startswith("wss://")
    client = await connect_websocket(listener.url, ssl=client_ctx)
    await client.send(b"over tls")
    assert await got.get() == b"over tls"
    await client.close()
    # A client that does not trust the certificate cannot connect.
    with pytest.raises(ConnectionLostError):
        await connect_websocket(listener.url, ssl=ssl.create_default_context())
    await listener.close()
