"""The live case of ``bench_sync`` alone (caresync's side, no peer): N laptops (``Replica``
in live mode, each committing every update it receives) in this process, one writer.

Prints one JSON line: this process's user and system CPU seconds and wall seconds from
the first edit to the last delivery, and the deliveries' median and p99 (ms, the median
over rounds). The same case without the peer's (``bench_sync``'s ``latency_cases``), so that the
tree under test (``PYTHONPATH``) is the only thing that changes between runs::

    PYTHONPATH=<tree> <tree>/.venv/bin/python benchmarks/live_threads.py 50
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import bench_sync

EDITS = 100


async def main(laptops: int) -> dict[str, Any]:
    """Run the case; what it measured."""
    measured: dict[str, Any] = {"laptops": laptops, "tree": os.environ.get("PYTHONPATH", "")}
    make = bench_sync.EditMaker.make
    start: list[Any] = []

    def timed_make(self: bench_sync.EditMaker, count: int) -> Any:
        start[:] = [os.times(), time.perf_counter()]
        return make(self, count)

    case = bench_sync.latency_case

    def timed_case(system: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if system == "caresync" and "user_s" not in measured:
            now = os.times()
            measured.update(
                user_s=round(now.user - start[0].user, 2),
                sys_s=round(now.system - start[0].system, 2),
                wall_s=round(time.perf_counter() - start[1], 2),
                threads_at_end=threading.active_count(),
            )
        result: dict[str, Any] = case(system, *args, **kwargs)
        return result

    async def no_peer(*_args: Any, **_kwargs: Any) -> None:
        raise _Done

    bench_sync.EditMaker.make = timed_make  # type: ignore[method-assign]
    bench_sync.latency_case = timed_case
    bench_sync.build_peer_server = no_peer  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as work:
        cases: list[dict[str, Any]] = []
        real_case = timed_case

        def keep(system: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = real_case(system, *args, **kwargs)
            cases.append(result)
            return result

        bench_sync.latency_case = keep
        with contextlib.suppress(_Done):
            await bench_sync.latency_cases(Path(work), laptops, EDITS)
    measured["median_ms"] = cases[0]["median_ms"]["median"]
    measured["p99_ms"] = cases[0]["p99_ms"]["median"]
    return measured


class _Done(Exception):
    """The caresync case is measured; the peer's is not wanted."""


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))))
