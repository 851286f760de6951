"""One conformance suite for every channel: websockets on 127.0.0.1 and the in-memory twin."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from caresync import ConnectionLostError, FrameTooLargeError, InvalidInputError
from caresync.transport import (
    Channel,
    MemoryListener,
    connect_websocket,
    serve_websockets,
)

Connect = Callable[[], Awaitable[Channel]]


@asynccontextmanager
async def websocket_pair(max_frame_bytes: int = 1 << 20) -> AsyncIterator[tuple[Channel, Channel]]:
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
async def memory_pair(max_frame_bytes: int = 1 << 20) -> AsyncIterator[tuple[Channel, Channel]]:
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)
        await done.wait()

    listener = MemoryListener(handler)
    client = await listener.connect("laptop")
    server = await accepted.get()
    # The in-memory twin enforces the limit on the receiving end, like websockets.
    client._max = server._max = max_frame_bytes  # type: ignore[attr-defined]
    try:
        yield client, server
    finally:
        done.set()
        await listener.close()


@pytest.fixture(params=["websocket", "memory"])
def make_pair(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return websocket_pair if request.param == "websocket" else memory_pair


async def test_frames_arrive_whole_and_in_order(make_pair) -> None:  # type: ignore[no-untyped-def]
    async with make_pair() as (client, server):
        frames = [bytes([i]) * (i * 100 + 1) for i in range(20)]
        for frame in frames:
            await client.send(frame)
        assert [await server.recv() for _ in frames] == frames
        await server.send(b"reply")
        assert await client.recv() == b"reply"


async def test_closing_one_end_is_connection_lost_on_the_other(make_pair) -> None:  # type: ignore[no-untyped-def]
    async with make_pair() as (client, server):
        await client.close()
        with pytest.raises(ConnectionLostError):
            await server.recv()
        with pytest.raises(ConnectionLostError):
            await client.send(b"after close")
        assert client.closed


async def test_oversized_frame_is_refused(make_pair) -> None:  # type: ignore[no-untyped-def]
    async with make_pair(max_frame_bytes=1024) as (client, server):
        await client.send(b"x" * 4096)
        with pytest.raises((FrameTooLargeError, ConnectionLostError)):
            await server.recv()


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
