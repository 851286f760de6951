"""Run every benchmark once at a tiny size, so that none of them rots."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

_HERE = Path(__file__).parent.parent / "benchmarks"
# Fuzz runs follow the same interface: ``main(["--tiny", "--out", path])``.
BENCHMARKS = sorted(p.stem for pattern in ("bench_*.py", "fuzz_*.py") for p in _HERE.glob(pattern))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    out = tmp_path / f"{name}.json"
    assert module.main(["--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results, f"{name} wrote no results"
    if name.startswith("fuzz_"):  # every damaged input was taken or refused, nothing else
        assert results["cases"][0]["other"] == 0
        assert results["cases"][0]["mutations"] > 0
