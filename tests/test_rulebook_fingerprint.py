"""Rulebook.fingerprint: equal for the same rules at the same versions, anywhere."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from caresync.conflicts import (
    DEFAULT_RULEBOOK,
    DEFAULT_SUBSTANCES,
    FINGERPRINT_FORMAT,
    Finding,
    RecordView,
    Rulebook,
    SubstanceTable,
    builtin_rules,
    duplicate_allergy,
    rule_fingerprint,
    versioned,
)
from caresync.exceptions import RuleError


def height_rule(view: RecordView) -> Iterator[Finding]:
    """An application's rule without a version."""
    return iter(())


@versioned(2)
def weight_rule(view: RecordView) -> Iterator[Finding]:
    """An application's rule at version 2."""
    return iter(())


class Rules:
    """Rules as methods: a static one has a stable name, a bound one does not."""

    @staticmethod
    def static_rule(view: RecordView) -> Iterator[Finding]:
        return iter(())

    def bound_rule(self, view: RecordView) -> Iterator[Finding]:
        return iter(())

    def __call__(self, view: RecordView) -> Iterator[Finding]:
        return iter(())


def _is_unstable(fingerprint: str) -> bool:
    return fingerprint.startswith(f"{FINGERPRINT_FORMAT}:unstable-")


def test_the_builtin_rulebook_has_a_prefixed_stable_fingerprint() -> None:
    fingerprint = DEFAULT_RULEBOOK.fingerprint
    assert fingerprint.startswith(FINGERPRINT_FORMAT + ":")
    assert not _is_unstable(fingerprint)
    assert fingerprint == Rulebook().fingerprint == Rulebook(builtin_rules()).fingerprint
    assert DEFAULT_RULEBOOK.fingerprint is fingerprint  # computed once


def test_the_fingerprint_is_the_same_in_another_process() -> None:
    # Another interpreter, with another hash seed: nothing may depend on id() or hash().
    code = (
        "from caresync.conflicts import DEFAULT_RULEBOOK, DEFAULT_SUBSTANCES, Rulebook, "
        "builtin_rules\n"
        "print(DEFAULT_RULEBOOK.fingerprint)\n"
        "table = DEFAULT_SUBSTANCES.extended({'peanut': ['arachis oil']})\n"
        "print(Rulebook(builtin_rules(table)).fingerprint)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    here = [
        DEFAULT_RULEBOOK.fingerprint,
        Rulebook(
            builtin_rules(DEFAULT_SUBSTANCES.extended({"peanut": ["arachis oil"]}))
        ).fingerprint,
    ]
    assert result.stdout.split() == here


def test_adding_or_removing_a_rule_changes_it() -> None:
    more = DEFAULT_RULEBOOK.with_rules(height_rule)
    fewer = Rulebook(r for r in DEFAULT_RULEBOOK.rules if r is not duplicate_allergy)
    fingerprints = {DEFAULT_RULEBOOK.fingerprint, more.fingerprint, fewer.fingerprint}
    assert len(fingerprints) == 3
    assert not any(_is_unstable(f) for f in fingerprints)
    assert more.fingerprint == DEFAULT_RULEBOOK.with_rules(height_rule).fingerprint
    assert Rulebook([]).fingerprint != DEFAULT_RULEBOOK.fingerprint


def test_a_new_rule_version_changes_it() -> None:
    before = DEFAULT_RULEBOOK.with_rules(weight_rule).fingerprint
    assert rule_fingerprint(weight_rule) == (f"{__name__}:weight_rule", "int:2")
    weight_rule.rule_version = 3  # type: ignore[attr-defined]
    try:
        after = DEFAULT_RULEBOOK.with_rules(weight_rule).fingerprint
    finally:
        weight_rule.rule_version = 2  # type: ignore[attr-defined]
    assert after != before
    assert DEFAULT_RULEBOOK.with_rules(weight_rule).fingerprint == before
    # A version, even the first, differs from no version at all; so does "2" from 2.
    unversioned = DEFAULT_RULEBOOK.with_rules(height_rule).fingerprint
    height_rule.rule_version = "2"  # type: ignore[attr-defined]
    try:
        assert DEFAULT_RULEBOOK.with_rules(height_rule).fingerprint not in (unversioned, before)
    finally:
        del height_rule.rule_version  # type: ignore[attr-defined]


def test_a_builtin_rule_version_is_part_of_it() -> None:
    table_rule = builtin_rules()[2]
    described = rule_fingerprint(table_rule)
    assert described is not None
    assert described[0].startswith("caresync.conflicts.builtin:allergy_versus_prescription(table=")
    # 2: matching, severities, unrecognised; 3: outcomes; 4: "continue" writes the status
    # it keeps, doses typed against names, verification refuted; 5: coded (not text)
    # drugs and allergens read by their texts, or said unchecked; any script read
    assert described[1] == "int:5"
    assert rule_fingerprint(duplicate_allergy) == (
        "caresync.conflicts.builtin:duplicate_allergy",
        "int:2",
    )


def test_the_substance_table_is_part_of_it() -> None:
    other = Rulebook(builtin_rules(DEFAULT_SUBSTANCES.extended({"peanut": ["arachis oil"]})))
    assert not _is_unstable(other.fingerprint)
    assert other.fingerprint != DEFAULT_RULEBOOK.fingerprint
    # The same contents built in another order make the same table, and fingerprint.
    a = SubstanceTable.of({"latex": [], "penicillin": ["amoxicillin", "ampicillin"]})
    b = SubstanceTable.of({"penicillin": ["Ampicillin", "amoxicillin"], "latex": []})
    assert Rulebook(builtin_rules(a)).fingerprint == Rulebook(builtin_rules(b)).fingerprint
    # A copy of the default table (its digest computed, not the one kept at import).
    copy = SubstanceTable.from_data(DEFAULT_SUBSTANCES.to_data())
    assert Rulebook(builtin_rules(copy)).fingerprint == DEFAULT_RULEBOOK.fingerprint


def test_the_order_of_rules_counts() -> None:
    rules = builtin_rules()
    assert Rulebook(rules[::-1]).fingerprint != Rulebook(rules).fingerprint


def test_a_static_method_has_a_stable_name() -> None:
    first = DEFAULT_RULEBOOK.with_rules(Rules.static_rule).fingerprint
    assert not _is_unstable(first)
    assert first == DEFAULT_RULEBOOK.with_rules(Rules.static_rule).fingerprint


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(lambda view: iter(()), id="lambda"),
        pytest.param(functools.partial(height_rule), id="partial"),
        pytest.param(Rules(), id="callable-object"),
        pytest.param(Rules().bound_rule, id="bound-method"),
    ],
)
def test_a_rule_without_a_stable_name_makes_it_unique(rule: object) -> None:
    assert rule_fingerprint(rule) is None
    first = DEFAULT_RULEBOOK.with_rules(rule)  # type: ignore[arg-type]
    second = DEFAULT_RULEBOOK.with_rules(rule)  # type: ignore[arg-type]
    assert _is_unstable(first.fingerprint)
    assert first.fingerprint != second.fingerprint
    assert first.fingerprint == first.fingerprint  # stable for the rulebook's life


def test_closures_and_script_functions_are_not_stable_names() -> None:
    def local_rule(view: RecordView) -> Iterator[Finding]:
        return iter(())

    assert rule_fingerprint(local_rule) is None
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec("def script_rule(view):\n    return iter(())\n", namespace)
    assert rule_fingerprint(namespace["script_rule"]) is None


def test_an_explicit_identity_makes_a_factory_rule_stable() -> None:
    def make(threshold: int) -> object:
        @versioned(1, identity=f"{__name__}:threshold_rule({threshold})")
        def threshold_rule(view: RecordView) -> Iterator[Finding]:
            return iter(())

        return threshold_rule

    a1, a2, b = make(5), make(5), make(6)
    fingerprints = [DEFAULT_RULEBOOK.with_rules(r).fingerprint for r in (a1, a2, b)]  # type: ignore[arg-type]
    assert not any(_is_unstable(f) for f in fingerprints)
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


@pytest.mark.parametrize("version", [1.5, True, ["1"]])
def test_a_bad_rule_version_is_refused_when_the_rulebook_is_made(version: object) -> None:
    def rule(view: RecordView) -> Iterator[Finding]:
        return iter(())

    rule.rule_version = version  # type: ignore[attr-defined]
    with pytest.raises(RuleError, match="rule_version"):
        Rulebook([rule])
    with pytest.raises(RuleError, match="rule_version"):
        versioned(version)  # type: ignore[arg-type]


def test_a_bad_rule_identity_is_refused() -> None:
    def rule(view: RecordView) -> Iterator[Finding]:
        return iter(())

    rule.rule_identity = ""  # type: ignore[attr-defined]
    with pytest.raises(RuleError, match="rule_identity"):
        Rulebook([rule])
