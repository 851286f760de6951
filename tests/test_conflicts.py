"""Conflicts and safety rules: one example for each case of DESIGN's "The problem" and
each built-in rule, plus resolving and acknowledging."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.helpers import exchange, replicas

from caresync import (
    DEFAULT_RULEBOOK,
    ConflictKind,
    Finding,
    InvalidResolutionError,
    Record,
    RecordView,
    Rulebook,
    RuleError,
    Severity,
    SubstanceTable,
    UnknownConflictError,
)
from caresync.conflicts.substances import normalise

rules = DEFAULT_RULEBOOK


def only(conflicts: list, rule: str | None = None):  # type: ignore[no-untyped-def]
    matching = [c for c in conflicts if rule is None or c.rule == rule]
    assert len(matching) == 1, conflicts
    return matching[0]


# ------------------------------------------------------------- DESIGN's three cases


def test_problem_date_of_birth_both_values_kept_and_flagged_everywhere() -> None:
    a, b = replicas()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1991-01-01", author="dr.b")
    exchange(a, b)
    ca, cb = rules.conflicts(a), rules.conflicts(b)
    assert ca == cb
    conflict = only(ca)
    assert conflict.kind is ConflictKind.FIELD
    assert conflict.path == "birthDate"
    assert {c.value for c in conflict.candidates} == {"1990-01-02", "1991-01-01"}
    assert {(c.author, c.replica) for c in conflict.candidates} == {
        ("dr.a", "laptop-0"),
        ("dr.b", "laptop-1"),
    }


def test_problem_stopped_versus_dose_change_is_a_block_not_a_silent_mix() -> None:
    a, b = replicas()
    med = a.add_entry(
        "medications",
        {"drug": "metformin", "dose": "500mg", "status": "active"},
        author="dr.a",
    )
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "1000mg", author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(a), "stopped-vs-dose-change")
    assert conflict.severity is Severity.BLOCK
    # The candidates are complete outcomes, in words, with who chose each side.
    assert [c.value for c in conflict.candidates] == ["stopped", "continue at 1000mg"]
    assert [c.author for c in conflict.candidates] == ["dr.a", "dr.b"]
    assert "metformin 500mg / 1000mg" in conflict.message or "metformin" in conflict.message
    assert rules.conflicts(b) == rules.conflicts(a)
    # Until someone decides, both fields the finding involves are contested.
    contested = rules.contested(a)
    assert contested[f"medications/{med}/status"].id == conflict.id
    assert contested[f"medications/{med}/dose"].id == conflict.id


def test_problem_note_edits_do_not_interleave_characters() -> None:
    a, b = replicas()
    note = a.add_entry("notes", {"text": "amoxicillin 10 mg/kg"}, author="dr.a")
    exchange(a, b)
    a.set(f"notes/{note}/text", "amoxicillin 15 mg/kg", author="dr.a")
    b.set(f"notes/{note}/text", "amoxicillin 10 mg/kg twice daily", author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(a))
    assert sorted(c.value for c in conflict.candidates) == [
        "amoxicillin 10 mg/kg twice daily",
        "amoxicillin 15 mg/kg",
    ]


# ------------------------------------------------------------------ resolving


def test_resolving_by_choice_converges_and_keeps_the_loser_in_history() -> None:
    a, b = replicas()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1991-01-01", author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(b))
    chosen = next(i for i, c in enumerate(conflict.candidates) if c.value == "1991-01-01")
    rules.resolve(b, conflict.id, choose=chosen, author="dr.b")
    exchange(a, b)
    assert rules.conflicts(a) == [] == rules.conflicts(b)
    assert a.value("birthDate") == "1991-01-01"
    assert "1990-01-02" in [r.value for r in a.history("birthDate")]
    with pytest.raises(UnknownConflictError):
        rules.resolve(a, conflict.id, choose=0, author="dr.a")


def test_resolving_with_a_new_value() -> None:
    a, b = replicas()
    a.set("name", "Jon", author="dr.a")
    b.set("name", "John", author="dr.b")
    exchange(a, b)
    rules.resolve(a, only(rules.conflicts(a)).id, value="Jonathan", author="dr.a")
    exchange(a, b)
    assert b.value("name") == "Jonathan"


def test_concurrent_resolutions_can_themselves_conflict() -> None:
    a, b = replicas()
    a.set("name", "Jon", author="dr.a")
    b.set("name", "John", author="dr.b")
    exchange(a, b)
    cid = only(rules.conflicts(a)).id
    rules.resolve(a, cid, value="Jonathan", author="dr.a")
    rules.resolve(b, cid, value="Johnny", author="dr.b")
    exchange(a, b)
    second = only(rules.conflicts(a))
    assert second.id != cid
    assert {c.value for c in second.candidates} == {"Jonathan", "Johnny"}


def test_a_conflict_that_changed_since_listing_is_not_resolved_blindly() -> None:
    a, b, c = replicas(3)
    a.set("name", "Jon", author="dr.a")
    b.set("name", "John", author="dr.b")
    exchange(a, b)
    stale = only(rules.conflicts(a)).id
    c.set("name", "Jean", author="dr.c")
    exchange(a, c)
    with pytest.raises(UnknownConflictError):
        rules.resolve(a, stale, choose=0, author="dr.a")


@pytest.mark.parametrize(
    "kwargs", [{}, {"choose": 5}, {"choose": -1}, {"choose": 0, "value": "x"}, {"choose": True}]
)
def test_bad_resolutions_are_refused_and_write_nothing(kwargs: dict) -> None:  # type: ignore[type-arg]
    a, b = replicas()
    a.set("name", "Jon", author="dr.a")
    b.set("name", "John", author="dr.b")
    exchange(a, b)
    cid = only(rules.conflicts(a)).id
    before = a.update_since()
    with pytest.raises(InvalidResolutionError):
        rules.resolve(a, cid, author="dr.a", **kwargs)
    assert a.update_since() == before


def test_resolving_a_block_finding_records_the_decision_and_closes_it() -> None:
    a, b = replicas()
    med = a.add_entry("medications", {"drug": "warfarin", "dose": "5mg"}, author="dr.a")
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "3mg", author="dr.b")
    exchange(a, b)
    finding = only(rules.conflicts(a), "stopped-vs-dose-change")
    with pytest.raises(InvalidResolutionError):
        rules.acknowledge(a, finding.id, author="dr.a")
    with pytest.raises(InvalidResolutionError):
        rules.resolve(a, finding.id, value="x", author="dr.a")
    rules.resolve(a, finding.id, choose=1, author="dr.a")  # "continue at 3mg"
    exchange(a, b)
    assert rules.conflicts(b) == []
    assert rules.contested(b) == {}
    # The record says what the clinician chose, on every replica.
    for replica in (a, b):
        assert replica.value(f"medications/{med}/status") == "active"
        assert replica.value(f"medications/{med}/dose") == "3mg"
    decision = b.acknowledgement(finding.id)
    assert decision.value == {
        "decision": "continue at 3mg",
        "outcome": 1,
        "writes": {f"medications/{med}/status": "active", f"medications/{med}/dose": "3mg"},
    }
    # The history keeps the rest: the stop and both doses are still there.
    assert [r.value for r in b.history(f"medications/{med}/status")][-2:] == ["stopped", "active"]


def test_choosing_stopped_writes_stopped_everywhere() -> None:
    a, b = replicas()
    med = a.add_entry("medications", {"drug": "warfarin", "dose": "5mg"}, author="dr.a")
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "3mg", author="dr.b")
    exchange(a, b)
    finding = only(rules.conflicts(b), "stopped-vs-dose-change")
    rules.resolve(b, finding.id, choose=0, author="dr.b")
    exchange(a, b)
    for replica in (a, b):
        assert replica.value(f"medications/{med}/status") == "stopped"
        assert rules.conflicts(replica) == []


def test_two_different_decisions_stay_a_conflict_that_reads_as_the_decisions() -> None:
    a, b = replicas()
    med = a.add_entry("medications", {"drug": "warfarin", "dose": "5mg"}, author="dr.a")
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "3mg", author="dr.b")
    exchange(a, b)
    finding = only(rules.conflicts(a), "stopped-vs-dose-change")
    rules.resolve(a, finding.id, choose=0, author="dr.a")  # offline, each decides
    rules.resolve(b, finding.id, choose=1, author="dr.b")
    exchange(a, b)
    decisions = [c for c in rules.conflicts(a) if c.subject.startswith("_ack/")]
    assert len(decisions) == 1
    [conflict] = decisions
    assert sorted(c.value for c in conflict.candidates) == ["continue at 3mg", "stopped"]
    assert {c.author for c in conflict.candidates} == {"dr.a", "dr.b"}
    assert "decided one finding differently" in conflict.message
    assert rules.conflicts(b) == rules.conflicts(a)
    # Settling it writes the chosen decision again, over every head.
    pick = [c.value for c in conflict.candidates].index("continue at 3mg")
    rules.resolve(a, conflict.id, choose=pick, author="dr.c")
    exchange(a, b)
    for replica in (a, b):
        assert rules.conflicts(replica) == []
        assert replica.value(f"medications/{med}/status") == "active"
        assert replica.value(f"medications/{med}/dose") == "3mg"


def test_writing_the_status_after_seeing_both_sides_also_clears_the_block() -> None:
    a, b = replicas()
    med = a.add_entry("medications", {"drug": "warfarin", "dose": "5mg"}, author="dr.a")
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    b.set(f"medications/{med}/dose", "3mg", author="dr.b")
    exchange(a, b)
    a.set_status("medications", med, "active", author="dr.a")
    exchange(a, b)
    assert rules.conflicts(b) == []


# ----------------------------------------------------------------- each rule


def test_rule_entered_in_error_versus_concurrent_edit() -> None:
    a, b = replicas()
    problem = a.add_entry("problems", {"code": "J45", "onset": "2020"}, author="dr.a")
    exchange(a, b)
    a.set_status("problems", problem, "entered-in-error", author="dr.a")
    b.set(f"problems/{problem}/onset", "2019", author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(a), "entered-in-error-vs-edit")
    assert conflict.severity is Severity.BLOCK
    assert [c.value for c in conflict.candidates] == [
        "entered-in-error",
        "keep it, with onset 2019",
    ]
    assert conflict.message.startswith("J45 (problems) was marked entered-in-error")
    rules.resolve(a, conflict.id, choose=1, author="dr.a")
    exchange(a, b)
    for replica in (a, b):
        assert replica.value(f"problems/{problem}/status") == "active"
        assert replica.value(f"problems/{problem}/onset") == "2019"
        assert rules.conflicts(replica) == []


def test_entered_in_error_after_seeing_the_edit_is_no_conflict() -> None:
    a, b = replicas()
    problem = a.add_entry("problems", {"code": "J45"}, author="dr.a")
    exchange(a, b)
    b.set(f"problems/{problem}/onset", "2019", author="dr.b")
    exchange(a, b)
    a.set_status("problems", problem, "entered-in-error", author="dr.a")
    exchange(a, b)
    assert rules.conflicts(b) == []


def test_rule_allergy_on_one_side_drug_on_the_other_and_acknowledging_it() -> None:
    a, b = replicas()
    # criticality low: a flag, acknowledged below (high is a block: tests/test_allergy_rule.py)
    a.add_entry("allergies", {"substance": "Penicillin", "criticality": "low"}, author="dr.a")
    b.add_entry("medications", {"drug": "Amoxicillin 500 mg capsules"}, author="dr.b")
    assert rules.conflicts(a) == [] == rules.conflicts(b)
    exchange(a, b)
    conflict = only(rules.conflicts(a), "allergy-vs-prescription")
    assert conflict.severity is Severity.FLAG
    assert rules.conflicts(b) == rules.conflicts(a)
    rules.acknowledge(b, conflict.id, author="dr.b")
    exchange(a, b)
    assert rules.conflicts(a) == []


def test_allergy_rule_ignores_stopped_drugs_and_inactive_allergies() -> None:
    (a,) = replicas(1)
    allergy = a.add_entry("allergies", {"substance": "penicillin"}, author="dr.a")
    med = a.add_entry("medications", {"drug": "amoxicillin", "status": "stopped"}, author="dr.a")
    assert rules.conflicts(a) == []
    a.set_status("medications", med, "active", author="dr.a")
    assert len(rules.conflicts(a)) == 1
    a.set_status("allergies", allergy, "refuted", author="dr.a")
    assert rules.conflicts(a) == []


def test_substance_table_is_extensible() -> None:
    table = SubstanceTable.of({"peanut": ["arachis oil"]}).extended({"peanut": ["peanut oil"]})
    assert table.matches("Peanut", "Arachis oil 5 ml")
    assert table.matches("peanut", "peanut oil")
    assert not table.matches("peanut", "olive oil")
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": "peanut"}, author="dr.a")
    a.add_entry("medications", {"drug": "arachis oil"}, author="dr.a")
    # Peanut is not in the bundled table: not checked, and said so (an info finding).
    assert [c.rule for c in rules.conflicts(a)] == ["allergen-not-recognised"]
    custom = Rulebook().with_rules()
    assert [c.rule for c in custom.conflicts(a)] == ["allergen-not-recognised"]
    from caresync import builtin_rules

    assert len(Rulebook(builtin_rules(table)).conflicts(a)) == 1


def test_rule_same_allergy_entered_twice() -> None:
    a, b = replicas()
    a.add_entry("allergies", {"substance": "Latex"}, author="dr.a")
    b.add_entry("allergies", {"substance": "latex "}, author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(a), "duplicate-allergy")
    assert conflict.severity is Severity.FLAG
    assert len(conflict.candidates) == 2


def test_rule_terminal_encounter_status_clash_escalates_the_field_conflict() -> None:
    a, b = replicas()
    enc = a.add_entry("encounters", {"status": "in-progress", "type": "home visit"}, author="dr.a")
    exchange(a, b)
    a.set_status("encounters", enc, "finished", author="dr.a")
    b.set_status("encounters", enc, "cancelled", author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(a))
    assert conflict.kind is ConflictKind.FIELD
    assert conflict.rule == "terminal-encounter-clash"
    assert conflict.message.startswith("home visit (encounters) has clashing statuses")
    assert enc not in conflict.message  # named by its content, never by its id
    assert conflict.severity is Severity.BLOCK
    assert conflict.id == a.get(f"encounters/{enc}/status").conflict_id
    rules.resolve(a, conflict.id, choose=0, author="dr.a")
    assert rules.conflicts(a) == []


def test_rule_note_changed_while_signed() -> None:
    a, b = replicas()
    note = a.add_entry("notes", {"text": "draft"}, author="dr.a")
    exchange(a, b)
    a.sign_note(note, author="dr.a")
    b.set(f"notes/{note}/text", "draft with more", author="dr.b")
    exchange(a, b)
    conflict = only(rules.conflicts(b), "note-changed-while-signed")
    assert [c.value for c in conflict.candidates] == ["draft", "draft with more"]
    assert conflict.message.startswith("draft (notes): text was changed by dr.b")
    assert note not in conflict.message  # named by its content, never by its id
    assert b.value(f"notes/{note}/text") == "draft"


# ------------------------------------------------------ application rules


def test_an_application_rule_is_registered_and_its_findings_acknowledged() -> None:
    def height_is_plausible(view: RecordView) -> Iterator[Finding]:
        for rev in view.get("heightCm").heads:
            if isinstance(rev.value, (int, float)) and not 30 <= rev.value <= 250:
                yield Finding("implausible-height", Severity.FLAG, "check height", (rev.id,))

    book = Rulebook().with_rules(height_is_plausible)
    (a,) = replicas(1)
    a.set("heightCm", 1800, author="dr.a")
    conflict = only(book.conflicts(a), "implausible-height")
    book.acknowledge(a, conflict.id, author="dr.a")
    assert book.conflicts(a) == []
    a.set("heightCm", 18000, author="dr.a")
    assert len(book.conflicts(a)) == 1  # a new value is a new finding


def test_a_failing_rule_is_a_rule_error_not_a_hidden_problem() -> None:
    def broken(view: RecordView) -> list[Finding]:
        raise KeyError("oops")

    def junk(view: RecordView) -> list[object]:
        return ["not a finding"]

    (a,) = replicas(1)
    with pytest.raises(RuleError, match="broken"):
        Rulebook([broken]).conflicts(a)
    with pytest.raises(RuleError, match="junk"):
        Rulebook([junk]).conflicts(a)  # type: ignore[list-item]


def test_a_rule_that_changes_its_entries_does_not_change_what_the_next_rule_sees() -> None:
    seen: list[list[str]] = []

    def vandal(view: RecordView) -> list[Finding]:
        for entry in view.entries("medications"):
            entry.fields.clear()
        return []

    def reader(view: RecordView) -> list[Finding]:
        seen.append(sorted(view.entries("medications")[0].fields))
        return []

    (a,) = replicas(1)
    a.add_entry("medications", {"drug": "metformin", "dose": "500mg"}, author="dr.a")
    Rulebook([vandal, reader]).findings(a)
    assert seen == [["dose", "drug"]]


def test_a_view_follows_its_record_when_the_record_changes() -> None:
    (a,) = replicas(1)
    view = RecordView(a)
    assert view.entries("allergies") == []
    allergy = a.add_entry("allergies", {"substance": "penicillin"}, author="dr.a")
    assert view.entry_ids("allergies") == [allergy]
    a.set(f"allergies/{allergy}/substance", "latex", author="dr.a")
    assert view.entries("allergies")[0].value("substance") == "latex"


def test_shared_entries_are_the_entries_and_copies_stay_private() -> None:
    a = Record.create(replica="laptop-a")
    a.add_entry("medications", {"drug": "metformin", "dose": "500mg"}, author="dr.a")
    view = RecordView(a)
    shared = view.shared_entries("medications")
    assert shared == view.entries("medications")
    assert view.shared_entries("medications") is shared  # built once per record version
    copy = view.entries("medications")[0]
    copy.fields.clear()  # a rule changing its own copy changes nothing for the next rule
    assert view.entries("medications") == shared
    assert sorted(shared[0].fields) == ["dose", "drug"]


def test_a_view_reads_a_field_once_per_record_version() -> None:
    a = Record.create(replica="laptop-a")
    a.set("birthDate", "1990-01-01", author="dr.a")
    view = RecordView(a)
    first = view.get("birthDate")
    assert view.get("birthDate") is first  # kept while the record stays the same
    a.set("birthDate", "1990-02-02", author="dr.a")
    assert view.get("birthDate").value == "1990-02-02"
    assert view.entry_ids("allergies") == []


def test_normalised_names_are_the_same_cached_or_not() -> None:
    short = "  Amoxicillin 500 MG capsules "
    long = "Co-Amoxiclav, " * 40  # over the cached length
    for _ in range(2):  # the second time from the cache, for the short one
        assert normalise(short) == "amoxicillin 500 mg capsules"
        assert normalise(long) == " ".join(["co-amoxiclav"] * 40)
    assert normalise(5) == normalise(None) == ""
