"""The laptop's side of a first copy with person cards, by phase and by thread.

    python -m benchmarks.copy_profile DB [--cprofile] [--top N]

DB is a server database built by ``python -m benchmarks.copy_ab build DB [N]``. A server
process serves a copy of it; this process enrols one laptop and prints, for the laptop:
each thread's CPU time (``/proc/self/task``: cProfile misses the store's thread), the
store thread's CPU per job (``time.thread_time`` around each store call, by its label),
the wall time of the copy and, with ``--cprofile``, the hottest functions of the event
loop's thread and of the store's thread (each profiled in its own thread).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import re
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_sync import ORG, PASSWORD, USER, running
from caresync.replica import Replica
from caresync.storage.sqlite.core import SQLiteCore


class _TimedConnection:
    """A connection that adds each statement's thread CPU and wall time to ``spent``."""

    def __init__(self, raw: Any, spent: dict[str, list[float]]) -> None:
        self._raw, self._spent = raw, spent

    def _timed(self, how: str, sql: str, *args: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return getattr(self._raw, how)(sql, *args)
        finally:
            entry = self._spent[f"{how} {' '.join(sql.split())[:70]}"]
            entry[0] += time.thread_time() - cpu
            entry[1] += time.perf_counter() - wall
            entry[2] += 1

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed("execute", sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("executemany", sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by its name and id."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    found: dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        found[f"{names.get(int(task), '?')}:{task}"] = (int(fields[11]) + int(fields[12])) / tick
    return found


async def main(db: Path, profile: bool, top: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="copy-profile-"))
    by_job: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    by_statement: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    store_profile = cProfile.Profile() if profile else None
    original = SQLiteCore._run

    async def timed_run(
        self: SQLiteCore, what: str, job: Callable[[Any], Any], *, brief: bool = False
    ) -> Any:
        label = re.sub(r"\d+", "N", what)

        def wrapped(raw: Any) -> Any:
            cpu, wall = time.thread_time(), time.perf_counter()
            if store_profile is not None:
                store_profile.enable()
            try:
                return job(_TimedConnection(raw, by_statement))
            finally:
                if store_profile is not None:
                    store_profile.disable()
                entry = by_job[label]
                entry[0] += time.thread_time() - cpu
                entry[1] += time.perf_counter() - wall
                entry[2] += 1

        return await original(self, what, wrapped, brief=brief)

    SQLiteCore._run = timed_run  # type: ignore[method-assign]
    try:
        sdb = work / "server.db"
        shutil.copy(db, sdb)
        async with running("caresync", sdb) as server:
            laptop = await Replica.open(work / "laptop.db")
            before = _thread_cpu()
            server_before = (await server.stats())["cpu_s"]
            loop_profile = cProfile.Profile() if profile else None
            wall = time.perf_counter()
            cpu = time.process_time()
            if loop_profile is not None:
                loop_profile.enable()
            await laptop.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)
            if loop_profile is not None:
                loop_profile.disable()
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            after = _thread_cpu()
            server_cpu = (await server.stats())["cpu_s"] - server_before
            records = await laptop.store.count_records()
            pairs = await laptop.store.count_person_pairs()
            await laptop.close()
            await server.stop()
        print(f"records {records}, pairs {pairs}; wall {wall:.2f} s, laptop CPU {cpu:.2f} s,")
        print(f"server CPU {server_cpu:.2f} s; load {os.getloadavg()}")
        print("laptop threads (CPU s):")
        for name, seconds in sorted(after.items(), key=lambda kv: -kv[1]):
            spent = seconds - before.get(name, 0.0)
            if spent >= 0.01:
                print(f"  {name:40s} {spent:7.2f}")
        print("store jobs (thread CPU s, wall s, calls):")
        for label, (c, w, n) in sorted(by_job.items(), key=lambda kv: -kv[1][0]):
            if c >= 0.005:
                print(f"  {label[:60]:60s} {c:7.3f} {w:7.3f} {int(n):5d}")
        print("statements (thread CPU s, wall s, calls):")
        for label, (c, w, n) in sorted(by_statement.items(), key=lambda kv: -kv[1][0]):
            if c >= 0.005:
                print(f"  {label[:90]:90s} {c:7.3f} {w:7.3f} {int(n):5d}")
        for title, prof in (("event loop", loop_profile), ("store thread", store_profile)):
            if prof is None:
                continue
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
            print(f"---- {title}, by own time")
            print(out.getvalue())
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
            print(f"---- {title}, cumulative")
            print(out.getvalue())
    finally:
        SQLiteCore._run = original  # type: ignore[method-assign]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db", type=Path)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.db, args.cprofile, args.top))
