"""``send_nowait``: frames written at once, in order, or none at all where ``send`` would
wait; one server frame shared by many websocket connections is framed once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
from tests.transport.test_channel_conformance import memory_pair, websocket_pair

from caresync.exceptions import ConnectionLostError
from caresync.transport import (
    NOWAIT_REPLY_BYTES,
    Channel,
    WebSocketChannel,
    closing_sender,
    nowait_sender,
    reply_nowait,
    send_reply,
)
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


def _writes_of(channel: WebSocketChannel) -> list[int]:
    """The sizes of the channel's writes to its socket from now on."""
    transport = channel._connection.transport
    write = transport.write
    sizes: list[int] = []

    def counted(data: bytes | bytearray | memoryview) -> None:
        sizes.append(len(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    return sizes


@pytest.mark.parametrize("side", ["client", "server"])
async def test_small_frames_go_in_one_write_and_arrive_whole_in_order(side: str) -> None:
    async with websocket_pair(1 << 20) as (client, server):
        sender, receiver = (client, server) if side == "client" else (server, client)
        assert isinstance(sender, WebSocketChannel)
        writes = _writes_of(sender)
        frames = [b"hello", b"", b"x" * 300, bytes(range(256)) * 40]
        assert sender.send_nowait(frames, shared=False)
        assert len(writes) == 1
        async with asyncio.timeout(LIMIT_S):
            assert [await receiver.recv() for _ in frames] == frames


@pytest.mark.parametrize("side", ["client", "server"])
async def test_large_frames_are_written_one_by_one_not_copied_together(side: str) -> None:
    async with websocket_pair(1 << 20) as (client, server):
        sender, receiver = (client, server) if side == "client" else (server, client)
        assert isinstance(sender, WebSocketChannel)
        writes = _writes_of(sender)
        frames = [b"a" * websocket_module._JOINED_MAX_BYTES, b"b"]
        assert sender.send_nowait(frames, shared=False)
        assert len(writes) == 2
        async with asyncio.timeout(LIMIT_S):
            assert [await receiver.recv() for _ in frames] == frames


async def test_a_reply_sent_once_does_not_push_shared_frames_out() -> None:
    shared = b"a live frame for every connection"
    async with websocket_pair(1 << 20) as (client, server):
        assert isinstance(server, WebSocketChannel)
        assert server.send_nowait([shared])
        kept = list(websocket_module._FRAMED)
        replies = [b"reply %d" % n for n in range(2 * websocket_module._FRAMED_KEPT)]
        assert server.send_nowait(replies, shared=False)
        assert kept == websocket_module._FRAMED  # nothing of the replies kept
        async with asyncio.timeout(LIMIT_S):
            assert [await client.recv() for _ in range(1 + len(replies))] == [shared, *replies]


async def test_only_a_small_reply_is_written_without_waiting(
    pair: tuple[Channel, Channel],
) -> None:
    client, server = pair
    send_nowait = nowait_sender(server)
    assert not reply_nowait(None, [b"no channel's send_nowait"])
    large = [b"a" * (NOWAIT_REPLY_BYTES // 2), b"b" * (NOWAIT_REPLY_BYTES // 2 + 1)]
    assert not reply_nowait(send_nowait, large)  # nothing written: send waits for the peer
    assert reply_nowait(send_nowait, [b"small", b"reply"])
    async with asyncio.timeout(LIMIT_S):
        assert [await client.recv(), await client.recv()] == [b"small", b"reply"]


async def test_a_reply_is_sent_whole_and_in_order_at_once_or_frame_by_frame(
    pair: tuple[Channel, Channel],
) -> None:
    """``send_reply`` (both sides' flush): a small reply through ``send_nowait``, a large
    one through ``send`` (counted), none of it lost or reordered either way."""
    client, server = pair
    sent: list[bytes] = []
    send = server.send

    async def counted(frame: bytes) -> None:
        sent.append(frame)
        await send(frame)

    server.send = counted  # type: ignore[method-assign]
    small = [b"small", b"reply"]
    large = [b"a" * (NOWAIT_REPLY_BYTES // 2), b"b" * (NOWAIT_REPLY_BYTES // 2 + 1)]
    await send_reply(server, nowait_sender(server), [])
    await send_reply(server, nowait_sender(server), small)
    assert sent == []  # written at once
    reading = asyncio.create_task(_received(client, 4))
    await send_reply(server, nowait_sender(server), large)
    assert sent == large  # frame by frame: each waits for the peer to take it
    async with asyncio.timeout(LIMIT_S):
        assert await reading == [*small, *large]


async def _received(channel: Channel, count: int) -> list[bytes]:
    return [await channel.recv() for _ in range(count)]


@pytest.mark.parametrize("side", ["client", "server"])
async def test_last_words_and_the_close_go_in_one_write_and_arrive_before_the_end(
    side: str,
) -> None:
    async with websocket_pair(1 << 20) as (client, server):
        sender, receiver = (client, server) if side == "client" else (server, client)
        assert isinstance(sender, WebSocketChannel)
        closing = closing_sender(sender)
        assert closing is not None
        writes = _writes_of(sender)
        assert closing([b"goodbye", b"really"], "done")
        assert len(writes) == 1
        async with asyncio.timeout(LIMIT_S):
            assert [await receiver.recv(), await receiver.recv()] == [b"goodbye", b"really"]
            with pytest.raises(ConnectionLostError):
                await receiver.recv()
            await sender.close()  # the closing handshake ends: nothing waits for its timeout
        assert sender.closed
        assert not closing([b"late"], "")  # closed: nothing written
        assert len(writes) == 1


async def test_large_last_words_are_not_joined_to_the_close() -> None:
    async with websocket_pair(1 << 20) as (client, server):
        closing = closing_sender(client)
        assert closing is not None
        assert not closing([b"a" * (websocket_module._JOINED_MAX_BYTES + 1)], "")
        assert not client.closed  # nothing written, the link open: send, then close
        assert nowait_sender(server) is not None


async def test_an_in_memory_channel_offers_no_joined_close() -> None:
    async with memory_pair(1 << 20) as (client, _server):
        assert closing_sender(client) is None
