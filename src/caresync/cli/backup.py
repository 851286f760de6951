"""``caresync backup``: a consistent copy of a database, taken while its writer runs.

SQLite's online backup reads one snapshot through a read-only connection, so
the server keeps serving, and the copy holds every transaction committed
before it started and nothing half-done. Copying the database file by hand
while the server runs is not safe: recent commits live in the write-ahead log
beside it, and a copy of the two taken at different moments is inconsistent.

The copy is written under a temporary name, fsynced, then linked into place
(never over an existing file), and checked: it must open as a caresync
database of the same replica and pass the store's consistency check. It holds
every patient, password hash and live session token, so it is created with
mode 0600 (only its owner may read it) before anything is written into it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from caresync.cli.common import add_db, add_json, path, run
from caresync.cli.databases import store_key
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.storage import Identity, SQLiteStore, key_file_for
from caresync.storage._fsync import sync_file
from caresync.storage.servers import is_database_url, shown_database
from caresync.storage.unsynced import PRIVATE_FILE_MODE

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``backup``."""
    backup = commands.add_parser(
        "backup",
        help="copy a database safely, even while the server runs",
        description="Write a consistent copy of a laptop's or a server's database to a new "
        "FILE with SQLite's online backup (the server keeps running), then check the copy. "
        "Never copy a live database or its -wal file by hand.",
    )
    add_db(backup, "the database to copy")
    backup.add_argument("--out", required=True, metavar="FILE", type=path, help="the new file")
    add_json(backup)
    backup.set_defaults(handler=_backup)


def _backup(args: argparse.Namespace, out: Output) -> int:
    if is_database_url(args.db):
        raise CliError(
            f"caresync backs up SQLite files; a PostgreSQL server ({shown_database(args.db)}) "
            "is backed up by PostgreSQL's own tools: pg_dump --format=custom --file=FILE URL "
            "(restore with pg_restore), or continuous archiving. See docs/operations.md",
            ExitCode.USAGE,
        )
    source, target = Path(args.db), Path(args.out)
    key = run(store_key(source))  # an encrypted copy is encrypted with the same key
    # Recognise the source first (missing, not caresync's: refused, nothing made).
    identity = run(_identity(source, key))
    if target.exists():
        raise CliError(f"{target} exists; a backup never overwrites a file", ExitCode.DATABASE)
    if key is None:
        _copy(source, target)
    else:
        run(_copy_encrypted(source, target, key))
    copied, problems, records, feed_head = run(_verify(target, key))
    if copied != identity or problems:
        why = "; ".join(problems[:3]) or "its identity differs from the original's"
        raise CliError(
            f"the copy at {target} does not check out ({why}); keep the previous backup",
            ExitCode.DATABASE,
        )
    out.result(
        {
            "file": str(target),
            "bytes": target.stat().st_size,
            "role": None if identity is None else identity.role,
            "replica_id": None if identity is None else identity.replica_id,
            "records": records,
            "feed_head": feed_head,
            "verified": True,
        }
    )
    return 0


async def _identity(path: Path, key: bytes | None) -> Identity | None:
    async with SQLiteStore.open(path, create=False, read_only=True, key=key) as store:
        return await store.get_identity()


async def _copy_encrypted(source: Path, target: Path, key: bytes) -> None:
    """The copy of an encrypted database, encrypted with the same key, and a laptop's key
    file beside it (the same wrapped copies: the same passwords open both)."""
    keys = key_file_for(target)
    laptop = await asyncio.to_thread(key_file_for(source).exists)
    if laptop and await asyncio.to_thread(keys.exists):
        raise CliError(f"{keys} exists; a backup never overwrites a file", ExitCode.DATABASE)
    async with SQLiteStore.open(source, create=False, read_only=True, key=key) as store:
        await store.backup(target)
    if laptop:
        await asyncio.to_thread(_copy_key_file, key_file_for(source), keys)


def _copy_key_file(source: Path, keys: Path) -> None:
    partial = _new_private_file(keys)
    try:
        shutil.copyfile(source, partial)  # into the 0600 file made for it
        with open(partial, "rb+") as handle:
            sync_file(handle.fileno())
        os.link(partial, keys)  # never over an existing file
        # Its name durable too, as the database's: without it the backup opens with no
        # password after a power cut (the database's own fsync came before this link).
        directory = os.open(keys.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise CliError(f"copying the key file to {keys} failed: {exc}", ExitCode.DATABASE) from exc
    finally:
        partial.unlink(missing_ok=True)


async def _verify(path: Path, key: bytes | None) -> tuple[Identity | None, list[str], int, int]:
    async with SQLiteStore.open(path, create=False, read_only=True, key=key) as copy:
        return (
            await copy.get_identity(),
            await copy.check(),
            await copy.count_records(),
            await copy.feed_head(),
        )


def _copy(source: Path, target: Path) -> None:
    """Back ``source`` up into a new file at ``target`` (fsynced; never overwrites).

    The copy holds every patient, password hash and session token of the
    database: it is created with mode 0600 (only its owner may read it),
    whatever the umask, before a byte is written into it.
    """
    partial: Path | None = None
    uri = source.resolve().as_uri() + "?mode=ro"
    try:
        partial = _new_private_file(target)
        src = sqlite3.connect(uri, uri=True)
        try:
            # An existing empty file is an empty database: SQLite writes into it and
            # keeps its mode (its journal beside it gets the same mode).
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # one step: one consistent snapshot
                # A self-contained file: no write-ahead log beside it (the server's
                # writer turns WAL on again when it opens a restored copy).
                dst.execute("PRAGMA journal_mode = DELETE").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
        with open(partial, "rb+") as handle:
            sync_file(handle.fileno())
        os.link(partial, target)  # fails if target appeared meanwhile: nothing overwritten
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except FileExistsError:
        raise CliError(
            f"{target} exists; a backup never overwrites a file", ExitCode.DATABASE
        ) from None
    except (sqlite3.Error, OSError) as exc:
        raise CliError(f"backing {source} up to {target} failed: {exc}", ExitCode.DATABASE) from exc
    finally:
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def _new_private_file(target: Path) -> Path:
    """A new, empty, hidden file beside ``target``, mode 0600 from its creation."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # mkstemp made it 0600 less the umask: exactly 0600
    finally:
        os.close(fd)
    return Path(name)
