"""The simulation on the in-memory channel: the same run, the same outcome, no sockets.

Real parts: the server and every laptop on their own SQLite files; only the channel
differs (a MemoryNetwork, each laptop with its own link).
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from caresync.exceptions import InvalidValueError
from caresync.simulation import SimulationConfig, run_simulation
from caresync.simulation.__main__ import main

KEYS = ("edits", "values_logged", "concurrent_groups", "clinical_cases", "conflicts_open")


async def test_a_memory_run_converges_like_a_websocket_run_of_the_same_seed() -> None:
    options = {"laptops": 4, "patients": 10, "edits_per_laptop": 6, "conflict_rate": 0.4, "seed": 8}
    memory = await run_simulation(SimulationConfig(**options, transport="memory"))  # type: ignore[arg-type]
    assert memory.ok, memory.details
    assert memory.replicas_checked == 5
    assert memory.bytes_up > 0
    assert memory.bytes_down > memory.bytes_up  # first copies went down, counted the same way
    sockets = await run_simulation(SimulationConfig(**options))  # type: ignore[arg-type]
    assert sockets.ok, sockets.details
    assert [getattr(memory, k) for k in KEYS] == [getattr(sockets, k) for k in KEYS]


def test_caresync_simulate_transport_memory_converges(capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--laptops", "3", "--patients", "5", "--edits-per-laptop", "3", "--seed", "2"]
    code = main([*options, "--transport", "memory", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["converged"] is True
    assert data["lost_values"] == 0
    assert data["ok"] is True


def test_the_terminal_output_names_the_transport() -> None:
    from caresync.simulation import run_simulate_command

    out = io.StringIO()
    config = SimulationConfig(laptops=2, patients=3, edits_per_laptop=2, seed=1, transport="memory")
    code = run_simulate_command(config, json_output=False, console=Console(file=out, width=120))
    assert code == 0
    assert "in-memory channels" in out.getvalue()


def test_an_unknown_transport_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidValueError, match="transport"):
        SimulationConfig(laptops=1, patients=1, transport="smoke signals")
    assert main(["--laptops", "1", "--patients", "1", "--transport", "carrier"]) == 2
    assert "transport" in capsys.readouterr().err
