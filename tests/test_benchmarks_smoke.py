"""Run every benchmark once at a tiny size, so that none of them rots."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p.stem for p in (Path(__file__).parent.parent / "benchmarks").glob("bench_*.py")
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    out = tmp_path / f"{name}.json"
    assert module.main(["--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results, f"{name} wrote no results"
