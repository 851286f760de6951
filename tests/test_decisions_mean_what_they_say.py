"""A decision means what it says (DESIGN promise 8), in the cases a review found it did not.

Reproduced (the review of branch ``decide``):

* two clinicians who took the *same* decision on two offline laptops ("stopped", or
  "entered-in-error") got, once the laptops met, new ``block`` findings saying one had
  "changed its dose to 7.5 mg" while the other stopped it: a decision writes every path
  it involves, so each laptop's rewrite of the unchanged dose was read as a dose change
  concurrent with the other's stop;
* a decision "stop Augmentin" on an allergy finding kept covering that finding after
  the medication was made active again: the record then held a high-criticality
  penicillin allergy and an active Augmentin with nothing open, where a fresh
  prescription of the same drug is a ``block``;
* a count field of an entry (``Schema.with_counts("medications/*/quantity")``) changed
  while the entry was marked entered-in-error made a ``block`` that no outcome could
  settle: both wrote the change object back with ``set``, which a count refuses;
* ``entered-in-error-vs-edit`` read only the default collections, not one an application
  adds with ``Schema.with_collections`` (its documentation says "any collection");
* unlinking two records linked only through a third wrote "unlinked" and left them one chart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import exchange, replicas

from caresync import (
    DEFAULT_RULEBOOK,
    DEFAULT_SCHEMA,
    InvalidInputError,
    Record,
    Schema,
    Severity,
)
from caresync.replica import Replica

rules = DEFAULT_RULEBOOK


def stopped_while_dosed() -> tuple[Record, Record, str, str]:
    """Warfarin stopped on a while b set its dose to 7.5 mg, both synced: (a, b, med, finding)."""
    a, b = replicas()
    med = a.add_entry(
        "medications", {"drug": "warfarin", "dose": "5 mg", "status": "active"}, author="dr.a"
    )
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "7.5 mg", author="dr.b")
    exchange(a, b)
    [finding] = rules.conflicts(a)
    assert finding.rule == "stopped-vs-dose-change"
    return a, b, med, finding.id


@pytest.mark.parametrize("outcome", [0, 1])
def test_the_same_decision_on_two_laptops_leaves_nothing_open(outcome: int) -> None:
    a, b, med, finding = stopped_while_dosed()
    rules.resolve(a, finding, choose=outcome, author="dr.a")  # offline, both decide alike
    rules.resolve(b, finding, choose=outcome, author="dr.b")
    exchange(a, b)
    for replica in (a, b):
        assert rules.conflicts(replica) == []
        assert rules.contested(replica) == {}
        assert replica.value(f"medications/{med}/status") == ("stopped", "active")[outcome]
        assert replica.value(f"medications/{med}/dose") == "7.5 mg"


def test_two_different_decisions_make_no_finding_of_a_dose_nobody_changed() -> None:
    a, b, med, finding = stopped_while_dosed()
    rules.resolve(a, finding, choose=0, author="dr.a")  # stopped
    rules.resolve(b, finding, choose=1, author="dr.b")  # continue at 7.5 mg
    exchange(a, b)
    listed = rules.conflicts(a)
    assert listed == rules.conflicts(b)
    # The disagreement, as the decisions and the status they wrote; no "changed its
    # dose to 7.5 mg" finding, since both decided at 7.5 mg.
    assert sorted(c.subject for c in listed) == sorted(
        [f"_ack/{finding}", f"medications/{med}/status"]
    )
    assert set(rules.contested(a)) == {f"medications/{med}/status", f"medications/{med}/dose"}


def test_a_real_dose_change_concurrent_with_a_stop_is_still_found() -> None:
    """The other side of the fix: a dose the stopper had not seen is a change."""
    a, b = replicas()
    med = a.add_entry("medications", {"drug": "warfarin", "dose": "5 mg"}, author="dr.a")
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "7.5 mg", author="dr.b")
    b.set(f"medications/{med}/dose", "5 mg", author="dr.b")  # and back: nothing changed
    exchange(a, b)
    assert rules.conflicts(a) == []
    a2, c = replicas()  # a fresh pair: c changes the dose a stopper had not seen
    m2 = a2.add_entry("medications", {"drug": "warfarin", "dose": "5 mg"}, author="dr.a")
    exchange(a2, c)
    a2.set_status("medications", m2, "stopped", author="dr.a")
    c.set(f"medications/{m2}/dose", "5 mg", author="dr.c")  # the same dose: no change
    c.set(f"medications/{m2}/dose", "2.5 mg", author="dr.c")
    exchange(a2, c)
    assert [x.rule for x in rules.conflicts(a2)] == ["stopped-vs-dose-change"]


def test_the_same_entered_in_error_decision_on_two_laptops_leaves_nothing_open() -> None:
    a, b = replicas()
    problem = a.add_entry("problems", {"code": "J45", "onset": "2020"}, author="dr.a")
    exchange(a, b)
    a.set_status("problems", problem, "entered-in-error", author="dr.a")
    b.set(f"problems/{problem}/onset", "2019", author="dr.b")
    exchange(a, b)
    [finding] = rules.conflicts(a)
    assert finding.rule == "entered-in-error-vs-edit"
    rules.resolve(a, finding.id, choose=0, author="dr.a")
    rules.resolve(b, finding.id, choose=0, author="dr.b")
    exchange(a, b)
    for replica in (a, b):
        assert rules.conflicts(replica) == []
        assert replica.value(f"problems/{problem}/status") == "entered-in-error"


def allergy_and_augmentin() -> tuple[Record, Record, str, str]:
    """A high-criticality penicillin allergy (a) and Augmentin (b), met: (a, b, med, finding)."""
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
    assert finding.candidates[0].value == "stop Augmentin 625 mg"
    return a, b, med, finding.id


def test_a_stop_decision_stops_covering_the_finding_once_the_drug_is_active_again() -> None:
    a, b, med, finding = allergy_and_augmentin()
    rules.resolve(a, finding, choose=0, author="dr.a")  # stop Augmentin 625 mg
    exchange(a, b)
    assert rules.conflicts(b) == []
    b.set_status("medications", med, "active", author="nurse.b")  # restarted later
    exchange(a, b)
    for replica in (a, b):
        listed = rules.conflicts(replica)
        assert [(c.id, c.severity) for c in listed] == [(finding, Severity.BLOCK)]
        assert f"medications/{med}/status" in rules.contested(replica)
    # Decided again, it is settled again, on every replica.
    rules.resolve(b, finding, choose=1, author="dr.b")  # continue despite the allergy
    exchange(a, b)
    assert rules.conflicts(a) == rules.conflicts(b) == []


def test_a_stop_decision_still_covers_its_finding_while_the_drug_stays_stopped() -> None:
    a, b, med, finding = allergy_and_augmentin()
    rules.resolve(a, finding, choose=0, author="dr.a")
    b.set(f"medications/{med}/route", "oral", author="dr.b")  # unrelated, concurrent
    exchange(a, b)
    assert a.value(f"medications/{med}/status") == "stopped"
    assert rules.conflicts(a) == rules.conflicts(b) == []


def counted_schema() -> Schema:
    return DEFAULT_SCHEMA.with_counts("medications/*/quantity")


def test_entered_in_error_against_a_count_change_can_be_decided() -> None:
    schema = counted_schema()
    a = Record.create(replica="laptop-0", schema=schema)
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-1", schema=schema)
    med = a.add_entry(
        "medications", {"drug": "saline", "quantity": 12, "status": "active"}, author="dr.a"
    )
    exchange(a, b)
    a.set_status("medications", med, "entered-in-error", author="dr.a")
    b.adjust(f"medications/{med}/quantity", -1, author="nurse.b")
    exchange(a, b)
    [finding] = rules.conflicts(a)
    assert finding.rule == "entered-in-error-vs-edit"
    assert "delta" not in finding.message  # a change in words, not the stored object
    assert "quantity by -1" in finding.message
    for outcome, status in ((0, "entered-in-error"), (1, "active")):
        copy = Record.from_update(a.record_id, a.update_since(), replica="laptop-2", schema=schema)
        rules.resolve(copy, finding.id, choose=outcome, author="dr.c")
        assert copy.value(f"medications/{med}/status") == status
        assert copy.value(f"medications/{med}/quantity") == 11  # the change stays counted
        assert rules.conflicts(copy) == []


def test_entered_in_error_is_checked_in_an_application_collection() -> None:
    schema = DEFAULT_SCHEMA.with_collections(["devices"])
    a = Record.create(replica="laptop-0", schema=schema)
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-1", schema=schema)
    device = a.add_entry("devices", {"kind": "insulin pump", "rate": "1 U/h"}, author="dr.a")
    exchange(a, b)
    a.set_status("devices", device, "entered-in-error", author="dr.a")
    b.set(f"devices/{device}/rate", "2 U/h", author="dr.b")
    exchange(a, b)
    [finding] = rules.conflicts(a)
    assert finding.rule == "entered-in-error-vs-edit"
    assert finding.severity is Severity.BLOCK
    assert rules.conflicts(b) == [finding]
    assert set(rules.contested(a)) == {f"devices/{device}/status", f"devices/{device}/rate"}


async def test_unlinking_two_records_linked_only_through_a_third_is_refused(
    tmp_path: Path,
) -> None:
    """Reproduced: a - b and b - c linked, ``unlink_records(a, c)`` wrote "unlinked" on a and
    c and returned, while a and c stayed one chart through b (c's allergy still checked a's
    prescription): the unlink said something the record did not do."""
    replica = await Replica.open(tmp_path / "laptop.db")
    try:
        a, b, c = [await replica.create_record() for _ in range(3)]
        await replica.add_entry(a, "medications", {"drug": "amoxicillin"}, author="dr.a")
        await replica.add_entry(
            c, "allergies", {"substance": "penicillin", "criticality": "high"}, author="dr.a"
        )
        await replica.link_records(a, b, author="dr.a")
        await replica.link_records(b, c, author="dr.a")
        before = await replica.conflicts(a)
        assert [x.rule for x in before] == ["allergy-vs-prescription"]
        with pytest.raises(InvalidInputError, match=f"through other records \\({b}\\)"):
            await replica.unlink_records(a, c, author="dr.a")
        assert f"links/{c}" not in (await replica.record(a)).paths()  # nothing written
        assert f"links/{a}" not in (await replica.record(c)).paths()
        assert await replica.conflicts(a) == before
        await replica.unlink_records(b, c, author="dr.a")  # the link that joins them
        assert await replica.linked_records(a) == [b]
        assert await replica.conflicts(a) == []
    finally:
        await replica.close()


def test_a_dispensing_alike_to_one_the_marker_saw_is_still_a_change() -> None:
    """Reproduced (review of ``_saw_as``): a count revision stores its change and the count
    its writer meant (``{"delta": -1, "count": 11}``), so a dispensing made on another
    laptop concurrently with an entered-in-error mark, of the same size as one the marker
    had seen, stored the very value the marker saw and was taken for "no change": the
    finding was hidden while the count went down twice. A count's concurrent change is a
    change whatever it stores."""
    schema = counted_schema()
    a = Record.create(replica="laptop-0", schema=schema)
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-1", schema=schema)
    med = a.add_entry(
        "medications", {"drug": "saline", "quantity": 12, "status": "active"}, author="dr.a"
    )
    exchange(a, b)
    a.adjust(f"medications/{med}/quantity", -1, author="nurse.a")  # the marker sees this one
    a.set_status("medications", med, "entered-in-error", author="dr.a")
    b.adjust(f"medications/{med}/quantity", -1, author="nurse.b")  # concurrent with the mark
    exchange(a, b)
    assert a.value(f"medications/{med}/quantity") == 10
    listed = rules.conflicts(a)
    assert [(c.rule, c.candidates[1].value) for c in listed] == [
        ("entered-in-error-vs-edit", "keep it, with quantity changed by -1")
    ]
    assert "nurse.b on laptop-1 changed quantity by -1" in listed[0].message
    assert rules.conflicts(b) == listed
