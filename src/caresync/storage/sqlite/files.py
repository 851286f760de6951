"""The store's files: recognising (or creating, then linking into place) a database file,
its connection, and a backup copy."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from caresync.exceptions import (
    CorruptDatabaseError,
    DatabaseNotFoundError,
    NotACaresyncDatabaseError,
    StorageError,
)
from caresync.storage._cipher import (
    DATABASE_ERRORS,
    SQLITE_ERRORS,
    cipher_of,
    connect,
    refuse_plain,
    refuse_unless_plain,
)
from caresync.storage._fsync import sync_file
from caresync.storage.migrations import create_schema, read_header, read_marks, refuse_unless_ours
from caresync.storage.sqlite._sql import _translate

__all__: list[str] = []  # the store's own helpers; nothing public


_BUSY_TIMEOUT_S = 2.0


def _connection(target: str | Path, *, key: bytes | None, uri: bool) -> sqlite3.Connection:
    """The store's connection, made on its database thread: plain sqlite3 in autocommit
    mode (the store runs its own ``BEGIN``), or encrypted with ``key``."""
    if key is None:
        # Usable from the event loop's thread too, for brief reads while nothing of the
        # store is on its database thread (``DatabaseConnection.run``); never from two
        # threads at once.
        return sqlite3.connect(
            target, uri=uri, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    return connect(target, key=key, uri=uri, timeout=_BUSY_TIMEOUT_S)


def _recognise_or_create(path: Path, create: bool, now_ms: int, key: bytes | None) -> None:
    """Refuse a file that is not ours; create a missing one only if asked."""
    if not path.exists():
        if not create:
            raise DatabaseNotFoundError(
                f"there is no caresync database at {path}, and create=False: nothing was created"
            )
        _create_file(path, now_ms, key)
    elif not path.is_file():
        raise NotACaresyncDatabaseError(f"{path} is not a file; it was left untouched")
    _recognise(path, key)


def _recognise(path: Path, key: bytes | None) -> None:
    """Refuse a file that is not a caresync database we can open; never write to it.

    An encrypted file has no readable header: with a key, the marks are read
    through the encrypting SQLite (after refusing a plain file, which a key cannot open).
    """
    if key is None:
        try:
            read_header(path)
        except NotACaresyncDatabaseError:
            refuse_unless_plain(path)  # encrypted? say so, rather than "not a database"
            raise
    else:
        refuse_plain(path)
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = connect(uri, key=key, uri=True, timeout=_BUSY_TIMEOUT_S)
    except SQLITE_ERRORS as exc:
        raise _translate(exc, f"opening {path}") from exc
    try:
        marks = read_marks(conn)
    except DATABASE_ERRORS as exc:
        error = _translate(exc, f"opening {path}")
        if isinstance(error, CorruptDatabaseError):
            raise NotACaresyncDatabaseError(
                f"{path} is not a readable caresync database ({exc}); it was left untouched"
            ) from exc
        raise error from exc
    finally:
        conn.close()
    refuse_unless_ours(path, marks)


def _backup_into(raw: sqlite3.Connection, target: Path, key: bytes | None) -> None:
    """Copy the database of ``raw`` into a new file at ``target`` (see ``backup``)."""
    if target.exists():
        raise StorageError(f"{target} exists; a backup never overwrites a file")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        raise StorageError(f"cannot create a backup in {target.parent}: {exc}") from exc
    partial_copy = Path(name)
    try:
        os.fchmod(fd, 0o600)  # mkstemp's 0600 less the umask: exactly 0600
        os.close(fd)
        # The copy in the same format as the database (the backup API copies pages,
        # and the formats keep different room per page for their nonce and tag).
        copy = connect(partial_copy, key=key, cipher=None if key is None else cipher_of(raw))
        try:
            raw.backup(copy)  # one step: one consistent snapshot, same cipher and key
            copy.execute("PRAGMA journal_mode = DELETE").fetchone()  # no -wal beside it
        finally:
            copy.close()
        with partial_copy.open("rb+") as file:
            sync_file(file.fileno())
        os.link(partial_copy, target)  # fails if target appeared meanwhile
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except FileExistsError:
        raise StorageError(f"{target} exists; a backup never overwrites a file") from None
    except OSError as exc:
        raise StorageError(f"backing up to {target} failed: {exc}") from exc
    finally:
        for leftover in (partial_copy, Path(f"{partial_copy}-journal")):
            leftover.unlink(missing_ok=True)  # our own temporary files, never the user's


def _create_file(path: Path, now_ms: int, key: bytes | None) -> None:
    """Build a new database beside ``path`` and link it into place when whole.

    A crash part way leaves at most a hidden ``.<name>.*.creating`` file,
    never a half-made database at ``path``.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".creating", dir=path.parent
        )
    except OSError as exc:
        raise StorageError(f"cannot create a database in {path.parent}: {exc}") from exc
    try:
        # Owner only, whatever the umask (mkstemp's 0600 is masked by it): a replica
        # holds patients, and a server their password hashes too.
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = connect(tmp, key=key)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            create_schema(conn, now_ms=now_ms)
        finally:
            conn.close()  # checkpoints the write-ahead log into the file, and removes it
        with tmp.open("rb+") as file:
            sync_file(file.fileno())
        _link_into_place(tmp, path)
    except SQLITE_ERRORS as exc:
        raise _translate(exc, f"creating {path}") from exc
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc}") from exc
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)  # our own temporary file, never the user's
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_into_place(tmp: Path, path: Path) -> None:
    """Give the finished temporary file its name, never replacing an existing file."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        # Someone created a file there meanwhile: leave it alone; opening checks it.
        return
    except OSError:
        # No hard links on this file system: copy into a file that must not exist yet.
        with path.open("xb") as target, tmp.open("rb") as source:
            while chunk := source.read(1 << 20):
                target.write(chunk)
            target.flush()
            sync_file(target.fileno())
    # Our connection used WAL; the link is the only name the database keeps.
    if path.stat().st_size == 0:
        raise StorageError(f"{path} was created empty")
