"""Turning a plain database file into an encrypted one in place, losing nothing.

Theory of operation
-------------------
:func:`encrypt_in_place` runs these steps, holding the database's writer lock
(:mod:`caresync.storage._lock`) throughout, so no caresync process writes it
meanwhile:

1. **prepared**: the plain database is switched to a rollback journal, which
   checkpoints its write-ahead log into the file and removes the ``-wal`` and
   ``-shm``: the plain database is then one self-contained file. (Opening it
   switches it back to a write-ahead log.) A reader that has it open makes
   this fail, and nothing is changed.
2. **copied**: ``VACUUM INTO`` writes every table, index and row, and the
   schema version and application id, into a new hidden file beside it
   (``.<name>.*.encrypting``, mode 0600), encrypted with the key in the
   store's format and settings (:func:`caresync.storage._cipher.copy_encrypted`;
   where only SQLCipher's own module is installed, its ``sqlcipher_export``,
   which leaves out the marks: they are copied by hand). SQLite's backup API
   cannot copy between a plain and an encrypted file.
3. **verified**: the copy is opened again with the key, passes
   ``quick_check``, and has the same schema, marks and rows as the plain file
   (a SHA-256 of every table's rows, in the order of all their columns;
   neither copy keeps the hidden rowids of tables without an integer primary
   key, which nothing in caresync refers to).
4. **keyed**: ``write_key_file`` runs (the caller writes the key file, wrapped
   for a user), unless the key file exists already (a conversion resumed).
5. **replaced**: the copy is renamed over the plain file, and the directory
   fsynced. This is the moment the database becomes encrypted.
6. **cleaned**: any ``-wal``, ``-shm`` or ``-journal`` left beside it is removed.

So a crash at any point leaves the plain database whole (steps 1 to 4, with at
most a hidden partial copy beside it, removed by the next run, and after step 4
a key file beside the plain database:
:func:`caresync.storage.laptop_key.unlock_laptop_key` says to run the
conversion again, which finishes it), or the encrypted database whole
with its key file (steps 5 and 6). An error before step 5 removes the partial
copy and leaves the plain database as it was (in rollback-journal mode).

:func:`reencrypt_in_place` (a new format, same key) and :func:`rekey_in_place`
(a new key: a rotation) run the same steps on an encrypted database. A rotation's
step 4 writes the new key file *beside* the old one, and a step **installed**
after step 5 renames it over the old one (:data:`REKEY_STEPS`): before step 5
the old key file opens the database, after it the new one.

The plain file's old pages are not scrubbed from the disk: its blocks are
freed, not overwritten (on an SSD they cannot reliably be). See
docs/operations.md.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from caresync.exceptions import InvalidInputError, StorageError
from caresync.storage._cipher import (
    AEGIS,
    NEW_DATABASE_CIPHER,
    SQLITE_ERRORS,
    check_key,
    cipher_of,
    connect,
    copy_encrypted,
)
from caresync.storage._fsync import sync_file
from caresync.storage._lock import WriterLock

__all__ = ["REKEY_STEPS", "STEPS", "encrypt_in_place", "reencrypt_in_place", "rekey_in_place"]

STEPS = ("prepared", "copied", "verified", "keyed", "replaced", "cleaned")
"""The steps of :func:`encrypt_in_place`, in order (see the module docstring)."""

REKEY_STEPS = ("prepared", "copied", "verified", "keyed", "replaced", "installed", "cleaned")
"""The steps of :func:`rekey_in_place`, in order: those of :data:`STEPS`, and
**installed** (the new key file renamed over the old one) once the database is replaced."""

_BUSY_TIMEOUT_S = 5.0


def _reached(step: str) -> None:
    """Called after each step; the crash tests stop the process here."""


def encrypt_in_place(database: Path, key: bytes, write_key_file: Callable[[], None] | None) -> None:
    """Encrypt the plain database at ``database`` with ``key``, in place.

    ``write_key_file`` is called once the encrypted copy is verified, before it
    replaces the plain file (None: the key file is there already). Blocks: run
    it in a thread. StorageError (nothing changed but the journal mode) if a
    process has the database open, if the copy differs, or on an I/O error.
    """
    check_key(key)
    _rewrite_in_place(database, key, None, write_key_file)


def reencrypt_in_place(database: Path, key: bytes) -> bool:
    """Rewrite the encrypted database at ``database`` in the AEGIS format, same key.

    For a database caresync wrote in SQLCipher's format (before AEGIS): it opens
    and works as it is, but costs more per page written (docs/performance.md).
    The same steps as :func:`encrypt_in_place` (no key file is written: the
    key, and so every user's copy of it, stays the same), and the same
    guarantee: a crash leaves the old file whole, or the new one. False, and
    nothing done, if it is in AEGIS already. Blocks: run it in a thread.
    DatabaseKeyError if ``key`` does not open it; StorageError as
    :func:`encrypt_in_place`, or where SQLite3 Multiple Ciphers is missing.
    """
    check_key(key)
    probe = connect(database, key=key)
    try:
        cipher = cipher_of(probe)
    finally:
        probe.close()
    if cipher == AEGIS:
        return False
    if NEW_DATABASE_CIPHER != AEGIS:
        raise StorageError(
            "rewriting a database in the AEGIS format needs SQLite3 Multiple Ciphers: "
            "pip install apsw-sqlite3mc; it was not changed"
        )
    _rewrite_in_place(database, key, key, None)
    return True


def rekey_in_place(
    database: Path,
    key: bytes,
    new_key: bytes,
    write_key_file: Callable[[], None],
    install_key_file: Callable[[], None],
) -> None:
    """Rewrite the encrypted database at ``database`` (opened with ``key``) under
    ``new_key``, in place, in the AEGIS format: a key rotation.

    The steps of :func:`encrypt_in_place` (:data:`REKEY_STEPS`): ``write_key_file``
    writes the new key file *beside* the old one once the copy is verified, the
    copy replaces the database, then ``install_key_file`` puts the new key file in
    the old one's place. So a crash leaves the old database with the old key
    file (and perhaps a stale new one beside it), or the new database with the new
    key file beside or in place of the old one: never a database that no key file
    opens. Blocks: run it in a thread. DatabaseKeyError if ``key`` does not open it;
    StorageError as :func:`encrypt_in_place`, or where SQLite3 Multiple Ciphers is
    missing; whatever the two callables raise (before the replace, nothing changed).
    """
    check_key(key)
    check_key(new_key)
    if new_key == key:
        raise InvalidInputError("a new key must differ from the old one; nothing was changed")
    if NEW_DATABASE_CIPHER != AEGIS:
        raise StorageError(
            "rewriting a database under a new key needs SQLite3 Multiple Ciphers: "
            "pip install apsw-sqlite3mc; it was not changed"
        )
    _rewrite_in_place(database, new_key, key, write_key_file, install_key_file)


def _rewrite_in_place(
    database: Path,
    key: bytes,
    source_key: bytes | None,
    write_key_file: Callable[[], None] | None,
    after_replace: Callable[[], None] | None = None,
) -> None:
    """The steps of the module docstring: ``database`` (plain if ``source_key`` is
    None, else encrypted with it) rewritten with ``key`` in the store's format;
    ``after_replace`` runs once the copy has replaced it (step "installed")."""
    lock = WriterLock.acquire(database)
    try:
        # Partial copies an interrupted conversion left (their key is lost): ours to remove.
        for stale in database.parent.glob(f".{glob.escape(database.name)}.*.encrypting*"):
            stale.unlink(missing_ok=True)
        _translated(f"preparing {database}", lambda: _to_rollback_journal(database, source_key))
        _reached("prepared")
        try:
            fd, name = tempfile.mkstemp(
                prefix=f".{database.name}.", suffix=".encrypting", dir=database.parent
            )
        except OSError as exc:
            raise StorageError(f"cannot write beside {database}: {exc}; nothing changed") from exc
        copy = Path(name)
        replaced = False
        try:
            try:
                os.fchmod(fd, 0o600)  # mkstemp's 0600 less the umask: exactly 0600
            finally:
                os.close(fd)
            _translated(f"encrypting {database}", lambda: _export(database, copy, key, source_key))
            _reached("copied")
            checking = f"checking the encrypted copy of {database}"
            _translated(checking, lambda: _verify(database, copy, key, source_key))
            _reached("verified")
            if write_key_file is not None:
                write_key_file()
            _reached("keyed")
            os.replace(copy, database)
            replaced = True
            _fsync_directory(database.parent)
            _reached("replaced")
        except OSError as exc:
            if replaced:
                raise StorageError(
                    f"encrypting {database}: its new copy replaced it, then: {exc}"
                ) from exc
            raise StorageError(f"encrypting {database} failed: {exc}; it was not changed") from exc
        finally:
            for leftover in (copy, Path(f"{copy}-journal")):
                leftover.unlink(missing_ok=True)  # ours, never the user's
        if after_replace is not None:
            after_replace()
            _reached("installed")
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        _reached("cleaned")
    finally:
        lock.release()


def _translated(what: str, job: Callable[[], None]) -> None:
    try:
        job()
    except SQLITE_ERRORS as exc:
        busy = "locked" in str(exc).lower() or "busy" in str(exc).lower()
        why = "another process has it open; close it and try again" if busy else str(exc)
        raise StorageError(f"{what}: {why}; the database was not changed") from exc


def _to_rollback_journal(database: Path, source_key: bytes | None) -> None:
    conn = connect(database, key=source_key, timeout=_BUSY_TIMEOUT_S)
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()
    finally:
        conn.close()
    if mode is None or str(mode[0]).lower() != "delete":
        raise StorageError(
            f"{database} cannot leave its write-ahead log (another process has it open?); "
            "close it and try again; nothing was changed"
        )


def _export(database: Path, copy: Path, key: bytes, source_key: bytes | None) -> None:
    if NEW_DATABASE_CIPHER == AEGIS:
        copy_encrypted(database, source_key, copy, key)  # VACUUM INTO, in the AEGIS format
    else:
        _sqlcipher_export(database, copy, key)  # SQLCipher's own module only
    with copy.open("rb+") as file:
        sync_file(file.fileno())


def _sqlcipher_export(database: Path, copy: Path, key: bytes) -> None:
    conn = connect(copy, key=key, timeout=_BUSY_TIMEOUT_S)
    try:
        conn.execute("ATTACH DATABASE ? AS plain KEY ''", (os.fspath(database),))
        conn.execute("SELECT sqlcipher_export('main', 'plain')").fetchall()
        for mark in ("user_version", "application_id"):
            (value,) = conn.execute(f"PRAGMA plain.{mark}").fetchone()
            conn.execute(f"PRAGMA main.{mark} = {int(value)}")
        conn.execute("DETACH DATABASE plain")
    finally:
        conn.close()


def _verify(database: Path, copy: Path, key: bytes, source_key: bytes | None) -> None:
    plain = connect(database.resolve().as_uri() + "?mode=ro", key=source_key, uri=True)
    try:
        encrypted = connect(copy, key=key)
        try:
            checked = [str(row[0]) for row in encrypted.execute("PRAGMA quick_check(5)")]
            if checked != ["ok"]:
                raise StorageError(f"the encrypted copy of {database} fails its check: {checked}")
            if _fingerprint(plain) != _fingerprint(encrypted):
                raise StorageError(
                    f"the encrypted copy of {database} does not hold the same rows; "
                    "the plain database was not changed"
                )
        finally:
            encrypted.close()
    finally:
        plain.close()


def _fingerprint(conn: sqlite3.Connection) -> dict[str, str]:
    """The schema, the marks, and a digest of every table's rows, of one database."""
    schema = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema "
        "WHERE name NOT LIKE 'sqlite_stat%' ORDER BY type, name"
    ).fetchall()
    found = {"schema": repr(schema)}
    for mark in ("user_version", "application_id"):
        found[mark] = repr(conn.execute(f"PRAGMA {mark}").fetchone())
    for kind, name, _table, _sql in schema:
        if kind != "table":
            continue
        quoted = '"' + str(name).replace('"', '""') + '"'
        # Counted by pragma_table_info (what SELECT * gives: hidden columns are left out of
        # both), not by a cursor's description, which APSW keeps only while rows are left.
        columns = _scalar(conn, "SELECT count(*) FROM pragma_table_info(?)", str(name))
        order = ", ".join(str(n) for n in range(1, columns + 1))
        digest = hashlib.sha256()
        for row in conn.execute(f"SELECT * FROM {quoted} ORDER BY {order}"):
            digest.update(repr(row).encode("utf-8", "surrogatepass"))
            digest.update(b"\n")
        found[f"table {name}"] = digest.hexdigest()
    return found


def _scalar(conn: sqlite3.Connection, sql: str, *args: object) -> int:
    row = conn.execute(sql, args).fetchone()
    return 0 if row is None else int(row[0])


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
