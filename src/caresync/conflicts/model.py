"""Conflicts and findings: what a person must look at, as plain frozen data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from caresync.exceptions import InvalidInputError
from caresync.records import JSONValue, Revision, Timestamp

__all__ = ["Candidate", "Conflict", "ConflictKind", "Finding", "Outcome", "Severity"]


class Severity(StrEnum):
    """How urgently a person must act."""

    BLOCK = "block"
    """A person must choose before the value is trusted."""
    FLAG = "flag"
    """A person must acknowledge it."""
    INFO = "info"
    """Shown, nothing to do."""


class ConflictKind(StrEnum):
    """Where a conflict comes from."""

    FIELD = "field"
    """A field with several concurrent, different values."""
    RULE = "rule"
    """A finding of a clinical safety rule over the merged record."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One complete way out of a finding, in words, and the writes that make it so.

    ``label`` is what a clinician chooses ("stopped", "continue at 7.5 mg");
    ``writes`` the value of every path the finding involves under that outcome
    (a resolution writes each of them, over all their current heads, so the
    record then says what was chosen); ``revision`` is the revision the outcome
    stands for, whose author, replica and time the candidate shows.
    """

    label: str
    writes: tuple[tuple[str, JSONValue], ...]
    revision: str

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label.strip():
            raise InvalidInputError("an outcome needs a label a person can read")
        if not isinstance(self.revision, str) or not self.revision:
            raise InvalidInputError("an outcome names the revision it stands for")
        paths = [path for path, _value in self.writes]
        if len(set(paths)) != len(paths):
            raise InvalidInputError(f"outcome {self.label!r} writes one path twice")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One side of a conflict: a value and who wrote it, where and when.

    For a rule finding with outcomes, each candidate is an outcome: ``value`` is
    its label and ``writes`` what choosing it writes (path, value).
    """

    path: str
    value: JSONValue
    author: str
    replica: str
    at: Timestamp
    revision: str
    writes: tuple[tuple[str, JSONValue], ...] = ()

    @classmethod
    def from_revision(cls, rev: Revision) -> Candidate:
        return cls(rev.path, rev.value, rev.author, rev.replica, rev.at, rev.id)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: value, author, replica, at (ISO 8601), path and revision (and
        ``writes``, a path → value object, for an outcome)."""
        described: dict[str, Any] = {
            "value": self.value,
            "author": self.author,
            "replica": self.replica,
            "at": self.at.isoformat(),
            "path": self.path,
            "revision": self.revision,
        }
        if self.writes:
            described["writes"] = dict(self.writes)
        return described


@dataclass(frozen=True, slots=True)
class Finding:
    """What a safety rule returns: one problem it found in a merged record.

    ``revisions`` are the revisions involved; with ``rule`` and ``key`` they make
    the finding's id, so every replica names it alike, and a new revision
    involved makes a new finding. ``escalates`` names a field whose plain
    conflict this finding describes better (it then replaces that conflict's
    severity and message instead of being listed twice).
    """

    rule: str
    severity: Severity
    message: str
    revisions: tuple[str, ...]
    key: str = ""
    escalates: str | None = None
    outcomes: tuple[Outcome, ...] = ()
    """The complete ways out a person chooses from (none: choosing acknowledges)."""
    value_path: str | None = None
    """A field a person settles by entering its value (a count below zero: the counted
    stock); such a finding is resolved with ``value=``, never by choosing a candidate."""

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not self.rule:
            raise InvalidInputError("a finding needs the name of its rule")
        if not isinstance(self.severity, Severity):
            raise InvalidInputError(f"severity must be a Severity, got {self.severity!r}")
        if not self.revisions or not all(isinstance(r, str) for r in self.revisions):
            raise InvalidInputError("a finding must name the revisions it is about")
        if not all(isinstance(o, Outcome) for o in self.outcomes):
            raise InvalidInputError("a finding's outcomes must be Outcome objects")
        if len({o.label for o in self.outcomes}) != len(self.outcomes):
            raise InvalidInputError("a finding's outcomes need different labels")


@dataclass(frozen=True, slots=True)
class Conflict:
    """An open conflict: the same id on every replica that has the same updates."""

    id: str
    record_id: str
    kind: ConflictKind
    severity: Severity
    subject: str
    """The field path (kind ``field``) or the rule name (kind ``rule``)."""
    message: str
    candidates: tuple[Candidate, ...]
    rule: str | None = None
    paths: tuple[str, ...] = field(default=())
    """Every field the conflict involves: shown as contested while it is a block."""
    outcomes: tuple[Outcome, ...] = ()
    """A rule finding's complete ways out (its candidates, in the same order)."""
    value_path: str | None = None
    """The field a person settles by entering its value (see :class:`Finding`)."""

    @property
    def path(self) -> str | None:
        """The field in conflict, for a field conflict."""
        return self.subject if self.kind is ConflictKind.FIELD else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description, as the CLI prints it."""
        return {
            "id": self.id,
            "record_id": self.record_id,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "path": self.subject,
            "rule": self.rule,
            "message": self.message,
            "candidates": [c.as_dict() for c in self.candidates],
            "paths": list(self.paths),
        }
