"""Rules that look across records: the same person registered twice.

A record-level rule sees one record; these see a summary of many, which the
store keeps in an index. A finding names candidate records to *link*; records
are never merged automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from caresync.conflicts.model import Severity
from caresync.conflicts.substances import normalise
from caresync.exceptions import FieldConflictError, InvalidInputError
from caresync.records import JSONValue, Record
from caresync.records.ids import finding_id_for

__all__ = [
    "SUMMARY_FIELDS",
    "CrossRecordFinding",
    "CrossRecordRule",
    "RecordSummary",
    "possible_duplicate_person",
    "summarize",
]

SUMMARY_FIELDS = ("name", "birthDate", "sex", "identifiers")
"""Fields kept in the cross-record index by default."""


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What cross-record rules see of one record: a few identifying fields."""

    record_id: str
    fields: Mapping[str, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CrossRecordFinding:
    """A finding about several records, such as a candidate duplicate registration."""

    rule: str
    severity: Severity
    message: str
    record_ids: tuple[str, ...]
    key: str = ""

    def __post_init__(self) -> None:
        if len(self.record_ids) < 2:
            raise InvalidInputError("a cross-record finding names at least two records")

    @property
    def id(self) -> str:
        """The same on every replica."""
        return finding_id_for("*", self.rule, self.key, self.record_ids)


CrossRecordRule = Callable[[Sequence[RecordSummary]], Iterable[CrossRecordFinding]]
"""A rule over the index of record summaries."""


def summarize(record: Record, fields: Sequence[str] = SUMMARY_FIELDS) -> RecordSummary:
    """A record's summary; a field in conflict is left out (its conflict is shown anyway)."""
    values: dict[str, JSONValue] = {}
    for name in fields:
        try:
            value = record.value(name)
        except FieldConflictError:
            continue
        if value is not None:
            values[name] = value
    return RecordSummary(record.record_id, values)


def possible_duplicate_person(summaries: Sequence[RecordSummary]) -> Iterator[CrossRecordFinding]:
    """Records with the same normalised name and date of birth: a candidate match to link."""
    groups: dict[tuple[str, str], list[str]] = {}
    for summary in summaries:
        name = normalise(summary.fields.get("name"))
        birth = summary.fields.get("birthDate")
        if name and isinstance(birth, str) and birth:
            groups.setdefault((name, birth), []).append(summary.record_id)
    for (name, birth), record_ids in sorted(groups.items()):
        if len(record_ids) > 1:
            yield CrossRecordFinding(
                rule="possible-duplicate-person",
                severity=Severity.FLAG,
                message=(
                    f"{len(record_ids)} records for {name!r} born {birth}: the same person "
                    "registered twice? Link them if so; they are never merged automatically"
                ),
                record_ids=tuple(sorted(record_ids)),
                key=f"{name}|{birth}",
            )
