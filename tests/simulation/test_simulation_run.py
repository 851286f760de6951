"""Small end-to-end runs: a real server and real laptops on SQLite over websockets on 127.0.0.1."""

from __future__ import annotations

import gc
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from caresync.exceptions import ConnectionLostError, InvalidValueError
from caresync.replica import Replica
from caresync.simulation import SimulationConfig, laptops, run_simulate_command, run_simulation
from caresync.simulation.__main__ import main
from caresync.simulation.runner import SERVER_FILE, laptop_file

REQUIRED_KEYS = {
    "converged",
    "lost_values",
    "conflicts_open",
    "duration_s",
    "first_copy_s",
    "final_sync_s",
    "bytes_up",
    "bytes_down",
}


class Phases:
    """An observer that records the phases and checks steps never overrun them."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self.done: list[int] = []

    def phase(self, name: str, total: int) -> None:
        self.phases.append((name, total))
        self.done.append(0)

    def advance(self, steps: int = 1) -> None:
        self.done[-1] += steps
        assert self.done[-1] <= self.phases[-1][1]


async def test_a_small_run_converges_keeps_every_value_and_its_conflicts(tmp_path: Path) -> None:
    config = SimulationConfig(
        laptops=6, patients=25, edits_per_laptop=8, conflict_rate=0.3, seed=4, workdir=tmp_path
    )
    phases = Phases()
    result = await run_simulation(config, observer=phases)
    assert result.converged, result.details
    assert result.lost_values == 0
    assert result.ok
    assert result.edits == 6 * 8 + 2 * result.clinical_cases
    assert result.values_logged >= 25 * 4  # every patient's imported values at least
    assert result.conflicts_open > 0  # concurrent edits and clinical cases stay visible
    assert result.concurrent_groups > 0
    assert result.replicas_checked == 7
    assert result.bytes_up > 0
    assert result.bytes_down > result.bytes_up  # six first copies went down
    assert 0 < result.first_copy_s < result.duration_s
    assert 0 < result.final_sync_s < result.duration_s
    # Every phase was announced and completed.
    assert phases.phases[0][0].startswith("import")
    assert [d for d in phases.done] == [t for _, t in phases.phases]
    # workdir kept the databases.
    assert (tmp_path / SERVER_FILE).exists()
    assert (tmp_path / laptop_file(5)).exists()


async def test_the_same_seed_gives_the_same_outcome() -> None:
    config = SimulationConfig(laptops=4, patients=10, edits_per_laptop=6, conflict_rate=0.4, seed=8)
    thresholds = gc.get_threshold()
    first = await run_simulation(config)
    assert gc.get_threshold() == thresholds  # raised for the run only
    second = await run_simulation(config)
    keys = ("edits", "values_logged", "concurrent_groups", "clinical_cases", "conflicts_open")
    assert [getattr(first, k) for k in keys] == [getattr(second, k) for k in keys]
    assert first.ok
    assert second.ok


async def test_a_workdir_holding_a_previous_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / SERVER_FILE).write_bytes(b"")
    with pytest.raises(InvalidValueError, match="already holds"):
        await run_simulation(SimulationConfig(laptops=2, patients=2, workdir=tmp_path))


def test_json_output_is_exactly_one_object_with_the_required_keys() -> None:
    out = io.StringIO()
    config = SimulationConfig(laptops=3, patients=5, edits_per_laptop=3, seed=2)
    code = run_simulate_command(config, json_output=True, console=Console(file=out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data.keys() >= REQUIRED_KEYS
    assert data["converged"] is True
    assert data["lost_values"] == 0
    assert code == 0


def test_the_terminal_output_ends_with_a_summary_table() -> None:
    out = io.StringIO()
    config = SimulationConfig(laptops=2, patients=3, edits_per_laptop=2, seed=1)
    code = run_simulate_command(config, json_output=False, console=Console(file=out, width=120))
    text = out.getvalue()
    assert code == 0
    assert "Simulation outcome" in text
    assert "every replica and the server identical" in text


def test_python_m_refuses_bad_options_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--laptops", "0", "--patients", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "laptops" in captured.err


async def test_a_failing_laptop_fails_the_run_with_its_own_typed_error(tmp_path: Path) -> None:
    from caresync.exceptions import UnknownRecordError
    from caresync.simulation.observer import NullObserver
    from caresync.simulation.runner import _Run

    run = _Run(SimulationConfig(laptops=3, patients=2, concurrency=2), tmp_path, NullObserver())
    finished: list[int] = []

    async def job(item: int) -> None:
        if item == 1:
            raise UnknownRecordError("laptop 1 lost its record")
        finished.append(item)

    with pytest.raises(UnknownRecordError, match="laptop 1"):  # not an ExceptionGroup
        await run._each([0, 1, 2], job)
    assert 1 not in finished


async def test_a_sync_whose_link_fails_is_tried_again_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reproduced on a loaded machine: one laptop of 1,000 timed out in a websocket
    handshake and the whole run failed; a clinician presses sync again."""
    monkeypatch.setattr(laptops, "SYNC_RETRY_DELAYS_S", (0.0, 0.0))
    real_sync = Replica.sync
    failed: list[str] = []

    async def flaky_sync(self: Replica, *args: object, **kwargs: object) -> object:
        if not failed:  # the first sync of the run: its link fails before anything moves
            failed.append(self.replica_id)
            raise ConnectionLostError("cannot connect: timed out during opening handshake")
        return await real_sync(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Replica, "sync", flaky_sync)
    config = SimulationConfig(laptops=3, patients=5, edits_per_laptop=3, seed=2, workers=0)
    result = await run_simulation(config)
    assert failed
    assert result.ok, result.details
    assert result.sync_retries == 1
    assert result.lost_values == 0


async def test_a_sync_whose_link_fails_every_time_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(laptops, "SYNC_RETRY_DELAYS_S", (0.0, 0.0))

    async def broken_sync(self: Replica, *args: object, **kwargs: object) -> object:
        raise ConnectionLostError("cannot connect: refused")

    monkeypatch.setattr(Replica, "sync", broken_sync)
    config = SimulationConfig(laptops=2, patients=4, edits_per_laptop=2, seed=3, workers=0)
    with pytest.raises(ConnectionLostError, match="refused"):
        await run_simulation(config)
