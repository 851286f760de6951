"""What only the in-memory twin has, or shows exactly: its network, links, cuts and delays.

The behaviour both channels share is in the conformance suite; here, what a socket
cannot show deterministically (the sender held at the bound, frames in flight lost
by a cut) and the MemoryNetwork that replaces addresses and ports.
"""

from __future__ import annotations

import asyncio

import pytest

from caresync import ConnectionLostError, InsecureConnectionError, InvalidInputError
from caresync.transport import (
    Acceptor,
    Channel,
    Connector,
    MemoryChannel,
    MemoryNetwork,
    WebSocketConnector,
    memory_pipe,
)
from caresync.transport.memory import BUFFER_BYTES

WAIT_S = 10.0


async def _idle() -> None:
    """Let every ready task run until it waits (a bounded number of loop steps)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_sender_is_held_exactly_past_the_bound_until_the_reader_takes_one() -> None:
    client, server = memory_pipe()
    server.set_limits(max_frame_bytes=1 << 20, max_queued_frames=2)
    big = b"x" * (BUFFER_BYTES // 2 + 1)  # two of these fill the queue and the buffer
    await client.send(big)
    await client.send(big)
    third = asyncio.create_task(client.send(big))
    await _idle()
    assert not third.done()  # held: the reader is behind
    assert await server.recv() == big
    async with asyncio.timeout(WAIT_S):
        await third  # one taken, room for one
    client.cut()
    third = asyncio.create_task(client.send(b"y"))
    with pytest.raises(ConnectionLostError):
        async with asyncio.timeout(WAIT_S):
            await third


async def test_small_frames_wait_beyond_the_bound_as_in_socket_buffers() -> None:
    client, server = memory_pipe()
    server.set_limits(max_frame_bytes=1 << 20, max_queued_frames=1)
    for i in range(50):  # a few KiB: the network would hold them
        await client.send(b"%d" % i)
    assert [await server.recv() for _ in range(50)] == [b"%d" % i for i in range(50)]


async def test_a_cut_loses_frames_in_flight_and_a_close_does_not() -> None:
    client, server = memory_pipe()
    await client.send(b"in flight")
    client.cut()
    with pytest.raises(ConnectionLostError, match="cut"):
        await server.recv()

    client, server = memory_pipe()
    await client.send(b"sent before closing")
    await client.close("done")
    assert await server.recv() == b"sent before closing"
    with pytest.raises(ConnectionLostError, match="done"):
        await server.recv()


async def test_a_delay_holds_each_frame_but_not_the_sender() -> None:
    client, server = memory_pipe(delay=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(5):
        await client.send(bytes([i]))
    assert loop.time() - started < 0.02  # sending does not wait for the delay
    assert [await server.recv() for _ in range(5)] == [bytes([i]) for i in range(5)]
    assert loop.time() - started >= 0.02  # latency, not throughput: about one delay


async def test_a_network_connects_links_to_listeners_by_name() -> None:
    network = MemoryNetwork()
    host = network.host("server")
    assert isinstance(host, Acceptor)
    link = network.link("north")
    assert isinstance(link, Connector)
    assert network.link("north") is link
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    release = asyncio.Event()  # the test reads the server ends itself; then they end

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)
        await release.wait()

    with pytest.raises(ConnectionLostError, match="nothing listens"):
        await link.connect("memory://server")
    listener = await host.listen(handler, max_frame_bytes=16 * 1024, max_queued_frames=4)
    assert listener.url == link.url == "memory://server"
    assert network.listening("server")
    with pytest.raises(ConnectionLostError, match="in use"):
        await network.host("server").listen(handler, max_frame_bytes=1024, max_queued_frames=4)
    client = await link.connect(link.url)
    server = await accepted.get()
    assert server.peer == "north"
    assert client.peer == "server"
    # The server's end starts with the listener's limits (pre-login: small).
    await client.send(b"z" * (16 * 1024 + 1))
    with pytest.raises(Exception, match="limit"):
        await server.recv()
    assert link.connects == 1

    release.set()
    await listener.close()
    assert not network.listening("server")
    # A server restarted on the same name is reached by the same URL.
    again = await network.host("server").listen(
        handler, max_frame_bytes=1 << 20, max_queued_frames=16
    )
    channel = await link.connect(link.url)
    await channel.send(b"hello again")
    assert await (await accepted.get()).recv() == b"hello again"
    await again.close()


async def test_a_cut_link_drops_its_channels_and_refuses_new_ones_until_restored() -> None:
    network = MemoryNetwork(delay=0.001)
    served: list[MemoryChannel] = []

    async def handler(channel: Channel) -> None:
        assert isinstance(channel, MemoryChannel)
        served.append(channel)
        while True:
            await channel.send(await channel.recv())  # echo until the link drops

    listener = await network.host().listen(handler, max_frame_bytes=1024, max_queued_frames=4)
    north, south = network.link("north"), network.link("south", delay=0)
    assert north.delay == 0.001
    assert south.delay == 0
    a = await north.connect(north.url)
    b = await south.connect(south.url)
    assert north.connections == south.connections == 1
    north.cut()
    assert not north.up
    with pytest.raises(ConnectionLostError):
        await a.recv()
    with pytest.raises(ConnectionLostError, match="cut"):
        await north.connect(north.url)
    await b.send(b"south is fine")
    assert await b.recv() == b"south is fine"
    north.restore()
    c = await north.connect(north.url)
    await c.send(b"back")
    assert await c.recv() == b"back"
    north.drop()  # a blip: the link stays up
    assert north.up
    with pytest.raises(ConnectionLostError):
        await c.recv()
    await listener.close()


def test_urls_and_names_are_checked() -> None:
    network = MemoryNetwork()
    link = network.link("north")
    assert link.check_url("memory://server") == "memory://server"
    assert link.check_url("memory://server", insecure=True) == "memory://server"
    for bad in ("ws://127.0.0.1:1", "memory://", "memory://a b", "memory://" + "x" * 65, 7, None):
        with pytest.raises(InvalidInputError):
            link.check_url(bad)
    for name in ("", "a/b", "x" * 65):
        with pytest.raises(InvalidInputError):
            network.link(name)
        with pytest.raises(InvalidInputError):
            network.host(name)
    for delay in (-0.1, 61, True, "1"):
        with pytest.raises(InvalidInputError):
            MemoryNetwork(delay=delay)  # type: ignore[arg-type]
    # The websocket connector keeps its own policy: no memory URLs, no plain ws:// afar.
    sockets = WebSocketConnector()
    assert isinstance(sockets, Connector)
    with pytest.raises(InvalidInputError):
        sockets.check_url("memory://server")
    with pytest.raises(InsecureConnectionError):
        sockets.check_url("ws://10.0.0.5:8765")
    assert sockets.check_url("ws://10.0.0.5:8765", insecure=True) == "ws://10.0.0.5:8765"
