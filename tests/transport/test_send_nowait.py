"""``send_nowait``: frames written at once, in order, or none at all where ``send`` would
wait; one server frame shared by many websocket connections is framed once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
from tests.transport.test_channel_conformance import memory_pair, websocket_pair

from caresync.transport import Channel, WebSocketChannel, nowait_sender
from caresync.transport import websocket as websocket_module

PAIRS = {"websocket": websocket_pair, "memory": memory_pair}
LIMIT_S = 10.0


@pytest.fixture(params=sorted(PAIRS))
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Channel, Channel]]:
    make: AbstractAsyncContextManager[tuple[Channel, Channel]] = PAIRS[request.param](1 << 20)
    async with make as channels:
        yield channels


async def test_frames_arrive_in_order_after_what_was_sent_before(
    pair: tuple[Channel, Channel],
) -> None:
    client, server = pair
    send_nowait = nowait_sender(server)
    assert send_nowait is not None
    await server.send(b"first")
    assert send_nowait([b"second", b"third"])
    await server.send(b"fourth")
    async with asyncio.timeout(LIMIT_S):
        got = [await client.recv() for _ in range(4)]
    assert got == [b"first", b"second", b"third", b"fourth"]


async def test_a_closed_channel_takes_nothing(pair: tuple[Channel, Channel]) -> None:
    _client, server = pair
    send_nowait = nowait_sender(server)
    assert send_nowait is not None
    await server.close()
    assert not send_nowait([b"late"])


async def test_a_full_websocket_buffer_takes_nothing_and_the_frame_waits_for_send() -> None:
    async with websocket_pair(1 << 20) as (client, server):
        assert isinstance(server, WebSocketChannel)
        connection = server._connection
        connection.write_limit_high = 0  # as if its buffer were at the high-water mark
        assert not server.send_nowait([b"held"])
        connection.write_limit_high = 1 << 15
        assert server.send_nowait([b"sent"])
        async with asyncio.timeout(LIMIT_S):
            assert await client.recv() == b"sent"


async def test_one_frame_to_many_connections_is_framed_once() -> None:
    frame = b"the same live frame for everyone" * 10
    async with websocket_pair(1 << 20) as (one, a), websocket_pair(1 << 20) as (two, b):
        assert isinstance(a, WebSocketChannel)
        assert isinstance(b, WebSocketChannel)
        assert a.send_nowait([frame])
        framed = [w for kept, w in websocket_module._FRAMED if kept is frame]
        assert len(framed) == 1
        assert b.send_nowait([frame])
        assert [w for kept, w in websocket_module._FRAMED if kept is frame] == framed
        async with asyncio.timeout(LIMIT_S):
            assert await one.recv() == frame
            assert await two.recv() == frame


class Wrapper:
    """Forwards everything to an inner channel but ``send``, as a test's stalling one."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_wrapper_that_forwards_attributes_offers_no_send_nowait(
    pair: tuple[Channel, Channel],
) -> None:
    _client, server = pair
    assert nowait_sender(Wrapper(server)) is None  # type: ignore[arg-type]
