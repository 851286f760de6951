"""The hub report a pull ends with, whole (protocol versions 7-12) against changes only
(version 13), alternated in one run.

A server store (SQLite, a file) holds ``N`` summaries in its health-hub outbox for one
organisation (rows written straight into the table, numbered as the store numbers
them: this measures reading and sending the report, not building records). Each pair
times, in turn, what a server does at the end of a pull for a laptop with nothing new:

* ``whole``: ``hub_summaries(org)``, the items, the ``HubReport`` frames (what every sync
  cost before version 13, and what an older laptop still gets);
* ``changes``: ``hub_changes(org, mark)``, the (empty) change report's frame.

It prints one JSON line (medians, min, max per side, the ratio of medians, the items and
bytes each sends) and writes it with ``--out``. ``--sync`` times whole syncs with nothing
to do instead (a server on 127.0.0.1 in this process, two laptop files: one of protocol
version 12, one of 13, alternated)::

    python -m benchmarks.hub_report_ab 100000 5 --out benchmarks/results/hub_report_ab.json
    python -m benchmarks.hub_report_ab 100000 5 --sync --out benchmarks/results/hub_noop_ab.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from caresync.hub.status import HubMerge, report_items
from caresync.protocol import HUB_CHANGES_SINCE, ClientProtocol, ServerProtocol
from caresync.storage import SQLiteStore

ORG = "clinic-a"


def _ready_server(newest: int) -> ServerProtocol:
    """A server protocol READY with a client of versions 4 to ``newest``."""
    client = ClientProtocol(
        replica_id="r",
        server_id="s",
        organisation=ORG,
        protocol_versions=tuple(range(4, newest + 1)),
    )
    server = ServerProtocol("s")

    def pump(src: ClientProtocol | ServerProtocol, dst: ClientProtocol | ServerProtocol) -> None:
        for frame in src.data_to_send():
            dst.receive_data(frame)

    client.send_hello()
    pump(client, server)
    server.events_received()
    pump(server, client)
    client.events_received()
    client.prove_server(b"n" * 32)
    pump(client, server)
    server.events_received()
    server.send_server_proof(b"k" * 32, b"s" * 64)
    pump(server, client)
    client.events_received()
    client.confirm_server()
    client.authenticate("dr.a", "pw", ORG)
    pump(client, server)
    server.events_received()
    server.accept_authentication("t", 1, "dr.a", ORG)
    server.data_to_send()
    return server


async def _fill(store: SQLiteStore, n: int) -> int:
    """``n`` outbox rows of ``ORG``, marks 1..n (as n pushes would leave them)."""

    def job(raw: object) -> None:
        def body() -> None:
            raw.executemany(  # type: ignore[attr-defined]
                "INSERT INTO hub_outbox (record_id, organisation, version, state, reason,"
                " attempts, next_attempt_ms, last_attempt_ms, change)"
                " VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?)",
                [
                    (
                        f"{i:08d}-0000-4000-8000-000000000000",
                        ORG,
                        i + 1,
                        "sent" if i % 3 else "pending",
                        None if i % 3 else "waiting for the hub",
                        1_800_000_000_000 + i,
                        i + 1,
                    )
                    for i in range(n)
                ],
            )
            raw.execute("UPDATE hub_mark SET n = ?", (n,))  # type: ignore[attr-defined]

        store._write(raw, body)  # type: ignore[arg-type]

    await store._run("filling the hub outbox", job)  # type: ignore[arg-type]
    return n


def _sent_bytes(server: ServerProtocol) -> tuple[int, int]:
    frames = server.data_to_send()
    return len(frames), sum(len(f) for f in frames)


async def _whole(store: SQLiteStore, server: ServerProtocol) -> tuple[int, int, int]:
    rows = await store.hub_summaries(ORG)
    server.send_hub_report(report_items(rows))
    return (len(rows), *_sent_bytes(server))


async def _changes(store: SQLiteStore, server: ServerProtocol, mark: int) -> tuple[int, int, int]:
    changes = await store.hub_changes(ORG, mark, 10_000)
    merged = HubMerge()
    merged.add(changes)
    items = merged.items()
    server.send_hub_report(items, mark=changes.mark, whole=False)
    return (len(items), *_sent_bytes(server))


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


async def measure(n: int, pairs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hub-ab-") as work:
        async with SQLiteStore.open(Path(work) / "server.db") as store:
            mark = await _fill(store, n)
            # An older laptop gets the whole list; this version's, the changes.
            older, newer = _ready_server(HUB_CHANGES_SINCE - 1), _ready_server(HUB_CHANGES_SINCE)
            times: dict[str, list[float]] = {"whole": [], "changes": []}
            sent: dict[str, tuple[int, int, int]] = {}
            for pair in range(pairs):  # alternated; the first side changes each pair
                order = ("whole", "changes") if pair % 2 == 0 else ("changes", "whole")
                for side in order:
                    gc.collect()  # the other side's garbage is not this side's cost
                    start = time.perf_counter()
                    if side == "whole":
                        sent[side] = await _whole(store, older)
                    else:
                        sent[side] = await _changes(store, newer, mark)
                    times[side].append(time.perf_counter() - start)
    whole, changes = _summary(times["whole"]), _summary(times["changes"])
    return {
        "benchmark": "hub_report_ab",
        "summaries": n,
        "pairs": pairs,
        "load_average": os.getloadavg(),
        "whole": {
            **whole,
            "items": sent["whole"][0],
            "frames": sent["whole"][1],
            "bytes": sent["whole"][2],
            "runs_s": times["whole"],
        },
        "changes": {
            **changes,
            "items": sent["changes"][0],
            "frames": sent["changes"][1],
            "bytes": sent["changes"][2],
            "runs_s": times["changes"],
        },
        "ratio_median_whole_to_changes": whole["median_s"] / changes["median_s"],
    }


async def measure_syncs(n: int, pairs: int) -> dict[str, object]:
    """Whole syncs with nothing to do, end to end (a server on 127.0.0.1, laptop files):
    a laptop of protocol version 12 (the whole list each time) against one of version 13,
    alternated, both enrolled to one server whose hub outbox holds ``n`` summaries."""
    import caresync.replication.session as session
    from caresync.replica import Replica
    from caresync.server import SyncServer

    password = "a long benchmark passphrase"
    newest = session._PROTOCOL_VERSIONS
    older_versions = tuple(v for v in newest if v < HUB_CHANGES_SINCE)
    times: dict[str, list[float]] = {"v12": [], "v13": []}
    with tempfile.TemporaryDirectory(prefix="hub-sync-ab-") as work:
        server = await SyncServer.open(Path(work) / "server.db")
        laptops: dict[str, Replica] = {}
        try:
            await server.add_user(ORG, "dr.a", password)
            assert isinstance(server.store, SQLiteStore)
            await _fill(server.store, n)
            await server.serve("127.0.0.1", 0)
            for name, versions in (("v12", older_versions), ("v13", newest)):
                session._PROTOCOL_VERSIONS = versions  # read when a session opens
                laptop = laptops[name] = await Replica.open(Path(work) / f"{name}.db")
                await laptop.enrol(server.url, username="dr.a", password=password, organisation=ORG)
                for _ in range(3):  # settled: the report held, the notes kept
                    await laptop.sync()
            for pair in range(pairs):
                order = ("v12", "v13") if pair % 2 == 0 else ("v13", "v12")
                for name in order:
                    session._PROTOCOL_VERSIONS = older_versions if name == "v12" else newest
                    gc.collect()
                    start = time.perf_counter()
                    await laptops[name].sync()
                    times[name].append(time.perf_counter() - start)
        finally:
            session._PROTOCOL_VERSIONS = newest
            for laptop in laptops.values():
                await laptop.close()
            await server.close()
    v12, v13 = _summary(times["v12"]), _summary(times["v13"])
    return {
        "benchmark": "hub_report_ab --sync",
        "summaries": n,
        "pairs": pairs,
        "load_average": os.getloadavg(),
        "v12_laptop": {**v12, "runs_s": times["v12"]},
        "v13_laptop": {**v13, "runs_s": times["v13"]},
        "ratio_median_v12_to_v13": v12["median_s"] / v13["median_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", type=int, nargs="?", default=100_000)
    parser.add_argument("pairs", type=int, nargs="?", default=5)
    parser.add_argument("--sync", action="store_true", help="time whole no-op syncs instead")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    run = measure_syncs if args.sync else measure
    result = asyncio.run(run(args.summaries, args.pairs))
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
