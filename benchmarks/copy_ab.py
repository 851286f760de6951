"""The first copy with person cards (100,000 records), lean, for A/B runs of two trees.

``bench_sync --only first-copy`` builds its server database (about 3 minutes on a busy
machine) and runs the peer and the raw limit at every call; to alternate two versions of
caresync in the same conditions this builds the server database once and then copies it:

    python -m benchmarks.copy_ab build DB [N]         # once (server store, cards, pairs)
    PYTHONPATH=TREE/src python -m benchmarks.copy_ab copy DB NAME ROUNDS   # from TREE

Each ``copy`` starts a server process on a copy of DB and measures, per round, what
``bench_sync`` measures of its caresync copy: the wall time from SYNCHRONISING to the end
of ``enrol``, the laptop process's CPU and the server process's; it prints one JSON line
(with the bytes the laptop wrote, which the machine's load does not change).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import caresync
from benchmarks.bench_sync import (
    ORG,
    PASSWORD,
    USER,
    build_caresync_server,
    checked_patient,
    running,
)
from caresync.replica import Replica, ReplicaState

N = 100_000


async def build(db: Path, n: int = N) -> None:
    made = [checked_patient(i) for i in range(n)]
    await build_caresync_server(
        db, [(r, u) for r, u, _, _ in made], {r: (rows, card) for r, _, rows, card in made}
    )


def _written() -> int:
    """Bytes this process (the laptop) has handed to write calls (``wchar`` of
    ``/proc/self/io``): its database's log and checkpoints, which the load of the
    machine does not change; 0 where there is no such file."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return 0
    fields = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return int(fields.get("wchar", 0))


async def copy(db: Path, name: str, rounds: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="copy-ab-"))
    try:
        sdb = work / "server.db"
        shutil.copy(db, sdb)
        walls, laptop_cpu, server_cpu, pairs, records = [], [], [], [], []
        laptop_written_mb: list[float] = []
        async with running("caresync", sdb) as server:
            for r in range(rounds):
                laptop = await Replica.open(work / f"laptop-{r}.db")
                marks: dict[str, float] = {}
                laptop.on_status(
                    lambda s, marks=marks: (
                        marks.setdefault("copy", time.perf_counter())
                        if s is ReplicaState.SYNCHRONISING
                        else None
                    )
                )
                server_before = (await server.stats())["cpu_s"]
                cpu_before = time.process_time()
                written_before = _written()
                await laptop.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)
                end = time.perf_counter()
                laptop_written_mb.append(round((_written() - written_before) / 1e6, 1))
                laptop_cpu.append(round(time.process_time() - cpu_before, 3))
                walls.append(round(end - marks["copy"], 3))
                server_cpu.append(round((await server.stats())["cpu_s"] - server_before, 3))
                records.append(await laptop.store.count_records())
                pairs.append(await laptop.store.count_person_pairs())
                await laptop.close()
            await server.stop()
        loadavg = [round(x, 2) for x in os.getloadavg()]
        return {
            "name": name,
            "code": caresync.__file__,
            "walls": walls,
            "laptop_cpu": laptop_cpu,
            "laptop_written_mb": laptop_written_mb,
            "server_cpu": server_cpu,
            "pairs": pairs,
            "records": records,
            "load": loadavg,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"] and len(args) in (2, 3):
        asyncio.run(build(Path(args[1]), int(args[2]) if len(args) == 3 else N))
    elif args[:1] == ["copy"] and len(args) == 4:
        print(json.dumps(asyncio.run(copy(Path(args[1]), args[2], int(args[3])))), flush=True)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
