"""What a laptop's outbox reads cost the event loop, for A/B runs of two trees (session
21's review of the reads brief when few, issue 18).

Builds, once per run, two laptop databases:

* ``few``: two small updates waiting (a sync with little to send). Times
  ``outbox_summary()`` then ``pending(1000)``, both brief reads in both trees: the
  microseconds of the pair, the mean of 200 pairs, ``REPS`` times;
* ``large``: three small updates and ``LARGE`` updates of some ``MIB`` MiB each (a batch
  of large values: an attachment made offline), the first of them the oldest. Opened
  again for each repetition (SQLite's page cache cold, the system's warm), then
  ``outbox_summary()`` and ``pending(1000)`` each: the longest stretch the event loop
  went without a turn while the read ran, its wall time, and the bytes the event loop's
  thread read from files meanwhile (Linux's per-thread I/O account).

Prints one JSON line of medians. Run it from each tree in turn::

    PYTHONPATH=TREE/src python -m benchmarks.outbox_brief_ab 4 16 7
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import caresync
from benchmarks.common import loop_stall
from caresync.records.crdt import merge
from caresync.storage import SQLiteStore
from caresync.testing.store_data import Patient, set_laptop_identity

VALUE_BYTES = 200 * 1024  # under a value's limit (256 KiB)


def _read_here() -> int:
    """Bytes this thread has read from files (0 where Linux's account is missing)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _stall(read: Callable[[], Awaitable[Any]]) -> tuple[float, float, int]:
    """(longest gap between the loop's turns, wall time, bytes read here) while
    ``read`` runs."""
    before = _read_here()
    longest, wall = await loop_stall(read)
    return longest, wall, _read_here() - before


async def _laptop(path: Path, large: int, mib: int) -> None:
    async with SQLiteStore.open(path) as store:
        await set_laptop_identity(store)
        for index in range(3 + large):
            patient = Patient()
            if index < large:
                parts = [
                    patient.edit("note", f"{n}" + "x" * VALUE_BYTES)
                    for n in range(mib * 1024 * 1024 // VALUE_BYTES)
                ]
                update = merge(parts, record_id=patient.id)
            else:
                update = patient.created
            await store.write_local(patient.id, update, conflicts=None)


async def measure(large: int, mib: int, reps: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="outbox-brief-ab-"))
    try:
        return await _measure(work, large, mib, reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(work: Path, large: int, mib: int, reps: int) -> dict[str, Any]:
    few_path, large_path = work / "few.db", work / "large.db"
    await _laptop(few_path, 0, 0)
    await _laptop(large_path, large, mib)
    out: dict[str, list[float]] = {}
    async with SQLiteStore.open(few_path) as store:
        await store.acknowledge(1)  # two wait
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(200):
                await store.outbox_summary()
                await store.pending(1000)
            out.setdefault("few_pair_us", []).append((time.perf_counter() - start) / 200 * 1e6)
    for _ in range(reps):
        async with SQLiteStore.open(large_path, quick_check=False) as store:
            for name, read in (
                ("summary", store.outbox_summary),
                ("page", lambda: store.pending(1000)),
            ):
                stall, wall, read_here = await _stall(read)
                out.setdefault(f"large_{name}_stall_ms", []).append(stall * 1e3)
                out.setdefault(f"large_{name}_wall_ms", []).append(wall * 1e3)
                out.setdefault(f"large_{name}_loop_read_mb", []).append(read_here / 1e6)
    return {
        "tree": str(Path(caresync.__file__).parents[2]),
        **{key: round(statistics.median(values), 3) for key, values in out.items()},
    }


def main(argv: list[str]) -> int:
    large, mib, reps = (int(a) for a in argv[:3])
    print(json.dumps(asyncio.run(measure(large, mib, reps))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
