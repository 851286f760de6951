"""The sync with nothing to do, lean, for A/B runs of two trees.

``bench_sync --only noop`` builds a server of 100,000 records each time; a no-op sync does
not grow with the records, so this one builds a small server (``N`` records with their
cards and rows), enrols a laptop, syncs it 20 times to settle, then times ``ROUNDS``
syncs with nothing to do and prints one JSON line: the median wall time with the 10th and
90th percentiles, and the median CPU time per sync of the laptop's process and of the
server's. Run it from each tree in turn (``PYTHONPATH=TREE/src``; the server's process
inherits it) to alternate two versions of the code in the same conditions::

    PYTHONPATH=TREE/src python -m benchmarks.noop_ab 3000 150
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_sync import (
    ORG,
    PASSWORD,
    USER,
    build_caresync_server,
    checked_patient,
    running,
)
from caresync.replica import Replica

SETTLE_SYNCS = 20


async def measure(records: int, rounds: int) -> dict[str, float]:
    """Time ``rounds`` no-op syncs of a laptop holding ``records`` records."""
    work = Path(tempfile.mkdtemp(prefix="noop-ab-"))
    made = [checked_patient(i) for i in range(records)]
    await build_caresync_server(
        work / "server.db",
        [(rid, update) for rid, update, _rows, _card in made],
        {rid: (rows, card) for rid, _update, rows, card in made},
    )
    walls: list[float] = []
    laptop_cpu: list[float] = []
    server_cpu: list[float] = []
    async with running("caresync", work / "server.db") as server:
        laptop = await Replica.open(work / "laptop.db")
        await laptop.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)
        for _ in range(SETTLE_SYNCS):
            await laptop.sync()
        for _ in range(rounds):
            server_before = (await server.stats())["cpu_s"]
            cpu_before = time.process_time()
            start = time.perf_counter()
            report = await laptop.sync()
            walls.append(time.perf_counter() - start)
            laptop_cpu.append(time.process_time() - cpu_before)
            server_cpu.append((await server.stats())["cpu_s"] - server_before)
            if report.downloaded or report.uploaded:
                raise RuntimeError(f"a sync with something to do: {report}")
        await laptop.close()
        await server.stop()
    deciles = statistics.quantiles(walls, n=10) if len(walls) > 1 else walls * 9
    return {
        "median_ms": round(1e3 * statistics.median(walls), 3),
        "p10_ms": round(1e3 * deciles[0], 3),
        "p90_ms": round(1e3 * deciles[-1], 3),
        "laptop_cpu_ms": round(1e3 * statistics.median(laptop_cpu), 3),
        "server_cpu_ms": round(1e3 * statistics.median(server_cpu), 3),
    }


def main(argv: list[str]) -> int:
    records = int(argv[0]) if argv else 3000
    rounds = int(argv[1]) if len(argv) > 1 else 150
    print(json.dumps(asyncio.run(measure(records, rounds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
