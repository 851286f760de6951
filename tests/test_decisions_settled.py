"""Settling concurrent decisions means what the person chose (DESIGN promise 8).

Reproduced (the review of branch ``decide``):

* two clinicians decided one finding differently offline; settling that disagreement
  with ``value=`` (``conflicts resolve --value``) wrote an arbitrary JSON as "the
  decision", with no ``writes``: it wrote none of the finding's paths (the status
  stayed contested between "stopped" and "active") and covered the finding for good;
* settling it by choosing one decision wrote that decision's values over a third
  laptop's concurrent dose (10 mg) that no candidate showed, and no conflict was left;
* "stop Augmentin" on one laptop against "continue Augmentin despite the allergy" on
  another, settled by choosing "continue", left the medication stopped: the "continue"
  outcome wrote nothing, so the other decision's stop stood.
"""

from __future__ import annotations

import pytest
from tests.helpers import exchange, replicas

from caresync import (
    DEFAULT_RULEBOOK,
    ConflictKind,
    Finding,
    InvalidResolutionError,
    Outcome,
    Record,
    RecordView,
    Rulebook,
    Severity,
    UnknownConflictError,
    UnknownEntryError,
)
from caresync.records import ACK_PREFIX

rules = DEFAULT_RULEBOOK


def decided_differently(n: int = 2) -> tuple[list[Record], str, str]:
    """Warfarin stopped on laptop-0 while laptop-1 set 7.5 mg; laptop-0 decided "stopped"
    and laptop-1 "continue at 7.5 mg", offline: (laptops, medication id, finding id)."""
    laptops = replicas(n)
    a, b = laptops[0], laptops[1]
    med = a.add_entry(
        "medications", {"drug": "warfarin", "dose": "5 mg", "status": "active"}, author="dr.a"
    )
    exchange(*laptops)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "7.5 mg", author="dr.b")
    exchange(a, b)
    [finding] = rules.conflicts(a)
    rules.resolve(a, finding.id, choose=0, author="dr.a")  # stopped
    rules.resolve(b, finding.id, choose=1, author="dr.b")  # continue at 7.5 mg
    return laptops, med, finding.id


def decision_conflict(record: Record, finding: str) -> str:
    [conflict] = [c for c in rules.conflicts(record) if c.subject == ACK_PREFIX + finding]
    return conflict.id


def test_a_new_value_for_concurrent_decisions_is_refused_and_names_choose() -> None:
    (a, b), med, finding = decided_differently()
    exchange(a, b)
    conflict = decision_conflict(a, finding)
    before = a.update_since()
    with pytest.raises(InvalidResolutionError, match=r"choose=N") as raised:
        rules.resolve(a, conflict, value={"decision": "whatever I like"}, author="dr.c")
    assert "2 decisions" in str(raised.value)
    assert a.update_since() == before  # nothing written
    assert decision_conflict(a, finding) == conflict  # still open, still contested
    assert f"medications/{med}/status" in rules.contested(a)


def test_choosing_a_decision_over_a_dose_no_candidate_shows_is_refused() -> None:
    (a, b, c), med, finding = decided_differently(3)
    c.set(f"medications/{med}/dose", "10 mg", author="dr.c")  # concurrent with both decisions
    exchange(a, b, c)
    conflict = decision_conflict(a, finding)
    dose = f"medications/{med}/dose"
    assert "10 mg" in [h.value for h in a.get(dose).heads]
    before = a.update_since()
    for choose in (0, 1):  # both decisions write the dose as 7.5 mg
        with pytest.raises(UnknownConflictError, match="10 mg") as raised:
            rules.resolve(a, conflict, choose=choose, author="dr.a")
        assert a.get(dose).conflict_id in str(raised.value)  # the conflict to settle first
    assert a.update_since() == before
    # Once the dose is settled (seen by a person), the decision can be chosen.
    rules.resolve(a, a.get(dose).conflict_id or "", value="7.5 mg", author="dr.a")
    pick = [c.value for c in rules.conflict(a, conflict).candidates].index("stopped")
    rules.resolve(a, conflict, choose=pick, author="dr.a")
    exchange(a, b, c)
    for laptop in (a, b, c):
        assert rules.conflicts(laptop) == []
        assert laptop.value(f"medications/{med}/status") == "stopped"
        assert laptop.value(dose) == "7.5 mg"


def stop_against_continue() -> tuple[Record, Record, str, str]:
    """A high-criticality penicillin allergy against Augmentin; laptop a decided "stop",
    laptop b "continue despite the allergy", offline, then met: (a, b, med, finding)."""
    a, b = replicas()
    a.add_entry(
        "allergies",
        {"substance": "penicillin", "status": "active", "criticality": "high"},
        author="dr.a",
    )
    med = b.add_entry(
        "medications", {"drug": "Augmentin 625 mg", "status": "active"}, author="dr.b"
    )
    exchange(a, b)
    [finding] = rules.conflicts(a)
    assert finding.severity is Severity.BLOCK
    rules.resolve(a, finding.id, choose=0, author="dr.a")  # stop Augmentin 625 mg
    rules.resolve(b, finding.id, choose=1, author="dr.b")  # continue despite the allergy
    exchange(a, b)
    return a, b, med, finding.id


def test_settling_on_continue_despite_the_allergy_makes_the_medication_active() -> None:
    a, b, med, finding = stop_against_continue()
    status = f"medications/{med}/status"
    listed = rules.conflicts(a)
    assert listed == rules.conflicts(b)
    # Both sides shown: the status each decision wrote, and the decisions.
    assert sorted(h.value for h in a.get(status).heads) == ["active", "stopped"]
    assert status in rules.contested(a)
    conflict = decision_conflict(a, finding)
    candidates = rules.conflict(a, conflict).candidates
    pick = [c.value for c in candidates].index("continue Augmentin 625 mg despite the allergy")
    assert dict(candidates[pick].writes) == {status: "active"}  # what choosing it writes
    rules.resolve(a, conflict, choose=pick, author="dr.c")
    exchange(a, b)
    for laptop in (a, b):
        assert laptop.value(status) == "active"  # what the person chose
        assert rules.conflicts(laptop) == []


def test_settling_on_stop_makes_the_medication_stopped() -> None:
    a, b, med, finding = stop_against_continue()
    conflict = decision_conflict(a, finding)
    pick = [c.value for c in rules.conflict(a, conflict).candidates].index("stop Augmentin 625 mg")
    rules.resolve(a, conflict, choose=pick, author="dr.c")
    exchange(a, b)
    for laptop in (a, b):
        assert laptop.value(f"medications/{med}/status") == "stopped"
        assert rules.conflicts(laptop) == []


def test_a_decision_that_leaves_another_decisions_write_standing_is_refused() -> None:
    """A decision recorded before its outcome wrote every path (or by an application's
    outcome that writes less): choosing it would leave the other decision's write as the
    record's value, so it is refused, naming the field and what to do."""
    # laptop d's decision as an older caresync recorded it: no writes.
    c, d = replicas()
    c.add_entry(
        "allergies",
        {"substance": "penicillin", "status": "active", "criticality": "high"},
        author="dr.a",
    )
    med = d.add_entry(
        "medications", {"drug": "Augmentin 625 mg", "status": "active"}, author="dr.b"
    )
    status = f"medications/{med}/status"
    exchange(c, d)
    [found] = rules.conflicts(c)
    rules.resolve(c, found.id, choose=0, author="dr.a")  # stop
    d.acknowledge_finding(
        found.id,
        {"decision": "continue Augmentin 625 mg despite the allergy", "outcome": 1, "writes": {}},
        author="dr.b",
    )
    exchange(c, d)
    [conflict] = [x for x in rules.conflicts(c) if x.kind is ConflictKind.FIELD]
    pick = [x.value for x in conflict.candidates].index(
        "continue Augmentin 625 mg despite the allergy"
    )
    before = c.update_since()
    with pytest.raises(InvalidResolutionError, match="stopped") as raised:
        rules.resolve(c, conflict.id, choose=pick, author="dr.c")
    assert "status" in str(raised.value)
    assert c.update_since() == before
    # Written by hand, the field says what the person wants; the decision then holds.
    c.set(status, "active", author="dr.c")
    rules.resolve(c, conflict.id, choose=pick, author="dr.c")
    assert c.value(status) == "active"
    assert rules.conflicts(c) == []


@pytest.mark.parametrize(
    "bad_write",
    [
        ("_ack/another-finding", {"decision": "acknowledged"}),  # reserved for caresync
        ("medications/no-such-entry/status", "active"),  # an entry this replica lacks
        ("notes bad//path", "x"),  # not a path
    ],
)
def test_choosing_a_decision_with_a_write_this_replica_refuses_writes_nothing(
    bad_write: tuple[str, str | dict[str, str]],
) -> None:
    """A peer's decision names the fields it writes (a newer application's schema, a
    broken or hostile client): choosing it wrote the fields it could, then raised at the
    first it could not, leaving the medication active with no decision recorded, and
    the next write of the record sent that half along."""
    a, b = replicas()
    a.add_entry(
        "allergies",
        {"substance": "penicillin", "status": "active", "criticality": "high"},
        author="dr.a",
    )
    med = b.add_entry(
        "medications", {"drug": "Augmentin 625 mg", "status": "active"}, author="dr.b"
    )
    exchange(a, b)
    [found] = rules.conflicts(a)
    finding = found.id
    rules.resolve(a, finding, choose=0, author="dr.a")  # stop
    status = f"medications/{med}/status"
    path, value = bad_write
    b.set(status, "active", author="dr.b")  # what b's decision wrote, as resolve would
    b.acknowledge_finding(
        finding,
        {
            "decision": "continue regardless",
            "outcome": 1,
            "writes": {status: "active", path: value},
        },
        author="dr.b",
    )
    exchange(a, b)
    conflict = decision_conflict(a, finding)
    pick = [c.value for c in rules.conflict(a, conflict).candidates].index("continue regardless")
    before = a.update_since()
    statuses = sorted(str(h.value) for h in a.get(status).heads)
    with pytest.raises(InvalidResolutionError, match="nothing was written") as raised:
        rules.resolve(a, conflict, choose=pick, author="dr.c")
    assert path in str(raised.value)
    assert a.update_since() == before
    assert sorted(str(h.value) for h in a.get(status).heads) == statuses
    assert decision_conflict(a, finding) == conflict  # still open


def _writes_a_missing_entry(view: RecordView) -> list[Finding]:
    """An application's rule whose second outcome writes a field of no entry."""
    meds = view.entry_ids("medications")
    if not meds:
        return []
    status = view.get(f"medications/{meds[0]}/status")
    return [
        Finding(
            rule="app-rule",
            severity=Severity.BLOCK,
            message="choose",
            revisions=tuple(h.id for h in status.heads),
            key=meds[0],
            outcomes=(
                Outcome("keep", ((f"medications/{meds[0]}/status", "active"),), status.heads[0].id),
                Outcome(
                    "stop and note",
                    (
                        (f"medications/{meds[0]}/status", "stopped"),
                        ("medications/no-such-entry/status", "stopped"),
                    ),
                    status.heads[0].id,
                ),
            ),
        )
    ]


def test_an_outcome_with_a_write_the_record_refuses_writes_nothing() -> None:
    """The same for a rule's own outcome: the status was stopped, then the second write
    raised, and the record said "stopped" with no decision recorded."""
    book = Rulebook([_writes_a_missing_entry])
    (a,) = replicas(1)
    med = a.add_entry("medications", {"drug": "warfarin", "status": "active"}, author="dr.a")
    [finding] = book.conflicts(a)
    before = a.update_since()
    with pytest.raises(UnknownEntryError):
        book.resolve(a, finding.id, choose=1, author="dr.a")
    assert a.update_since() == before
    assert a.value(f"medications/{med}/status") == "active"
