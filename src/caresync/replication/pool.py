"""Loaded records of one replica: a bounded LRU over the store, and their index rows.

Both the laptop replica and the server keep recently used records loaded here,
so an edit or an incoming update merges into a live document instead of
reloading its history. Evicting costs nothing: everything is in the store.

The pool's size is an option (``pool_size`` of ``Replica.open``,
``SyncServer.open`` and ``SimulationConfig``): a loaded patient chart costs
under twice its bare pycrdt document (about 13.5 KB for a chart of 8
revisions), so the default of 1,024 records holds about 14 MB of charts (see
``benchmarks/bench_memory.py``). A smaller pool costs
a reload from the store when an evicted record is needed again, never
correctness: a batch may hold more records than the pool.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable

from caresync.conflicts import Rulebook
from caresync.exceptions import InvalidOptionError, UnknownRecordError
from caresync.records import DEFAULT_SCHEMA, HybridLogicalClock, Record, Schema
from caresync.records.ids import new_revision_id
from caresync.storage import ConflictRow, ReplicaStore

__all__ = ["DEFAULT_POOL_SIZE", "MAX_POOL_SIZE", "RecordPool", "check_pool_size", "conflict_rows"]

DEFAULT_POOL_SIZE = 1024
"""Records a replica keeps loaded unless told otherwise."""
MAX_POOL_SIZE = 10_000_000
"""The largest pool size accepted: far past any memory (about 150 GB of charts)."""


def check_pool_size(value: object, *, option: str = "pool_size") -> int:
    """``value`` if it is a pool size (an int from 1 to MAX_POOL_SIZE), else InvalidOptionError.

    Checked where a replica, a server or a simulation is opened, before anything
    is opened: a bad size is the caller's mistake, never a half-opened database.
    """
    if type(value) is not int or not 1 <= value <= MAX_POOL_SIZE:
        raise InvalidOptionError(
            f"{option} is how many records stay loaded: an int from 1 to {MAX_POOL_SIZE:,}, "
            f"not {value!r:.80}"
        )
    return value


def conflict_rows(record: Record, rulebook: Rulebook) -> tuple[ConflictRow, ...]:
    """The record's open conflicts as the store's index rows (payload: the conflict's JSON)."""
    return tuple(
        ConflictRow(
            id=c.id,
            record_id=record.record_id,
            kind=c.kind.value,
            subject=c.subject,
            severity=c.severity.value,
            payload=json.dumps(c.as_dict(), separators=(",", ":")).encode(),
        )
        for c in rulebook.conflicts(record)
    )


class RecordPool:
    """Up to ``max_records`` records loaded from ``store``, least recently used evicted.

    ``max_records`` is checked with :func:`check_pool_size` (InvalidOptionError).
    """

    def __init__(
        self,
        store: ReplicaStore,
        *,
        replica: str,
        rulebook: Rulebook,
        schema: Schema = DEFAULT_SCHEMA,
        max_records: int = DEFAULT_POOL_SIZE,
        clock: HybridLogicalClock | None = None,
        new_id: Callable[[], str] = new_revision_id,
    ) -> None:
        self.store = store
        self.replica = replica
        self.rulebook = rulebook
        self.schema = schema
        self.clock = clock if clock is not None else HybridLogicalClock()
        self._new_id = new_id
        self._max = check_pool_size(max_records, option="max_records")
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._loading: dict[str, int] = {}  # record id -> loads of it from the store under way
        self._overtaken: set[str] = set()  # records kept or dropped while a load of them ran

    async def get(self, record_id: str) -> Record:
        """The record, loaded if needed; UnknownRecordError if the store has none.

        A load that a write overtook (the record was written, or kept or dropped here
        by a writer, while the store was read: see :meth:`committed`) is returned to its
        caller, the record as it stood when the read began, but not kept: it may be
        older than what is stored now. Writers hold the replica's write lock, so a
        writer's own load is never overtaken, and is kept.
        """
        record = self._records.get(record_id)
        if record is not None:
            self._records.move_to_end(record_id)
            return record
        loading = self._loading
        loading[record_id] = loading.get(record_id, 0) + 1
        try:
            stored = await self.store.load(record_id)
        finally:
            overtaken = record_id in self._overtaken
            if loading[record_id] == 1:
                del loading[record_id]
                self._overtaken.discard(record_id)
            else:
                loading[record_id] -= 1
        if stored is None:
            raise UnknownRecordError(f"no record {record_id!r} in this database")
        loaded = Record.from_update(
            record_id,
            stored,
            replica=self.replica,
            schema=self.schema,
            clock=self.clock,
            new_id=self._new_id,
        )
        if overtaken:
            return loaded
        return self._keep(loaded)

    def peek(self, record_id: str) -> Record | None:
        """The record if it is loaded now, else None (nothing is read from the store)."""
        record = self._records.get(record_id)
        if record is not None:
            self._records.move_to_end(record_id)
        return record

    def load_bytes(self, record_id: str, update: bytes, *more: bytes) -> Record:
        """Build the record from ``update`` (its whole state) and keep it loaded.

        Indexing a record built from bytes takes one pass over its revisions,
        cheaper than merging the same bytes into an empty record. ``more``
        updates (what arrived for a stored record) are taken in the same pass:
        cheaper than merging them into one update first, or applying them after.
        """
        return self.adopt(
            Record.from_updates(
                record_id,
                (update, *more),
                replica=self.replica,
                schema=self.schema,
                clock=self.clock,
                new_id=self._new_id,
            )
        )

    async def get_or_empty(self, record_id: str) -> Record:
        """The record, or a new empty one to merge a first received update into."""
        try:
            return await self.get(record_id)
        except UnknownRecordError:
            return self.adopt(
                Record(
                    record_id,
                    replica=self.replica,
                    schema=self.schema,
                    clock=self.clock,
                    new_id=self._new_id,
                )
            )

    def create(self, record_id: str | None = None) -> Record:
        """A new record, kept loaded (the caller stores its first update)."""
        return self.adopt(
            Record.create(
                replica=self.replica,
                record_id=record_id,
                schema=self.schema,
                clock=self.clock,
                new_id=self._new_id,
            )
        )

    @property
    def max_records(self) -> int:
        """How many records stay loaded at most."""
        return self._max

    @property
    def loaded(self) -> int:
        """How many records are loaded now."""
        return len(self._records)

    def adopt(self, record: Record) -> Record:
        """Keep ``record`` loaded, as the most recently used; evict beyond the size.

        A writer's: a load of the same record under way is not kept (see :meth:`get`)."""
        if self._loading and record.record_id in self._loading:
            self._overtaken.add(record.record_id)
        return self._keep(record)

    def _keep(self, record: Record) -> Record:
        self._records[record.record_id] = record
        self._records.move_to_end(record.record_id)
        while len(self._records) > self._max:
            self._records.popitem(last=False)
        return record

    def forget(self, record_id: str) -> None:
        """Drop a loaded record: after a failed commit, so memory never runs ahead of
        disk, or after a commit that wrote it without it (it is read anew next time).
        A load of it under way now is not kept (see :meth:`get`)."""
        self._records.pop(record_id, None)
        if self._loading and record_id in self._loading:
            self._overtaken.add(record_id)

    def committed(self, records: Iterable[tuple[str, Record | None]]) -> None:
        """A writer committed each ``(record id, record)``: ``record`` as the commit left
        it (None: stored without building it). A loaded copy that is not that record is
        dropped: a reader loaded it while the writer worked (after an eviction, say), from
        what was stored before the commit. A load of one under way read what was stored
        before, and is not kept (see :meth:`get`). Call it after the commit: a read that
        began before it may end after it."""
        loaded, loading = self._records, self._loading
        for record_id, record in records:
            kept = loaded.get(record_id)
            if kept is not None and kept is not record:
                del loaded[record_id]
            if loading and record_id in loading:
                self._overtaken.add(record_id)

    def clear(self) -> None:
        """Drop every loaded record (another process may have changed any of them)."""
        self._records.clear()
        self._overtaken.update(self._loading)

    def rows(self, record: Record) -> tuple[ConflictRow, ...]:
        return conflict_rows(record, self.rulebook)
