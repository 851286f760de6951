"""``edits_total``: a fixed number of edits spread over the laptops (the default is unchanged)."""

from __future__ import annotations

import pytest

from caresync.exceptions import InvalidValueError
from caresync.simulation import SimulationConfig, plan, run_simulation
from caresync.simulation.__main__ import main


def test_the_budget_is_spread_evenly_and_the_default_stays_per_laptop() -> None:
    config = SimulationConfig(laptops=7, patients=10, edits_total=20, seed=4)
    assert [config.edits_of(i) for i in range(7)] == [3, 3, 3, 3, 3, 3, 2]
    ordinary = [e for r in plan(config).rounds for es in r.edits for e in es if e.case is None]
    assert len(ordinary) == 20
    default = SimulationConfig(laptops=7, patients=10, seed=4)
    assert [default.edits_of(i) for i in range(7)] == [20] * 7
    same = SimulationConfig(laptops=7, patients=10, seed=4, edits_per_laptop=20)
    assert plan(default) == plan(same)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "20", 100_000_001])
def test_a_bad_budget_is_refused(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="edits_total"):
        SimulationConfig(laptops=2, patients=1, edits_total=bad)  # type: ignore[arg-type]


async def test_a_run_with_a_budget_converges_and_loses_nothing() -> None:
    config = SimulationConfig(laptops=5, patients=8, edits_total=9, conflict_rate=0.3, seed=2)
    result = await run_simulation(config)
    assert result.ok, result.details
    assert result.edits == plan(config).edit_count


def test_caresync_simulate_edits_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--laptops", "3", "--patients", "4", "--edits-total", "-2"]) == 2
    assert "edits-total" in capsys.readouterr().err
    assert main(["--laptops", "3", "--patients", "4", "--edits-total", "4", "--json"]) == 0
