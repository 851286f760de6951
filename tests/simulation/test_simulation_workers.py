"""Laptops in worker processes: the same run, the same outcome, both cores.

Real parts: worker processes (``python -m caresync.simulation.worker``), each
laptop on its own SQLite file, the server in the test's process on a websocket
on 127.0.0.1.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from caresync.exceptions import InvalidValueError, NotEnrolledError
from caresync.simulation import SimulationConfig, run_simulation
from caresync.simulation.__main__ import main
from caresync.simulation.laptops import laptop_file
from caresync.simulation.workers import LaptopWorkers

KEYS = (
    "edits",
    "values_logged",
    "concurrent_groups",
    "clinical_cases",
    "conflicts_seen",
    "conflicts_resolved",
    "conflicts_open",
    "sync_rounds",
)
OPTIONS = {"laptops": 6, "patients": 20, "edits_per_laptop": 6, "conflict_rate": 0.4, "seed": 3}


async def test_laptops_in_two_workers_converge_like_one_process_with_the_same_seed() -> None:
    workers = await run_simulation(SimulationConfig(**OPTIONS, workers=2))  # type: ignore[arg-type]
    assert workers.ok, workers.details
    assert workers.workers == 2
    assert workers.replicas_checked == 7  # every laptop's file, and the server's
    assert workers.conflicts_resolved > 0  # resolvers played, from what they had pulled
    assert workers.peak_rss_mb > 0
    assert len(workers.cpu_s) == 3
    assert all(cpu > 0 for cpu in workers.cpu_s)
    alone = await run_simulation(SimulationConfig(**OPTIONS, workers=0))  # type: ignore[arg-type]
    assert alone.ok, alone.details
    assert alone.workers == 0
    assert len(alone.cpu_s) == 1
    assert alone.cpu_s[0] > 0
    assert [getattr(workers, k) for k in KEYS] == [getattr(alone, k) for k in KEYS]


async def test_the_same_seed_in_workers_gives_the_same_outcome_twice() -> None:
    config = SimulationConfig(**OPTIONS, workers=3)  # type: ignore[arg-type]
    first = await run_simulation(config)
    second = await run_simulation(config)
    assert first.ok, first.details
    assert second.ok, second.details
    assert [getattr(first, k) for k in KEYS] == [getattr(second, k) for k in KEYS]


async def test_heavy_overlap_gives_one_outcome_whatever_order_laptops_synced_in() -> None:
    """Three patients, so most edits land on fields other laptops edited: what each edit
    supersedes depends on what its laptop had pulled, which the settling pass fixes."""
    options = {"laptops": 8, "patients": 3, "edits_per_laptop": 6, "seed": 1, "concurrency": 8}
    outcomes = []
    for workers in (0, 2, 3):
        result = await run_simulation(SimulationConfig(**options, workers=workers))  # type: ignore[arg-type]
        assert result.ok, result.details
        outcomes.append([getattr(result, k) for k in KEYS])
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_caresync_simulate_workers_converges(capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--laptops", "3", "--patients", "5", "--edits-per-laptop", "3", "--seed", "2"]
    code = main([*options, "--workers", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["ok"] is True
    assert data["workers"] == 2


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"workers": -1}, "workers"),
        ({"workers": 17}, "workers"),
        ({"workers": True}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"laptops": 2, "workers": 3}, "at most laptops"),
        ({"workers": 1, "transport": "memory"}, "memory"),
    ],
)
def test_bad_worker_counts_are_refused(options: dict[str, object], words: str) -> None:
    settings: dict[str, object] = {"laptops": 4, "patients": 1, **options}
    with pytest.raises(InvalidValueError, match=words):
        SimulationConfig(**settings)  # type: ignore[arg-type]


def test_the_default_picks_workers_for_large_runs_on_websockets_only() -> None:
    assert SimulationConfig(laptops=49, patients=1).laptop_workers == 0
    assert SimulationConfig(laptops=50, patients=1).laptop_workers == 2
    assert SimulationConfig(laptops=500, patients=1, transport="memory").laptop_workers == 0
    assert SimulationConfig(laptops=500, patients=1, workers=0).laptop_workers == 0


def test_caresync_simulate_refuses_bad_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--laptops", "2", "--patients", "1", "--workers", "-1"]) == 2
    assert "workers" in capsys.readouterr().err
    options = ["--laptops", "2", "--patients", "1", "--workers", "1", "--transport", "memory"]
    assert main(options) == 2
    assert "memory" in capsys.readouterr().err


async def test_a_laptop_failing_in_a_worker_raises_its_own_typed_error(tmp_path: Path) -> None:
    config = SimulationConfig(laptops=2, patients=1, workers=2)
    workers = LaptopWorkers.start(config, tmp_path, secrets.token_urlsafe(8), 2)
    try:
        await workers.call("create")
        assert (tmp_path / laptop_file(1)).exists()
        with pytest.raises(NotEnrolledError):  # not enrolled yet: the replica's own error
            await workers.call("sync", [0, 1])
    finally:
        await workers.stop()
    assert len(workers.peaks_mb) == 2
    assert len(workers.cpu_s) == 2
    assert all(cpu > 0 for cpu in workers.cpu_s)
