"""A read-only view of a merged record, the only thing safety rules see."""

from __future__ import annotations

from caresync.records import Entry, FieldState, JSONValue, Record, Revision

__all__ = ["RecordView"]


class RecordView:
    """Read-only access to one record. Rules get this, never the record itself.

    The built-in rules ask for the same fields and collections many times over
    (a medication's status three times), so a view keeps the field states and
    entries it built for as long as the record's version stays the same.
    """

    __slots__ = ("_entries", "_record", "_states", "_version")

    def __init__(self, record: Record) -> None:
        self._record = record
        self._version = record.version
        self._entries: dict[str, list[Entry]] = {}
        self._states: dict[str, FieldState] = {}

    @property
    def record_id(self) -> str:
        return self._record.record_id

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
