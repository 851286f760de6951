"""Shared helpers for benchmarks: timing with medians, results files, CLI flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None, name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.bench_{name}")
    parser.add_argument("--tiny", action="store_true", help="every case once, tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help="where to write JSON results")
    args = parser.parse_args(argv)
    if args.out is None and not args.tiny:
        args.out = RESULTS_DIR / f"{name}.json"
    return args


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(path: Path | None, name: str, cases: list[dict[str, Any]]) -> None:
    """Write results with enough context to compare runs; print a short table."""
    for case in cases:
        shown = ", ".join(f"{k}={v}" for k, v in case.items())
        print(shown)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "cases": cases,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


class FsyncCount:
    """How many fsync/fdatasync calls a process made meanwhile (None: not counted)."""

    def __init__(self) -> None:
        self.calls: int | None = None
        self.why_not: str | None = None


@contextlib.asynccontextmanager
async def counting_fsyncs(pid: int) -> AsyncIterator[FsyncCount]:
    """Count the fsync and fdatasync calls of process ``pid`` (all its threads) in the block.

    Uses ``strace -c`` attached to the process: the count is the kernel's, for
    any program (SQLite's own calls included). Without strace, or where tracing
    is not allowed, ``calls`` stays None and ``why_not`` says why. Run it around
    work that is not timed: a traced system call costs more.
    """
    count = FsyncCount()
    strace = shutil.which("strace")
    if strace is None:
        count.why_not = "strace is not installed"
        yield count
        return
    proc = await asyncio.create_subprocess_exec(
        strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-p", str(pid),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            first = (await proc.stderr.readline()).decode()
        if "attached" not in first:  # e.g. "Operation not permitted"
            count.why_not = f"strace could not attach: {first.strip()}"
            yield count
            return
        yield count
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # strace detaches and prints its summary
        async with asyncio.timeout(30):
            rest = (await proc.stderr.read()).decode()
            await proc.wait()
    if count.why_not is None:
        count.calls = sum(
            int(fields[3])
            for line in rest.splitlines()
            if len(fields := line.split()) >= 5 and fields[-1] in ("fsync", "fdatasync")
        )


async def loop_stall(read: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(longest gap between the event loop's turns, wall time) while ``read`` runs: a task
    that yields at every turn sees how long the loop was kept from it (a read run on the
    loop's thread holds it for its whole time)."""
    done = False
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:  # ends with the read
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = time.perf_counter()
    try:
        await read()
    finally:
        done = True
    wall = time.perf_counter() - start
    await task
    return longest, wall
