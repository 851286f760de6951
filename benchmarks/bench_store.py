"""The replica store's costs beside raw aiosqlite doing the same I/O, in one run.

* durable single edits: ``write_local`` of one edit at a time (each committed
  and fsynced before it returns, conflict rows replaced) vs raw aiosqlite
  inserting the same bytes, one commit each, same WAL and ``synchronous=FULL``;
* batched revisions: ``write_remote`` of pulled batches (one revision per
  update, each batch with its checkpoint; laptop and server with change feed)
  vs raw aiosqlite ``executemany`` of the same bytes, one transaction a batch;
* first copy, open time and memory for 10,000 and 100,000 records: the
  database is built by ``write_remote`` batches, then opened in a fresh
  process that reports open time, resident memory and its first load;
* compaction throughput: records with 50-update logs folded into their state.

Targets (docs/storage.md): >= 2,000 durable edits/s, >= 100,000 revisions/s
batched, a 100,000-record database opens in < 1 s with < 300 MB resident.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from benchmarks.common import parse_args, write_results
from caresync import Record
from caresync.storage import IncomingUpdate, SQLiteStore


class Writer:
    """A record whose local writes' update bytes are captured.

    Each edit's update is read as what the record gained (``update_since`` its
    state vector before), not through an ``on_update`` listener: a listener
    is held by the document's native subscription, which keeps the record
    alive for good, and the timed runs would then walk thousands of records in
    every full garbage collection.
    """

    def __init__(self, replica: str) -> None:
        self.record = Record.create(replica=replica)
        self.created = self.record.update_since()

    def edit(self, n: int, revisions: int = 1) -> bytes:
        """One update holding ``revisions`` revisions (an edit session, in one transaction)."""
        before = self.record.state_vector()
        with self.record.batch():
            for k in range(revisions):
                path = ("birthDate", "name", "heightCm", "address/city", "gender")[(n + k) % 5]
                self.record.set(path, n, author="dr")
        return self.record.update_since(before)


def settle() -> None:
    """Collect garbage before a timed run, so that the set-up's objects (the
    updates made for it) are not collected inside it. The collector stays on
    while timing, as in a real process; it runs before raw runs too."""
    gc.collect()


async def amedian(fn: Callable[[], Awaitable[float]], repeats: int) -> float:
    """Median of ``repeats`` runs of an async measurement returning seconds."""
    return statistics.median([await fn() for _ in range(repeats)])


async def raw_connection(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("CREATE TABLE IF NOT EXISTS t (record_id TEXT, data BLOB)")
    await db.commit()
    return db


# ---------------------------------------------------------------- single edits


async def bench_single_edits(work: Path, edits: int, repeats: int) -> dict[str, Any]:
    writers = [Writer("laptop") for _ in range(20)]
    updates = [(w.record.record_id, w.created) for w in writers]
    updates += [(writers[n % 20].record.record_id, writers[n % 20].edit(n)) for n in range(edits)]
    runs = iter(range(1_000_000))

    async def ours() -> float:
        async with SQLiteStore.open(work / f"single-{next(runs)}.db") as store:
            for record_id, update in updates[:20]:
                await store.write_local(record_id, update, conflicts=())
            settle()
            start = time.perf_counter()
            for record_id, update in updates[20:]:
                await store.write_local(record_id, update, conflicts=())
            return time.perf_counter() - start

    async def raw() -> float:
        db = await raw_connection(work / f"raw-single-{next(runs)}.db")
        try:
            settle()
            start = time.perf_counter()
            for record_id, update in updates[20:]:
                await db.execute("INSERT INTO t VALUES (?, ?)", (record_id, update))
                await db.commit()
            return time.perf_counter() - start
        finally:
            await db.close()

    ours_s, raw_s = await amedian(ours, repeats), await amedian(raw, repeats)
    return {
        "case": "durable single edits",
        "edits": edits,
        "caresync_per_s": round(edits / ours_s),
        "raw_aiosqlite_per_s": round(edits / raw_s),
        "ratio": round(ours_s / raw_s, 2),
        "target_per_s": 2000,
    }


# ------------------------------------------------------------- batched updates


async def bench_batches(
    work: Path,
    records: int,
    batches: int,
    batch_size: int,
    repeats: int,
    *,
    to_feed: bool,
    revisions_per_update: int = 1,
) -> dict[str, Any]:
    writers = [Writer("peer") for _ in range(records)]
    first = [IncomingUpdate(w.record.record_id, w.created, None) for w in writers]
    pulled = [
        [
            IncomingUpdate(
                writers[(b * batch_size + i) % records].record.record_id,
                writers[(b * batch_size + i) % records].edit(i, revisions_per_update),
                None,
            )
            for i in range(batch_size)
        ]
        for b in range(batches)
    ]
    # The writers' documents only made the bytes: drop them, so that the timed
    # runs' garbage collections do not walk the harness's documents.
    del writers
    revisions = batches * batch_size * revisions_per_update
    runs = iter(range(1_000_000))

    async def ours() -> float:
        async with SQLiteStore.open(work / f"batch-{next(runs)}.db") as store:
            await store.write_remote(first, to_feed=to_feed)
            settle()
            start = time.perf_counter()
            for n, batch in enumerate(pulled):
                await store.write_remote(batch, checkpoint=("pull", str(n)), to_feed=to_feed)
            return time.perf_counter() - start

    async def raw() -> float:
        db = await raw_connection(work / f"raw-batch-{next(runs)}.db")
        try:
            settle()
            start = time.perf_counter()
            for batch in pulled:
                await db.executemany(
                    "INSERT INTO t VALUES (?, ?)", [(i.record_id, i.update) for i in batch]
                )
                await db.commit()
            return time.perf_counter() - start
        finally:
            await db.close()

    ours_s, raw_s = await amedian(ours, repeats), await amedian(raw, repeats)
    return {
        "case": "pulled batches (server: into the feed)" if to_feed else "pulled batches (laptop)",
        "revisions": revisions,
        "revisions_per_update": revisions_per_update,
        "updates_per_batch": batch_size,
        "records": records,
        "caresync_revisions_per_s": round(revisions / ours_s),
        "caresync_updates_per_s": round(revisions / revisions_per_update / ours_s),
        "raw_aiosqlite_revisions_per_s": round(revisions / raw_s),
        "ratio": round(ours_s / raw_s, 2),
        "target_revisions_per_s": 100_000,
    }


# ------------------------------------------------------------ open and memory

_OPEN_PROBE = """
import asyncio, json, sys, time
def rss_mb(key="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
from caresync.storage import SQLiteStore
async def main():
    before = rss_mb()
    start = time.perf_counter()
    store = await SQLiteStore.open(sys.argv[1], create=False)
    opened = time.perf_counter() - start
    after_open = rss_mb()
    start = time.perf_counter()
    ids = await store.record_ids(after=sys.argv[2], limit=1)
    await store.load(ids[0])
    first_load = time.perf_counter() - start
    await store.close()
    peak = rss_mb("VmHWM:")
    print(json.dumps({"open_s": opened, "rss_before_mb": before, "rss_after_open_mb": after_open,
                      "first_load_s": first_load, "peak_rss_mb": peak}))
asyncio.run(main())
"""


REVISIONS_PER_RECORD = 10


async def build_database(path: Path, records: int, batch: int) -> float:
    """A first copy of records of 10 revisions each, in batches; returns its seconds."""
    elapsed = 0.0
    async with SQLiteStore.open(path) as store:
        for done in range(0, records, batch):
            items = []
            for _ in range(min(batch, records - done)):
                record = Record.create(replica="server")
                with record.batch():
                    for n in range(5):
                        record.set(
                            ("birthDate", "name", "heightCm", "gender", "phone")[n], n, author="dr"
                        )
                items.append(IncomingUpdate(record.record_id, record.update_since(), None, "org"))
            start = time.perf_counter()
            await store.write_remote(items, checkpoint=("first-copy", str(done)))
            elapsed += time.perf_counter() - start
    return elapsed


def probe_open(path: Path, repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _OPEN_PROBE, str(path), "8"],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


async def bench_open(work: Path, records: int, repeats: int) -> dict[str, Any]:
    path = work / f"open-{records}.db"
    copy_s = await build_database(path, records, batch=min(records, 2000))
    probe = probe_open(path, repeats)
    return {
        "case": "first copy, then open",
        "records": records,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "first_copy_records_per_s": round(records / copy_s),
        "first_copy_revisions_per_s": round(records * REVISIONS_PER_RECORD / copy_s),
        "open_ms": round(probe["open_s"] * 1e3, 1),
        "first_load_ms": round(probe["first_load_s"] * 1e3, 2),
        "rss_before_open_mb": round(probe["rss_before_mb"], 1),
        "rss_after_open_mb": round(probe["rss_after_open_mb"], 1),
        "peak_rss_mb (VmHWM)": round(probe["peak_rss_mb"], 1),
        "target": "open < 1000 ms, < 300 MB resident (100k records)",
    }


# ------------------------------------------------------------------ compaction


async def bench_compaction(work: Path, records: int, log: int) -> dict[str, Any]:
    writers = [Writer("laptop") for _ in range(records)]
    times: list[float] = []
    async with SQLiteStore.open(work / "compact.db") as store:
        for w in writers:
            await store.write_remote([IncomingUpdate(w.record.record_id, w.created, None)])
            await store.write_remote(
                [IncomingUpdate(w.record.record_id, w.edit(n), None) for n in range(log - 1)]
            )
        for w in writers:
            start = time.perf_counter()
            await store.compact(w.record.record_id)
            times.append(time.perf_counter() - start)
    total = sum(times)
    return {
        "case": "compaction",
        "records": records,
        "log_updates_each": log,
        "records_per_s": round(records / total),
        "log_updates_per_s": round(records * log / total),
        "median_ms_per_record": round(statistics.median(times) * 1e3, 3),
    }


async def run(tiny: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="caresync-bench-") as tmp:
        work = Path(tmp)
        if tiny:
            return [
                await bench_single_edits(work, edits=20, repeats=1),
                await bench_batches(work, 5, 2, 10, 1, to_feed=False),
                await bench_batches(work, 5, 2, 10, 1, to_feed=True, revisions_per_update=3),
                await bench_open(work, 50, 1),
                await bench_compaction(work, 3, 5),
            ]
        return [
            await bench_single_edits(work, edits=2000, repeats=5),
            await bench_batches(work, 500, 20, 1000, 3, to_feed=False),
            await bench_batches(work, 500, 20, 1000, 3, to_feed=True),
            await bench_batches(work, 5000, 10, 5000, 3, to_feed=True),
            await bench_batches(work, 500, 20, 1000, 3, to_feed=False, revisions_per_update=5),
            await bench_batches(work, 500, 20, 1000, 3, to_feed=True, revisions_per_update=5),
            await bench_open(work, 10_000, 3),
            await bench_open(work, 100_000, 3),
            await bench_compaction(work, 200, 50),
        ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "store")
    cases = asyncio.run(run(args.tiny))
    write_results(args.out, "store", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
