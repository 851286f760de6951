"""Helpers for the store tests: records whose every write's update bytes are captured.

Most live in :mod:`caresync.testing.store_data`, shared with the exported conformance suite.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from caresync.storage.schema import HEAD_JOIN, HEAD_PENDING, HEAD_VECTOR
from caresync.testing.store_data import (
    FakeClock,
    Patient,
    conflict,
    digest,
    revision_ids,
    same_vector,
)

__all__ = [
    "FakeClock",
    "Patient",
    "conflict",
    "digest",
    "revision_ids",
    "same_vector",
    "snapshot",
    "undo_version_18",
    "as_version_17",
    "undo_version_19",
    "undo_version_20",
    "undo_version_21",
    "undo_version_22",
]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in a directory and its digest."""
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file()}


def undo_version_22(conn: sqlite3.Connection) -> None:
    """Take a database of this release back to what version 21 held (inside the caller's
    transaction): nothing set aside (the database must hold none)."""
    conn.execute("DROP TABLE outbox_aside")
    conn.execute("DROP TABLE set_aside")


def undo_version_21(conn: sqlite3.Connection) -> None:
    """Take a database of this release back to what version 20 held (inside the caller's
    transaction): nothing set aside, Yjs clients bound deployment-wide only."""
    undo_version_22(conn)
    conn.execute("DROP TABLE record_clients")


def undo_version_20(conn: sqlite3.Connection) -> None:
    """Take a database of this release back to what version 19 held (inside the caller's
    transaction): accounts without password marks, Yjs clients bound deployment-wide."""
    undo_version_21(conn)
    conn.execute("ALTER TABLE users DROP COLUMN password_mark")


def undo_version_19(conn: sqlite3.Connection) -> None:
    """Take a database of this release back to what version 18 held (inside the caller's
    transaction): nothing set aside, no password marks, no feed epochs."""
    undo_version_20(conn)
    conn.execute("DROP TABLE feed_epochs")


def undo_version_18(conn: sqlite3.Connection) -> None:
    """Take a database of this release back to what version 17 held (inside the caller's
    transaction): log rows without state, each record's row its whole state and counts."""
    conn.execute(
        f"UPDATE records SET (state_vector, pending) = (SELECT {HEAD_VECTOR}, {HEAD_PENDING}"
        f" FROM records r{HEAD_JOIN} WHERE r.record_id = records.record_id),"
        " log_count = log_count + (SELECT COUNT(*) FROM log l"
        " WHERE l.rk = records.rk AND l.id > records.head_at),"
        " log_bytes = log_bytes + (SELECT COALESCE(SUM(LENGTH(l.data)), 0) FROM log l"
        " WHERE l.rk = records.rk AND l.id > records.head_at)"
    )
    conn.execute(
        "CREATE TABLE log_v17 (id INTEGER PRIMARY KEY, rk INTEGER NOT NULL,"
        " data BLOB NOT NULL, created_ms INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO log_v17 SELECT id, rk, data, created_ms FROM log")
    conn.execute("DROP TABLE log")
    conn.execute("ALTER TABLE log_v17 RENAME TO log")
    conn.execute("CREATE INDEX log_by_record ON log (rk)")
    conn.execute("ALTER TABLE records DROP COLUMN head_at")


def as_version_17(path: Path) -> None:
    """Take the closed database at ``path`` back to a file of version 17, in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        undo_version_19(conn)
        undo_version_18(conn)
        conn.execute("PRAGMA user_version = 17")
        conn.execute("COMMIT")
    finally:
        conn.close()
