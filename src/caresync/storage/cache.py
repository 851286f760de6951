"""A bounded least-recently-used cache of loaded records.

The SQLite store keeps each recently used record's state vector (and, once it
was loaded, its merged bytes) here, so a write to a hot record reads nothing
from the database, and a read of a loaded record costs no round trip. The
cache is bounded both by entry count and by bytes: opening a store reads
nothing into it, and a first copy of 100,000 records keeps only the most
recent ones.

It is thread-safe: the store fills it on its database thread and reads it
from the event loop.

It keeps each entry as a plain tuple of bytes, strings and numbers, which
Python's garbage collector stops tracking after its first pass; a store
replaces hundreds of entries per batch, and tracked ones would each be
promoted to the oldest generation and make its full collections come sooner
(about 1 µs per stored update on a server, measured).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple

from caresync.exceptions import InvalidInputError

__all__ = ["CachedRecord", "RecordCache"]

_tuple_new: Any = tuple.__new__


class CachedRecord(NamedTuple):
    """What a store knows of a record, as committed.

    A NamedTuple rather than a frozen dataclass: one is built per record per
    write, and a frozen dataclass costs several times as much to build.

    ``pending`` is True when the record holds items that wait for an update
    they depend on; ``merged`` is the record's state merged with its log, when
    known (None after a write: keeping it would cost a merge of the whole record).
    """

    state_vector: bytes
    organisation: str | None
    pending: bool
    merged: bytes | None = None
    clocks: tuple[tuple[bytes, int], ...] | None = None
    """The state vector decoded, as (client, clock) pairs, when known."""
    key: int | None = None
    """The record's integer key in the SQLite store (None in the memory store)."""

    @property
    def size(self) -> int:
        """Bytes this entry holds (what the cache's byte bound counts)."""
        clocks = 0 if self.clocks is None else 64 + 48 * len(self.clocks)
        return len(self.merged or b"") + len(self.state_vector) + 64 + clocks


class RecordCache:
    """LRU of :class:`CachedRecord` by record id, bounded by entries and bytes.

    An entry larger than ``max_bytes`` is never kept. ``max_entries=0``
    disables the cache.
    """

    def __init__(self, *, max_entries: int = 32768, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise InvalidInputError("cache bounds must not be negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[tuple[object, ...], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes held by all entries."""
        return self._bytes

    def get(self, record_id: str) -> CachedRecord | None:
        """The cached entry (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(record_id)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(record_id)
            self.hits += 1
        return CachedRecord._make(found[0])

    def _touch_many(self, record_ids: Iterable[str]) -> dict[str, tuple[object, ...]]:
        """The stored tuples of the cached entries among ``record_ids`` (now the most
        recently used), by id; hits and misses counted."""
        found: dict[str, tuple[object, ...]] = {}
        entries = self._entries
        with self._lock:
            for record_id in record_ids:
                hit = entries.get(record_id)
                if hit is None:
                    self.misses += 1
                else:
                    entries.move_to_end(record_id)
                    found[record_id] = hit[0]
            self.hits += len(found)
        return found

    def get_many(self, record_ids: Iterable[str]) -> dict[str, CachedRecord]:
        """The cached entries among ``record_ids`` (now the most recently used), by id."""
        found = self._touch_many(record_ids)
        # CachedRecord._make without its Python frame and length check (each stored
        # tuple is one, see _put): a pull reads a thousand of them.
        make = partial(_tuple_new, CachedRecord)
        return {record_id: make(stored) for record_id, stored in found.items()}

    def vectors_of(self, record_ids: Iterable[str]) -> dict[str, tuple[bytes, bool]]:
        """Each cached record's (state vector, pending) among ``record_ids`` (now the most
        recently used), by id: :meth:`get_many`'s two fields, without an entry built."""
        # A CachedRecord's fields: state_vector, organisation, pending, ...
        return {
            record_id: (stored[0], stored[2])  # type: ignore[misc]
            for record_id, stored in self._touch_many(record_ids).items()
        }

    def put_many(self, entries: list[tuple[str, CachedRecord]]) -> None:
        """:meth:`put` each (record id, entry), in order, under one acquisition of the lock."""
        with self._lock:
            put = self._put_plain
            for record_id, entry in entries:
                put(record_id, tuple(entry))  # plain tuples: see the module doc

    def put_fields_many(self, entries: Iterable[tuple[str, tuple[object, ...]]]) -> None:
        """:meth:`put_many` of entries given as plain tuples of a :class:`CachedRecord`'s
        six fields, in order (a store's write keeps a thousand a batch: no entry is built
        only to be taken apart). The caller vouches for the fields' types."""
        with self._lock:
            put = self._put_plain
            for record_id, plain in entries:
                put(record_id, plain)

    def put(self, record_id: str, entry: CachedRecord) -> None:
        """Keep ``entry`` as the most recently used, evicting the least used beyond bounds."""
        with self._lock:
            self._put(record_id, entry)

    def _put(self, record_id: str, entry: CachedRecord) -> None:
        self._put_plain(record_id, tuple(entry))  # plain tuples: see the module doc

    def _put_plain(self, record_id: str, plain: tuple[Any, ...]) -> None:
        # CachedRecord.size, inline (a first copy puts every record): the fields are
        # state_vector, organisation, pending, merged, clocks, key.
        merged, clocks = plain[3], plain[4]
        size = len(plain[0]) + 64
        if merged is not None:
            size += len(merged)
        if clocks is not None:
            size += 64 + 48 * len(clocks)
        entries = self._entries
        old = entries.pop(record_id, None)
        if old is not None:
            self._bytes -= old[1]
        if size > self.max_bytes or self.max_entries == 0:
            return
        entries[record_id] = (plain, size)
        self._bytes += size
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted) = entries.popitem(last=False)
            self._bytes -= evicted

    def discard(self, record_id: str) -> None:
        """Forget one record (after a failed transaction, say)."""
        with self._lock:
            old = self._entries.pop(record_id, None)
            if old is not None:
                self._bytes -= old[1]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
