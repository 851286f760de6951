"""SQL helpers the store's parts share: chunks of ids, counters, a record's bytes, meta,
conflict rows, and sqlite3's errors translated at the store's edge.

Private to the package: its modules import these underscored names from here."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from caresync.exceptions import CorruptDatabaseError, StorageError, UnknownRecordError
from caresync.storage._updates import EMPTY_UPDATE, merge_stored
from caresync.storage.base import ConflictRow, Identity, RecordClient, legacy_owners
from caresync.storage.schema import HEAD_JOIN as _HEAD_JOIN
from caresync.storage.schema import HEAD_VECTOR as _HEAD_VECTOR

T = TypeVar("T")


Job = Callable[[sqlite3.Connection], T]


_IN_CHUNK = 500  # record ids per "IN (...)" lookup, well under SQLite's parameter limit


def _chunks(ids: Sequence[T]) -> Iterable[Sequence[T]]:
    """Ids in slices short enough for one ``IN (...)`` list."""
    return (ids[start : start + _IN_CHUNK] for start in range(0, len(ids), _IN_CHUNK))


def _marks(count: int) -> str:
    """``?, ?, ...``: the placeholders of an ``IN`` list of ``count`` values."""
    return ", ".join("?" * count)


def _scalar(raw: sqlite3.Connection, sql: str, *args: object) -> int:
    row = raw.execute(sql, args).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _sequence(raw: sqlite3.Connection, table: str) -> int:
    """The last number an AUTOINCREMENT table gave out (0 if none yet)."""
    return _scalar(raw, "SELECT seq FROM sqlite_sequence WHERE name = ?", table)


def _feed_head(raw: sqlite3.Connection) -> int:
    """The highest change-feed number given out (feed rows are never deleted)."""
    return _scalar(raw, "SELECT MAX(seq) FROM feed")


def _expect_sequence(raw: sqlite3.Connection, table: str, expected: int) -> None:
    head = _sequence(raw, table)
    if head != expected:
        raise CorruptDatabaseError(
            f"{table} numbering is inconsistent (at {head}, expected {expected}); nothing written"
        )


# Whether a record has updates beside its compacted state (with _HEAD_JOIN): log or
# feed rows its row counts, or log rows newer than its row (schema version 18).
_HEAD_HAS_PIECES = "(r.log_count > 0 OR h.id IS NOT NULL)"


def _record_row(raw: sqlite3.Connection, record_id: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = raw.execute(
        "SELECT 1 FROM records WHERE record_id = ?", (record_id,)
    ).fetchone()
    return row


def _state(raw: sqlite3.Connection, record_id: str) -> bytes:
    """A record's compacted state (empty until its first compaction)."""
    row = raw.execute("SELECT state FROM states WHERE record_id = ?", (record_id,)).fetchone()
    return EMPTY_UPDATE if row is None else bytes(row[0])


def _full(raw: sqlite3.Connection, record_id: str) -> bytes:
    """A stored record's state merged with its log (reads the whole record)."""
    row = raw.execute(
        f"SELECT {_HEAD_HAS_PIECES}, r.rk, r.feed_folded FROM records r{_HEAD_JOIN}"
        " WHERE r.record_id = ?",
        (record_id,),
    ).fetchone()
    if row is None:
        raise UnknownRecordError(f"no record {record_id} is stored here")
    state = _state(raw, record_id)
    if not row[0]:
        return state
    return merge_stored(state, _pieces(raw, row[1], row[2]), record_id=record_id)


def _pieces(raw: sqlite3.Connection, key: int | None, folded: int) -> list[bytes]:
    """A record's updates since its compaction: its log rows, then its unfolded feed rows."""
    log = [
        bytes(r[0]) for r in raw.execute("SELECT data FROM log WHERE rk = ? ORDER BY id", (key,))
    ]
    log += [
        bytes(r[0])
        for r in raw.execute(
            "SELECT data FROM feed WHERE rk = ? AND seq > ? ORDER BY seq", (key, folded)
        )
    ]
    return log


def _client_owners(
    raw: sqlite3.Connection, wanted: Sequence[RecordClient]
) -> dict[RecordClient, str]:
    """The replica each ``(record_id, client)`` pair is bound to: its own row, else the
    client's row of before version 21 where the record's stored state vector lists it."""
    found: dict[RecordClient, str] = {}
    step = _IN_CHUNK // 2  # two parameters a pair
    for start in range(0, len(wanted), step):
        chunk = wanted[start : start + step]
        args = [value for pair in chunk for value in pair]
        for record_id, client, replica_id in raw.execute(
            "SELECT record_id, client, replica_id FROM record_clients"
            f" WHERE (record_id, client) IN (VALUES {','.join(['(?, ?)'] * len(chunk))})",
            args,
        ):
            found[(str(record_id), int(client))] = str(replica_id)
    rest = [pair for pair in wanted if pair not in found]
    clients = sorted({client for _record, client in rest})
    legacy: dict[int, str] = {}
    for chunk_of_clients in _chunks(clients):
        for client, replica_id in raw.execute(
            f"SELECT client, replica_id FROM yjs_clients WHERE client IN"
            f" ({_marks(len(chunk_of_clients))})",
            list(chunk_of_clients),
        ):
            legacy[int(client)] = str(replica_id)
    if not legacy:  # the usual case: no row of before version 21 names these clients
        return found
    records = sorted({record_id for record_id, client in rest if client in legacy})
    vectors: dict[str, bytes] = {}
    for chunk_of_ids in _chunks(records):
        for record_id, vector in raw.execute(
            f"SELECT r.record_id, {_HEAD_VECTOR} FROM records r{_HEAD_JOIN}"
            f" WHERE r.record_id IN ({_marks(len(chunk_of_ids))})",
            list(chunk_of_ids),
        ):
            vectors[str(record_id)] = bytes(vector)
    found.update(legacy_owners(legacy, rest, vectors))
    return found


def _put_meta(raw: sqlite3.Connection, key: str, value: str) -> None:
    raw.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


_INSERT_CONFLICT = (
    "INSERT INTO conflicts (record_id, id, kind, subject, severity, payload)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (record_id, id) DO UPDATE SET"
    " kind = excluded.kind, subject = excluded.subject, severity = excluded.severity,"
    " payload = excluded.payload"
)


def _replace_conflicts_of(
    raw: sqlite3.Connection,
    rows_by_record: Mapping[str, Sequence[ConflictRow]],
    new: Collection[str] = (),
) -> None:
    """Replace the rows of many records: two statements for all, not two per record.

    Records in ``new`` (new in this write) have no rows to delete: a first copy makes
    no delete per record, each of which would cost the count's trigger its work.
    (Only a damaged file holds rows of a record not stored; the insert updates such a
    row rather than failing, and ``check()`` names the rest. An upsert, never a
    REPLACE, which would delete without the trigger that keeps the count.)
    """
    raw.executemany(
        "DELETE FROM conflicts WHERE record_id = ?",
        [(rid,) for rid in rows_by_record if rid not in new],
    )
    raw.executemany(
        _INSERT_CONFLICT,
        [
            (c.record_id, c.id, c.kind, c.subject, c.severity, c.payload)
            for record_rows in rows_by_record.values()
            for c in record_rows
        ],
    )


def _read_identity(raw: sqlite3.Connection) -> Identity | None:
    row = raw.execute(
        "SELECT replica_id, role, server_id, server_url, organisation FROM identity"
    ).fetchone()
    return None if row is None else Identity(*row)


def _translate(exc: sqlite3.Error, what: str) -> StorageError:
    """A caresync error for an sqlite3 error (the edge of the store)."""
    message = str(exc)
    lowered = message.lower()
    if "not a database" in lowered or "malformed" in lowered:
        return CorruptDatabaseError(f"{what}: the database is damaged ({message})")
    if "locked" in lowered or "busy" in lowered:
        return StorageError(f"{what}: the database is in use by another process ({message})")
    if "full" in lowered:
        return StorageError(f"{what}: the disk is full; nothing was written ({message})")
    if "readonly" in lowered or "read-only" in lowered:
        return StorageError(f"{what}: the database is read-only ({message})")
    return StorageError(f"{what}: {message}")
