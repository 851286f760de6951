"""The seeded plan: the same seed gives the same edits; concurrent groups and clinical cases."""

from __future__ import annotations

from collections import defaultdict

import pytest

from caresync.exceptions import InvalidValueError
from caresync.simulation import SimulationConfig, plan
from caresync.simulation.scenario import CLINICAL_CASES, LAPTOPS_PER_CASE


def test_the_same_seed_gives_the_same_scenario() -> None:
    config = SimulationConfig(laptops=12, patients=40, edits_per_laptop=15, seed=42)
    assert plan(config) == plan(config)
    assert plan(config) == plan(
        SimulationConfig(laptops=12, patients=40, edits_per_laptop=15, seed=42)
    )


def test_another_seed_gives_other_edits() -> None:
    first = plan(SimulationConfig(laptops=12, patients=40, seed=1))
    second = plan(SimulationConfig(laptops=12, patients=40, seed=2))
    assert first.patients != second.patients
    assert first.rounds != second.rounds


def test_every_laptop_makes_its_edits_and_the_cases_come_on_top() -> None:
    config = SimulationConfig(laptops=10, patients=50, edits_per_laptop=7, seed=5, rounds=3)
    scenario = plan(config)
    ordinary = [e for r in scenario.rounds for edits in r.edits for e in edits if e.case is None]
    cases = [e for r in scenario.rounds for edits in r.edits for e in edits if e.case is not None]
    assert len(ordinary) == 10 * 7
    assert scenario.clinical_cases == 10 // LAPTOPS_PER_CASE
    assert len(cases) == 2 * scenario.clinical_cases
    assert scenario.edit_count == len(ordinary) + len(cases)
    for r in scenario.rounds:
        for laptop, edits in enumerate(r.edits):
            assert all(e.laptop == laptop for e in edits)
            assert all(0 <= e.patient < 50 for e in edits)


def test_concurrent_groups_are_one_field_on_distinct_laptops_in_one_round() -> None:
    config = SimulationConfig(laptops=20, patients=30, edits_per_laptop=30, conflict_rate=0.5)
    scenario = plan(config)
    groups: dict[int, list[tuple[int, int, int, str]]] = defaultdict(list)
    for r in scenario.rounds:
        for edits in r.edits:
            for e in edits:
                if e.group is not None:
                    groups[e.group].append((r.index, e.laptop, e.patient, e.path))
    assert len(groups) == scenario.concurrent_groups > 20
    for members in groups.values():
        assert 2 <= len(members) <= 3
        assert len({(rnd, patient, path) for rnd, _, patient, path in members}) == 1
        assert len({laptop for _, laptop, _, _ in members}) == len(members)


def test_written_values_are_unique_per_edit() -> None:
    scenario = plan(SimulationConfig(laptops=8, patients=5, edits_per_laptop=25, seed=9))
    values = [
        (e.path, e.value)
        for r in scenario.rounds
        for edits in r.edits
        for e in edits
        if e.case is None
    ]
    assert len(values) == len(set(values))


def test_each_clinical_case_is_two_laptops_on_one_patient_in_one_round() -> None:
    config = SimulationConfig(laptops=5 * LAPTOPS_PER_CASE, patients=100, seed=3)
    scenario = plan(config)
    by_case: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for r in scenario.rounds:
        for edits in r.edits:
            for e in edits:
                if e.case is not None:
                    by_case[(e.case, e.patient)].append((r.index, e.laptop))
    assert {case for case, _ in by_case} == set(CLINICAL_CASES)
    for members in by_case.values():
        assert len(members) == 2
        assert members[0][0] == members[1][0]  # same round: neither saw the other
        assert members[0][1] != members[1][1]


def test_one_laptop_has_no_one_to_conflict_with() -> None:
    scenario = plan(SimulationConfig(laptops=1, patients=3, conflict_rate=1.0))
    assert scenario.concurrent_groups == 0
    assert scenario.clinical_cases == 0
    assert scenario.edit_count == 20


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"laptops": 0}, "laptops"),
        ({"laptops": True}, "laptops"),
        ({"patients": 0}, "patients"),
        ({"patients": 2.5}, "patients"),
        ({"edits_per_laptop": -1}, "edits_per_laptop"),
        ({"conflict_rate": 1.5}, "conflict_rate"),
        ({"conflict_rate": float("nan")}, "conflict_rate"),
        ({"seed": -3}, "seed"),
        ({"rounds": 0}, "rounds"),
        ({"online_rate": "half"}, "online_rate"),
        ({"workdir": "/tmp/x"}, "workdir"),
    ],
)
def test_bad_configuration_is_refused_with_the_option_named(
    changes: dict[str, object], named: str
) -> None:
    arguments: dict[str, object] = {"laptops": 3, "patients": 10, **changes}
    with pytest.raises(InvalidValueError, match=named):
        SimulationConfig(**arguments)  # type: ignore[arg-type]
