"""The built-in clinical safety rules.

Each rule is a plain function from a :class:`RecordView` to findings. The
field names they read are the conventional ones of the default schema:

================  =====================================================
collection        fields read
================  =====================================================
medications       ``drug``, ``dose``, ``status``
allergies         ``substance``, ``status``, ``criticality``, ``reaction``
encounters        ``status``
notes             every field frozen by a ``signature``
(any)             ``status`` (``entered-in-error``) and every other field
================  =====================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator

from caresync.conflicts.counts import count_below_zero
from caresync.conflicts.describe import describe_entry
from caresync.conflicts.fingerprint import versioned
from caresync.conflicts.model import Finding, Outcome, Severity
from caresync.conflicts.substances import (
    DEFAULT_SUBSTANCES,
    Match,
    MatchKind,
    Reading,
    SubstanceTable,
    normalise,
)
from caresync.conflicts.view import RecordView
from caresync.records import (
    ADDENDA_FIELD,
    NOTES_COLLECTION,
    SIGNATURE_FIELD,
    STATUS_FIELD,
    CountState,
    Entry,
    FieldState,
    JSONValue,
    Revision,
    canonical_json,
    count_change,
)

__all__ = [
    "ENTERED_IN_ERROR",
    "INACTIVE_ALLERGY_STATUSES",
    "INACTIVE_ALLERGY_VERIFICATIONS",
    "INACTIVE_MEDICATION_STATUSES",
    "TERMINAL_ENCOUNTER_STATUSES",
    "Rule",
    "allergy_versus_prescription",
    "builtin_rules",
    "duplicate_allergy",
    "entered_in_error_versus_edit",
    "note_changed_while_signed",
    "stopped_versus_dose_change",
    "terminal_encounter_clash",
]

Rule = Callable[[RecordView], Iterable[Finding]]
"""A safety rule: a plain function over a read-only view of a merged record."""

ENTERED_IN_ERROR = "entered-in-error"
INACTIVE_MEDICATION_STATUSES = frozenset({"stopped", ENTERED_IN_ERROR, "completed", "cancelled"})
INACTIVE_ALLERGY_STATUSES = frozenset({ENTERED_IN_ERROR, "inactive", "resolved", "refuted"})
# An allergy's ``verification`` (FHIR's verificationStatus, kept apart from its status
# by caresync's FHIR import: a refuted allergy is clinicalStatus active there).
ALLERGY_VERIFICATION_FIELD = "verification"
INACTIVE_ALLERGY_VERIFICATIONS = frozenset({ENTERED_IN_ERROR, "refuted"})
TERMINAL_ENCOUNTER_STATUSES = frozenset({"finished", "cancelled", ENTERED_IN_ERROR})


# Versions of the built-in rules, part of every rulebook's fingerprint. BUMP a
# rule's version whenever its behaviour changes (what it finds, its severity,
# message, key or revisions): replicas whose rulebooks have equal fingerprints
# store each other's conflict rows without running the rules themselves.
_STOPPED_VERSUS_DOSE_CHANGE = 5  # 2: outcomes; entries named by their content; 3: a drug
# in conflict is named by its candidates (reading its value raised: the rule failed); 4: a
# dose equal to the one the stopper saw is no change (two alike decisions made a block); 5:
# only a revision of the dose itself is read as what the stopper saw there
_ENTERED_IN_ERROR_VERSUS_EDIT = 4  # 2: outcomes; entries named by their content; 3: an edit
# equal to what the marker saw is no edit; every collection of the schema; a count's change
# is kept (a count is never written back) and said in words; 4: a count's concurrent change
# is a change even when it stores what the marker saw (a dispensing of the same size)
_ALLERGY_VERSUS_PRESCRIPTION = 5  # the substance table is part of its identity; 3: outcomes;
# 4: "continue ... despite the allergy" writes the status it keeps (it wrote nothing, so
# chosen over a concurrent "stop" decision it left the medication stopped); a dose typed
# against a name ("Amoxicillin500mg") is read apart; an allergy whose verification is
# refuted or entered-in-error is not checked; 5: a drug or allergen that is not text (a
# coded value, CodeableConcept-like) is read by the texts it holds, and one holding none is
# said to be unchecked (``prescription-not-checked``; an allergen's note no longer says it is
# checked for its own name); an allergen in a script other than Latin is read, not skipped
_DUPLICATE_ALLERGY = 2  # 2: an allergy whose verification is refuted is no duplicate
_TERMINAL_ENCOUNTER_CLASH = 2  # 2: the encounter named by its content, not its id
_NOTE_CHANGED_WHILE_SIGNED = 2  # 2: the note named by its content, not its id


def _who(rev: Revision) -> str:
    return f"{rev.author} on {rev.replica}"


def _words(value: JSONValue) -> str:
    """A value as a clinician reads it in a sentence: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _named(heads: tuple[Revision, ...], default: str) -> str:
    """A field named in a sentence by its heads: every distinct value, none chosen
    (its value raises while they disagree), or ``default`` if it has none."""
    values = dict.fromkeys(_words(h.value) for h in heads if h.value is not None)
    return " / ".join(values) if values else default


def _before(view: RecordView, rev: Revision, default: str) -> JSONValue:
    """The value ``rev`` replaced (its parents agree on it), or ``default`` if it replaced none."""
    parents = [p for p in (view.revision(i) for i in rev.parents) if p is not None]
    values = {canonical_json(p.value): p.value for p in parents}
    if len(values) == 1:
        return next(iter(values.values()))
    return default


def _saw_as(view: RecordView, rev: Revision, path: str, value: JSONValue) -> bool:
    """True if the writer of ``rev`` saw ``path`` (a field of its entry) hold ``value``.

    A revision concurrent with ``rev`` that writes what its writer had already seen
    there changes nothing it decided about: two clinicians who take the same decision
    offline each rewrite the dose they both chose, and neither rewrite is a change.

    Never for a count: its revision stores a change (``{"delta": -1, "count": 11}``),
    and a dispensing made elsewhere stores the same value as one the writer saw while
    being another dispensing. Only revisions of ``path`` itself are read as what was
    seen there (a malformed ``seen`` naming another path's revision says nothing).
    """
    seen = rev.seen.get(path, ())
    if not seen or isinstance(view.get(path), CountState):
        return False
    wanted = canonical_json(value)
    for revision_id in seen:
        earlier = view.revision(revision_id)
        if earlier is None or earlier.path != path or canonical_json(earlier.value) != wanted:
            return False
    return True


def _heads(entry: Entry, name: str) -> tuple[Revision, ...]:
    state = entry.fields.get(name)
    return state.heads if state is not None else ()


def _field(view: RecordView, collection: str, entry_id: str, name: str) -> tuple[Revision, ...]:
    """The heads of one field of an entry: what ``_heads(entry, name)`` gives, for less.

    The rules below read a few fields of every entry and all fields of very few,
    so they read fields one by one and build a whole entry only when they must.
    """
    return view.get(f"{collection}/{entry_id}/{name}").heads


def _is_active(view: RecordView, collection: str, entry_id: str, inactive: frozenset[str]) -> bool:
    """Active unless every status candidate says otherwise (a conflict counts as active)."""
    statuses = _field(view, collection, entry_id, STATUS_FIELD)
    return not statuses or any(s.value not in inactive for s in statuses)


def _allergy_active(view: RecordView, allergy: str) -> bool:
    """Active by its status (:func:`_is_active`) and not refuted by its verification:
    unless every verification candidate is refuted or entered-in-error (one laptop's
    "refuted" against another's "confirmed" is still checked)."""
    if not _is_active(view, "allergies", allergy, INACTIVE_ALLERGY_STATUSES):
        return False
    verifications = _field(view, "allergies", allergy, ALLERGY_VERIFICATION_FIELD)
    # Any JSON may be there (no schema types it): only text can refute.
    return not verifications or any(
        not isinstance(v.value, str) or v.value not in INACTIVE_ALLERGY_VERIFICATIONS
        for v in verifications
    )


@versioned(_STOPPED_VERSUS_DOSE_CHANGE)
def stopped_versus_dose_change(view: RecordView) -> Iterator[Finding]:
    """A medication stopped on one replica while its dose changed on another (block)."""
    for entry_id in view.entry_ids("medications"):
        for stop in _field(view, "medications", entry_id, STATUS_FIELD):
            if stop.value != "stopped":
                continue
            dose_path = f"medications/{entry_id}/dose"
            for dose in _field(view, "medications", entry_id, "dose"):
                if view.concurrent(stop, dose) and not _saw_as(view, stop, dose_path, dose.value):
                    drug = _named(_field(view, "medications", entry_id, "drug"), "a medication")
                    status_path = f"medications/{entry_id}/{STATUS_FIELD}"
                    yield Finding(
                        rule="stopped-vs-dose-change",
                        severity=Severity.BLOCK,
                        message=(
                            f"{describe_entry(view, 'medications', entry_id)} was stopped by "
                            f"{_who(stop)} while {_who(dose)} changed its dose to "
                            f"{_words(dose.value)}: choose whether {drug} stays stopped or "
                            "continues at the new dose"
                        ),
                        revisions=(stop.id, dose.id),
                        key=entry_id,
                        outcomes=(
                            Outcome(
                                "stopped",
                                ((status_path, "stopped"), (dose_path, dose.value)),
                                stop.id,
                            ),
                            Outcome(
                                f"continue at {_words(dose.value)}",
                                (
                                    (status_path, _before(view, stop, "active")),
                                    (dose_path, dose.value),
                                ),
                                dose.id,
                            ),
                        ),
                    )


@versioned(_ENTERED_IN_ERROR_VERSUS_EDIT)
def entered_in_error_versus_edit(view: RecordView) -> Iterator[Finding]:
    """An entry marked entered-in-error on one replica while edited on another (block).

    Every collection of the record's schema, an application's own included. A
    count field's change is never written back by an outcome (a count adds up its
    changes: it is not a register to choose a value of).
    """
    for collection in view.collections():
        entries: dict[str, Entry] | None = None  # built only if an entry is marked
        for entry_id in view.entry_ids(collection):
            for mark in _field(view, collection, entry_id, STATUS_FIELD):
                if mark.value != ENTERED_IN_ERROR:
                    continue
                if entries is None:
                    entries = {e.id: e for e in view.shared_entries(collection)}
                for name, state in entries[entry_id].fields.items():
                    if name in (STATUS_FIELD, SIGNATURE_FIELD) or "/" in name:
                        continue
                    field_path = f"{collection}/{entry_id}/{name}"
                    for edit in state.heads:
                        if view.concurrent(mark, edit) and not _saw_as(
                            view, mark, field_path, edit.value
                        ):
                            yield _entered_in_error_finding(
                                view, entries[entry_id], name, mark, edit, state
                            )


def _entered_in_error_finding(
    view: RecordView, entry: Entry, name: str, mark: Revision, edit: Revision, state: FieldState
) -> Finding:
    """The finding of one entry marked entered-in-error while ``edit`` changed a field of it."""
    collection, entry_id = entry.collection, entry.id
    status_path = f"{collection}/{entry_id}/{STATUS_FIELD}"
    field_path = f"{collection}/{entry_id}/{name}"
    kept: tuple[tuple[str, JSONValue], ...] = ((field_path, edit.value),)
    said = f"set {name} to {_words(edit.value)}"
    kept_said = f"{name} {_words(edit.value)}"
    if isinstance(state, CountState):
        # A count is the sum of its changes: the change stays counted whatever is
        # chosen, and writing the stored change object back would be refused.
        change = count_change(edit.value)
        said = f"changed {name} by {change:+d}" if change is not None else f"changed {name}"
        kept_said = f"{name} changed by {change:+d}" if change is not None else said
        kept = ()
    elif entry.signed:
        kept = ()  # a signed note's text is frozen: its outcomes write the status only
    return Finding(
        rule="entered-in-error-vs-edit",
        severity=Severity.BLOCK,
        message=(
            f"{describe_entry(view, collection, entry_id)} was marked entered-in-error by "
            f"{_who(mark)} while {_who(edit)} {said}: choose whether the entry is in error"
        ),
        revisions=(mark.id, edit.id),
        key=field_path,
        outcomes=(
            Outcome(ENTERED_IN_ERROR, ((status_path, ENTERED_IN_ERROR), *kept), mark.id),
            Outcome(
                f"keep it, with {kept_said}",
                ((status_path, _before(view, mark, "active")), *kept),
                edit.id,
            ),
        ),
    )


def allergy_versus_prescription(table: SubstanceTable = DEFAULT_SUBSTANCES) -> Rule:
    """A rule: an active allergy and an active medication it rules out (block or flag).

    Typically one laptop records the allergy while another prescribes the drug;
    an application should also warn at the moment of prescribing, and this rule
    catches every pair a merge brings together. What matches is the table's
    business (:meth:`SubstanceTable.match`); the severity follows the allergy:
    ``block`` when its criticality is ``high`` or a reaction of anaphylaxis is
    recorded, ``flag`` otherwise, and ``flag`` for a possible cross-reactivity
    only. An allergen the table does not recognise gets an ``info`` finding
    (``allergen-not-recognised``): prescriptions are not checked against it.

    A drug or allergen that is not text (a coded value an application stores as
    an object or a list, CodeableConcept-like) is read by the texts it holds
    (:func:`_texts`). One that holds none is checked against nothing, and said
    so: ``allergen-not-recognised`` for the allergen, ``prescription-not-checked``
    (``info``) for an active medication of a record with an active allergy.

    The allergies of the records linked to this one as the same person
    (``view.linked``) are checked against this record's medications alike, and
    found on this record, the one whose prescription they would change; an
    unrecognised allergen there is that record's own finding.
    """

    @versioned(
        _ALLERGY_VERSUS_PRESCRIPTION,
        identity=f"{__name__}:allergy_versus_prescription(table={table.digest()})",
    )
    def allergy_versus_prescription(view: RecordView) -> Iterator[Finding]:
        medications: list[tuple[str, tuple[Revision, ...], JSONValue]] | None = None  # if needed
        for chart in (view, *view.linked):
            allergies = [a for a in chart.entry_ids("allergies") if _allergy_active(chart, a)]
            if not allergies:
                continue
            if medications is None:
                medications = [
                    (m, _field(view, "medications", m, "drug"), _status_kept(view, m))
                    for m in view.entry_ids("medications")
                    if _is_active(view, "medications", m, INACTIVE_MEDICATION_STATUSES)
                ]
            yield from _allergies_versus(table, chart, allergies, medications, own=chart is view)
        for medication, drugs, _ in medications or ():
            for drug in drugs:
                if drug.value is not None and not _texts(drug.value):
                    yield _prescription_not_checked(view, medication, drug)

    return allergy_versus_prescription


def _allergies_versus(
    table: SubstanceTable,
    chart: RecordView,
    allergies: list[str],
    medications: list[tuple[str, tuple[Revision, ...], JSONValue]],
    *,
    own: bool,
) -> Iterator[Finding]:
    """The findings of ``chart``'s active allergies against the medications of the record.

    ``chart`` is the record itself (``own``) or a record linked to it: severity is
    read on the chart that records the allergy; whether its allergen is recognised
    is said on that chart only.
    """
    linked = None if own else chart.record_id
    for allergy in allergies:
        serious: str | None = None  # why the allergy blocks; read on the first match
        serious_read = False
        for substance in _field(chart, "allergies", allergy, "substance"):
            allergens = _texts(substance.value)
            if not allergens:
                if own and not isinstance(substance.value, str | None):
                    yield _holds_no_name(allergy, substance)
                continue
            reading = _reading(table, allergens)
            if own and reading.unrecognised:
                yield _not_recognised(allergy, substance, reading)
            for medication, drugs, status in medications:
                for drug in drugs:
                    found = _best_match(table, allergens, _texts(drug.value))
                    if found is None:
                        continue
                    match, allergen, drug_text = found
                    if not serious_read:
                        serious, serious_read = _serious(chart, allergy), True
                    why = serious
                    if why is None and reading.anaphylaxis:
                        why = "anaphylaxis is recorded"
                    yield _allergy_finding(
                        allergy,
                        medication,
                        substance,
                        drug,
                        match,
                        why,
                        linked=linked,
                        status=status,
                        read=(allergen, drug_text),
                    )


def _texts(value: JSONValue) -> tuple[str, ...]:
    """The texts a value names a drug or an allergen by, in an order every replica shares.

    Text is itself, if it has a letter or digit of any script ("Пенициллин" is a
    name; "  " is none). In a list or an object (a coded value, CodeableConcept-like:
    ``{"coding": [{"system": ..., "code": "723", "display": "Amoxicillin"}],
    "text": ...}``), as the reaction is read, every text at any depth, taken in the
    order of the object's keys sorted, except those with no letter (a numeric code
    names nothing the table can read) and URIs (a coding's ``system``, not a name).
    """
    if isinstance(value, str):
        return (value,) if any(c.isalnum() for c in value) else ()
    found: dict[str, None] = {}
    _collect_texts(value, found)
    return tuple(found)


def _collect_texts(value: JSONValue, found: dict[str, None]) -> None:
    if isinstance(value, str):
        if any(c.isalpha() for c in value) and not _URI.match(value):
            found[value] = None
    elif isinstance(value, list):
        for item in value:
            _collect_texts(item, found)
    elif isinstance(value, dict):
        for key in sorted(value):
            _collect_texts(value[key], found)


_URI = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|urn:)", re.IGNORECASE)
_MATCH_RANK = {MatchKind.SAME: 0, MatchKind.CLASS: 1, MatchKind.CROSS_REACTIVITY: 2}


def _reading(table: SubstanceTable, texts: tuple[str, ...]) -> Reading:
    """How the table reads an allergen's texts, together: what it knows in any of them."""
    if len(texts) == 1:
        return table.read(texts[0])
    readings = [table.read(t) for t in texts]
    return Reading(
        recognised=tuple(sorted({r for x in readings for r in x.recognised})),
        unrecognised=tuple(dict.fromkeys(u for x in readings for u in x.unrecognised)),
        corrected=any(x.corrected for x in readings),
        anaphylaxis=any(x.anaphylaxis for x in readings),
    )


def _best_match(
    table: SubstanceTable, allergens: tuple[str, ...], drugs: tuple[str, ...]
) -> tuple[Match, str, str] | None:
    """The best reason any of an allergen's texts rules out any of a drug's, with those
    two texts; the first such pair when several are as good."""
    best: tuple[Match, str, str] | None = None
    for allergen in allergens:
        for drug in drugs:
            match = table.match(allergen, drug)
            if match is not None and (
                best is None or _MATCH_RANK[match.kind] < _MATCH_RANK[best[0].kind]
            ):
                best = (match, allergen, drug)
    return best


def _status_kept(view: RecordView, medication: str) -> JSONValue:
    """The status "continue despite the allergy" keeps: the medication's, or ``active``
    if it has none or its heads disagree (a deciding over those heads is refused: they
    are a field conflict of their own, to be settled first)."""
    values = {
        canonical_json(h.value): h.value
        for h in _field(view, "medications", medication, STATUS_FIELD)
    }
    return next(iter(values.values())) if len(values) == 1 else "active"


def _serious(view: RecordView, allergy: str) -> str | None:
    """Why an allergy is serious enough to block: high criticality, or anaphylaxis recorded."""
    for rev in _field(view, "allergies", allergy, "criticality"):
        if normalise(rev.value) == "high":
            return "the allergy's criticality is high"
    for name in _REACTION_FIELDS:
        for rev in _field(view, "allergies", allergy, name):
            if _mentions_anaphylaxis(rev.value):
                return "anaphylaxis is recorded"
    return None


_REACTION_FIELDS = ("reaction", "reactions", "manifestation")
_LINKED = "linked:"
"""Starts the key of a finding of a linked record's allergy, ``linked:<record>/<allergy>/<drug>``
(its id differs from any of an allergy of the record's own anyway: it names the linked
record's revision of the substance)."""


def _mentions_anaphylaxis(value: object) -> bool:
    """True if a reaction (text, or FHIR-like lists and objects of text) says anaphylaxis."""
    if isinstance(value, str):
        return "anaphyla" in value.lower()
    if isinstance(value, list):
        return any(_mentions_anaphylaxis(v) for v in value)
    if isinstance(value, dict):
        return any(_mentions_anaphylaxis(v) for v in value.values())
    return False


def _allergy_finding(
    allergy: str,
    medication: str,
    substance: Revision,
    drug: Revision,
    match: Match,
    serious: str | None,
    *,
    linked: str | None = None,
    status: JSONValue = "active",
    read: tuple[str, str] | None = None,
) -> Finding:
    """The finding of one allergy against one prescription of the record.

    ``linked`` is the id of the record the allergy is recorded on when that is
    not this record but one linked to it as the same person: the message says
    so, and the key names that record and its allergy entry (so the finding
    never shares an id with one of an allergy of this record). ``status`` is
    the medication's status, which "continue despite the allergy" writes.
    ``read`` is the allergen's and the drug's texts that matched, which name
    them when their values are not text (a coded value).
    """
    allergen_text, drug_text = read or (_words(substance.value), _words(drug.value))
    allergen_shown = _shown(substance.value, allergen_text)
    drug_shown = _shown(drug.value, drug_text)
    drug_words = drug_text if not isinstance(drug.value, str) else _words(drug.value)
    read_as = f" (read as {match.allergen})" if match.corrected else ""
    if linked is None:
        allergy_said = f"allergy to {allergen_shown}{read_as} (recorded by {_who(substance)})"
        pair = f"{allergy}/{medication}"
    else:
        allergy_said = (
            f"allergy to {allergen_shown}{read_as} recorded on the linked record {linked} "
            f"of the same person (by {_who(substance)})"
        )
        pair = f"{_LINKED}{linked}/{allergy}/{medication}"
    said = f"{allergy_said} and {drug_shown} prescribed by {_who(drug)}: {match.reason}"
    status_path = f"medications/{medication}/{STATUS_FIELD}"
    if serious is not None and not match.cross_reactivity:
        return Finding(
            rule="allergy-vs-prescription",
            severity=Severity.BLOCK,
            message=f"{said}; {serious}: choose whether the prescription stands",
            revisions=(substance.id, drug.id),
            key=f"{pair}/block",  # a flag acknowledged earlier does not cover it
            outcomes=(
                Outcome(f"stop {drug_words}", ((status_path, "stopped"),), substance.id),
                Outcome(
                    f"continue {drug_words} despite the allergy",
                    # The status it keeps, written: chosen over a concurrent "stop"
                    # decision, the medication is then active again, as chosen.
                    ((status_path, status),),
                    drug.id,
                ),
            ),
        )
    return Finding(
        rule="allergy-vs-prescription",
        severity=Severity.FLAG,
        message=f"{said}; review the prescription",
        revisions=(substance.id, drug.id),
        key=pair,
    )


def _shown(value: JSONValue, text: str) -> str:
    """A drug or allergen in a message: its text quoted, or, if it is not text, the text
    of it that was read (a coded value's whole JSON would bury the name)."""
    return repr(value) if isinstance(value, str) else repr(text)


def _not_recognised(allergy: str, substance: Revision, reading: Reading) -> Finding:
    shown = (
        repr(substance.value)
        if isinstance(substance.value, str)
        else _words(substance.value)  # a coded value: shown whole, none of its texts chosen
    )
    if reading.recognised:
        unknown = ", ".join(repr(u) for u in reading.unrecognised)
        said = f"allergy to {shown} (recorded by {_who(substance)}): {unknown} not recognised"
    else:
        said = f"allergy to {shown} (recorded by {_who(substance)}) not recognised"
    return Finding(
        rule="allergen-not-recognised",
        severity=Severity.INFO,
        message=(
            f"{said}: prescriptions are not checked against it, only for its own name; "
            "check them by hand or record the substance by a name the table knows"
        ),
        revisions=(substance.id,),
        key=allergy,
    )


def _holds_no_name(allergy: str, substance: Revision) -> Finding:
    """The note of an allergen that is not text and holds none: nothing is checked."""
    return Finding(
        rule="allergen-not-recognised",
        severity=Severity.INFO,
        message=(
            f"allergy recorded as {_words(substance.value)} (by {_who(substance)}) not "
            "recognised: it holds no name to read, so no prescription is checked against "
            "it; check them by hand or record the substance by name"
        ),
        revisions=(substance.id,),
        key=allergy,
    )


def _prescription_not_checked(view: RecordView, medication: str, drug: Revision) -> Finding:
    """The note of an active medication whose drug is not text and holds none, on a record
    with an active allergy: the allergy check cannot read it."""
    return Finding(
        rule="prescription-not-checked",
        severity=Severity.INFO,
        message=(
            f"{describe_entry(view, 'medications', medication)} is recorded as "
            f"{_words(drug.value)} (by {_who(drug)}), which holds no name to read: it is "
            "not checked against the patient's allergies; check it by hand or record the "
            "drug by name"
        ),
        revisions=(drug.id,),
        key=medication,
    )


@versioned(_DUPLICATE_ALLERGY)
def duplicate_allergy(view: RecordView) -> Iterator[Finding]:
    """The same allergy entered twice as separate active entries (flag)."""
    by_substance: dict[str, list[Revision]] = {}
    for allergy in view.entry_ids("allergies"):
        if not _allergy_active(view, allergy):
            continue
        seen_here: set[str] = set()
        for substance in _field(view, "allergies", allergy, "substance"):
            key = normalise(substance.value)
            if key and key not in seen_here:
                seen_here.add(key)
                by_substance.setdefault(key, []).append(substance)
    for key, revisions in sorted(by_substance.items()):
        if len(revisions) > 1:
            yield Finding(
                rule="duplicate-allergy",
                severity=Severity.FLAG,
                message=(
                    f"an allergy to {key!r} is recorded {len(revisions)} times "
                    f"(by {', '.join(sorted({_who(r) for r in revisions}))}): "
                    "mark the extra entries entered-in-error"
                ),
                revisions=tuple(r.id for r in revisions),
                key=key,
            )


@versioned(_TERMINAL_ENCOUNTER_CLASH)
def terminal_encounter_clash(view: RecordView) -> Iterator[Finding]:
    """An encounter's terminal status (finished, cancelled, ...) clashing with another (block)."""
    for entry_id in view.entry_ids("encounters"):
        state = view.get(f"encounters/{entry_id}/{STATUS_FIELD}")
        if not state.in_conflict:
            continue
        values = [h.value for h in state.heads]
        if not any(v in TERMINAL_ENCOUNTER_STATUSES for v in values):
            continue
        yield Finding(
            rule="terminal-encounter-clash",
            severity=Severity.BLOCK,
            message=(
                f"{describe_entry(view, 'encounters', entry_id)} has clashing statuses "
                f"{', '.join(repr(v) for v in values)}: choose the one that happened"
            ),
            revisions=tuple(h.id for h in state.heads),
            key=entry_id,
            escalates=state.path,
        )


@versioned(_NOTE_CHANGED_WHILE_SIGNED)
def note_changed_while_signed(view: RecordView) -> Iterator[Finding]:
    """A note's field edited on one replica while the note was signed on another (flag).

    The signed value stays the value; the concurrent edit is kept in the history
    and shown here, so it can be added as an addendum if it matters.
    """
    for entry in view.shared_entries(NOTES_COLLECTION):
        signatures = _heads(entry, SIGNATURE_FIELD)
        if not signatures:
            continue
        for name in entry.fields:
            if name in (STATUS_FIELD, SIGNATURE_FIELD) or name.startswith(ADDENDA_FIELD + "/"):
                continue
            path = f"{NOTES_COLLECTION}/{entry.id}/{name}"
            signed = entry.fields[name].heads  # the frozen view: what was signed
            signed_ids = {s.id for s in signed}
            unseen = [
                rev
                for rev in view.history(path)
                if rev.id not in signed_ids and not any(view.saw(s, rev) for s in signed)
            ]
            if unseen:
                yield Finding(
                    rule="note-changed-while-signed",
                    severity=Severity.FLAG,
                    message=(
                        f"{describe_entry(view, NOTES_COLLECTION, entry.id)}: {name} was "
                        "changed by "
                        f"{', '.join(sorted({_who(r) for r in unseen}))} while "
                        f"{_who(signatures[0])} signed it; the signed text stands, "
                        "add the change as an addendum if it matters"
                    ),
                    revisions=tuple(r.id for r in (*signed, *unseen)),
                    key=path,
                )


def builtin_rules(table: SubstanceTable = DEFAULT_SUBSTANCES) -> tuple[Rule, ...]:
    """The built-in rules, with ``table`` for the allergy rule."""
    return (
        stopped_versus_dose_change,
        entered_in_error_versus_edit,
        allergy_versus_prescription(table),
        duplicate_allergy,
        terminal_encounter_clash,
        note_changed_while_signed,
        count_below_zero,
    )
