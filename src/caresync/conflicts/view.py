"""A read-only view of a merged record, the only thing safety rules see."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from caresync.exceptions import InvalidInputError
from caresync.records import Entry, FieldState, JSONValue, Record, Revision

__all__ = ["RecordView"]


class RecordView:
    """Read-only access to one record. Rules get this, never the record itself.

    The built-in rules ask for the same fields and collections many times over
    (a medication's status three times), so a view keeps the field states and
    entries it built for as long as the record's version stays the same.

    ``linked`` are the records linked to this one as the same person (registered
    twice): a rule reads them through :attr:`linked`, a view of each, and finds
    on this record what they mean for it (an allergy recorded on the other
    chart against a prescription on this one). The record itself and a record
    given twice are ignored; two different copies of one linked record are
    refused (which to read would depend on their order).
    """

    __slots__ = ("_entries", "_linked", "_record", "_states", "_version")

    def __init__(self, record: Record, linked: Sequence[Record] = ()) -> None:
        self._record = record
        self._version = record.version
        self._entries: dict[str, list[Entry]] = {}
        self._states: dict[str, FieldState] = {}
        self._linked = tuple(RecordView(r) for r in _linked_records(record, linked))

    @property
    def record_id(self) -> str:
        return self._record.record_id

    @property
    def linked(self) -> tuple[RecordView, ...]:
        """Views of the records linked to this one as the same person, sorted by record id.

        Each is a plain view of its record (its own ``linked`` is empty): a rule
        reads them and reports its findings on this record, naming only this
        record's paths in what a decision writes.
        """
        return self._linked

    def linked_revision(self, revision_id: str) -> tuple[RecordView, Revision] | None:
        """A revision of one of the linked records, and the view of that record, or None."""
        for view in self._linked:
            rev = view.revision(revision_id)
            if rev is not None:
                return view, rev
        return None

    def get(self, path: str) -> FieldState:
        """A field's heads and conflict state."""
        if self._record.version != self._version:
            self._start_afresh()
        state = self._states.get(path)
        if state is None:
            state = self._states[path] = self._record.get(path)
        return state

    def value(self, path: str, default: JSONValue = None) -> JSONValue:
        """A field's value (raises FieldConflictError when in conflict)."""
        return self._record.value(path, default)

    def history(self, path: str) -> list[Revision]:
        """Every revision of a path, oldest first."""
        return self._record.history(path)

    def revision(self, revision_id: str) -> Revision | None:
        return self._record.revision(revision_id)

    def entry_ids(self, collection: str) -> list[str]:
        """The ids of a collection's entries, sorted (no entry is built for this)."""
        return self._record.entry_ids(collection)

    def collections(self) -> tuple[str, ...]:
        """The collections of the record's schema (an application's own too), sorted."""
        return _sorted_collections(self._record.schema.collections)

    def entries(self, collection: str) -> list[Entry]:
        """Every entry of a collection, sorted by id; the caller's own copies."""
        # Each caller gets its own field dicts, so one rule cannot change what
        # the next one sees.
        return [Entry(e.collection, e.id, dict(e.fields)) for e in self._cached_entries(collection)]

    def shared_entries(self, collection: str) -> list[Entry]:
        """The same entries as :meth:`entries`, shared by every caller: never change them.

        The built-in rules read entries and change nothing, so they skip the copies.
        """
        return self._cached_entries(collection)

    def paths(self) -> list[str]:
        return self._record.paths()

    def count_paths(self) -> list[str]:
        """The record's paths that hold counts (see :meth:`Record.count_paths`), sorted."""
        return self._record.count_paths()

    def saw(self, later: Revision, earlier: Revision) -> bool:
        """True if the writer of ``later`` had seen ``earlier`` (same path or same entry)."""
        return self._record.saw(later, earlier)

    def concurrent(self, a: Revision, b: Revision) -> bool:
        """Neither writer had seen the other's revision."""
        return self._record.concurrent(a, b)

    def _start_afresh(self) -> None:
        """The record changed under the view: forget what was built from it."""
        self._entries.clear()
        self._states.clear()
        self._version = self._record.version

    def _cached_entries(self, collection: str) -> list[Entry]:
        if self._record.version != self._version:
            self._start_afresh()
        entries = self._entries.get(collection)
        if entries is None:
            entries = self._entries[collection] = self._record.entries(collection)
        return entries


@functools.lru_cache(maxsize=64)
def _sorted_collections(collections: frozenset[str]) -> tuple[str, ...]:
    """A schema's collections in order; kept, since rules ask after every merge."""
    return tuple(sorted(collections))


def _linked_records(record: Record, linked: Sequence[Record]) -> tuple[Record, ...]:
    """The records of ``linked`` other than ``record``, each once, sorted by record id.

    The same record given twice counts once, and ``record`` itself (or another
    copy of it) is left out. Two different copies of one other record are
    refused with :class:`InvalidInputError`: which of them the rules read
    would depend on the order they were given in.
    """
    if isinstance(linked, (str, bytes, Record)) or not isinstance(linked, Iterable):
        raise InvalidInputError(f"linked must be a sequence of records, got {linked!r}")
    by_id: dict[str, Record] = {}
    for other in linked:
        if not isinstance(other, Record):
            raise InvalidInputError(f"linked must hold records, got {other!r}")
        if other.record_id == record.record_id:
            continue  # a record is never linked to itself
        seen = by_id.setdefault(other.record_id, other)
        if seen is not other:
            raise InvalidInputError(
                f"record {other.record_id} is given twice in linked, as two different copies: "
                "give one"
            )
    return tuple(by_id[rid] for rid in sorted(by_id))
