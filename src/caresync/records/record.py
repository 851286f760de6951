"""A patient record: one pycrdt document whose fields never lose a value.

Theory of operation
-------------------
A Yjs map keeps one value per key and silently drops the loser of two
concurrent writes. So a record never overwrites a key: every write of a field
is a new :class:`Revision` stored under its own id in the ``revisions`` map,
naming as ``parents`` the heads of that field the writer had seen. The heads of
a path are its revisions no other revision names as a parent:

* one head, or several with equal values: that is the field's value;
* several heads with different values: an open conflict, every candidate kept.

Revisions are only ever added, so the Yjs merge of two documents is the union
of their revisions, and every replica with the same updates computes the same
heads, values and conflicts. The history of a path is its revision graph.

Collections (allergies, medications, ...) hold entries with stable ids; each
entry field is a register at ``<collection>/<entry-id>/<field>``. Nothing is
deleted: a status field says ``stopped`` or ``entered-in-error``. A signed note
is immutable: its fields keep the values they had when signed, and changes are
addenda.

A *count* (any path under ``stock/``, and whatever the schema declares with
``Schema.with_counts``) is read differently: each revision records a change
(``{"delta": -1, "count": 9}``), and the count's value is the sum of the
changes of all its revisions, never a conflict. Two laptops that each take one
from 10 converge to 8: a PN-counter made of the register's revisions, so the
history still keeps each write with its author, replica and time.

The record does no I/O. It hands out update bytes (``update_since``, or
``on_update`` listeners) and takes them in (``apply_update``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from caresync.exceptions import (
    FieldConflictError,
    ImmutableFieldError,
    InvalidInputError,
    InvalidPathError,
    InvalidUpdateError,
    InvalidValueError,
    RecordMismatchError,
    UnknownCollectionError,
    UnknownEntryError,
)
from caresync.records import crdt
from caresync.records.clock import HybridLogicalClock, Timestamp
from caresync.records.crdt import Doc, Map, MapEvent, Subscription, TransactionEvent
from caresync.records.ids import conflict_id_for, new_entry_id, new_record_id, new_revision_id
from caresync.records.index import PathState, RevisionIndex
from caresync.records.maps import read_items, read_root_items, read_root_value
from caresync.records.revision import NO_SEEN, Revision, decode_revision, encode_revision
from caresync.records.schema import (
    COUNT_CHANGE,
    COUNT_TOTAL,
    DEFAULT_SCHEMA,
    MAX_COUNT,
    STATUS_FIELD,
    FieldSpec,
    Schema,
)
from caresync.records.values import JSONValue, check_value

__all__ = [
    "ACK_PREFIX",
    "ADDENDA_FIELD",
    "NOTES_COLLECTION",
    "SIGNATURE_FIELD",
    "CountState",
    "Entry",
    "FieldState",
    "Record",
    "UpdateListener",
]

NOTES_COLLECTION = "notes"
SIGNATURE_FIELD = "signature"
ADDENDA_FIELD = "addenda"
ACK_PREFIX = "_ack/"
_CREATED_FIELD = "_created"
_BOOKKEEPING_SUFFIX = "/" + _CREATED_FIELD
# Fields of a signed note that may still change: its status (entered-in-error),
# further signatures, and addenda.
_MUTABLE_AFTER_SIGNING = frozenset({STATUS_FIELD, SIGNATURE_FIELD})
_MAX_AUTHOR_LENGTH = 256
_MAX_RECORD_ID_LENGTH = 128  # the sync protocol's MAX_ID_LENGTH
_AT: Callable[[Revision], Timestamp] = operator.itemgetter(Revision._fields.index("at"))

UpdateListener = Callable[[bytes, bool], None]
"""Called with each transaction's update bytes and whether it was a local write."""


@dataclass(frozen=True, slots=True)
class FieldState:
    """What a field holds now: its heads, and whether they disagree."""

    record_id: str
    path: str
    heads: tuple[Revision, ...]

    @property
    def exists(self) -> bool:
        """False for a path that was never written."""
        return bool(self.heads)

    @property
    def in_conflict(self) -> bool:
        """Several heads with different values: a person must choose."""
        return len({h.value_key for h in self.heads}) > 1

    @property
    def conflict_id(self) -> str | None:
        """The conflict's id (the same on every replica), or None when there is none."""
        if not self.in_conflict:
            return None
        return conflict_id_for(self.record_id, self.path, (h.id for h in self.heads))

    @property
    def candidates(self) -> tuple[Revision, ...]:
        """The heads, oldest first: one per concurrent value."""
        return self.heads

    @property
    def value(self) -> JSONValue:
        """The current value (None if never written).

        Raises FieldConflictError when the heads disagree: read ``candidates``.
        """
        if not self.heads:
            return None
        if self.in_conflict:
            conflict_id = self.conflict_id or ""
            raise FieldConflictError(
                f"{self.path} has {len(self.heads)} concurrent values; "
                f"resolve conflict {conflict_id} first",
                path=self.path,
                conflict_id=conflict_id,
            )
        return self.heads[-1].value


@dataclass(frozen=True, slots=True)
class CountState(FieldState):
    """What a count holds now: the sum of the changes of all its revisions.

    Never in conflict: concurrent changes add up. ``heads`` are the latest
    writes (those no later write had seen), as for any field; ``total`` sums
    every revision; ``uncounted`` are the revisions left out of it because
    their value records no change a replica can read (a malformed write from a
    peer, or a non-integer written before the path was a count), oldest first.
    A bare integer written that way is an absolute count: it counts as the
    change from the count its writer had seen.
    """

    total: int
    uncounted: tuple[Revision, ...] = ()

    @property
    def in_conflict(self) -> bool:
        """Always False: a count adds concurrent changes up."""
        return False

    @property
    def conflict_id(self) -> str | None:
        """Always None: a count is never in conflict."""
        return None

    @property
    def value(self) -> JSONValue:
        """The count: the sum of every revision's change (None if never written)."""
        return self.total if self.heads else None


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a collection, with its fields by name."""

    collection: str
    id: str
    fields: dict[str, FieldState]

    @property
    def status(self) -> JSONValue:
        """The ``status`` field's value, None if unset (raises if in conflict)."""
        state = self.fields.get(STATUS_FIELD)
        return state.value if state is not None else None

    def value(self, name: str, default: JSONValue = None) -> JSONValue:
        """A field's value, or ``default`` if never written (raises if in conflict)."""
        state = self.fields.get(name)
        return state.value if state is not None and state.exists else default

    @property
    def signed(self) -> bool:
        """True for a signed note."""
        state = self.fields.get(SIGNATURE_FIELD)
        return state is not None and state.exists


# Building a frozen dataclass goes through its __init__ and object.__setattr__ per
# field: about six times the cost of a tuple. Reads and rules build a FieldState
# per field and an Entry per entry, so these set the slots directly (the values
# are the ones __init__ would set; nothing checks or converts them there).
_new_object = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    setter: Callable[[object, object], None] = vars(cls)[name].__set__
    return setter


_set_state_record_id = _slot_setter(FieldState, "record_id")
_set_state_path = _slot_setter(FieldState, "path")
_set_state_heads = _slot_setter(FieldState, "heads")
_set_count_total = _slot_setter(CountState, "total")
_set_count_uncounted = _slot_setter(CountState, "uncounted")
_set_entry_collection = _slot_setter(Entry, "collection")
_set_entry_id = _slot_setter(Entry, "id")
_set_entry_fields = _slot_setter(Entry, "fields")


def _field_state(record_id: str, path: str, heads: tuple[Revision, ...]) -> FieldState:
    """``FieldState(record_id, path, heads)``, built faster."""
    state: FieldState = _new_object(FieldState)
    _set_state_record_id(state, record_id)
    _set_state_path(state, path)
    _set_state_heads(state, heads)
    return state


def _count_state(
    record_id: str,
    path: str,
    heads: tuple[Revision, ...],
    total: int,
    uncounted: tuple[Revision, ...],
) -> CountState:
    """``CountState(record_id, path, heads, total, uncounted)``, built faster."""
    state: CountState = _new_object(CountState)
    _set_state_record_id(state, record_id)
    _set_state_path(state, path)
    _set_state_heads(state, heads)
    _set_count_total(state, total)
    _set_count_uncounted(state, uncounted)
    return state


def _entry(collection: str, entry_id: str, fields: dict[str, FieldState]) -> Entry:
    """``Entry(collection, entry_id, fields)``, built faster."""
    entry: Entry = _new_object(Entry)
    _set_entry_collection(entry, collection)
    _set_entry_id(entry, entry_id)
    _set_entry_fields(entry, fields)
    return entry


class Record:
    """One patient record. Pure: no I/O, no event loop.

    Make one with :meth:`create` (a new patient) or :meth:`from_update`
    (bytes received or loaded). ``replica`` names the replica writing; each
    write also names its ``author``, the person who made it.

    Slotted, and lean when loaded: a replica keeps many records loaded (its
    record pool), so what a record holds beside its document is only the
    revisions and the index of their heads; the caches that speed up writes
    and counts, and pycrdt's wrapper of the revisions map, are made when first
    needed (see ``docs/performance.md``, memory of a loaded record).
    """

    __slots__ = (
        # Made only if something sets an attribute of its own (a test wrapping a
        # method): otherwise one pointer, not a dict per record.
        "__dict__",
        "__weakref__",  # rulebooks keep results per record, weakly
        "_applying",
        "_broken",
        "_checked_paths",
        "_count_paths",
        "_count_prefixes",
        "_doc",
        "_doc_subscription",
        "_entry_counts",
        "_index",
        "_is_count_path",
        "_listeners",
        "_new_id",
        "_revisions_map",
        "_totals",
        "clock",
        "record_id",
        "replica",
        "schema",
    )

    def __init__(
        self,
        record_id: str,
        *,
        replica: str,
        schema: Schema = DEFAULT_SCHEMA,
        clock: HybridLogicalClock | None = None,
        new_id: Callable[[], str] = new_revision_id,
        doc: Doc[Any] | None = None,
    ) -> None:
        if not isinstance(record_id, str) or not record_id:
            raise InvalidInputError("record_id must be a non-empty string")
        _check_name(replica, "replica")
        self.record_id = record_id
        self.replica = replica
        self.schema = schema
        self.clock = clock if clock is not None else HybridLogicalClock()
        self._new_id = new_id
        self._doc: Doc[Any] = doc if doc is not None else Doc()
        # pycrdt's wrapper of the revisions map (about 1 KB of Python objects),
        # kept once a write or an applied update needed it; see _revisions.
        self._revisions_map: Map[Any] | None = None
        self._index = RevisionIndex()
        self._applying = False
        # The dicts below are None until first used: most loaded records are
        # only read, and each empty dict would cost 64 bytes a record.
        # Keyed by a token per subscription: one listener may be subscribed twice.
        self._listeners: dict[object, UpdateListener] | None = None
        # path -> (its entry, its field spec, whether it is a count), once a write checked it
        self._checked_paths: (
            dict[str, tuple[tuple[str, str] | None, FieldSpec | None, bool]] | None
        ) = None
        # Counts: the schema's literal prefixes (a cheap first test), which paths
        # matched, and each count's total as of its path state and size.
        self._count_prefixes = schema.count_prefixes
        self._entry_counts = schema.counts_in_collections
        self._is_count_path: dict[str, bool] | None = None
        self._totals: dict[str, _Total] | None = None
        # count_paths() as of an index and its number of paths (paths are only added)
        self._count_paths: tuple[RevisionIndex, int, list[str]] | None = None
        self._doc_subscription: Subscription | None = None
        # Why the record refuses further use, once pycrdt failed in a way that may
        # have left its document holding part of an update (see _note_failure).
        self._broken: str | None = None
        if doc is not None:  # a new Doc holds nothing to index
            self._rebuild_index()

    @property
    def _meta(self) -> Map[Any]:
        """The ``meta`` map (the record's id), wrapped afresh: it is read once a load."""
        meta: Map[Any] = self._doc.get("meta", type=Map)
        return meta

    @property
    def _revisions(self) -> Map[Any]:
        """The ``revisions`` map, wrapped once and kept: writes and merges go through it."""
        revisions = self._revisions_map
        if revisions is None:
            revisions = self._revisions_map = self._doc.get("revisions", type=Map)
        return revisions

    # ----------------------------------------------------------------- creating

    @classmethod
    def create(
        cls,
        *,
        replica: str,
        record_id: str | None = None,
        schema: Schema = DEFAULT_SCHEMA,
        clock: HybridLogicalClock | None = None,
        new_id: Callable[[], str] = new_revision_id,
    ) -> Record:
        """A new, empty record with a fresh id (or the one given).

        A given id is printable text of 1 to 128 characters: what the sync
        protocol carries (a longer one could never leave this replica).
        """
        if record_id is not None and (
            not isinstance(record_id, str)
            or not 0 < len(record_id) <= _MAX_RECORD_ID_LENGTH
            or not record_id.isprintable()
        ):
            raise InvalidInputError(
                f"a record id is printable text of 1 to {_MAX_RECORD_ID_LENGTH} characters, "
                f"not {record_id!r:.80}"
            )
        record = cls(
            record_id or new_record_id(), replica=replica, schema=schema, clock=clock, new_id=new_id
        )
        record._meta["id"] = record.record_id
        return record

    @classmethod
    def from_update(
        cls,
        record_id: str,
        update: bytes,
        *,
        replica: str,
        schema: Schema = DEFAULT_SCHEMA,
        clock: HybridLogicalClock | None = None,
        new_id: Callable[[], str] = new_revision_id,
    ) -> Record:
        """A record rebuilt from its update bytes (a stored state or a received copy)."""
        return cls.from_updates(
            record_id, (update,), replica=replica, schema=schema, clock=clock, new_id=new_id
        )

    @classmethod
    def from_updates(
        cls,
        record_id: str,
        updates: Iterable[bytes],
        *,
        replica: str,
        schema: Schema = DEFAULT_SCHEMA,
        clock: HybridLogicalClock | None = None,
        new_id: Callable[[], str] = new_revision_id,
    ) -> Record:
        """A record rebuilt from several updates at once: a stored state and what arrived.

        The same record as loading the first and applying the others, for less:
        every revision is indexed in one pass, none through a change event, and
        no merged update is made first.
        """
        updates = list(updates)
        for update in updates:
            _check_update(update)
        record = cls(record_id, replica=replica, schema=schema, clock=clock, new_id=new_id)
        # One transaction for applying, indexing and reading the id: each costs a
        # commit otherwise. Nothing listens to a record this new. The commit runs
        # pycrdt code over what was applied, so it is inside the boundary too.
        with crdt.pycrdt_errors(record_id=record_id), record._doc.transaction():
            record._load(updates)
            record.check_id()
        return record

    def check_id(self) -> None:
        """Raise RecordMismatchError if the document names a record other than this one.

        A record's id is written once, when it is created; an update that
        changes it (a broken or hostile peer) would make the record another's.
        """
        stored_id = read_root_value(self._doc, "meta", "id")
        if stored_id is not None and stored_id != self.record_id:
            raise RecordMismatchError(
                f"the update belongs to record {stored_id!r}, not {self.record_id!r}"
            )

    # ------------------------------------------------------------------ writing

    def set(self, path: str, value: JSONValue, *, author: str) -> Revision:
        """Write ``value`` at ``path``: a new revision whose parents are the current heads.

        Writing while the field is in conflict resolves it with the new value.

        At a count path, ``value`` is the count (an int): the revision records
        the change from the count read now (set 9 when it reads 10: -1), so a
        concurrent change elsewhere still adds up. See :meth:`adjust`.
        """
        _check_name(author, "author")
        entry_key, stored = self._checked_set(path, value)
        return self._write(path, stored, author, entry_key)

    def check_set(self, path: str, value: JSONValue) -> None:
        """Raise what :meth:`set` would raise for writing ``value`` at ``path``; write nothing.

        For a caller that writes several fields as one decision: Yjs cannot take a
        write back, so each is checked before the first is made.
        """
        self._checked_set(path, value)

    def _checked_set(self, path: str, value: JSONValue) -> tuple[tuple[str, str] | None, JSONValue]:
        """The checks of :meth:`set`: the write's entry key and the value to store."""
        checked = self._checked_paths
        known = checked.get(path) if checked is not None else None
        if known is None:
            known = self._check_new_path(path, value)
        elif known[2]:
            pass  # a count: its value is checked as one below
        else:
            check_value(value, what=path)
            if known[1] is not None:
                known[1].check(path, value)
        entry_key = known[0]
        if entry_key is not None:
            self._require_entry(entry_key)
            self._refuse_if_signed(entry_key, path)
        if known[2]:
            total = self._count_total(path)
            if type(value) is not int:
                raise InvalidValueError(_not_a_count(path, value, "count"))
            return entry_key, self._count_value(path, value - total, value, known[1])
        return entry_key, value

    def adjust(self, path: str, change: int, *, author: str) -> Revision:
        """Change a count by ``change`` (dispensing one box: -1); returns the revision.

        The revision records ``change`` and the count its writer meant (the
        count read now plus ``change``); the count's value is the sum of every
        revision's change, so changes made concurrently on other replicas add
        up. ``path`` must be a count (``stock/...``, or declared with
        ``Schema.with_counts``); a count never written starts at 0.
        """
        _check_name(author, "author")
        checked = self._checked_paths
        known = checked.get(path) if checked is not None else None
        if known is None:
            known = self._check_new_path(path, None)
        if not known[2]:
            raise InvalidPathError(
                f"{path} is not a count: only paths under stock/ and those a schema "
                "declares with Schema.with_counts(...) can be adjusted; write it with set()"
            )
        if type(change) is not int:
            raise InvalidValueError(_not_a_count(path, change, "change"))
        entry_key = known[0]
        if entry_key is not None:
            self._require_entry(entry_key)
            self._refuse_if_signed(entry_key, path)
        total = self._count_total(path) + change
        stored = self._count_value(path, change, total, known[1])
        return self._write(path, stored, author, entry_key)

    def add_entry(
        self,
        collection: str,
        fields: dict[str, JSONValue] | None = None,
        *,
        author: str,
        entry_id: str | None = None,
    ) -> str:
        """Add an entry to a collection, with its first field values; returns its id."""
        _check_name(author, "author")
        if collection not in self.schema.collections:
            raise UnknownCollectionError(
                f"{collection!r} is not a collection of this schema "
                f"(known: {', '.join(sorted(self.schema.collections))})"
            )
        entry_id = entry_id or new_entry_id()
        _check_name(entry_id, "entry_id")
        if "/" in entry_id:
            raise InvalidInputError(f"entry id {entry_id!r} must not contain '/'")
        key = (collection, entry_id)
        if key in self._index.entries:
            raise InvalidInputError(f"{collection}/{entry_id} exists already")
        fields = dict(fields or {})
        paths = {name: f"{collection}/{entry_id}/{name}" for name in fields}
        stored: dict[str, JSONValue] = {}
        for name, value in fields.items():  # validate everything before writing anything
            if not isinstance(name, str):
                raise InvalidInputError(f"field names must be strings, got {name!r}")
            path = paths[name]
            if self._entry_counts and self.schema.is_count(path):
                self.schema.check_write_path(path)
                if type(value) is not int:
                    raise InvalidValueError(_not_a_count(path, value, "count"))
                # A new entry's count starts at 0: the first value is its change.
                stored[name] = self._count_value(path, value, value, self.schema.spec_for(path))
            else:
                self.schema.check_write(path, value)
                stored[name] = value
        with self.batch():
            self._write(f"{collection}/{entry_id}/{_CREATED_FIELD}", True, author, key)
            for name, value in stored.items():
                self._write(paths[name], value, author, key)
        return entry_id

    def set_status(self, collection: str, entry_id: str, status: str, *, author: str) -> Revision:
        """Change an entry's status (``stopped``, ``entered-in-error``, ...) instead of deleting."""
        return self.set(f"{collection}/{entry_id}/{STATUS_FIELD}", status, author=author)

    def sign_note(self, entry_id: str, *, author: str) -> Revision:
        """Sign a note: its fields are frozen at their current values from now on."""
        _check_name(author, "author")
        key = (NOTES_COLLECTION, entry_id)
        self._require_entry(key)
        for path in self._entry_register_paths(key):
            # The same view readers get: a field frozen by an earlier signature
            # shows its signed value, whatever was written concurrently.
            state = self.get(path)
            if state.in_conflict:
                raise FieldConflictError(
                    f"cannot sign: {path} has concurrent values; resolve that first",
                    path=path,
                    conflict_id=state.conflict_id or "",
                )
        signed = {
            path: sorted(h.id for h in self.get(path).heads)
            for path in sorted(self._entry_register_paths(key))
            if not _is_bookkeeping(path) and path.rsplit("/", 1)[1] not in _MUTABLE_AFTER_SIGNING
        }
        path = f"{NOTES_COLLECTION}/{entry_id}/{SIGNATURE_FIELD}"
        return self._write(path, {"by": author, "signed": signed}, author, key)

    def add_addendum(self, entry_id: str, text: str, *, author: str) -> str:
        """Add an addendum to a note (signed or not); returns the addendum's id."""
        _check_name(author, "author")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("an addendum needs non-empty text")
        check_value(text, what="addendum")
        key = (NOTES_COLLECTION, entry_id)
        self._require_entry(key)
        addendum_id = new_entry_id()
        path = f"{NOTES_COLLECTION}/{entry_id}/{ADDENDA_FIELD}/{addendum_id}"
        self._write(path, text, author, key)
        return addendum_id

    def acknowledge_finding(self, finding_id: str, decision: JSONValue, *, author: str) -> Revision:
        """Record a person's decision on a safety-rule finding (``_ack/<finding-id>``).

        Used by :mod:`caresync.conflicts`; an acknowledgement is a revision like
        any other, so it replicates, works offline and keeps its author and time.
        """
        _check_name(author, "author")
        check_value(decision, what="decision")
        return self._write(ACK_PREFIX + finding_id, decision, author, None)

    def acknowledgement(self, finding_id: str) -> FieldState:
        """The decisions recorded on a finding (no heads if none)."""
        return self.get(ACK_PREFIX + finding_id)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes into one Yjs transaction, so they travel as one update."""
        with self._doc.transaction():
            yield

    # ------------------------------------------------------------------ reading

    def get(self, path: str) -> FieldState:
        """The field's state: its heads, value, and conflict if any. Never raises for a path."""
        return self._field_state(path, self.schema.entry_key(path))

    def value(self, path: str, default: JSONValue = None) -> JSONValue:
        """The field's value, ``default`` if never written; FieldConflictError if in conflict."""
        state = self.get(path)
        return state.value if state.exists else default

    def history(self, path: str) -> list[Revision]:
        """Every revision of the path, oldest first (by hybrid time, replica, id)."""
        state = self._index.paths.get(path)
        if state is None:
            return []
        return sorted(state.revisions.values(), key=lambda r: (r.at, r.replica, r.id))

    def revision(self, revision_id: str) -> Revision | None:
        """One revision by id, or None."""
        return self._index.by_id.get(revision_id)

    def revisions(self) -> list[Revision]:
        """Every revision of the record, oldest first."""
        return sorted(self._index.by_id.values(), key=lambda r: (r.at, r.replica, r.id))

    def paths(self) -> list[str]:
        """Every path written by the application (entry bookkeeping excluded), sorted."""
        return sorted(
            p for p in self._index.paths if not p.startswith("_") and not _is_bookkeeping(p)
        )

    def count_paths(self) -> list[str]:
        """Every written path that holds a count, sorted (see :class:`CountState`)."""
        prefixes = self._count_prefixes
        if not prefixes:
            return []
        index = self._index
        known = self._count_paths
        if known is None or known[0] is not index or known[1] != len(index.paths):
            found = sorted(p for p in index.paths if p.startswith(prefixes) and self._is_count(p))
            known = self._count_paths = (index, len(index.paths), found)
        return list(known[2])

    def fields(self) -> dict[str, FieldState]:
        """Every application path and its state."""
        return {path: self.get(path) for path in self.paths()}

    def conflicted_paths(self) -> list[str]:
        """Paths whose heads disagree, sorted. Costs in proportion to those paths."""
        paths = set(self._index.conflicted)
        # A signed note's frozen fields show their signed value, not later heads.
        return sorted(p for p in paths if self.get(p).in_conflict)

    def entry_ids(self, collection: str) -> list[str]:
        """Ids of the entries of a collection, sorted."""
        return list(self._index.entry_ids(collection))

    def entry(self, collection: str, entry_id: str) -> Entry:
        """One entry with all its fields."""
        key = (collection, entry_id)
        self._require_entry(key)
        return self._entry(key)

    def entries(self, collection: str) -> list[Entry]:
        """Every entry of a collection, sorted by id."""
        return [self._entry((collection, eid)) for eid in self._index.entry_ids(collection)]

    def saw(self, later: Revision, earlier: Revision) -> bool:
        """True if the writer of ``later`` had seen ``earlier`` when writing it.

        Known for revisions of the same path, and of two fields of one entry;
        for anything else this returns False (treat them as concurrent).
        """
        if later.path == earlier.path:
            state = self._index.paths[later.path]
            return any(state.is_ancestor(earlier.id, p) for p in later.parents)
        earlier_state = self._index.paths.get(earlier.path)
        if earlier_state is None:
            return False
        return any(
            earlier_state.is_ancestor(earlier.id, h) for h in later.seen.get(earlier.path, ())
        )

    def concurrent(self, a: Revision, b: Revision) -> bool:
        """Neither writer had seen the other's revision."""
        return a.id != b.id and not self.saw(a, b) and not self.saw(b, a)

    @property
    def version(self) -> int:
        """Grows with every revision taken in; use it to cache derived results."""
        return self._index.version

    @property
    def invalid_revision_ids(self) -> frozenset[str]:
        """Ids of stored revisions that were malformed and are ignored (everywhere alike)."""
        return frozenset(self._index.invalid)

    # ------------------------------------------------------------------ syncing

    def state_vector(self) -> bytes:
        """The Yjs state vector: what this copy has seen, to ask a peer for the rest."""
        self._refuse_if_broken()
        return crdt.encode_state_vector(self._doc, record_id=self.record_id)

    def update_since(self, state_vector: bytes | None = None) -> bytes:
        """Everything this copy has that a peer with ``state_vector`` lacks (all if None)."""
        self._refuse_if_broken()
        try:
            return crdt.encode_state_as_update(self._doc, state_vector, record_id=self.record_id)
        except InvalidUpdateError as exc:
            self._note_failure(exc)
            raise

    def apply_update(self, update: bytes) -> None:
        """Merge update bytes from a peer or from storage. Idempotent and commutative."""
        _check_update(update)
        if not self._index.by_id:
            # A record that holds nothing yet (being loaded) indexes the map once
            # afterwards, which is much cheaper than a change event per revision.
            self._load((update,))
            return
        # Observing the map costs more than a local write itself, so the index
        # listens only while foreign revisions come in; local writes index directly.
        self._applying = True
        subscription = self._revisions.observe(_Observer(self._on_revisions_changed))
        try:
            self._apply(update)
        finally:
            self._revisions.unobserve(subscription)
            self._applying = False
        self._index.settle()

    def _load(self, updates: Iterable[bytes | bytearray | memoryview]) -> None:
        """Apply updates, then index the whole map once (for a record holding nothing)."""
        self._applying = True
        try:
            # Applying and reading share one commit, which runs pycrdt code over
            # the foreign bytes too: inside the boundary.
            with crdt.pycrdt_errors(record_id=self.record_id), self._doc.transaction():
                for update in updates:
                    self._apply(update)
                self._rebuild_index()
        except InvalidUpdateError as exc:
            self._note_failure(exc)
            raise
        finally:
            self._applying = False
        self._index.settle()

    def _apply(self, update: bytes | bytearray | memoryview) -> None:
        self._refuse_if_broken()
        try:
            crdt.apply_update(
                self._doc,
                update if type(update) is bytes else bytes(update),
                record_id=self.record_id,
            )
        except InvalidUpdateError as exc:
            self._note_failure(exc)
            raise

    def _note_failure(self, error: InvalidUpdateError) -> None:
        """Refuse further use if pycrdt failed in a way that may have changed the document.

        pycrdt refuses bytes it cannot decode before touching the document; after
        anything else (a panic in its Rust core) the document may hold part of an
        update, and its index and state vector can no longer be trusted.
        """
        if self._broken is None and not crdt.doc_untouched(error):
            self._broken = (
                f"record {self.record_id} is no longer usable: pycrdt failed on foreign "
                "bytes and may have left its document half-changed; load the record again "
                f"from its stored updates (the failure: {error})"
            )

    def _refuse_if_broken(self) -> None:
        if self._broken is not None:
            raise InvalidUpdateError(self._broken)

    def on_update(self, listener: UpdateListener) -> Callable[[], None]:
        """Call ``listener(update, is_local)`` after each transaction; returns an unsubscribe.

        The record observes its document only while it has a listener: the
        observer holds the record, so one left behind would keep it (and its
        document) in memory for good. Calling the unsubscribe twice is harmless.
        """
        token = object()
        if self._listeners is None:
            self._listeners = {}
        self._listeners[token] = listener
        if self._doc_subscription is None:
            self._doc_subscription = self._doc.observe(_Observer(self._on_transaction))

        def unsubscribe() -> None:
            listeners = self._listeners
            if listeners is None or listeners.pop(token, None) is None or listeners:
                return
            subscription, self._doc_subscription = self._doc_subscription, None
            if subscription is not None:
                self._doc.unobserve(subscription)

        return unsubscribe

    # ----------------------------------------------------------------- internals

    def _field_state(self, path: str, key: tuple[str, str] | None) -> FieldState:
        """What :meth:`get` returns, for a path whose entry (if any) is already known."""
        state = self._index.paths.get(path)
        if state is None:
            return _field_state(self.record_id, path, ())
        if path.startswith(self._count_prefixes) and self._is_count(path):
            return self._count_state(path, state)
        if key is not None and key[0] == NOTES_COLLECTION:
            frozen = self._signed_heads(key, path)
            if frozen is not None:
                return _field_state(self.record_id, path, frozen)
        return _field_state(self.record_id, path, state.head_revisions())

    def _entry(self, key: tuple[str, str]) -> Entry:
        """The entry of a key known to the index."""
        start = len(key[0]) + len(key[1]) + 2  # past "<collection>/<entry-id>/"
        fields: dict[str, FieldState] = {}
        if key[0] == NOTES_COLLECTION:  # a signed note shows what was signed
            for path in sorted(self._index.entries[key]):
                if not path.endswith(_BOOKKEEPING_SUFFIX):
                    fields[path[start:]] = self._field_state(path, key)
            return _entry(key[0], key[1], fields)
        if self._entry_counts:  # some entry fields may be counts
            for path in sorted(self._index.entries[key]):
                if not path.endswith(_BOOKKEEPING_SUFFIX):
                    fields[path[start:]] = self._field_state(path, key)
            return _entry(key[0], key[1], fields)
        # Built inline: rules ask for every entry of a record each time they run.
        record_id, paths = self.record_id, self._index.paths
        for path in sorted(self._index.entries[key]):
            if not path.endswith(_BOOKKEEPING_SUFFIX):
                fields[path[start:]] = _field_state(record_id, path, paths[path].head_revisions())
        return _entry(key[0], key[1], fields)

    def _write(
        self, path: str, value: JSONValue, author: str, entry_key: tuple[str, str] | None
    ) -> Revision:
        self._refuse_if_broken()  # a write would build on a document of unknown state
        index = self._index
        state = index.paths.get(path)
        parents = tuple(sorted(state.heads)) if state is not None else ()
        seen: dict[str, tuple[str, ...]] = {}
        if entry_key is not None and not _is_sub_path(path):
            for other in self._entry_register_paths(entry_key):
                if other != path:
                    seen[other] = tuple(sorted(index.paths[other].heads))
        if isinstance(value, (list, dict)):
            value = json.loads(json.dumps(value))  # a private copy: revisions are immutable
        rev = Revision(
            self._new_id(),
            path,
            value,
            parents,
            author,
            self.replica,
            self.clock.tick(),
            seen or NO_SEEN,  # shared: a revision that saw nothing holds no dict of its own
        )
        if rev.id in index.by_id:
            raise InvalidInputError(f"revision id {rev.id} is taken; the id source repeats")
        revisions = self._revisions_map
        if revisions is None:
            revisions = self._revisions
        revisions[rev.id] = encode_revision(rev)
        index.add(rev, entry_key)
        index.settle()
        return rev

    def _check_new_path(
        self, path: str, value: JSONValue
    ) -> tuple[tuple[str, str] | None, FieldSpec | None, bool]:
        """Check the first write of a path (and its value, unless a count's); remember it."""
        schema = self.schema
        is_count = bool(self._count_prefixes) and self._is_count(path)
        if is_count:
            schema.check_write_path(path)  # a count's value is checked as one
        else:
            schema.check_write(path, value)
        # Remember paths this record accepted: rewriting a field is the hot path.
        checked = self._checked_paths
        if checked is None:
            checked = self._checked_paths = {}
        known = checked[path] = (schema.entry_key(path), schema.spec_for(path), is_count)
        return known

    # ------------------------------------------------------------------- counts

    def _is_count(self, path: str) -> bool:
        """The schema's ``is_count``, remembered per path (a path that passed the prefix test)."""
        remembered = self._is_count_path
        if remembered is None:
            remembered = self._is_count_path = {}
        known = remembered.get(path)
        if known is None:
            known = remembered[path] = self.schema.is_count(path)
        return known

    def _count_value(
        self, path: str, change: int, count: int, spec: FieldSpec | None
    ) -> dict[str, JSONValue]:
        """A count revision's stored value, checked: the change and the count it makes."""
        for number, what in ((count, "count"), (change, "change")):
            if abs(number) > MAX_COUNT:
                raise InvalidValueError(
                    f"{path}: the {what} {number} is outside +/- 2**53 (a count and each "
                    "change must stay within it)"
                )
        if spec is not None:
            spec.check(path, count)
        return {COUNT_CHANGE: change, COUNT_TOTAL: count}

    def _count_total(self, path: str) -> int:
        """The count at ``path`` now: 0 if never written."""
        state = self._index.paths.get(path)
        return 0 if state is None else self._count_state(path, state).total

    def _count_state(self, path: str, state: PathState) -> CountState:
        """A count's state; its total is kept per path and brought up to date as it grows.

        A path's revisions are only ever added, at the end of its dict, so the
        revisions past the number already summed are the new ones: read from
        the end, they cost in proportion to what arrived, not to the history.
        Only bare integers (absolute counts) make a whole new sum: what one
        adds depends on its ancestors, which may arrive after it.
        """
        revisions = state.revisions
        size = len(revisions)
        totals = self._totals
        if totals is None:
            totals = self._totals = {}
        cached = totals.get(path)
        if cached is None or cached.state is not state or cached.size > size:
            cached = totals[path] = _Total(state, revisions)
        elif cached.size != size:
            cached.take_in(revisions, size)
        return _count_state(
            self.record_id, path, state.head_revisions(), cached.total, cached.uncounted
        )

    def _entry_register_paths(self, key: tuple[str, str]) -> list[str]:
        return [p for p in self._index.entries.get(key, ()) if not _is_sub_path(p)]

    def _require_entry(self, key: tuple[str, str]) -> None:
        if key not in self._index.entries:
            raise UnknownEntryError(f"record {self.record_id} has no entry {key[0]}/{key[1]}")

    def _signature_heads(self, key: tuple[str, str]) -> list[Revision]:
        state = self._index.paths.get(f"{key[0]}/{key[1]}/{SIGNATURE_FIELD}")
        return list(state.head_revisions()) if state is not None else []

    def _refuse_if_signed(self, key: tuple[str, str], path: str) -> None:
        field = path.split("/", 2)[2]
        if field in _MUTABLE_AFTER_SIGNING or field.startswith(ADDENDA_FIELD + "/"):
            return
        if key[0] == NOTES_COLLECTION and self._signature_heads(key):
            raise ImmutableFieldError(
                f"{path} belongs to a signed note and cannot change; add an addendum instead"
            )

    def _signed_heads(self, key: tuple[str, str], path: str) -> tuple[Revision, ...] | None:
        """For a frozen field of a signed note: the revisions its signature signed.

        Two concurrent signatures may have signed different versions; the first
        in the stable (time, replica, id) order is the one shown, on every replica
        alike, and the other version is reported by the note-changed-while-signed
        rule. So a frozen field never shows a conflict nobody could resolve.
        """
        field = path.split("/", 2)[2]
        if field in _MUTABLE_AFTER_SIGNING or _is_sub_path(path):
            return None
        signatures = self._signature_heads(key)
        if not signatures:
            return None
        signed = signatures[0].value
        ids: object = None
        if isinstance(signed, dict) and isinstance(signed.get("signed"), dict):
            ids = signed["signed"].get(path, [])
        if not isinstance(ids, list):
            ids = list(signatures[0].seen.get(path, ()))  # a malformed signature: what it saw
        revs = [self._index.by_id[i] for i in ids if isinstance(i, str) and i in self._index.by_id]
        revs.sort(key=lambda r: (r.at, r.replica, r.id))
        return tuple(revs)

    def _take_in(self, rev_id: str, stored: object) -> None:
        rev = decode_revision(rev_id, stored)
        if rev is None:
            self._index.invalid[rev_id] = None
            return
        self.clock.observe(rev.at.wall_ms, rev.at.counter)
        self._index.add(rev, self.schema.entry_key(rev.path))

    def _rebuild_index(self) -> None:
        """Index the whole map in one pass (loading, or after a peer changed a revision)."""
        index = self._index
        if index.by_id or index.invalid:
            index = RevisionIndex(version=index.version + 1)
        else:  # a new record's empty index: no need for another
            index.version += 1
        revisions: list[Revision] = []
        kept = self._revisions_map
        for rev_id, stored in (
            read_root_items(self._doc, "revisions") if kept is None else read_items(self._doc, kept)
        ):
            rev = decode_revision(rev_id, stored)
            if rev is None:
                index.invalid[rev_id] = None
            else:
                revisions.append(rev)
        if revisions:
            latest = max(map(_AT, revisions))
            if latest.wall_ms > self.clock.horizon_ms():
                # A time too far ahead is ignored by the clock; the latest sane one is not.
                horizon = self.clock.horizon_ms()
                latest = max(
                    (at for at in map(_AT, revisions) if at.wall_ms <= horizon), default=latest
                )
            self.clock.observe(latest.wall_ms, latest.counter)
        index.add_all(revisions, self.schema.entry_key)
        index.settle()
        self._index = index

    def _on_revisions_changed(self, event: MapEvent) -> None:
        rebuild = False
        changes: dict[str, dict[str, Any]] = event.keys  # type: ignore[attr-defined]
        for rev_id, change in changes.items():
            if change.get("action") == "add":
                self._take_in(rev_id, change.get("newValue"))
            else:
                # Revisions are never changed or removed by caresync; a peer that did
                # so gets the same treatment on every replica: reindex from the doc.
                rebuild = True
        if rebuild:
            self._rebuild_index()

    def _on_transaction(self, event: TransactionEvent) -> None:
        update: bytes = event.update
        if update == b"\x00\x00":
            return  # an empty transaction
        is_local = not self._applying
        listeners = self._listeners
        if not listeners:
            return
        for token, listener in list(listeners.items()):
            if token in listeners:  # not unsubscribed by an earlier listener
                listener(update, is_local)


class _Observer:
    """Hands a pycrdt event to one of its record's handlers.

    pycrdt's ``observe`` runs ``inspect.signature`` on the callback at every
    subscription, and a record subscribes for every update it applies (and,
    for its listeners, at every replica edit): with the signature ready here,
    that costs a sixth of what it costs for a bound method. Made per
    subscription, so a record holds no reference cycle to itself.
    """

    __slots__ = ("_handle",)
    __signature__ = inspect.Signature(
        [inspect.Parameter("event", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    )

    def __init__(self, handle: Callable[[Any], None]) -> None:
        self._handle = handle

    def __call__(self, event: MapEvent | TransactionEvent) -> None:
        self._handle(event)


def _check_update(update: object) -> None:
    if not isinstance(update, (bytes, bytearray, memoryview)):
        raise InvalidUpdateError(f"an update must be bytes, not {type(update).__name__}")


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_AUTHOR_LENGTH:
        raise InvalidInputError(f"{what} must be a non-empty string of at most 256 characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(f"{what} holds a lone surrogate (not valid UTF-8)") from None


def _is_sub_path(path: str) -> bool:
    """A path below an entry's field, like an addendum: ``notes/<id>/addenda/<aid>``."""
    return path.count("/") > 2


def _is_bookkeeping(path: str) -> bool:
    return path.endswith(_BOOKKEEPING_SUFFIX)


class _Total:
    """One count's total and uncounted revisions, as of its first ``size`` revisions."""

    __slots__ = ("absolute", "size", "state", "total", "uncounted")

    def __init__(self, state: PathState, revisions: dict[str, Revision]) -> None:
        self.state = state
        self.size = len(revisions)
        self.total, self.uncounted, self.absolute = _sum_changes(revisions)

    def take_in(self, revisions: dict[str, Revision], size: int) -> None:
        """Add the revisions past ``self.size`` (the newest, at the dict's end)."""
        if not self.absolute:
            total, uncounted = self.total, list(self.uncounted)
            for rev in itertools.islice(reversed(revisions.values()), size - self.size):
                value = rev.value
                if type(value) is dict:
                    change = value.get(COUNT_CHANGE)
                    if type(change) is int:
                        total += change
                        continue
                elif type(value) is int:
                    break  # an absolute count: sum afresh
                uncounted.append(rev)
            else:
                if len(uncounted) > len(self.uncounted):
                    uncounted.sort(key=_display_order)
                self.total, self.uncounted, self.size = total, tuple(uncounted), size
                return
        self.total, self.uncounted, self.absolute = _sum_changes(revisions)
        self.size = size


def _display_order(rev: Revision) -> tuple[Timestamp, str, str]:
    return (rev.at, rev.replica, rev.id)


def _not_a_count(path: str, value: object, what: str) -> str:
    kind = "a bool" if isinstance(value, bool) else type(value).__name__
    return f"{path} is a count: its {what} must be an integer, not {kind} {value!r:.80}"


def _sum_changes(revisions: dict[str, Revision]) -> tuple[int, tuple[Revision, ...], bool]:
    """A count's total over its revisions, the revisions left out of it, and whether any is bare.

    A revision ``{"delta": d, ...}`` adds ``d``. A bare integer ``n`` (written
    before the path was a count, or by a peer that does not know counts) is an
    absolute count: it adds ``n`` minus the count its writer had seen, the sum
    over the revisions its parents reach. Anything else adds nothing and is
    returned as uncounted. Every replica holding the same revisions gets the
    same answer, whatever order they arrived in.
    """
    total = 0
    changes: dict[str, int] = {}
    absolute: list[Revision] = []
    uncounted: list[Revision] = []
    for rev_id, rev in revisions.items():
        value = rev.value
        if type(value) is dict:
            change = value.get(COUNT_CHANGE)
            if type(change) is int:
                changes[rev_id] = change
                total += change
                continue
        elif type(value) is int:
            absolute.append(rev)
            continue
        uncounted.append(rev)
    if absolute:
        total += _absolute_changes(revisions, changes, absolute, uncounted)
    if len(uncounted) > 1:
        uncounted.sort(key=_display_order)
    return total, tuple(uncounted), bool(absolute)


def _absolute_changes(
    revisions: dict[str, Revision],
    changes: dict[str, int],
    absolute: list[Revision],
    uncounted: list[Revision],
) -> int:
    """The changes bare integers make (see :func:`_sum_changes`); fills ``changes``.

    An ancestor's ancestors are a strict subset of its descendant's, so taking
    revisions by the number of their ancestors computes every ancestor's change
    first. A revision among its own ancestors (a cycle only a hostile peer can
    make) is uncounted.
    """
    ancestry = {rev.id: _ancestors(revisions, rev.parents) for rev in absolute}
    added = 0
    for rev in sorted(absolute, key=lambda r: (len(ancestry[r.id]), r.id)):
        seen = ancestry[rev.id]
        if rev.id in seen:
            uncounted.append(rev)
            continue
        value: int = rev.value  # type: ignore[assignment]  # an int: sorted out above
        change = value - sum(changes.get(a, 0) for a in seen)
        changes[rev.id] = change
        added += change
    return added


def _ancestors(revisions: dict[str, Revision], parents: Iterable[str]) -> set[str]:
    """Ids of the held revisions reachable from ``parents`` (themselves included)."""
    found: set[str] = set()
    stack = [p for p in parents if p in revisions]
    while stack:
        current = stack.pop()
        if current in found:
            continue
        found.add(current)
        stack.extend(p for p in revisions[current].parents if p in revisions and p not in found)
    return found
