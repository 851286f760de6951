"""SQL helpers the PostgreSQL store's parts share: the connection type, scalars, a
record's bytes, meta, conflict rows, and psycopg's errors translated at the store's edge.

Private to the package: its modules import these names from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from caresync.exceptions import CorruptDatabaseError, StorageError, UnknownRecordError
from caresync.storage._updates import EMPTY_UPDATE, merge_stored
from caresync.storage.base import ConflictRow, Identity, RecordClient, legacy_owners

__all__ = [
    "Conn",
    "Job",
    "T",
    "feed_head",
    "full",
    "pieces",
    "put_meta",
    "read_identity",
    "replace_conflicts_of",
    "scalar",
    "state_of",
    "translate",
]

T = TypeVar("T")

Conn = psycopg.Connection[tuple[Any, ...]]
"""A psycopg connection in autocommit mode: each transaction is opened explicitly."""

Job = Callable[[Conn], T]


def scalar(raw: Conn, sql: str, *args: object) -> int:
    """The first column of the first row, as an int (0 for none or NULL)."""
    row = raw.execute(sql, args).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def feed_head(raw: Conn) -> int:
    """The highest change-feed number given out (feed rows are never deleted)."""
    return scalar(raw, "SELECT MAX(seq) FROM feed")


def state_of(raw: Conn, record_id: str) -> bytes:
    """A record's compacted state (empty until its first compaction)."""
    row = raw.execute("SELECT state FROM states WHERE record_id = %s", (record_id,)).fetchone()
    return EMPTY_UPDATE if row is None else bytes(row[0])


def pieces(raw: Conn, key: int, folded: int) -> list[bytes]:
    """A record's updates since its compaction: its log rows, then its unfolded feed rows."""
    log = [
        bytes(r[0]) for r in raw.execute("SELECT data FROM log WHERE rk = %s ORDER BY id", (key,))
    ]
    log += [
        bytes(r[0])
        for r in raw.execute(
            "SELECT data FROM feed WHERE rk = %s AND seq > %s ORDER BY seq", (key, folded)
        )
    ]
    return log


def full(raw: Conn, record_id: str) -> bytes:
    """A stored record's state merged with its log (reads the whole record)."""
    row = raw.execute(
        "SELECT log_count, rk, feed_folded FROM records WHERE record_id = %s", (record_id,)
    ).fetchone()
    if row is None:
        raise UnknownRecordError(f"no record {record_id} is stored here")
    state = state_of(raw, record_id)
    if not row[0]:
        return state
    return merge_stored(state, pieces(raw, row[1], row[2]), record_id=record_id)


def client_owners_of(raw: Conn, wanted: Sequence[RecordClient]) -> dict[RecordClient, str]:
    """The replica each ``(record_id, client)`` pair is bound to: its own row, else the
    client's row of before schema version 8 where the record's stored state vector lists it."""
    if not wanted:
        return {}
    found: dict[RecordClient, str] = {
        (str(record_id), int(client)): str(replica_id)
        for record_id, client, replica_id in raw.execute(
            "SELECT c.record_id, c.client, c.replica_id FROM record_clients c"
            " JOIN unnest(%s::text[], %s::bigint[]) AS w (record_id, client)"
            " ON c.record_id = w.record_id AND c.client = w.client",
            ([r for r, _c in wanted], [c for _r, c in wanted]),
        )
    }
    rest = [pair for pair in wanted if pair not in found]
    legacy = {
        int(client): str(replica_id)
        for client, replica_id in raw.execute(
            "SELECT client, replica_id FROM yjs_clients WHERE client = ANY(%s)",
            (sorted({client for _record, client in rest}),),
        )
    }
    if not legacy:  # the usual case: no row of before version 8 names these clients
        return found
    records = sorted({record_id for record_id, client in rest if client in legacy})
    vectors = {
        str(record_id): bytes(vector)
        for record_id, vector in raw.execute(
            "SELECT record_id, state_vector FROM records WHERE record_id = ANY(%s)", (records,)
        )
    }
    found.update(legacy_owners(legacy, rest, vectors))
    return found


def put_meta(raw: Conn, key: str, value: str) -> None:
    raw.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def replace_conflicts_of(raw: Conn, rows_by_record: Mapping[str, Sequence[ConflictRow]]) -> None:
    """Replace the rows of many records: one delete, one batch of inserts."""
    raw.execute("DELETE FROM conflicts WHERE record_id = ANY(%s)", (list(rows_by_record),))
    rows = [
        (c.record_id, c.id, c.kind, c.subject, c.severity, c.payload)
        for record_rows in rows_by_record.values()
        for c in record_rows
    ]
    if rows:
        with raw.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO conflicts (record_id, id, kind, subject, severity, payload)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )


def read_identity(raw: Conn) -> Identity | None:
    row = raw.execute(
        "SELECT replica_id, role, server_id, server_url, organisation FROM identity"
    ).fetchone()
    return None if row is None else Identity(*row)


_GAVE_UP = (
    pg_errors.LockNotAvailable,  # lock_timeout
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.TransactionRollback,
    pg_errors.QueryCanceled,  # statement_timeout
)
"""Errors of a transaction PostgreSQL rolled back for others' sake, its connection sound."""


def translate(exc: psycopg.Error, what: str, where: str) -> StorageError:
    """A caresync error for a psycopg error (the edge of the store).

    ``where`` names the database (its URL without a password).
    """
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, pg_errors.DataCorrupted | pg_errors.IndexCorrupted):
        return CorruptDatabaseError(f"{what}: the database {where} is damaged ({message})")
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return StorageError(f"{what}: {where} was opened read-only; nothing was written")
    if isinstance(exc, pg_errors.DiskFull):
        return StorageError(f"{what}: the database server's disk is full; nothing was written")
    if isinstance(exc, _GAVE_UP):
        # OperationalErrors too, but the connection is sound: no network fault to look for.
        return StorageError(
            f"{what}: {where} gave this call up ({message}): a lock or time limit, or "
            "other transactions in its way; nothing of it was stored: try again"
        )
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(
            f"{what}: lost or refused the connection to PostgreSQL at {where} ({message}); "
            "check that the server runs and is reachable, then try again"
        )
    return StorageError(f"{what} ({where}): {message}")
