"""Recognising a caresync database, creating one, and migrating it forward.

Theory of operation
-------------------
A file is never written before it is recognised. :func:`read_header` looks at
the first 100 bytes with plain file I/O: not SQLite, another application's
``application_id``, or a ``user_version`` newer than :data:`SCHEMA_VERSION`
is refused right there. :func:`read_marks` then confirms the marks through a
read-only SQLite connection (which also sees a header still in the
write-ahead log). Only then does the store open the file for writing, and
:func:`migrate` runs the missing steps of :data:`SCHEMA_STEPS` in one
``BEGIN IMMEDIATE`` transaction, re-reading the version inside it: a crash
mid-migration leaves the old version, whole.

A new database is built under a temporary name in the same directory and
linked into place only when complete (:mod:`caresync.storage.sqlite`), so a
file at the user's path is either a whole caresync database or not ours.
These functions run on the store's database thread; they take a plain
``sqlite3.Connection`` in autocommit mode (``isolation_level=None``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from caresync.exceptions import DatabaseTooNewError, NotACaresyncDatabaseError, StorageError
from caresync.storage.schema import (
    APPLICATION_ID,
    FORMAT_KEY,
    FORMAT_VALUE,
    SCHEMA_STEPS,
    SCHEMA_VERSION,
    SQLITE_MAGIC,
)

__all__ = ["Marks", "create_schema", "migrate", "read_header", "read_marks", "refuse_unless_ours"]

_HEADER_SIZE = 100
_USER_VERSION_OFFSET = 60
_APPLICATION_ID_OFFSET = 68


@dataclass(frozen=True, slots=True)
class Marks:
    """What a database says about itself."""

    application_id: int
    user_version: int
    format: str | None


def read_header(path: Path) -> Marks:
    """Recognise a file by its first 100 bytes, opening it read-only with plain I/O.

    Raises NotACaresyncDatabaseError or DatabaseTooNewError; the file is not changed.
    """
    try:
        with path.open("rb") as file:
            header = file.read(_HEADER_SIZE)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    if len(header) < _HEADER_SIZE or not header.startswith(SQLITE_MAGIC):
        raise NotACaresyncDatabaseError(
            f"{path} is not a caresync database (not an SQLite file); it was left untouched"
        )
    marks = Marks(
        application_id=int.from_bytes(
            header[_APPLICATION_ID_OFFSET : _APPLICATION_ID_OFFSET + 4], "big"
        ),
        user_version=int.from_bytes(header[_USER_VERSION_OFFSET : _USER_VERSION_OFFSET + 4], "big"),
        format=None,
    )
    if marks.application_id != APPLICATION_ID:
        raise NotACaresyncDatabaseError(
            f"{path} is an SQLite database of another application; it was left untouched"
        )
    if marks.user_version > SCHEMA_VERSION:
        raise _too_new(path, marks.user_version)
    return marks


def read_marks(conn: sqlite3.Connection) -> Marks:
    """Read the marks through SQLite (no writes)."""
    application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    fmt: str | None = None
    if has_meta is not None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (FORMAT_KEY,)).fetchone()
        fmt = None if row is None else str(row[0])
    return Marks(application_id, user_version, fmt)


def refuse_unless_ours(path: Path, marks: Marks) -> None:
    """Raise unless the marks say: a caresync database this code can open."""
    if marks.application_id != APPLICATION_ID or marks.format != FORMAT_VALUE:
        raise NotACaresyncDatabaseError(f"{path} is not a caresync database; it was left untouched")
    if marks.user_version > SCHEMA_VERSION:
        raise _too_new(path, marks.user_version)
    if marks.user_version < 1:
        raise NotACaresyncDatabaseError(
            f"{path} carries caresync's mark but no schema version; it was left untouched"
        )


def create_schema(conn: sqlite3.Connection, *, now_ms: int, version: int = SCHEMA_VERSION) -> None:
    """Lay out an empty database at ``version`` (older versions only for tests), in one txn."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _apply_steps(conn, 0, version)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?), (?, ?)",
            (FORMAT_KEY, FORMAT_VALUE, "caresync.created_ms", str(now_ms)),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it had."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        marks = read_marks(conn)
        refuse_unless_ours(path, marks)
        if marks.user_version < SCHEMA_VERSION:
            _apply_steps(conn, marks.user_version, SCHEMA_VERSION)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return marks.user_version


def _apply_steps(conn: sqlite3.Connection, current: int, target: int) -> None:
    for version in range(current + 1, target + 1):
        for statement in SCHEMA_STEPS[version]:
            conn.execute(statement)
    # PRAGMA user_version is part of the transaction: it commits with the steps.
    conn.execute(f"PRAGMA user_version = {int(target)}")


def _too_new(path: Path, version: int) -> DatabaseTooNewError:
    return DatabaseTooNewError(
        f"{path} was written by a newer caresync (schema version {version}; this one "
        f"reads up to {SCHEMA_VERSION}); upgrade caresync. The file was left untouched"
    )
