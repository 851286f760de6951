"""A decision on a finding never writes over a value the finding did not show.

Reproduced (the review of decide23): a medication stopped on laptop a while laptop b set
its dose to 7.5 mg makes a finding whose outcomes are "stopped" and "continue at 7.5 mg".
Laptop c, concurrently, set the dose to 10 mg. Once c's edit arrived, the finding kept its
id (it names the stop and b's dose), so choosing "continue at 7.5 mg" wrote 7.5 mg over
both doses: the 10 mg was never shown to the person deciding, and no conflict was left.
"""

from __future__ import annotations

import pytest
from tests.helpers import exchange, replicas

from caresync import DEFAULT_RULEBOOK, Record, UnknownConflictError


def stop_against_two_doses() -> tuple[Record, str, str]:
    """Laptop a's record once b's dose, then c's, arrived: (record, finding id, med id)."""
    a, b, c = replicas(3)
    med = a.add_entry(
        "medications", {"drug": "warfarin", "dose": "5 mg", "status": "active"}, author="dr.a"
    )
    exchange(a, b, c)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "7.5 mg", author="dr.b")
    c.set(f"medications/{med}/dose", "10 mg", author="dr.c")
    exchange(a, b)
    listed = [f for f in DEFAULT_RULEBOOK.conflicts(a) if f.subject == "stopped-vs-dose-change"]
    assert [cand.value for cand in listed[0].candidates] == ["stopped", "continue at 7.5 mg"]
    a.apply_update(c.update_since(a.state_vector()))  # c's dose arrives after the listing
    return a, listed[0].id, med


def test_a_decision_is_refused_over_a_value_that_arrived_unseen() -> None:
    record, finding, med = stop_against_two_doses()
    dose = f"medications/{med}/dose"
    assert record.get(dose).in_conflict  # 7.5 mg against 10 mg, listed as its own conflict
    with pytest.raises(UnknownConflictError, match="10 mg"):
        DEFAULT_RULEBOOK.resolve(record, finding, choose=1, author="dr.a")
    assert sorted(h.value for h in record.get(dose).heads) == ["10 mg", "7.5 mg"]  # nothing written


def test_every_outcome_waits_while_the_unseen_value_is_listed_as_its_own_conflict() -> None:
    record, finding, med = stop_against_two_doses()
    dose = f"medications/{med}/dose"
    for outcome in (0, 1):  # "stopped" and "continue at 7.5 mg" both write the dose
        with pytest.raises(UnknownConflictError, match="resolve that conflict first"):
            DEFAULT_RULEBOOK.resolve(record, finding, choose=outcome, author="dr.a")
    listed = {c.id for c in DEFAULT_RULEBOOK.conflicts(record)}
    assert record.get(dose).conflict_id in listed  # shown, to be settled first
    assert finding in listed
