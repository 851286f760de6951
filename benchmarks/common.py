"""Shared helpers for benchmarks: timing with medians, results files, CLI flags."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
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
