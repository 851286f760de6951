"""A chart: the clinical content of one record, as FHIR export and import exchange it.

Pure data. :func:`chart_of` reads it from a record (a field in conflict has
no one value: it is named in ``contested`` with its conflict id instead).
Import builds charts from FHIR resources and writes them into records. Two
records hold the same clinical content when their charts' :meth:`Chart.content` are equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from caresync.conflicts import RecordView
from caresync.hub.model import HUB_PATH
from caresync.records import (
    ADDENDA_FIELD,
    DEFAULT_COLLECTIONS,
    LINKS_FIELD,
    NOTES_COLLECTION,
    SIGNATURE_FIELD,
    JSONValue,
    Revision,
    canonical_json,
)

__all__ = ["Addendum", "Chart", "ChartEntry", "chart_of", "contested_paths"]


@dataclass(frozen=True, slots=True)
class Addendum:
    """An addendum of a note: its text, and who added it when (None when unknown)."""

    id: str
    text: str
    author: str | None = None
    at: str | None = None


@dataclass(frozen=True, slots=True)
class ChartEntry:
    """One entry of a collection: its settled field values and, for a note, its signature."""

    collection: str
    entry_id: str
    fields: Mapping[str, JSONValue] = field(default_factory=dict)
    contested: Mapping[str, str] = field(default_factory=dict)
    """Field name -> id of the open conflict that keeps it from having one value."""
    signed: bool = False
    signed_by: str | None = None
    addenda: tuple[Addendum, ...] = ()

    def content(self) -> dict[str, Any]:
        """The entry's clinical content, comparable across records."""
        return {
            "fields": {name: canonical_json(v) for name, v in sorted(self.fields.items())},
            "contested": sorted(self.contested),
            "signed": self.signed,
            "addenda": sorted(a.text for a in self.addenda),
        }


@dataclass(frozen=True, slots=True)
class Chart:
    """A record's clinical content: its own fields and its entries."""

    record_id: str
    fields: Mapping[str, JSONValue] = field(default_factory=dict)
    contested: Mapping[str, str] = field(default_factory=dict)
    entries: tuple[ChartEntry, ...] = ()

    def content(self) -> dict[str, Any]:
        """The chart's clinical content, comparable across records (ids of conflicts left out).

        Values compare by their canonical JSON, so ``1`` and ``1.0`` differ as
        they do in the record model.
        """
        return {
            "record_id": self.record_id,
            "fields": {name: canonical_json(v) for name, v in sorted(self.fields.items())},
            "contested": sorted(self.contested),
            "entries": {
                f"{e.collection}/{e.entry_id}": e.content()
                for e in sorted(self.entries, key=lambda e: (e.collection, e.entry_id))
            },
        }


def contested_paths(view: RecordView) -> dict[str, str]:
    """Every field with concurrent different values, with its conflict's id.

    Such a field has no one value: export leaves it out of its resource and
    lists every candidate on a DetectedIssue. A field that an open ``block``
    finding involves (a medication stopped while its dose changed elsewhere)
    still holds one value, which export writes; the finding's DetectedIssue
    names the resources and lists its candidates.
    """
    found: dict[str, str] = {}
    for path in view.paths():
        state = view.get(path)
        if state.in_conflict:
            found[path] = state.conflict_id or ""
    return found


def chart_of(view: RecordView) -> Chart:
    """The chart of a record: what FHIR export carries of it.

    Fields of the default collections become entries; link decisions
    (``links/...``) are left out (they are about a pair of records: see
    docs/fhir.md), and so is the health-hub mark (``hub/summary``, a setting of
    caresync's outbox, not clinical content); every other field is a field of
    the chart.
    """
    contested = contested_paths(view)
    fields: dict[str, JSONValue] = {}
    top_contested: dict[str, str] = {}
    collections = sorted(DEFAULT_COLLECTIONS)
    for path in view.paths():
        head = path.partition("/")[0]
        if head in DEFAULT_COLLECTIONS or head == LINKS_FIELD or path == HUB_PATH:
            continue
        if path in contested:
            top_contested[path] = contested[path]
        else:
            fields[path] = view.get(path).value
    entries: list[ChartEntry] = []
    for collection in collections:
        for entry in view.entries(collection):
            prefix = f"{collection}/{entry.id}/"
            values: dict[str, JSONValue] = {}
            held: dict[str, str] = {}
            addenda: list[tuple[Revision, Addendum]] = []
            for name, state in sorted(entry.fields.items()):
                if not state.exists:
                    continue
                if collection == NOTES_COLLECTION and name == SIGNATURE_FIELD:
                    continue
                if collection == NOTES_COLLECTION and name.startswith(ADDENDA_FIELD + "/"):
                    head_rev = state.heads[-1] if state.heads else None
                    text = head_rev.value if head_rev is not None else None
                    if head_rev is not None and isinstance(text, str) and not state.in_conflict:
                        addendum = Addendum(
                            name.partition("/")[2], text, head_rev.author, head_rev.at.isoformat()
                        )
                        addenda.append((head_rev, addendum))
                        continue
                if prefix + name in contested:
                    held[name] = contested[prefix + name]
                else:
                    values[name] = state.value
            signed_by: str | None = None
            if entry.signed:
                signature = entry.fields[SIGNATURE_FIELD]
                heads = signature.heads
                signed_by = heads[0].author if heads else None
            addenda.sort(key=lambda pair: (pair[0].at, pair[0].replica, pair[0].id))
            entries.append(
                ChartEntry(
                    collection,
                    entry.id,
                    values,
                    held,
                    entry.signed,
                    signed_by,
                    tuple(a for _rev, a in addenda),
                )
            )
    return Chart(view.record_id, fields, top_contested, tuple(entries))
