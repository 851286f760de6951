"""A replica and a server sync over the in-memory channel, with no socket and no harness.

Real parts: SyncServer and Replica, each on an SQLite file; the channel is a
MemoryNetwork's, with links the test cuts. What only sockets show (TLS, the HTTP
endpoints, TCP proxies) stays in the websocket e2e tests. Nothing sleeps: waits are
on status changes and received updates, each bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from caresync import ReplicaRevokedError
from caresync.replica import Replica, ReplicaState, backoff_delays
from caresync.server import SyncServer
from caresync.transport import MemoryNetwork

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ORG, PASSWORD = "clinic", "a passphrase"
WAIT_S = 20.0


def quick() -> Iterator[float]:
    return backoff_delays(0.001, maximum=0.01)


async def _until(replica: Replica, state: ReplicaState) -> None:
    reached = asyncio.Event()
    stop = replica.on_status(lambda now: reached.set() if now is state else None)
    try:
        if replica.state is not state:
            async with asyncio.timeout(WAIT_S):
                await reached.wait()
    finally:
        stop()


@asynccontextmanager
async def clinic(tmp_path: Path) -> AsyncIterator[tuple[MemoryNetwork, SyncServer]]:
    network = MemoryNetwork()
    server = await SyncServer.open(tmp_path / "server.db", password_hasher=CHEAP)
    try:
        await server.add_user(ORG, "dr.a", PASSWORD)
        listener = await server.listen(network.host("server"))
        assert server.url == listener.url == "memory://server"
        yield network, server
    finally:
        await server.close()


async def laptop(tmp_path: Path, network: MemoryNetwork, name: str) -> Replica:
    link = network.link(name)
    replica = await Replica.open(tmp_path / f"{name}.db", password_hasher=CHEAP, connector=link)
    await replica.enrol(link.url, username="dr.a", password=PASSWORD, organisation=ORG)
    return replica


async def test_two_laptops_sync_through_the_server_in_memory(tmp_path: Path) -> None:
    async with clinic(tmp_path) as (network, server):
        north = await laptop(tmp_path, network, "north")
        south = await laptop(tmp_path, network, "south")
        try:
            record_id = await north.create_record()
            await north.set(record_id, "name", "Mariama Ba", author="dr.a")
            assert (await north.sync()).uploaded == 2
            await south.sync()
            assert (await south.record(record_id)).value("name") == "Mariama Ba"
            assert await server.store.has_record(record_id)
            # Reopened from its file, a laptop keeps its URL; given the link, it syncs.
            await north.close()
            north = await Replica.open(
                tmp_path / "north.db", password_hasher=CHEAP, connector=network.link("north")
            )
            await south.set(record_id, "sex", "female", author="dr.a")
            await south.sync()
            await north.sync()
            assert (await north.record(record_id)).value("sex") == "female"
        finally:
            await north.close()
            await south.close()


async def test_a_live_laptop_rides_out_a_cut_and_a_server_restart(tmp_path: Path) -> None:
    network = MemoryNetwork()
    server = await SyncServer.open(tmp_path / "server.db", password_hasher=CHEAP)
    await server.add_user(ORG, "dr.a", PASSWORD)
    await server.listen(network.host("server"))
    north = await laptop(tmp_path, network, "north")
    south = await laptop(tmp_path, network, "south")
    received = asyncio.Event()
    south.on_received(lambda *args: received.set())
    stop = asyncio.Event()
    live = asyncio.create_task(south.stay_connected(stop=stop, backoff=quick))
    try:
        await _until(south, ReplicaState.ONLINE)
        record_id = await north.create_record()
        received.clear()
        await north.set(record_id, "name", "Awa", author="dr.a")
        await north.sync()
        async with asyncio.timeout(WAIT_S):
            await received.wait()
        assert (await south.record(record_id)).value("name") == "Awa"

        network.link("south").cut()  # the ward loses its network
        await _until(south, ReplicaState.OFFLINE)
        await north.set(record_id, "name", "Awa Diop", author="dr.a")
        await north.sync()
        network.link("south").restore()
        await _until(south, ReplicaState.ONLINE)  # reconnects and pulls what it missed
        assert (await south.record(record_id)).value("name") == "Awa Diop"

        await server.close()  # the server restarts on the same name
        await _until(south, ReplicaState.OFFLINE)
        server = await SyncServer.open(tmp_path / "server.db", password_hasher=CHEAP)
        await server.listen(network.host("server"))
        await _until(south, ReplicaState.ONLINE)
        received.clear()
        await north.set(record_id, "sex", "female", author="dr.a")
        await north.sync()
        async with asyncio.timeout(WAIT_S):
            await received.wait()
        assert (await south.record(record_id)).value("sex") == "female"
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await live
        await north.close()
        await south.close()
        await server.close()


async def test_a_revoked_laptop_hears_why_over_memory(tmp_path: Path) -> None:
    async with clinic(tmp_path) as (network, server):
        north = await laptop(tmp_path, network, "north")
        stop = asyncio.Event()
        live = asyncio.create_task(north.stay_connected(stop=stop, backoff=quick))
        try:
            await _until(north, ReplicaState.ONLINE)
            await server.revoke(north.replica_id)
            with pytest.raises(ReplicaRevokedError):
                async with asyncio.timeout(WAIT_S):
                    await live
            assert north.state is ReplicaState.LOCKED
        finally:
            stop.set()
            if not live.done():
                live.cancel()
            await north.close()
