"""Servers for the sync benchmark, each run in its own process, and the peer's clients.

``python -m benchmarks.sync_peer caresync DB`` serves a caresync ``SyncServer`` on
that database; ``python -m benchmarks.sync_peer peer DB`` serves the peer,
pycrdt-websocket's ``WebsocketServer`` with one room (``records``) persisted in
pycrdt-store's ``SQLiteYStore`` at ``DB``. Either prints ``{"port": N}`` once
listening on 127.0.0.1, then answers each line on stdin: ``stats`` prints a JSON
line (resident memory now and at its peak; for the peer also how many updates its
room merged); ``stop`` (or end of input) stops the server the way its library
stops, prints the final stats and exits.

The peer has no accounts, no outbox and no acknowledgements: a client is a pycrdt
``Doc`` joined to the room through ``pycrdt.Provider``; every update the room merges
is broadcast to every client and written to the store in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

__all__ = ["PeerChannel", "peer_store", "rss_kb"]

ROOM = "records"


def rss_kb() -> dict[str, float]:
    """This process's resident memory now and at its peak, in KiB (Linux), and the
    CPU time it used so far (``cpu_s``: user + system, every thread)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    out["cpu_s"] = round(time.process_time(), 6)
    return out


class PeerChannel:
    """A websocket as the ``pycrdt.Channel`` that pycrdt-websocket expects."""

    def __init__(self, ws: ClientConnection | ServerConnection, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> None:
        await self._ws.send(message)

    async def recv(self) -> bytes:
        data = await self._ws.recv()
        return data if isinstance(data, bytes) else data.encode()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration from None


def peer_store(db: str | Path) -> Any:
    """A pycrdt-store ``SQLiteYStore`` for the room, in the file ``db``."""
    from pycrdt.store import SQLiteYStore

    class Store(SQLiteYStore):  # the library's way to choose the file
        db_path = str(db)

    return Store(path=ROOM)


async def connect_peer(port: int) -> PeerChannel:
    """A client's channel to the peer's room."""
    ws = await connect(f"ws://127.0.0.1:{port}/{ROOM}", max_size=None, compression=None)
    return PeerChannel(ws, ROOM)


async def _commands(on_stats: Any) -> None:
    """Answer ``stats`` lines until ``stop`` or the end of input."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            return
        if line.strip() == "stats":
            print(json.dumps(on_stats()), flush=True)


async def serve_caresync(db: str) -> None:
    from caresync.server import SyncServer

    server = await SyncServer.open(db)
    # The time spent in the server's fan-out (wall, every call summed): what it takes
    # the server to write an edit to every connection it writes at once.
    fan_out = server._follower.relay  # every live relay goes through it
    spent = [0.0]

    def timed_fan_out(items: Any) -> None:
        start = time.perf_counter()
        try:
            fan_out(items)
        finally:
            spent[0] += time.perf_counter() - start

    server._follower.relay = timed_fan_out
    listener = await server.serve("127.0.0.1", 0)
    print(json.dumps({"port": listener.port}), flush=True)
    await _commands(lambda: {**rss_kb(), "fan_out_s": round(spent[0], 6)})
    await server.close()
    print(json.dumps(rss_kb()), flush=True)


async def serve_peer(db: str) -> None:
    from pycrdt.websocket import WebsocketServer, YRoom

    merged = 0

    def count(_event: object) -> None:
        nonlocal merged
        merged += 1

    def stats() -> dict[str, int]:
        return {**rss_kb(), "merged": merged}

    def quiet(exception: Exception, log: object) -> bool:
        return True  # a client gone while the room sends to it: the room goes on

    store = peer_store(db)
    ws_server = WebsocketServer(auto_clean_rooms=False, exception_handler=quiet)
    final: dict[str, int] = {}
    with contextlib.suppress(Exception):  # stopping cancels the room's pending tasks
        await _serve_room(
            ws_server,
            YRoom(ready=False, ystore=store, exception_handler=quiet),
            store,
            count,
            stats,
            final,
        )
    print(json.dumps(final), flush=True)


async def _serve_room(
    ws_server: Any, room: Any, store: Any, count: Any, stats: Any, final: dict[str, int]
) -> None:
    async with ws_server:
        ws_server.rooms[ROOM] = room
        await ws_server.start_room(room)
        await store.started.wait()
        await store.apply_updates(room.ydoc)  # the room's document as stored
        room.ready = True  # from now on every merged update is broadcast and stored
        room.ydoc.observe(count)

        async def handler(ws: ServerConnection) -> None:
            await ws_server.serve(PeerChannel(ws, ROOM))

        async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as listener:
            port = next(iter(listener.sockets)).getsockname()[1]
            print(json.dumps({"port": port}), flush=True)
            await _commands(stats)
            final.update(stats())
            listener.close(close_connections=True)


def main(argv: list[str]) -> int:
    kind, db = argv
    asyncio.run(serve_caresync(db) if kind == "caresync" else serve_peer(db))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
