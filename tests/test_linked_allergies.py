"""The allergy check across linked records (issue 13, item 3: the same person registered twice).

An allergy recorded on one chart rules out a prescription on a chart linked to it
as the same person, exactly as if it were recorded on the prescription's own
chart: the finding lives on the record whose prescription it would change, and
its decisions are written there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.helpers import exchange

from caresync import (
    DEFAULT_RULEBOOK,
    Conflict,
    ConflictKind,
    Finding,
    InvalidInputError,
    Record,
    RecordView,
    Rulebook,
    RuleError,
    Severity,
    UnknownConflictError,
)
from caresync.records import ACK_PREFIX, JSONValue

rules = DEFAULT_RULEBOOK
ALLERGY = "allergy-vs-prescription"
UNRECOGNISED = "allergen-not-recognised"


def by_rule(
    record: Record, rule: str = ALLERGY, linked: tuple[Record, ...] = (), book: Rulebook = rules
) -> list[Conflict]:
    return [c for c in book.conflicts(record, linked=linked) if c.rule == rule]


def person(allergy: dict[str, JSONValue], drug: str) -> tuple[Record, Record, str, str]:
    """Two charts of one person: ``here`` prescribes ``drug``, ``there`` records ``allergy``.

    Returns both records, the medication's entry id and the allergy's.
    """
    here = Record.create(replica="laptop-0")
    there = Record.create(replica="laptop-1")
    medication = here.add_entry("medications", {"drug": drug, "dose": "1 tablet"}, author="dr.b")
    allergy_id = there.add_entry("allergies", allergy, author="dr.a")
    return here, there, medication, allergy_id


def copy(record: Record, replica: str) -> Record:
    """The same record on another replica."""
    return Record.from_update(record.record_id, record.update_since(), replica=replica)


# ------------------------------------------------------------- what is found


@pytest.mark.parametrize(
    ("allergy", "severity"),
    [
        ({"substance": "Penicillin"}, Severity.FLAG),
        ({"substance": "Penicillin", "criticality": "low"}, Severity.FLAG),
        ({"substance": "Penicillin", "criticality": "high"}, Severity.BLOCK),
        ({"substance": "Penicillin", "reaction": "anaphylaxis"}, Severity.BLOCK),
        ({"substance": "Penicillin - anaphylaxis"}, Severity.BLOCK),
    ],
)
def test_a_linked_allergy_is_checked_against_this_records_prescription(
    allergy: dict[str, JSONValue], severity: Severity
) -> None:
    here, there, medication, _ = person(allergy, "Augmentin 625 mg")
    (conflict,) = by_rule(here, linked=(there,))
    assert conflict.record_id == here.record_id
    assert conflict.kind is ConflictKind.RULE
    assert conflict.severity is severity
    assert f"recorded on the linked record {there.record_id}" in conflict.message
    assert "allergy to 'Penicillin" in conflict.message
    assert "'Augmentin 625 mg' prescribed by dr.b on laptop-0" in conflict.message
    assert "it contains amoxicillin, a penicillin" in conflict.message
    if severity is Severity.BLOCK:
        assert conflict.message.endswith("choose whether the prescription stands")
        assert [c.value for c in conflict.candidates] == [
            "stop Augmentin 625 mg",
            "continue Augmentin 625 mg despite the allergy",
        ]
        # What a decision writes is this record's: the medication's status (the one it
        # keeps, for "continue": active, as a medication with no status reads).
        assert [c.writes for c in conflict.candidates] == [
            ((f"medications/{medication}/status", "stopped"),),
            ((f"medications/{medication}/status", "active"),),
        ]
        # The "stop" side stands for the allergy: who recorded it, on the other chart.
        assert (conflict.candidates[0].author, conflict.candidates[0].replica) == (
            "dr.a",
            "laptop-1",
        )
    else:
        assert conflict.message.endswith("review the prescription")
    assert all(p.startswith(f"medications/{medication}/") for p in conflict.paths)


def test_a_coded_prescription_is_checked_against_a_linked_allergy_or_said_unchecked() -> None:
    here, there, medication, _ = person(
        {"substance": {"text": "Penicillin"}, "criticality": "high"}, "placeholder"
    )
    drug = f"medications/{medication}/drug"
    here.set(drug, {"coding": [{"code": "723", "display": "Amoxicillin"}]}, author="dr.b")
    (block,) = by_rule(here, linked=(there,))
    assert block.severity is Severity.BLOCK
    assert "'Amoxicillin' prescribed" in block.message
    here.set(drug, {"coding": [{"code": "723"}]}, author="dr.b")
    assert by_rule(here, linked=(there,)) == []
    (unchecked,) = by_rule(here, "prescription-not-checked", linked=(there,))
    assert unchecked.record_id == here.record_id
    assert by_rule(here, "prescription-not-checked") == []  # no allergy of its own


def test_the_severity_is_read_on_the_chart_that_records_the_allergy() -> None:
    here, there, _, allergy = person({"substance": "penicillin"}, "amoxicillin")
    (flag,) = by_rule(here, linked=(there,))
    assert flag.severity is Severity.FLAG
    there.set(f"allergies/{allergy}/criticality", "high", author="dr.a")
    (block,) = by_rule(here, linked=(there,))
    assert block.severity is Severity.BLOCK
    assert block.id != flag.id  # a flag acknowledged earlier does not cover the block


def test_records_not_linked_find_nothing_of_each_other() -> None:
    here, _there, _, _ = person({"substance": "penicillin", "criticality": "high"}, "amoxicillin")
    assert by_rule(here) == []
    assert rules.conflicts(here, linked=()) == rules.conflicts(here)
    assert rules.findings(here, linked=()) == rules.findings(here)
    assert rules.contested(here) == {}


def test_the_finding_lives_on_the_record_whose_prescription_it_would_change() -> None:
    here, there, _, _ = person({"substance": "penicillin", "criticality": "high"}, "amoxicillin")
    assert len(by_rule(here, linked=(there,))) == 1
    # The allergy's own chart has no prescription: nothing there, linked or not.
    assert by_rule(there, linked=(here,)) == []
    assert [c.rule for c in rules.conflicts(there, linked=(here,))] == []


def test_an_inactive_linked_allergy_finds_nothing() -> None:
    for status in ("entered-in-error", "inactive", "resolved", "refuted"):
        here, there, _, allergy = person({"substance": "penicillin"}, "amoxicillin")
        book = Rulebook()
        assert len(by_rule(here, linked=(there,), book=book)) == 1
        # The linked record changes after the finding was listed: it is listed afresh.
        there.set_status("allergies", allergy, status, author="dr.a")
        assert by_rule(here, linked=(there,), book=book) == [], status
        there.set_status("allergies", allergy, "active", author="dr.a")
        assert len(by_rule(here, linked=(there,), book=book)) == 1


def test_a_stopped_prescription_is_not_checked_against_a_linked_allergy() -> None:
    here, there, medication, _ = person({"substance": "penicillin"}, "amoxicillin")
    here.set_status("medications", medication, "stopped", author="dr.b")
    assert by_rule(here, linked=(there,)) == []


def test_an_unrecognised_linked_allergen_is_said_on_its_own_chart_only() -> None:
    here, there, _, _ = person({"substance": "Chlorhexidine"}, "chlorhexidine 4% wash")
    assert by_rule(here, UNRECOGNISED, linked=(there,)) == []
    assert len(by_rule(there, UNRECOGNISED)) == 1
    # It still matches its own name, across the link.
    (flag,) = by_rule(here, linked=(there,))
    assert flag.severity is Severity.FLAG


def test_an_own_allergy_and_a_linked_one_are_two_findings_with_different_ids() -> None:
    here, there, medication, linked_allergy = person(
        {"substance": "penicillin", "criticality": "high"}, "amoxicillin"
    )
    own_allergy = here.add_entry(
        "allergies", {"substance": "penicillin", "criticality": "high"}, author="dr.b"
    )
    (own,) = by_rule(here)
    both = by_rule(here, linked=(there,))
    assert len(both) == 2
    assert own in both  # the own finding is unchanged: same id, message, outcomes
    (linked,) = [c for c in both if c.id != own.id]
    assert "linked record" not in own.message
    assert there.record_id in linked.message
    keys = {f.key for _, f in rules.findings(here, linked=(there,)) if f.rule == ALLERGY}
    assert keys == {
        f"{own_allergy}/{medication}/block",
        f"linked:{there.record_id}/{linked_allergy}/{medication}/block",
    }


def test_each_linked_record_counts_once_and_the_record_itself_not_at_all() -> None:
    here, there, _, _ = person({"substance": "penicillin"}, "amoxicillin")
    expected = rules.conflicts(here, linked=(there,))
    for linked in (
        (there, there),
        (here, there),
        (there, here, there),
        (copy(here, "laptop-9"), there),  # another copy of this record is still this record
    ):
        assert Rulebook().conflicts(here, linked=linked) == expected
        assert [v.record_id for v in RecordView(here, linked).linked] == [there.record_id]
    assert RecordView(here, (here,)).linked == ()
    assert Rulebook().conflicts(here, linked=(here,)) == rules.conflicts(here)


def test_two_different_copies_of_one_linked_record_are_refused() -> None:
    here, there, _, _ = person({"substance": "penicillin"}, "amoxicillin")
    with pytest.raises(InvalidInputError, match="two different copies"):
        rules.conflicts(here, linked=(there, copy(there, "laptop-2")))
    with pytest.raises(InvalidInputError):
        rules.conflicts(here, linked=("not a record",))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="sequence of records"):
        rules.conflicts(here, linked=there)  # type: ignore[arg-type]


# -------------------------------------------------------------- determinism


def test_the_order_of_linked_records_does_not_change_any_id() -> None:
    here, first, medication, _ = person({"substance": "penicillin"}, "Augmentin")
    second = Record.create(replica="laptop-2")
    second.add_entry("allergies", {"substance": "amoxicillin", "criticality": "high"}, author="x")
    forward = Rulebook().conflicts(here, linked=(first, second))
    backward = Rulebook().conflicts(here, linked=(second, first))
    assert len(forward) == 2
    assert forward == backward
    assert Rulebook().findings(here, linked=(first, second)) == Rulebook().findings(
        here, linked=(second, first)
    )
    ids = [v.record_id for v in RecordView(here, (second, first)).linked]
    assert ids == sorted([first.record_id, second.record_id])
    # Another replica that holds the same records finds the same, with the same ids.
    elsewhere = [copy(r, "laptop-7") for r in (second, here, first)]
    assert Rulebook().conflicts(elsewhere[1], linked=(elsewhere[2], elsewhere[0])) == forward
    assert {c.subject for c in forward} == {ALLERGY}
    assert {c.severity for c in forward} == {Severity.FLAG, Severity.BLOCK}
    assert all(p.startswith(f"medications/{medication}/") for c in forward for p in c.paths)


def test_the_cache_never_answers_for_other_linked_records() -> None:
    here, there, _, _ = person({"substance": "penicillin"}, "amoxicillin")
    stale = copy(there, "laptop-3")  # the same linked record on a replica without the allergy
    (allergy,) = there.entry_ids("allergies")
    there.set("allergies/" + allergy + "/criticality", "high", author="dr.a")
    nothing = Record.create(replica="laptop-4")
    book = Rulebook()
    assert by_rule(here, book=book) == []
    (block,) = by_rule(here, linked=(there,), book=book)
    assert block.severity is Severity.BLOCK
    assert by_rule(here, book=book) == []
    assert by_rule(here, linked=(nothing,), book=book) == []
    (flag,) = by_rule(here, linked=(stale,), book=book)  # same record id, another copy
    assert flag.severity is Severity.FLAG
    assert by_rule(here, linked=(there,), book=book) == [block]
    stale.apply_update(there.update_since(stale.state_vector()))
    assert by_rule(here, linked=(stale,), book=book) == [block]


# ------------------------------------------------------------------ deciding


def test_deciding_stop_writes_this_record_only_and_the_finding_stays_gone() -> None:
    here, there, medication, _ = person(
        {"substance": "penicillin", "criticality": "high"}, "amoxicillin 500 mg"
    )
    other_laptop = copy(here, "laptop-5")
    there_before = there.version
    (block,) = by_rule(here, linked=(there,))
    assert rules.contested(here, linked=(there,)) == {
        f"medications/{medication}/drug": block,
        f"medications/{medication}/status": block,
    }
    with pytest.raises(UnknownConflictError):  # listed with the linked record, resolved with it
        rules.resolve(here, block.id, choose=0, author="dr.c")
    rules.resolve(here, block.id, choose=0, author="dr.c", linked=(there,))
    assert here.value(f"medications/{medication}/status") == "stopped"
    decision = here.acknowledgement(block.id)
    assert decision.exists
    assert decision.value == {
        "decision": "stop amoxicillin 500 mg",
        "outcome": 0,
        "writes": {f"medications/{medication}/status": "stopped"},
    }
    assert there.version == there_before  # nothing written to the allergy's chart
    assert not any(p.startswith(ACK_PREFIX) for p in there.paths())
    assert by_rule(here, linked=(there,)) == []
    assert rules.contested(here, linked=(there,)) == {}
    exchange(here, other_laptop)
    assert by_rule(other_laptop, linked=(there,)) == []


def test_deciding_to_continue_despite_the_allergy_keeps_the_prescription() -> None:
    here, there, medication, _ = person(
        {"substance": "penicillin", "reaction": "anaphylaxis"}, "amoxicillin"
    )
    (block,) = by_rule(here, linked=(there,))
    rules.resolve(here, block.id, choose=1, author="dr.c", linked=(there,))
    assert here.value(f"medications/{medication}/status", "active") == "active"
    assert here.acknowledgement(block.id).value == {
        "decision": "continue amoxicillin despite the allergy",
        "outcome": 1,
        "writes": {f"medications/{medication}/status": "active"},
    }
    # The pair is still there; the decision covers it.
    assert any(fid == block.id for fid, _ in rules.findings(here, linked=(there,)))
    assert by_rule(here, linked=(there,)) == []
    assert Rulebook().conflicts(here, linked=(there,)) == []


def test_a_linked_flag_is_acknowledged_on_this_record() -> None:
    here, there, _, _ = person({"substance": "penicillin"}, "amoxicillin")
    (flag,) = by_rule(here, linked=(there,))
    assert flag.severity is Severity.FLAG
    rules.acknowledge(here, flag.id, author="dr.c", linked=(there,))
    assert here.acknowledgement(flag.id).value == {"decision": "acknowledged"}
    assert by_rule(here, linked=(there,)) == []


def test_concurrent_different_decisions_on_a_linked_finding_read_as_the_decisions() -> None:
    north, there, medication, _ = person(
        {"substance": "penicillin", "criticality": "high"}, "amoxicillin"
    )
    south = copy(north, "laptop-6")
    status = f"medications/{medication}/status"
    (block,) = by_rule(north, linked=(there,))
    assert by_rule(south, linked=(there,)) == [block]
    rules.resolve(north, block.id, choose=0, author="dr.n", linked=(there,))
    rules.resolve(south, block.id, choose=1, author="dr.s", linked=(there,))
    exchange(north, south)
    # The decisions, and the status each wrote (stopped, and active: kept).
    (clash,) = [c for c in rules.conflicts(north, linked=(there,)) if c.subject != status]
    assert [c.subject for c in rules.conflicts(north, linked=(there,))] == sorted(
        [clash.subject, status]
    )
    assert clash.kind is ConflictKind.FIELD
    assert clash.subject == ACK_PREFIX + block.id
    assert sorted(str(c.value) for c in clash.candidates) == [
        "continue amoxicillin despite the allergy",
        "stop amoxicillin",
    ]
    assert rules.conflicts(south, linked=(there,)) == rules.conflicts(north, linked=(there,))
    assert rules.conflicts(north) == rules.conflicts(north, linked=(there,))  # its own data
    stop = next(i for i, c in enumerate(clash.candidates) if c.value == "stop amoxicillin")
    rules.resolve(north, clash.id, choose=stop, author="dr.n", linked=(there,))
    exchange(north, south)
    assert south.value(f"medications/{medication}/status") == "stopped"
    assert rules.conflicts(south, linked=(there,)) == []


# ----------------------------------------------------------- rules and views


def test_a_rule_may_name_revisions_of_linked_records_and_no_others() -> None:
    here, there, _, allergy = person({"substance": "penicillin"}, "amoxicillin")
    linked_rev = there.get(f"allergies/{allergy}/substance").heads[0].id

    def across(view: RecordView) -> Iterator[Finding]:
        for other in view.linked:
            found = view.linked_revision(linked_rev)
            assert found is not None
            assert found[0].record_id == other.record_id
            yield Finding("across", Severity.FLAG, "seen across", (found[1].id,), key="x")

    def invented(view: RecordView) -> Iterator[Finding]:
        yield Finding("invented", Severity.FLAG, "made up", ("0123456789abcdef",))

    book = Rulebook([across])
    (conflict,) = book.conflicts(here, linked=(there,))
    assert [c.revision for c in conflict.candidates] == [linked_rev]
    assert conflict.paths == ()  # no path of this record is involved
    assert Rulebook([across]).conflicts(here) == []
    with pytest.raises(RuleError, match="unknown revisions"):
        Rulebook([invented]).findings(here, linked=(there,))
    with pytest.raises(RuleError, match="unknown revisions"):
        Rulebook([invented]).conflicts(here, linked=(there,))


def test_a_view_reads_its_linked_records_and_follows_them() -> None:
    here, there, _, allergy = person({"substance": "penicillin"}, "amoxicillin")
    view = RecordView(here, [there])
    (linked,) = view.linked
    assert linked.record_id == there.record_id
    assert linked.linked == ()
    assert linked.entry_ids("allergies") == [allergy]
    there.set(f"allergies/{allergy}/substance", "latex", author="dr.a")
    assert linked.get(f"allergies/{allergy}/substance").value == "latex"
    assert view.linked_revision("0123456789abcdef") is None
    assert RecordView(here).linked == ()
