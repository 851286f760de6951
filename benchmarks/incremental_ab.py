"""The incremental sync alone, repeatable: for comparing two versions of the code (A/B).

``bench_sync --only incremental`` builds a server of 100,000 records and makes a first
copy before every run (minutes); to compare two versions of the code alternately, this
builds both once and copies the files for each run::

    python -m benchmarks.incremental_ab prepare WORK          # once: server + laptop files
    python -m benchmarks.incremental_ab run WORK --rounds 5   # a run: copies, then syncs

A run copies the prepared server and laptop files, starts the server in a process of
its own, opens the laptop (a ``Replica``) in this one, and does ``rounds`` times what
``bench_sync``'s incremental case does: 1,000 records changed by another client, pushed
to the server, then one ``Replica.sync`` timed, with the CPU time of this process (every
thread: the laptop's event loop and its store's) and of the server's process during it.
Every run makes the same changes (the same records, the same new values), so runs of two
versions of the code compare like with like. Files prepared by an older version are
migrated when opened (not timed). To run another version's code, put its ``src`` first
on ``PYTHONPATH`` (the server's process inherits it); the line printed says which
``caresync`` was imported. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import pickle
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import caresync
from benchmarks.bench_sync import (
    ORG,
    PASSWORD,
    USER,
    RawLaptop,
    build_caresync_server,
    checked_patient,
    one_percent_edits,
    running,
)
from caresync import Record
from caresync.protocol import PushAck
from caresync.replica import Replica
from caresync.storage import SQLiteStore

N = 100_000
CHANGED = 1_000


def _data(work: Path) -> list[tuple[str, bytes]]:
    """The records as prepared (kept beside the databases: making them takes a minute)."""
    with (work / "records.pickle").open("rb") as file:
        data: list[tuple[str, bytes]] = pickle.load(file)
    # The benchmark's records, not the laptop's: frozen out of the garbage collector, as
    # bench_sync does, so that its full passes cost what the measured code allocates
    # (unfrozen, a full pass walked them: about 38 ms, in one sync of five).
    gc.collect()
    gc.freeze()
    return data


async def _wal_frames(laptop: Replica, *, truncate: bool) -> int:
    """Frames in the laptop's write-ahead log (its store's private connection; a
    benchmark's look inside). ``truncate``: checkpoint it all, so that the next write
    starts the log again."""
    mode = "RESTART" if truncate else "PASSIVE"

    def job(raw: sqlite3.Connection) -> int:
        row = raw.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(row[1])

    return await laptop.store._run("counting log frames", job)


async def prepare(work: Path, n: int) -> None:
    """The server's database (records with their rows and cards) and a laptop's first copy."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    made = [checked_patient(i) for i in range(n)]
    checks = {rid: (rows, card) for rid, _update, rows, card in made}
    data = [(rid, update) for rid, update, _rows, _card in made]
    with (work / "records.pickle").open("wb") as file:
        pickle.dump(data, file)
    server_db = work / "server.db"
    await build_caresync_server(server_db, data, checks)
    async with running("caresync", server_db) as server:
        laptop = await Replica.open(work / "laptop.db")
        await laptop.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)
        await laptop.close()
        await server.stop()


def _copy(work: Path, run_dir: Path) -> tuple[Path, Path]:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    for name in os.listdir(work):
        if name.startswith(("server.db", "laptop.db")):
            shutil.copy2(work / name, run_dir / name)
    return run_dir / "server.db", run_dir / "laptop.db"


async def run(work: Path, rounds: int, n: int, label: str) -> dict[str, Any]:
    """One run: ``rounds`` incremental syncs of one laptop, each after new changes."""
    data = _data(work)
    if len(data) != n:
        raise RuntimeError(f"{work} holds {len(data)} records, not {n}")
    states = dict(data)
    server_db, laptop_db = _copy(work, work / f"run-{os.getpid()}")
    walls: list[float] = []
    laptop_cpu: list[float] = []
    server_cpu: list[float] = []
    frames: list[int] = []
    try:
        async with running("caresync", server_db) as server:

            async def change_some(round_no: int) -> None:
                editor = await RawLaptop.join(server.url)
                edits = []
                for rid, city in one_percent_edits(data, CHANGED, round_no):
                    record = Record.from_update(rid, states[rid], replica=editor.replica_id)
                    before = record.state_vector()
                    record.set("address/city", city, author=USER)
                    edits.append((rid, record.update_since(before)))
                    states[rid] = record.update_since()
                for start in range(0, len(edits), 500):
                    batch = edits[start : start + 500]
                    editor.protocol.push(
                        [(start + k + 1, rid, u) for k, (rid, u) in enumerate(batch)]
                    )
                    await editor.expect(PushAck)
                await editor.close()

            # The server listens on a new port each run: the laptop is told (not timed).
            async with SQLiteStore.open(laptop_db, create=False) as store:
                identity = await store.get_identity()
                if identity is None:
                    raise RuntimeError(f"{laptop_db} holds no enrolled laptop")
                await store.set_identity(dataclasses.replace(identity, server_url=server.url))
            laptop = await Replica.open(laptop_db)
            try:
                for round_no in range(rounds):
                    await change_some(round_no)
                    await _wal_frames(laptop, truncate=True)
                    server_before = (await server.stats())["cpu_s"]
                    cpu_before = time.process_time()
                    t0 = time.perf_counter()
                    report = await laptop.sync()
                    walls.append(time.perf_counter() - t0)
                    laptop_cpu.append(time.process_time() - cpu_before)
                    server_cpu.append((await server.stats())["cpu_s"] - server_before)
                    frames.append(await _wal_frames(laptop, truncate=False))
                    if report.downloaded != CHANGED:
                        raise RuntimeError(f"the sync took {report.downloaded}, not {CHANGED}")
            finally:
                await laptop.close()
            await server.stop()
    finally:
        shutil.rmtree(server_db.parent, ignore_errors=True)

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "median_ms": round(statistics.median(values) * 1000, 1),
            "min_ms": round(min(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }

    return {
        "label": label,
        "caresync": str(Path(caresync.__file__).parent),
        "load": [round(x, 2) for x in os.getloadavg()],
        "wall": summary(walls),
        "laptop_cpu": summary(laptop_cpu),
        "server_cpu": summary(server_cpu),
        "laptop_wal_frames": frames,
        "wall_ms": [round(w * 1000, 1) for w in walls],
        "laptop_cpu_ms": [round(c * 1000, 1) for c in laptop_cpu],
        "server_cpu_ms": [round(c * 1000, 1) for c in server_cpu],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incremental_ab")
    parser.add_argument("action", choices=["prepare", "run"])
    parser.add_argument("work", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=N)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    if args.action == "prepare":
        asyncio.run(prepare(args.work, args.records))
        return 0
    result = asyncio.run(run(args.work, args.rounds, args.records, args.label))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
