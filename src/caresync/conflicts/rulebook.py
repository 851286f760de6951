"""Deriving, listing and resolving the conflicts of a record.

Conflicts are a function of the document's state: field conflicts come from
the heads index, findings from running the rules over a read-only view. Every
replica with the same updates lists the same conflicts with the same ids, so
no conflict flag ever travels on its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from caresync.conflicts.builtin import Rule, builtin_rules
from caresync.conflicts.describe import describe_path
from caresync.conflicts.fingerprint import check_rule_versions, rulebook_fingerprint
from caresync.conflicts.model import (
    Candidate,
    Conflict,
    ConflictKind,
    Finding,
    Outcome,
    Severity,
)
from caresync.conflicts.substances import SubstanceTable
from caresync.conflicts.view import RecordView, _linked_records
from caresync.exceptions import (
    CaresyncError,
    InvalidInputError,
    InvalidResolutionError,
    RuleError,
    UnknownConflictError,
)
from caresync.records import ACK_PREFIX, JSONValue, Record, Revision, canonical_json
from caresync.records.ids import finding_id_for

__all__ = ["DEFAULT_RULEBOOK", "Rulebook"]

_SEVERITY_ORDER = {Severity.BLOCK: 0, Severity.FLAG: 1, Severity.INFO: 2}
_UNSET: object = object()
_RESULTS_PER_RECORD = 4  # results kept per record: unlinked, and a few sets of linked records


@dataclass(frozen=True, slots=True)
class _Computed:
    """A record's conflicts as computed at ``version`` with these linked records at theirs."""

    version: int
    linked: tuple[weakref.ref[Record], ...]
    linked_versions: tuple[int, ...]
    conflicts: tuple[Conflict, ...]  # a tuple: most records have none, and () is shared

    def holds_for(self, record: Record, linked: tuple[Record, ...]) -> bool:
        return (
            self.version == record.version
            and len(self.linked) == len(linked)
            and all(ref() is other for ref, other in zip(self.linked, linked, strict=True))
            and self.linked_versions == tuple(other.version for other in linked)
        )


class Rulebook:
    """A set of safety rules, and the operations that list and resolve conflicts.

    ``Rulebook()`` has the built-in rules; ``Rulebook(substances=table)`` the
    built-in rules with an application's own substance table for the allergy
    rule (its digest is part of the fingerprint); ``Rulebook([...])`` exactly
    the rules given; :meth:`with_rules` adds an application's own.
    """

    def __init__(
        self, rules: Iterable[Rule] | None = None, *, substances: SubstanceTable | None = None
    ) -> None:
        if rules is None:
            # versioned correctly, by us
            self._rules: tuple[Rule, ...] = (
                builtin_rules() if substances is None else builtin_rules(substances)
            )
        elif substances is not None:
            raise InvalidInputError(
                "give a rulebook its rules or a substance table for the built-in rules, not "
                "both (builtin_rules(table) gives the built-in rules with a table)"
            )
        else:
            self._rules = tuple(rules)
            check_rule_versions(self._rules)  # a bad version is refused here, not when syncing
        self._fingerprint: str | None = None  # on first use: rulebooks are made per call too
        # Per record: its result without linked records (the usual case, kept as it
        # is), or a dict of results keyed by the ids of the linked records each was
        # computed with. A dict for every record cost 224 bytes each in a full pool.
        self._cache: weakref.WeakKeyDictionary[
            Record, _Computed | dict[tuple[str, ...], _Computed]
        ] = weakref.WeakKeyDictionary()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, in the order they run."""
        return self._rules

    @property
    def fingerprint(self) -> str:
        """A stable digest of the rules and their versions, with a format prefix.

        Equal for rulebooks that compute the same conflicts (the same rules, in
        the same order, at the same versions), in any process; different when a
        rule is added, removed or changes version. A rule without a stable name
        (a lambda, a closure, a partial, a callable object, a function defined in
        ``__main__``) makes it unique to this rulebook. Replicas whose rulebooks
        have equal fingerprints may store each other's conflict rows as they are.
        """
        if self._fingerprint is None:
            self._fingerprint = rulebook_fingerprint(self._rules)
        return self._fingerprint

    def with_rules(self, *rules: Rule) -> Rulebook:
        """A new rulebook with these rules added."""
        return Rulebook((*self._rules, *rules))

    # ------------------------------------------------------------------ listing

    def findings(
        self, record: Record, *, linked: Sequence[Record] = ()
    ) -> list[tuple[str, Finding]]:
        """Every rule finding, open or acknowledged, with its id; sorted by id.

        ``linked`` are the records linked to this one as the same person: the
        rules see them (``view.linked``) and report on this record what they mean
        for it, such as an allergy recorded on the other chart against a
        prescription on this one. A finding may name revisions of this record
        and of the linked ones. Without ``linked``, exactly the record's own
        findings (what the stored conflict index holds).
        """
        return self._findings(record, RecordView(record, linked))

    def _findings(self, record: Record, view: RecordView) -> list[tuple[str, Finding]]:
        found: dict[str, Finding] = {}
        for rule in self._rules:
            try:
                results = list(rule(view))
            except CaresyncError as exc:
                raise RuleError(f"safety rule {_name(rule)} failed: {exc}") from exc
            except Exception as exc:  # an application's rule: report, don't hide
                raise RuleError(
                    f"safety rule {_name(rule)} raised {type(exc).__name__}: {exc}"
                ) from exc
            for finding in results:
                if not isinstance(finding, Finding):
                    raise RuleError(
                        f"safety rule {_name(rule)} returned {finding!r}, not a Finding"
                    )
                missing = [
                    r
                    for r in finding.revisions
                    if record.revision(r) is None and view.linked_revision(r) is None
                ]
                if missing:
                    raise RuleError(f"safety rule {_name(rule)} named unknown revisions {missing}")
                fid = finding_id_for(record.record_id, finding.rule, finding.key, finding.revisions)
                found[fid] = finding
        return sorted(found.items())

    def conflicts(self, record: Record, *, linked: Sequence[Record] = ()) -> list[Conflict]:
        """The open conflicts of a record: blocks first, then flags, then info.

        With ``linked`` (the records linked to this one as the same person), the
        findings the rules make of them too (see :meth:`findings`); every conflict
        is this record's, and what resolving it writes is written to this record.
        """
        others = _linked_records(record, linked)
        key = tuple(other.record_id for other in others)
        held = self._cache.get(record)
        if held is not None:
            # A lone result is the unlinked one (key ()).
            cached = held.get(key) if isinstance(held, dict) else (None if key else held)
            if cached is not None and cached.holds_for(record, others):
                return list(cached.conflicts)
        result = self._conflicts(record, RecordView(record, others))
        computed = _Computed(
            record.version,
            tuple(weakref.ref(other) for other in others),
            tuple(other.version for other in others),
            tuple(result),
        )
        if not key and (held is None or isinstance(held, _Computed)):
            self._cache[record] = computed
            return result
        if held is None:
            results: dict[tuple[str, ...], _Computed] = {}
        elif isinstance(held, _Computed):
            results = {(): held}
        else:
            results = held
        results.pop(key, None)
        results[key] = computed
        while len(results) > _RESULTS_PER_RECORD:
            del results[next(iter(results))]  # the least recently computed
        self._cache[record] = results
        return result

    def _conflicts(self, record: Record, view: RecordView) -> list[Conflict]:
        by_path: dict[str, Conflict] = {}
        for path in record.conflicted_paths():
            state = record.get(path)
            conflict_id = state.conflict_id
            if conflict_id is None:
                continue
            if path.startswith(ACK_PREFIX):
                by_path[path] = _decision_conflict(record, conflict_id, path, state.heads)
                continue
            by_path[path] = Conflict(
                id=conflict_id,
                record_id=record.record_id,
                kind=ConflictKind.FIELD,
                severity=Severity.BLOCK,
                subject=path,
                message=(
                    f"{describe_path(record, path, record.schema)} has {len(state.heads)} "
                    "concurrent values: choose one"
                ),
                candidates=tuple(Candidate.from_revision(h) for h in state.heads),
                paths=(path,),
            )
        rule_conflicts: list[Conflict] = []
        for fid, finding in self._findings(record, view):
            if finding.escalates is not None and finding.escalates in by_path:
                plain = by_path[finding.escalates]
                by_path[finding.escalates] = Conflict(
                    id=plain.id,
                    record_id=plain.record_id,
                    kind=plain.kind,
                    severity=finding.severity,
                    subject=plain.subject,
                    message=finding.message,
                    candidates=plain.candidates,
                    rule=finding.rule,
                    paths=plain.paths,
                )
                continue
            if _decided(record, fid):
                continue
            # The paths are this record's; a linked record's revisions only stand for a side.
            paths = dict.fromkeys(
                r.path for r in (record.revision(i) for i in finding.revisions) if r
            )
            if finding.outcomes:
                candidates = tuple(_outcome_candidate(record, view, o) for o in finding.outcomes)
                for outcome in finding.outcomes:
                    paths.update(dict.fromkeys(p for p, _v in outcome.writes))
            else:
                revisions = [
                    r for r in (_revision(record, view, i) for i in finding.revisions) if r
                ]
                candidates = tuple(Candidate.from_revision(r) for r in revisions)
            rule_conflicts.append(
                Conflict(
                    id=fid,
                    record_id=record.record_id,
                    kind=ConflictKind.RULE,
                    severity=finding.severity,
                    subject=finding.rule,
                    message=finding.message,
                    candidates=candidates,
                    rule=finding.rule,
                    paths=tuple(paths),
                    outcomes=finding.outcomes,
                    value_path=finding.value_path,
                )
            )
        return sorted(
            [*by_path.values(), *rule_conflicts],
            key=lambda c: (_SEVERITY_ORDER[c.severity], c.subject, c.id),
        )

    def contested(self, record: Record, *, linked: Sequence[Record] = ()) -> dict[str, Conflict]:
        """Every field an open ``block`` conflict involves, and that conflict.

        Until a person chooses, such a field has no settled value: a screen
        shows its conflict and candidates, not one of them (a field conflict's
        path, and every path of a blocking rule finding: the status *and* the
        dose of a medication stopped while its dose changed). ``linked`` as for
        :meth:`conflicts`; the paths are always this record's.
        """
        contested: dict[str, Conflict] = {}
        for conflict in self.conflicts(record, linked=linked):
            if conflict.severity is not Severity.BLOCK:
                continue
            for path in conflict.paths:
                if not path.startswith(ACK_PREFIX):
                    contested.setdefault(path, conflict)
        return contested

    def conflict(
        self, record: Record, conflict_id: str, *, linked: Sequence[Record] = ()
    ) -> Conflict:
        """One open conflict by id; UnknownConflictError if it is not open.

        A finding made with linked records is open only with them: give the same
        ``linked`` as when it was listed.
        """
        for conflict in self.conflicts(record, linked=linked):
            if conflict.id == conflict_id:
                return conflict
        raise UnknownConflictError(
            f"record {record.record_id} has no open conflict {conflict_id}: it was resolved, "
            "or new values arrived since it was listed (list the conflicts again)"
        )

    # ---------------------------------------------------------------- resolving

    def resolve(
        self,
        record: Record,
        conflict_id: str,
        *,
        author: str,
        choose: int | None = None,
        value: JSONValue | object = _UNSET,
        linked: Sequence[Record] = (),
    ) -> Revision:
        """Resolve a conflict by choosing candidate ``choose`` or entering a new ``value``.

        A field conflict is resolved by an ordinary write whose parents are all the
        current heads, so it replicates like any edit and works offline. A rule
        finding is resolved by recording the chosen candidate as the decision.
        Concurrent different decisions on one finding are settled by choosing one
        of them (a new ``value`` is refused there: it would decide nothing).
        A finding made with linked records is resolved with the same ``linked``;
        whatever is written, decision included, is written to ``record``.
        """
        conflict = self.conflict(record, conflict_id, linked=linked)
        if (choose is None) == (value is _UNSET):
            raise InvalidResolutionError("give exactly one of choose=N or value=...")
        if choose is not None:
            if not isinstance(choose, int) or isinstance(choose, bool):
                raise InvalidResolutionError(f"choose must be an integer, got {choose!r}")
            if not 0 <= choose < len(conflict.candidates):
                raise InvalidResolutionError(
                    f"conflict {conflict_id} has {len(conflict.candidates)} candidates "
                    f"(0 to {len(conflict.candidates) - 1}); {choose} is out of range"
                )
        if conflict.kind is ConflictKind.FIELD:
            path = conflict.subject
            if path.startswith(ACK_PREFIX):
                if choose is None:
                    raise InvalidResolutionError(_no_new_decision(conflict))
                return _settle_decisions(record, conflict, choose, author)
            # ``value`` was checked above to be given when ``choose`` is not.
            new_value = cast(
                JSONValue, conflict.candidates[choose].value if choose is not None else value
            )
            return record.set(path, new_value, author=author)
        if conflict.value_path is not None:
            if choose is not None:
                raise InvalidResolutionError(
                    f"conflict {conflict_id} ({conflict.rule}) is settled by entering the value "
                    f"of {conflict.value_path} (value=...), not by choosing a candidate"
                )
            return record.set(conflict.value_path, cast(JSONValue, value), author=author)
        if choose is None:
            raise InvalidResolutionError(
                f"conflict {conflict_id} is a finding of rule {conflict.rule}: resolve it by "
                "choosing one of its outcomes (or write the fields themselves)"
            )
        return _apply_decision(record, conflict, choose, author)

    def acknowledge(
        self, record: Record, conflict_id: str, *, author: str, linked: Sequence[Record] = ()
    ) -> Revision:
        """Acknowledge a ``flag`` or ``info`` finding; a ``block`` needs :meth:`resolve`.

        ``linked`` as for :meth:`resolve`; the acknowledgement is written to ``record``.
        """
        conflict = self.conflict(record, conflict_id, linked=linked)
        if conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
            raise InvalidResolutionError(
                f"conflict {conflict_id} is a {conflict.severity.value} {conflict.kind.value} "
                "conflict: a person must choose (resolve with choose=N or value=...)"
            )
        return record.acknowledge_finding(conflict.id, {"decision": "acknowledged"}, author=author)


def _decided(record: Record, finding_id: str) -> bool:
    """True if a recorded decision covers the finding, which is then not open.

    An acknowledgement covers what was seen. A decision that wrote an outcome
    ("stop Augmentin": the medication's status) covers the finding only while the
    record still says what it wrote: a finding made again once a written path holds
    another value (the medication made active again) is open again, with the same
    id, as a fresh prescription would be. Concurrent decisions cover it too: their
    own conflict is listed.
    """
    state = record.acknowledgement(finding_id)
    if not state.exists:
        return False
    if state.in_conflict:
        return True
    decision = state.heads[0].value
    writes = decision.get("writes") if isinstance(decision, dict) else None
    if not isinstance(writes, dict):
        return True
    for path, written in writes.items():
        if not isinstance(path, str) or path.startswith(ACK_PREFIX):
            continue  # only a broken peer writes such a decision: it covers what it names
        wanted = canonical_json(written)
        if any(canonical_json(head.value) != wanted for head in record.get(path).heads):
            return False
    return True


def _revision(record: Record, view: RecordView, revision_id: str) -> Revision | None:
    """A revision of the record, or else of one of the records linked to it."""
    rev = record.revision(revision_id)
    if rev is None:
        found = view.linked_revision(revision_id)
        rev = found[1] if found is not None else None
    return rev


def _outcome_candidate(record: Record, view: RecordView, outcome: Outcome) -> Candidate:
    """An outcome as a candidate: its label as the value; who, where and when from its revision.

    The revision may be a linked record's (an allergy recorded on the other chart);
    the candidate's path is then the first path it writes, which is this record's.
    """
    rev = _revision(record, view, outcome.revision)
    if rev is None:
        raise RuleError(f"an outcome names revision {outcome.revision}, which is not in the record")
    path = outcome.writes[0][0] if outcome.writes else rev.path
    return Candidate(
        path, outcome.label, rev.author, rev.replica, rev.at, rev.id, writes=outcome.writes
    )


def _apply_decision(record: Record, conflict: Conflict, choose: int, author: str) -> Revision:
    """Write what the chosen outcome says, over every current head, and record the decision.

    One transaction: the paths the finding involves and the decision travel as
    one update, so no replica ever holds one without the other. A finding
    without outcomes records which candidate was chosen.
    """
    chosen = conflict.candidates[choose]
    if not conflict.outcomes:
        return record.acknowledge_finding(
            conflict.id, {"decision": "chose", "revision": chosen.revision}, author=author
        )
    outcome = conflict.outcomes[choose]
    _refuse_unseen_values(record, conflict, outcome.writes)
    for path, value in outcome.writes:
        record.check_set(path, value)  # every write checked before the first is made
    decision: dict[str, JSONValue] = {
        "decision": outcome.label,
        "outcome": choose,
        "writes": {path: value for path, value in outcome.writes},
    }
    with record.batch():
        for path, value in outcome.writes:
            record.set(path, value, author=author)
        return record.acknowledge_finding(conflict.id, decision, author=author)


def _refuse_unseen_values(
    record: Record, conflict: Conflict, writes: Sequence[tuple[str, JSONValue]]
) -> None:
    """Refuse an outcome that would write over a value the finding does not show: a
    path it writes whose heads disagree, one of them a revision none of the finding's
    candidates names (it arrived after the finding was made, concurrent with it). The
    finding keeps its id, since it names the same revisions, so this is the only place
    that sees it; the path's own field conflict is listed, to be settled first."""
    named = {candidate.revision for candidate in conflict.candidates}
    for path, _value in writes:
        state = record.get(path)
        if not state.in_conflict:
            continue
        unseen = [head for head in state.heads if head.id not in named]
        if unseen:
            values = ", ".join(repr(head.value) for head in unseen)
            field = describe_path(record, path, record.schema)
            raise UnknownConflictError(
                f"conflict {conflict.id}: {field} now also holds "
                f"{values}, which this finding does not show (it arrived since); that field's "
                f"conflict {state.conflict_id} is listed: resolve that conflict first, then "
                "list the conflicts again"
            )


def _decision_label(value: JSONValue) -> JSONValue:
    """What a person reads of a recorded decision: its words, not its JSON."""
    if isinstance(value, dict) and isinstance(value.get("decision"), str):
        label = value["decision"]
        return "acknowledged" if label == "acknowledged" else label
    return value


def _decision_conflict(
    record: Record, conflict_id: str, path: str, heads: tuple[Revision, ...]
) -> Conflict:
    """Two people decided a finding differently: the decisions themselves are the candidates."""
    candidates = []
    for head in heads:
        writes: tuple[tuple[str, JSONValue], ...] = ()
        if isinstance(head.value, dict) and isinstance(head.value.get("writes"), dict):
            writes = tuple(head.value["writes"].items())
        candidates.append(
            Candidate(
                head.path,
                _decision_label(head.value),
                head.author,
                head.replica,
                head.at,
                head.id,
                writes=writes,
            )
        )
    paths = dict.fromkeys([path, *(p for c in candidates for p, _v in c.writes)])
    return Conflict(
        id=conflict_id,
        record_id=record.record_id,
        kind=ConflictKind.FIELD,
        severity=Severity.BLOCK,
        subject=path,
        message=(
            f"{len(heads)} people decided one finding differently: "
            + "; ".join(f"{c.value!r} by {c.author} on {c.replica}" for c in candidates)
            + ": choose one decision"
        ),
        candidates=tuple(candidates),
        paths=tuple(paths),
    )


def _no_new_decision(conflict: Conflict) -> str:
    """Why concurrent decisions are not settled with a new value, and what to do."""
    n = len(conflict.candidates)
    return (
        f"conflict {conflict.id} is between {n} decisions on one finding: choose one of "
        f"them (choose=N, `conflicts resolve {conflict.id} --choose N`, N from 0 to {n - 1}); "
        "a value entered here would be recorded as the decision without writing any field "
        "the finding involves. To decide otherwise, write those fields themselves"
    )


def _settle_decisions(record: Record, conflict: Conflict, choose: int, author: str) -> Revision:
    """Settle concurrent decisions: write the chosen one's outcome again, over every head.

    Refused, with nothing written, while a path it writes also holds a concurrent
    value none of the decisions shows, or while a path another decision wrote (and
    this one does not) still holds what that decision wrote there: either way the
    record would then say something the person did not choose.
    """
    finding_id = conflict.subject[len(ACK_PREFIX) :]
    chosen = conflict.candidates[choose]
    _refuse_unshown_values(record, conflict, chosen.writes)
    _refuse_writes_left_standing(record, conflict, chosen)
    _refuse_unwritable(record, conflict, chosen)
    stored = record.revision(chosen.revision)
    decision = stored.value if stored is not None else chosen.value
    with record.batch():
        for path, written in chosen.writes:
            record.set(path, written, author=author)
        return record.acknowledge_finding(finding_id, decision, author=author)


def _refuse_unwritable(record: Record, conflict: Conflict, chosen: Candidate) -> None:
    """Refuse a decision naming a write this replica refuses, before writing any: its
    writes come from the peer that decided (a newer application's schema, a broken
    client), and Yjs cannot take back the writes made before the one that fails."""
    for path, value in chosen.writes:
        try:
            record.check_set(path, value)
        except CaresyncError as exc:
            raise InvalidResolutionError(
                f"conflict {conflict.id}: decision {chosen.value!r} by {chosen.author} "
                f"writes {path!r}, which cannot be written here ({exc}); nothing was "
                "written: choose another decision, or write the fields themselves"
            ) from exc


def _refuse_unshown_values(
    record: Record, conflict: Conflict, writes: Sequence[tuple[str, JSONValue]]
) -> None:
    """Refuse to settle decisions over a concurrent value none of them shows: a path
    the chosen one writes whose heads disagree, one of them holding a value no
    decision wrote there (a third laptop's dose). That path's own field conflict is
    listed, to be settled first."""
    for path, _value in writes:
        state = record.get(path)
        if not state.in_conflict:
            continue
        shown = {canonical_json(v) for c in conflict.candidates for p, v in c.writes if p == path}
        unshown = [h for h in state.heads if canonical_json(h.value) not in shown]
        if unshown:
            values = ", ".join(repr(head.value) for head in unshown)
            field = describe_path(record, path, record.schema)
            raise UnknownConflictError(
                f"conflict {conflict.id}: {field} also holds {values}, which none of these "
                f"decisions shows (it was written concurrently); that field's conflict "
                f"{state.conflict_id} is listed: resolve that conflict first, then choose "
                "a decision"
            )


def _refuse_writes_left_standing(record: Record, conflict: Conflict, chosen: Candidate) -> None:
    """Refuse a decision that does not write a path another decision wrote while that
    path still holds what the other wrote: the record would say the other decision
    (a "stop" standing under a chosen "continue" that wrote nothing, as caresync
    recorded that outcome before it wrote the status it keeps)."""
    written = {path for path, _v in chosen.writes}
    for other in conflict.candidates:
        if other.revision == chosen.revision:
            continue
        for path, value in other.writes:
            if path in written or path.startswith(ACK_PREFIX):
                continue
            wanted = canonical_json(value)
            if any(canonical_json(h.value) == wanted for h in record.get(path).heads):
                field = describe_path(record, path, record.schema)
                raise InvalidResolutionError(
                    f"conflict {conflict.id}: decision {chosen.value!r} does not say what "
                    f"{field} should be, and it holds {value!r} as decision {other.value!r} "
                    f"by {other.author} wrote it; write {field} as it should be "
                    f"(`record set` {path}), then choose again"
                )


def _name(rule: Rule) -> object:
    """How an error names a rule (only then: repr() of a function is not free)."""
    name = getattr(rule, "__name__", _UNSET)
    return repr(rule) if name is _UNSET else name


DEFAULT_RULEBOOK = Rulebook()
"""The built-in rules; what replicas use unless given another rulebook."""
