"""The allergy-versus-prescription rule (issue 13, deliverable 2) over merged records.

Severities that follow the allergy, the info finding for an allergen the table
does not know, cross-reactivity, an application's own table, and the same
findings with the same ids on every replica.
"""

from __future__ import annotations

import pytest
from tests.helpers import exchange, replicas

from caresync import (
    DEFAULT_RULEBOOK,
    DEFAULT_SUBSTANCES,
    Conflict,
    InvalidInputError,
    InvalidResolutionError,
    JSONValue,
    Record,
    Rulebook,
    Severity,
    SubstanceTable,
    builtin_rules,
)

rules = DEFAULT_RULEBOOK
ALLERGY = "allergy-vs-prescription"
UNRECOGNISED = "allergen-not-recognised"


def by_rule(record: Record, rule: str, book: Rulebook = rules) -> list[Conflict]:
    return [c for c in book.conflicts(record) if c.rule == rule]


def chart(allergy: dict[str, object], drug: str) -> tuple[Record, Record]:
    """An allergy recorded on one laptop, a drug prescribed on another, then merged."""
    a, b = replicas()
    a.add_entry("allergies", allergy, author="dr.a")
    b.add_entry("medications", {"drug": drug, "dose": "1 tablet"}, author="dr.b")
    exchange(a, b)
    return a, b


# ------------------------------------------------------------------- severities


@pytest.mark.parametrize(
    ("allergy", "severity"),
    [
        ({"substance": "Penicillin"}, Severity.FLAG),
        ({"substance": "Penicillin", "criticality": "low"}, Severity.FLAG),
        ({"substance": "Penicillin", "criticality": "unable-to-assess"}, Severity.FLAG),
        ({"substance": "Penicillin", "criticality": "high"}, Severity.BLOCK),
        ({"substance": "Penicillin", "criticality": "High"}, Severity.BLOCK),
        ({"substance": "Penicillin", "reaction": "anaphylaxis"}, Severity.BLOCK),
        ({"substance": "Penicillin", "reaction": "rash"}, Severity.FLAG),
        (
            {"substance": "Penicillin", "reaction": [{"manifestation": ["Anaphylactic shock"]}]},
            Severity.BLOCK,
        ),
        ({"substance": "Penicillin - anaphylaxis"}, Severity.BLOCK),
    ],
)
def test_the_severity_follows_the_allergy(allergy: dict[str, object], severity: Severity) -> None:
    a, b = chart(allergy, "Augmentin 625 mg")
    (conflict,) = by_rule(a, ALLERGY)
    assert conflict.severity is severity
    assert "it contains amoxicillin, a penicillin" in conflict.message
    if severity is Severity.BLOCK:
        assert "choose whether the prescription stands" in conflict.message
    else:
        assert conflict.message.endswith("review the prescription")
    assert by_rule(b, ALLERGY) == [conflict]


def test_cross_reactivity_only_is_a_flag_even_for_a_high_criticality_allergy() -> None:
    a, _ = chart({"substance": "penicillin", "criticality": "high"}, "Cefalexin 500 mg")
    (conflict,) = by_rule(a, ALLERGY)
    assert conflict.severity is Severity.FLAG
    assert "cross-reactivity with penicillins" in conflict.message
    codeine, _ = chart({"substance": "codeine", "reaction": "anaphylaxis"}, "tramadol 50 mg")
    (opioid,) = by_rule(codeine, ALLERGY)
    assert opioid.severity is Severity.FLAG
    assert "cross-reactivity" in opioid.message


def test_the_issue_cases_are_flagged_where_they_passed_silently() -> None:
    for allergen, drug in (
        ("amoxicillin", "amoxicillin 250 mg"),
        ("Penicilin", "amoxicillin"),
        ("penicillins", "Amoxil"),
        ("Penicillin allergy", "Augmentin"),
        ("sulfa", "Bactrim DS"),
        ("codeine", "tramadol"),
    ):
        a, _ = chart({"substance": allergen}, drug)
        assert len(by_rule(a, ALLERGY)) == 1, (allergen, drug)
        assert by_rule(a, UNRECOGNISED) == [], allergen


def test_a_misspelt_allergen_is_shown_as_read() -> None:
    a, _ = chart({"substance": "Penicilin"}, "amoxicillin")
    (conflict,) = by_rule(a, ALLERGY)
    assert "allergy to 'Penicilin' (read as penicillins)" in conflict.message


def test_a_block_must_be_chosen_and_a_flag_acknowledged_earlier_does_not_cover_it() -> None:
    a, b = chart({"substance": "penicillin"}, "amoxicillin")
    (flag,) = by_rule(a, ALLERGY)
    rules.acknowledge(a, flag.id, author="dr.a")
    assert by_rule(a, ALLERGY) == []
    (allergy,) = a.entry_ids("allergies")
    b.set(f"allergies/{allergy}/criticality", "high", author="dr.b")
    exchange(a, b)
    (block,) = by_rule(a, ALLERGY)
    assert block.severity is Severity.BLOCK
    assert block.id != flag.id
    with pytest.raises(InvalidResolutionError):
        rules.acknowledge(a, block.id, author="dr.a")
    rules.resolve(a, block.id, choose=1, author="dr.a")
    exchange(a, b)
    assert by_rule(b, ALLERGY) == []


def test_inactive_allergies_and_stopped_drugs_are_not_checked() -> None:
    a, _ = chart({"substance": "penicillin", "criticality": "high"}, "amoxicillin")
    (med,) = a.entry_ids("medications")
    a.set_status("medications", med, "stopped", author="dr.a")
    assert by_rule(a, ALLERGY) == []
    a.set_status("medications", med, "active", author="dr.a")
    (allergy,) = a.entry_ids("allergies")
    a.set_status("allergies", allergy, "resolved", author="dr.a")
    assert by_rule(a, ALLERGY) == []


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_a_refuted_allergy_blocks_nothing(verification: str) -> None:
    # FHIR keeps the two apart: a refuted allergy is clinicalStatus active (required
    # unless entered-in-error) and verificationStatus refuted, which caresync's FHIR
    # import writes as status "active" and verification "refuted". The rule read the
    # status only: an allergy ruled out by testing blocked every amoxicillin.
    allergy = {"substance": "penicillin", "criticality": "high", "status": "active"}
    a, b = chart({**allergy, "verification": verification}, "amoxicillin")
    a.add_entry("allergies", {"substance": "kiwi", "verification": verification}, author="dr.a")
    a.add_entry("allergies", {"substance": "Penicillin", "verification": "refuted"}, author="dr.a")
    assert by_rule(a, ALLERGY) == []
    assert by_rule(a, UNRECOGNISED) == []
    assert by_rule(a, "duplicate-allergy") == []
    # Confirmed, unconfirmed, or in dispute (a conflict): checked as before.
    (entry,) = [e for e in a.entry_ids("allergies") if a.value(f"allergies/{e}/criticality")]
    exchange(a, b)
    a.set(f"allergies/{entry}/verification", "confirmed", author="dr.a")
    b.set(f"allergies/{entry}/verification", "unconfirmed", author="dr.b")
    exchange(a, b)
    (block,) = by_rule(a, ALLERGY)
    assert block.severity is Severity.BLOCK
    a.set(f"allergies/{entry}/verification", verification, author="dr.a")
    assert by_rule(a, ALLERGY) == []
    b.set(f"allergies/{entry}/verification", "confirmed", author="dr.b")
    exchange(a, b)  # refuted on one laptop, confirmed on the other: still checked
    assert [c.severity for c in by_rule(a, ALLERGY)] == [Severity.BLOCK]
    # A verification that is no text refutes nothing (and breaks no rule).
    a.set(f"allergies/{entry}/verification", ["refuted"], author="dr.a")
    assert [c.severity for c in by_rule(a, ALLERGY)] == [Severity.BLOCK]
    # Nor does text that is not the code itself: the allergy is checked, not hidden.
    for written in ("Refuted", " refuted", "refuted?", "not refuted"):
        a.set(f"allergies/{entry}/verification", written, author="dr.a")
        assert [c.severity for c in by_rule(a, ALLERGY)] == [Severity.BLOCK], written


# ------------------------------------------------------- allergens not recognised


def test_an_allergen_the_table_does_not_know_gets_an_info_finding_everywhere() -> None:
    a, b, c = replicas(3)
    a.add_entry("allergies", {"substance": "Chlorhexidine"}, author="dr.a")
    b.add_entry("medications", {"drug": "chlorhexidine 4% wash"}, author="dr.b")
    exchange(a, b, c)
    (info,) = by_rule(a, UNRECOGNISED)
    assert info.severity is Severity.INFO
    assert "not recognised: prescriptions are not checked against it" in info.message
    assert "'Chlorhexidine'" in info.message
    assert [cand.value for cand in info.candidates] == ["Chlorhexidine"]
    assert by_rule(b, UNRECOGNISED) == [info] == by_rule(c, UNRECOGNISED)
    # It still matches its own name.
    (flag,) = by_rule(a, ALLERGY)
    assert flag.severity is Severity.FLAG
    # Acknowledged like any finding, on every replica.
    rules.acknowledge(c, info.id, author="dr.c")
    exchange(a, b, c)
    assert by_rule(a, UNRECOGNISED) == [] == by_rule(b, UNRECOGNISED)


def test_a_partly_recognised_allergen_names_the_part_not_checked() -> None:
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": "penicillin, kiwi"}, author="dr.a")
    a.add_entry("medications", {"drug": "Augmentin"}, author="dr.a")
    (info,) = by_rule(a, UNRECOGNISED)
    assert "'kiwi' not recognised" in info.message
    assert len(by_rule(a, ALLERGY)) == 1


def test_no_info_for_a_known_allergen_an_empty_one_or_an_inactive_one() -> None:
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": "latex"}, author="dr.a")
    a.add_entry("allergies", {"substance": "  "}, author="dr.a")
    a.add_entry("allergies", {"criticality": "high"}, author="dr.a")
    old = a.add_entry("allergies", {"substance": "kiwi"}, author="dr.a")
    assert len(by_rule(a, UNRECOGNISED)) == 1
    a.set_status("allergies", old, "entered-in-error", author="dr.a")
    assert by_rule(a, UNRECOGNISED) == []


def test_a_substance_that_is_not_text_is_not_recognised() -> None:
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": {"code": "91936005"}}, author="dr.a")
    (info,) = by_rule(a, UNRECOGNISED)
    assert "not recognised" in info.message


# ------------------------------------------- drugs and allergens that are not plain text

UNCHECKED = "prescription-not-checked"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"


@pytest.mark.parametrize(
    ("drug", "read"),
    [
        ({"text": "Amoxicillin 500 mg"}, "Amoxicillin 500 mg"),
        (
            {"coding": [{"system": RXNORM, "code": "723", "display": "Amoxicillin"}]},
            "Amoxicillin",
        ),
        (["Augmentin 625 mg"], "Augmentin 625 mg"),
    ],
)
def test_a_coded_drug_is_checked_by_the_text_it_holds(drug: JSONValue, read: str) -> None:
    # An application storing the drug as a CodeableConcept-like object: it was never
    # checked (the table reads text only) and nothing said so, so a penicillin
    # anaphylaxis let amoxicillin through on every replica.
    a, b = replicas()
    a.add_entry("allergies", {"substance": "Penicillin", "criticality": "high"}, author="dr.a")
    med = b.add_entry("medications", {"drug": drug}, author="dr.b")
    exchange(a, b)
    (block,) = by_rule(a, ALLERGY)
    assert block.severity is Severity.BLOCK
    assert f"{read!r} prescribed by dr.b" in block.message
    assert "a penicillin" in block.message
    assert [o.label for o in block.outcomes] == [
        f"stop {read}",
        f"continue {read} despite the allergy",
    ]
    assert by_rule(b, ALLERGY) == [block]
    assert by_rule(a, UNCHECKED) == []
    rules.resolve(a, block.id, choose=0, author="dr.a")
    assert a.value(f"medications/{med}/status") == "stopped"


def test_a_coded_allergen_is_checked_by_the_text_it_holds() -> None:
    (a,) = replicas(1)
    coded = {
        "coding": [{"system": SNOMED, "code": "91936005", "display": "Allergy to penicillin"}],
        "text": "Penicillin allergy",
    }
    a.add_entry("allergies", {"substance": coded}, author="dr.a")
    a.add_entry("medications", {"drug": "Augmentin 625 mg"}, author="dr.a")
    (flag,) = by_rule(a, ALLERGY)
    assert "it contains amoxicillin, a penicillin" in flag.message
    assert by_rule(a, UNRECOGNISED) == []  # read: nothing to say it is not checked


def test_a_coded_allergen_the_table_does_not_know_still_matches_its_own_name() -> None:
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": {"text": "Kiwi"}}, author="dr.a")
    a.add_entry("medications", {"drug": {"text": "Kiwi fruit extract"}}, author="dr.a")
    (info,) = by_rule(a, UNRECOGNISED)
    assert "only for its own name" in info.message
    (flag,) = by_rule(a, ALLERGY)
    assert "'Kiwi'" in flag.message


def test_a_value_holding_no_name_is_said_to_be_unchecked() -> None:
    # A coded allergen with no words in it was said to be checked "for its own name",
    # which it never was (only text is matched); a coded drug with none was never
    # checked against any allergy and nothing said so.
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": {"code": "91936005"}}, author="dr.a")
    (info,) = by_rule(a, UNRECOGNISED)
    assert "not recognised" in info.message
    assert "only for its own name" not in info.message
    assert "holds no name" in info.message
    assert by_rule(a, UNCHECKED) == []  # no prescription yet
    coded = {"coding": [{"system": RXNORM, "code": "723"}]}
    med = a.add_entry("medications", {"drug": coded}, author="dr.a")
    a.add_entry("medications", {"drug": "paracetamol 1 g"}, author="dr.a")
    (unchecked,) = by_rule(a, UNCHECKED)
    assert unchecked.severity is Severity.INFO
    assert "not checked against the patient's allergies" in unchecked.message
    assert "723" in unchecked.message
    assert by_rule(a, ALLERGY) == []  # a code system's address names no drug
    a.set_status("medications", med, "stopped", author="dr.a")
    assert by_rule(a, UNCHECKED) == []


def test_a_coded_drug_is_not_said_unchecked_when_there_is_no_allergy() -> None:
    (a,) = replicas(1)
    a.add_entry("medications", {"drug": {"code": "723"}}, author="dr.a")
    assert rules.conflicts(a) == []


def test_an_allergen_in_another_script_is_checked_for_its_own_name() -> None:
    # Names keep letters of any script elsewhere; here an allergen with no a-z letter
    # was skipped as empty: no note that it is unchecked, and no match of its own name.
    (a,) = replicas(1)
    a.add_entry("allergies", {"substance": "Пенициллин"}, author="dr.a")
    a.add_entry("medications", {"drug": "Пенициллин 500мг"}, author="dr.a")  # noqa: RUF001
    (info,) = by_rule(a, UNRECOGNISED)
    assert "'Пенициллин'" in info.message
    assert len(by_rule(a, ALLERGY)) == 1


# ------------------------------------------------------------------ determinism


def test_two_replicas_find_the_same_findings_with_the_same_ids() -> None:
    a, b, c = replicas(3)
    pen = a.add_entry("allergies", {"substance": "Penicillin allergy"}, author="dr.a")
    b.add_entry("allergies", {"substance": "sulfa", "criticality": "high"}, author="dr.b")
    c.add_entry("allergies", {"substance": "Kiwi"}, author="dr.c")
    a.add_entry("medications", {"drug": "Bactrim DS"}, author="dr.a")
    b.add_entry("medications", {"drug": "Augmentin 625 mg"}, author="dr.b")
    c.add_entry("medications", {"drug": "cefalexin 500 mg"}, author="dr.c")
    exchange(a, b)  # a and b first; c later, in another order
    exchange(c, b)
    exchange(a, c)
    a.set(f"allergies/{pen}/substance", "penicillins", author="dr.a")
    c.set(f"allergies/{pen}/substance", "Penicilin", author="dr.c")  # concurrent: both heads
    exchange(c, a, b)
    found = rules.findings(a)
    assert found == rules.findings(b) == rules.findings(c)
    assert rules.conflicts(a) == rules.conflicts(b) == rules.conflicts(c)
    severities = sorted((f.rule, f.severity.value) for _, f in found)
    assert severities.count((ALLERGY, "block")) == 1  # sulfa (high) and Bactrim
    assert (UNRECOGNISED, "info") in severities
    # Both heads of the penicillin allergy are checked against both drugs.
    pen_findings = [f for _, f in found if f.rule == ALLERGY and f.key.startswith(pen)]
    assert len(pen_findings) == 4  # 2 substance heads x (Augmentin, cefalexin)
    # A fresh table with the same contents finds the same (nothing rests on caches).
    fresh = Rulebook(substances=SubstanceTable.from_data(DEFAULT_SUBSTANCES.to_data()))
    assert fresh.findings(a) == found
    assert fresh.fingerprint == rules.fingerprint


# ------------------------------------------------------------- the app's table


def test_an_application_passes_its_own_table() -> None:
    table = DEFAULT_SUBSTANCES.extended({"peanut": ["arachis oil"]})
    book = Rulebook(substances=table)
    assert book.fingerprint != rules.fingerprint
    assert book.fingerprint == Rulebook(builtin_rules(table)).fingerprint
    assert (
        book.fingerprint
        == Rulebook(substances=SubstanceTable.from_data(table.to_data())).fingerprint
    )
    a, _ = chart({"substance": "Peanut", "criticality": "high"}, "Arachis oil enema")
    assert [c.rule for c in rules.conflicts(a)] == [UNRECOGNISED]
    (conflict,) = book.conflicts(a)
    assert conflict.rule == ALLERGY
    assert conflict.severity is Severity.BLOCK
    assert "listed under peanut" in conflict.message
    assert Rulebook(substances=DEFAULT_SUBSTANCES).fingerprint == rules.fingerprint


def test_rules_and_a_table_together_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="not both"):
        Rulebook(builtin_rules(), substances=DEFAULT_SUBSTANCES)
