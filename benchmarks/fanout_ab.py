"""The server's live fan-out, its Python part per connection, for A/B runs of two trees.

``bench_server_scale`` times an edit reaching 2,000 real laptops (websockets, four client
processes): on a shared 2-core machine its figures move with the load by more than a
change to the fan-out's own code does. This measures that code alone, in one process:
``N`` connections of a real ``SyncServer``, each with a ``ServerProtocol`` brought to a
subscribed session by a real ``ClientProtocol`` (frames passed by hand), and a send
that takes the frames without writing them anywhere; then ``EDITS`` edits each fanned
out to all of them (``SyncServer._fan_out``), each timed with the thread's CPU clock.
What it leaves out: the websocket framing and the write to each socket, the same in
both trees. Prints one JSON line: the CPU time per connection per edit (median, min,
max, in µs). Run it from each tree in turn (``PYTHONPATH=TREE/src``)::

    PYTHONPATH=TREE/src python -m benchmarks.fanout_ab 2000 60
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import caresync
from caresync.protocol import ClientProtocol, ServerProtocol
from caresync.server import SyncServer, _Connection
from caresync.storage.base import FeedItem

SERVER_ID = "server-bench"
ORG = "clinic"
NONCE = b"n" * 32
SERVER_KEY = b"k" * 32
SIGNATURE = b"s" * 64  # the protocol carries it; checking it is a shell's work


def _pass(src: ClientProtocol | ServerProtocol, dst: ClientProtocol | ServerProtocol) -> None:
    for frame in src.data_to_send():
        dst.receive_data(frame)
    dst.events_received()


def subscribed_protocol(number: int) -> ServerProtocol:
    """A server's protocol in a session of an enrolled laptop that subscribed from 0."""
    client = ClientProtocol(replica_id=f"laptop-{number}", server_id=SERVER_ID, organisation=ORG)
    server = ServerProtocol(SERVER_ID)
    client.send_hello()
    _pass(client, server)
    _pass(server, client)
    client.prove_server(NONCE)
    _pass(client, server)
    server.send_server_proof(SERVER_KEY, SIGNATURE)
    _pass(server, client)
    client.confirm_server()
    client.authenticate("dr.a", "a password", ORG)
    _pass(client, server)
    server.accept_authentication(f"token-{number}", 1_900_000_000_000, "dr.a", ORG)
    _pass(server, client)
    client.subscribe(0)
    _pass(client, server)
    if not server.can_send_live:
        raise RuntimeError("the benchmark's session did not reach a subscription")
    return server


async def run(connections: int, edits: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="fanout-ab-"))
    server = await SyncServer.open(work / "server.db")
    try:
        running = asyncio.get_running_loop().create_future()
        running.set_result(None)  # a writer task that is there (the fan-out asks)
        written = 0

        def send_nowait(frames: Sequence[bytes]) -> bool:
            nonlocal written
            written += 1
            return True

        for number in range(connections):
            conn = _Connection(subscribed_protocol(number), None, server.events)  # type: ignore[arg-type]
            conn.organisation = ORG
            conn.writer = running  # type: ignore[assignment]
            conn.send_nowait = send_nowait
            server._connections.add(conn)
        per_connection_us: list[float] = []
        for edit in range(edits):
            items = [FeedItem(edit + 1, f"rec-{edit % 7}", b"u" * 300, ORG, "laptop-writer")]
            start = time.thread_time()
            server._fan_out(items)
            per_connection_us.append((time.thread_time() - start) * 1e6 / connections)
        if written != connections * edits:
            raise RuntimeError(f"{written} sends, not {connections * edits}")
        server._connections.clear()
        return {
            "caresync": caresync.__file__,
            "connections": connections,
            "edits": edits,
            "cpu_us_per_connection": {
                "median": round(statistics.median(per_connection_us), 3),
                "min": round(min(per_connection_us), 3),
                "max": round(max(per_connection_us), 3),
            },
        }
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() and int(a) > 0 for a in args):
        print(__doc__)
        return 2
    print(json.dumps(asyncio.run(run(int(args[0]), int(args[1])))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
