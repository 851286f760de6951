"""One store alone: the cost of a call's trip to its database thread and back, for
alternating two trees. 5,000 sequential ``count_conflicts()`` calls (one read of one row)
on a store of its own, five times; prints one JSON line with the median microseconds a
call and this process's CPU a call::

    PYTHONPATH=<tree> <tree>/.venv/bin/python benchmarks/roundtrip_ab.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from caresync.storage import SQLiteStore

CALLS = 5000
REPEATS = 5


async def main() -> dict[str, Any]:
    """The measurement, in a temporary directory."""
    walls: list[float] = []
    cpus: list[float] = []
    with tempfile.TemporaryDirectory(prefix="caresync-roundtrip-") as tmp:
        async with SQLiteStore.open(Path(tmp) / "replica.db") as store:
            for _ in range(REPEATS):
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(CALLS):
                    await store.count_conflicts()
                walls.append((time.perf_counter() - start) / CALLS * 1e6)
                cpus.append((time.process_time() - cpu) / CALLS * 1e6)
    return {
        "us_per_call": round(statistics.median(walls), 1),
        "us_per_call_min": round(min(walls), 1),
        "cpu_us_per_call": round(statistics.median(cpus), 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
