"""Two of ``bench_store``'s cases, for alternating two trees (one store alone, where a
thread round trip counts most): durable single edits (2,000, median of 5 runs) and a
laptop's pulled batches (500 records, 20 batches of 1,000 single-revision updates,
median of 3). Prints one JSON line. Run with the tree's own interpreter and
``PYTHONPATH=<tree>`` (its ``benchmarks.bench_store``)::

    PYTHONPATH=<tree> <tree>/.venv/bin/python benchmarks/store_ab.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import bench_store


async def main() -> dict[str, Any]:
    """Both cases, in one temporary directory."""
    with tempfile.TemporaryDirectory(prefix="caresync-store-ab-") as tmp:
        work = Path(tmp)
        single = await bench_store.bench_single_edits(work, edits=2000, repeats=5)
        batches = await bench_store.bench_batches(work, 500, 20, 1000, 3, to_feed=False)
    return {
        "single_edits_per_s": single["caresync_per_s"],
        "single_raw_aiosqlite_per_s": single["raw_aiosqlite_per_s"],
        "batches_revisions_per_s": batches["caresync_revisions_per_s"],
        "batches_raw_aiosqlite_revisions_per_s": batches["raw_aiosqlite_revisions_per_s"],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
