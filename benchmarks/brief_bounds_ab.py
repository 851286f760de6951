"""How long one store read holds the event loop, for A/B runs of two trees (session 20's
review of brief reads).

Builds a server database with one replica's audit chain of ``ENTRIES`` entries, an
organisation of ``ACCOUNTS`` accounts and one of 3, then, ``REPS`` times each, times:

* ``audit_deep``: ``audit_entries(replica_id, after_seq=ENTRIES - 1, limit=1)`` (what a
  laptop's login asks of its own chain);
* ``resume_large``: ``read_resume`` of a session in the large organisation;
* ``resume_small``: ``read_resume`` of a session in the small one (a brief read in both
  trees: its wall time per call).

For the first two it reports the longest stretch the event loop went without a turn
while the read ran (a task yields in a loop beside it), and the read's wall time. Prints
one JSON line of medians. Run it from each tree in turn::

    PYTHONPATH=TREE/src python -m benchmarks.brief_bounds_ab 200000 5000 15
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import caresync
from benchmarks.common import loop_stall
from caresync.storage import SQLiteStore
from caresync.storage.base import SessionRow


def _fill(path: Path, entries: int, accounts: int) -> None:
    raw = sqlite3.connect(path)
    try:
        raw.executemany(
            "INSERT INTO audit_trail (replica_id, line, seq, at_ms, actor, action, record_id,"
            " detail, prev_hash, hash) VALUES ('laptop-1', 0, ?, 0, 'dr.a', 'read', ?, NULL,"
            " ?, ?)",
            (
                (seq, f"rec-{seq % 1000}", b"p" * 32, seq.to_bytes(32, "big"))
                for seq in range(1, entries + 1)
            ),
        )
        raw.executemany(
            "INSERT INTO users (organisation, username, password_hash, created_ms,"
            " display_name) VALUES (?, ?, 'h', 0, ?)",
            [("clinic-big", f"user-{n:06d}", f"Dr {n}") for n in range(accounts)]
            + [("clinic-small", f"user-{n:06d}", None) for n in range(3)],
        )
        raw.commit()
    finally:
        raw.close()


async def measure(entries: int, accounts: int, reps: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="brief-ab-"))
    path = work / "server.db"
    await (await SQLiteStore.open(path)).close()
    _fill(path, entries, accounts)
    out: dict[str, list[float]] = {}
    async with SQLiteStore.open(path) as store:
        await store.add_session(SessionRow("b" * 64, "clinic-big", "user-000001", None, 0, 2**50))
        await store.add_session(SessionRow("s" * 64, "clinic-small", "user-000001", None, 0, 2**50))
        for _ in range(reps):
            for name, read in (
                (
                    "audit_deep",
                    lambda: store.audit_entries(
                        replica_id="laptop-1", after_seq=entries - 1, limit=1
                    ),
                ),
                ("resume_large", lambda: store.read_resume("b" * 64, "laptop-1")),
            ):
                stall, wall = await loop_stall(read)
                out.setdefault(f"{name}_stall_ms", []).append(stall * 1e3)
                out.setdefault(f"{name}_wall_ms", []).append(wall * 1e3)
            start = time.perf_counter()
            for _ in range(200):
                await store.read_resume("s" * 64, "laptop-1")
            out.setdefault("resume_small_us", []).append((time.perf_counter() - start) / 200 * 1e6)
    return {
        "tree": str(Path(caresync.__file__).parents[2]),
        **{key: round(statistics.median(values), 3) for key, values in out.items()},
    }


def main(argv: list[str]) -> int:
    entries, accounts, reps = (int(a) for a in argv[:3])
    print(json.dumps(asyncio.run(measure(entries, accounts, reps))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
