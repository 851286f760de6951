"""The store's core: opening a file (its writer lock, recognition, migration), the
database thread every call runs on (shared with the process's other stores:
:mod:`.threads`), one transaction per write, and the cache of committed records."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Self

from caresync.exceptions import CorruptDatabaseError, InvalidInputError, StorageError
from caresync.storage._cipher import DATABASE_ERRORS, SQLITE_ERRORS, check_key
from caresync.storage._local import LocalCommits
from caresync.storage._lock import AVAILABLE as LOCK_AVAILABLE
from caresync.storage._lock import WriterLock
from caresync.storage._writes import WriteLike
from caresync.storage.base import StoreOpener, StrPath, card_digest
from caresync.storage.cache import CachedRecord, RecordCache
from caresync.storage.migrations import migrate, read_marks
from caresync.storage.schema import (
    CONNECTION_PRAGMAS,
    HEAD_JOIN,
    HEAD_PENDING,
    HEAD_VECTOR,
    SCHEMA_VERSION,
)
from caresync.storage.sqlite._sql import (
    _IN_CHUNK,
    Job,
    T,
    _marks,
    _read_identity,
    _translate,
)
from caresync.storage.sqlite.files import _backup_into, _connection, _recognise_or_create
from caresync.storage.sqlite.persons import _key_hash, _own_key
from caresync.storage.sqlite.threads import DatabaseConnection

__all__ = ["SQLiteCore"]


_CARD_DIGESTS_SINCE = 15
"""The schema version whose records carry their card's digest (``card_digest``)."""


def _fill_card_digests(raw: sqlite3.Connection) -> None:
    """Each stored card's digest on its record's row, in one transaction: what a database
    migrated from before version 15 lacks (its step adds the column empty). A crash
    before the commit leaves them empty, which only costs a pull a card read."""
    _rewrite_at_open(
        raw,
        lambda: [
            (card_digest(bytes(data)), record_id)
            for record_id, data in raw.execute(
                "SELECT record_id, card FROM person_cards WHERE record_id IN"
                " (SELECT record_id FROM records WHERE card_digest IS NULL)"
            )
        ],
        "UPDATE records SET card_digest = ? WHERE record_id = ?",
    )


_OWN_KEYS_DROPPED_SINCE = 16
"""The schema version from which a card's own key (``r:<record id>``) has no key row."""


def _drop_own_keys(raw: sqlite3.Connection) -> None:
    """Delete the key row of each stored card's own record id, in one transaction: what
    a database migrated from before version 16 holds. A crash before the commit leaves
    them, which only names a card's own record a second time (``check`` accepts it)."""
    _rewrite_at_open(
        raw,
        lambda: [
            (_key_hash(organisation, _own_key(record_id)), rk)
            for record_id, organisation, rk in raw.execute(
                "SELECT c.record_id, c.organisation, r.rk FROM person_cards c"
                " JOIN records r ON r.record_id = c.record_id"
            )
        ],
        "DELETE FROM person_keys WHERE hash = ? AND rk = ?",
    )


def _rewrite_at_open(
    raw: sqlite3.Connection, rows: Callable[[], list[tuple[object, ...]]], statement: str
) -> None:
    """Run ``statement`` for each of ``rows()`` (read inside the transaction) in one
    transaction: the part of a migration SQL cannot compute, done when the store opens."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        raw.executemany(statement, rows())
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


DEFAULT_CHECKPOINT_PAGES = 1000
"""SQLite's own threshold of automatic checkpoints, in pages of the write-ahead log."""
_NAMES_KEPT = 32_768  # record ids by key kept for the change feed's readers (as many as the cache)
_SYNCED_AT = "durable.synced_ms"  # written by make_durable: a commit that syncs
BRIEF_ROWS = 16
"""The most rows a read asked by key may name (or a listing may ask) to run as a brief
read (``SQLiteCore._run``): a live batch's records, a login's reads, one page of hub marks."""
MAX_CHECKPOINT_PAGES = 1_000_000
"""The most ``checkpoint_pages`` may be (4 GB of log)."""


class SQLiteCore:
    """The connection every part runs on: opening and closing, one job per call on the
    connection's database thread, one transaction per write, and the cache of committed
    records."""

    def __init__(
        self,
        conn: DatabaseConnection,
        path: Path,
        *,
        cache: RecordCache,
        clock: Callable[[], int],
    ) -> None:
        self._conn: DatabaseConnection | None = conn
        # Organisations a login's reads found larger than BRIEF_ACCOUNTS: their logins'
        # reads are not brief (see read_resume). Touched by the store's jobs only.
        self._large_organisations: set[str] = set()
        self.path = path
        self.cache = cache
        self._now_ms = clock
        self.migrated_from: int | None = None
        """The schema version the file had, if opening migrated it; else None."""
        self.read_only = False
        """True for a store opened with ``read_only=True``: it refuses every write."""
        self._own_replica_id: str | None = None  # cached: a replica's id never changes
        # Record ids by integer key, as committed (a key, once given, never changes):
        # the change feed names records by key. Touched on the database thread only.
        self._names: dict[int, str] = {}
        self._commits = LocalCommits()  # one process writes it: a local lock suffices
        self.accounts_only = False
        """True for a store opened with ``accounts_only=True`` (see :meth:`open`)."""
        self.damaged: str | None = None
        """Why the database failed its integrity check, or None. A damaged database
        refuses every write (reads, and exporting unsynced work, still work)."""
        self._lock: WriterLock | None = None
        self._key: bytes | None = None  # the database key; never shown (no repr of it)
        self._checkpoint_pages = DEFAULT_CHECKPOINT_PAGES
        self._quick_check = True  # see open(quick_check=...)
        # A commit made without waiting for the disk (append_audit(durable=False)) that
        # no durable commit has followed yet: make_durable() then has work to do.
        # Touched on the database thread only.
        self._unsynced = False
        self._lazy = False  # the commit under way does not wait for the disk

    @classmethod
    def open(
        cls,
        path: StrPath,
        *,
        create: bool = True,
        read_only: bool = False,
        accounts_only: bool = False,
        cache_entries: int = 32768,
        cache_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], int] | None = None,
        key: bytes | None = None,
        checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES,
        quick_check: bool = True,
    ) -> StoreOpener[Self]:
        """Open (or, with ``create``, create) the store at ``path``.

        ``await SQLiteStore.open(path)`` or ``async with SQLiteStore.open(path) as store``.
        A missing file with ``create=False`` raises DatabaseNotFoundError and
        creates nothing. A file that is not a caresync database raises
        NotACaresyncDatabaseError, one from a newer caresync DatabaseTooNewError;
        either way the file is left byte for byte as it was. An older schema is
        migrated forward in one transaction. Opening reads no record.
        ``clock`` returns milliseconds (for outbox times and accounts).

        One process at a time opens a database for writing (StorageError "in
        use" for a second). ``read_only`` opens it for reading even while its
        writer runs: it never creates, migrates or writes (every write raises
        StorageError), and it caches nothing, so each read sees the last commit.
        ``accounts_only`` is the same, except that it may also change accounts
        and enrolments (add a user, set a password, revoke a replica) and append
        to the audit trail (:meth:`append_audit`): tables the writer keeps no
        cache of, so an administrator can change them, and a reader record what
        it read, while a server or a live laptop runs. Writes are then short
        transactions beside the writer's.

        ``key`` (32 random bytes; see :mod:`caresync.storage.keyring`) opens, or
        creates, an encrypted database (AEGIS-256: pages, write-ahead log and
        journal; :mod:`caresync.storage._cipher`); exports of its unsynced work
        are encrypted under it too. No key opens a plain one, as always. An
        encrypted file opened without a key or with a wrong one, and a plain
        file opened with a key, raise DatabaseKeyError and are left byte for
        byte as they were (no -wal or -shm made).

        ``checkpoint_pages``: a commit that leaves the write-ahead log longer than
        this many pages (4 KiB each) also copies the log into the database file
        (SQLite's automatic checkpoint; 1,000 unless given). A laptop raises it and
        checkpoints when a sync is done (:meth:`checkpoint`), so that the sync's own
        commit does not pay for it. Durability never depends on it: every commit is
        synced to the log before it returns.

        ``quick_check=False`` skips SQLite's ``quick_check`` of the whole file at
        open (it reads every page, so its cost grows with the file). Only for a file
        this process checked and closed itself since nothing else could write it, as
        the simulation reopens each laptop for every step; a real laptop opens its
        database once and checks it then.
        """
        if read_only and accounts_only:
            raise InvalidInputError("open a store read_only or accounts_only, not both")
        if key is not None:
            check_key(key)
        if type(checkpoint_pages) is not int or not 1 <= checkpoint_pages <= MAX_CHECKPOINT_PAGES:
            raise InvalidInputError(
                f"checkpoint_pages must be an int from 1 to {MAX_CHECKPOINT_PAGES}, "
                f"not {checkpoint_pages!r}"
            )
        side_door = read_only or accounts_only

        async def factory() -> Self:
            return await cls._open(
                Path(os.fspath(path)),
                create=create and not side_door,
                read_only=read_only,
                accounts_only=accounts_only,
                cache=RecordCache(
                    max_entries=0 if side_door else cache_entries,
                    max_bytes=0 if side_door else cache_bytes,
                ),
                clock=clock or _wall_ms,
                key=key,
                checkpoint_pages=checkpoint_pages,
                quick_check=quick_check,
            )

        return StoreOpener(factory)

    @classmethod
    async def _open(
        cls,
        path: Path,
        *,
        create: bool,
        read_only: bool,
        accounts_only: bool,
        cache: RecordCache,
        clock: Callable[[], int],
        key: bytes | None,
        checkpoint_pages: int = DEFAULT_CHECKPOINT_PAGES,
        quick_check: bool = True,
    ) -> Self:
        await asyncio.to_thread(_recognise_or_create, path, create, clock(), key)
        side_door = read_only or accounts_only
        lock = None if side_door else WriterLock.acquire(path)
        resolved = await asyncio.to_thread(path.resolve)
        target: str | Path = resolved.as_uri() + "?mode=ro" if read_only else path
        try:
            # Made on its database thread, where every job of the store then runs.
            conn = await DatabaseConnection.open(
                lambda: _connection(target, key=key, uri=read_only)
            )
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if isinstance(exc, SQLITE_ERRORS):
                raise _translate(exc, f"opening {path}") from exc
            raise
        store = cls(conn, path, cache=cache, clock=clock)
        store._lock = lock
        store._key = key
        conn.reads_here = key is None  # made by files.py for any thread to use
        store.read_only = read_only
        store.accounts_only = accounts_only
        store._checkpoint_pages = checkpoint_pages
        store._quick_check = quick_check
        try:
            prepare = store._prepare_side_door if side_door else store._prepare
            store.migrated_from = await store._run(f"opening {path}", prepare)
        except BaseException:
            await store._close_quietly()
            raise
        return store

    def _prepare(self, raw: sqlite3.Connection) -> int | None:
        if not LOCK_AVAILABLE:  # pragma: no cover - no advisory locks: SQLite's own lock
            raw.execute("PRAGMA locking_mode = EXCLUSIVE")
        for pragma in CONNECTION_PRAGMAS:
            row = raw.execute(pragma).fetchone()
            if pragma.startswith("PRAGMA journal_mode") and (row is None or row[0] != "wal"):
                raise StorageError(f"{self.path}: the database cannot use a write-ahead log")
        raw.execute(f"PRAGMA wal_autocheckpoint = {int(self._checkpoint_pages)}")
        # Checked before anything is written: SQLite writes into a damaged page
        # without a word when it does not read it first (a sync, a new record).
        try:
            problems = (
                [str(row[0]) for row in raw.execute("PRAGMA quick_check(5)")]
                if self._quick_check
                else ["ok"]
            )
        except DATABASE_ERRORS as exc:  # too damaged even to check
            problems = [str(exc)]
        if problems != ["ok"]:
            self.damaged = "; ".join(problems)
            if read_marks(raw).user_version != SCHEMA_VERSION:
                raise CorruptDatabaseError(
                    f"{self.path} failed its integrity check ({self.damaged}) and needs a "
                    "migration; nothing was written. Restore it from a backup"
                )
            return None
        before = migrate(raw, self.path)
        if before < _CARD_DIGESTS_SINCE:
            _fill_card_digests(raw)
        if before < _OWN_KEYS_DROPPED_SINCE:
            _drop_own_keys(raw)
        return before if before != SCHEMA_VERSION else None

    def _prepare_side_door(self, raw: sqlite3.Connection) -> None:
        if self.read_only:
            raw.execute("PRAGMA query_only = 1")
        else:
            raw.execute("PRAGMA synchronous = FULL")
            raw.execute("PRAGMA fullfsync = ON")  # as CONNECTION_PRAGMAS: on macOS too
        version = read_marks(raw).user_version
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}; this caresync reads version "
                f"{SCHEMA_VERSION}. Open it once for writing (it migrates forward), then read it"
            )

    async def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file, as far as no
        reader holds it back (a passive checkpoint: it waits for nobody). Nothing
        committed depends on it; it spares a later commit doing it (see ``open``'s
        ``checkpoint_pages``)."""
        if self.read_only or self.accounts_only:
            return  # the writer's log is the writer's to checkpoint

        def job(raw: sqlite3.Connection) -> None:
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        await self._run(f"checkpointing {self.path}", job)

    async def close(self) -> None:
        """Close the store (the write-ahead log is checkpointed). Closing twice is harmless."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self.cache.clear()
        try:
            await conn.close()
        except SQLITE_ERRORS as exc:
            raise _translate(exc, f"closing {self.path}") from exc
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    async def _close_quietly(self) -> None:
        """Close after a failed open; the open's own error is the one to report."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*SQLITE_ERRORS):
                await conn.close()
        self._release_lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._conn is None

    @property
    def encrypted(self) -> bool:
        """True for a store opened with a key (an encrypted database)."""
        return self._key is not None

    async def backup(self, target: StrPath) -> None:
        """Write a consistent copy of the database to a new file at ``target``.

        SQLite's online backup copies one snapshot through this store's
        connection (a read-only store copies while its writer runs) into a new
        hidden file beside ``target``, mode 0600 from its creation; it is fsynced
        and linked into place, never over an existing file (StorageError). The
        copy is self-contained (no write-ahead log) and encrypted with this
        store's key, or plain like it.
        """
        destination = Path(os.fspath(target))
        key = self._key
        await self._run(
            f"backing {self.path} up to {destination}",
            lambda raw: _backup_into(raw, destination, key),
        )

    async def _run(self, what: str, job: Job[T], *, brief: bool = False) -> T:
        """Run ``job(raw_connection)`` on the connection's thread; translate its errors.

        ``brief``: a read of a few rows by key (a setting, the feed's head, one
        replica's row). It runs here, on the caller's thread, when the connection's
        thread has no job of this store (every job handed over has finished): the hop
        there and back (two thread wake-ups, 50-150 µs on a virtual machine) costs more
        than such a read (10-30 µs), and a sync makes several. Jobs stay one at a
        time: nothing is handed over while a read runs here (the caller's thread is
        busy with it), and nothing runs here while anything is handed over
        (:meth:`DatabaseConnection.run`)."""
        conn = self._conn
        if conn is None:
            raise StorageError(f"{what}: the store at {self.path} is closed")
        try:
            return await conn.run(job, brief=brief)
        except SQLITE_ERRORS as exc:
            error = _translate(exc, what)
            if isinstance(error, CorruptDatabaseError) and self.damaged is None:
                self.damaged = str(exc)  # found damaged while running: no more writes
            raise error from exc

    async def _read_few(
        self, what: str, few: Callable[[sqlite3.Connection], T | None], job: Job[T]
    ) -> T:
        """A read that is brief when it finds few rows: ``few`` reads at most
        :data:`BRIEF_ROWS` + 1 of them, as a brief read, and gives its answer, or None
        when there were more; ``job`` then reads them all on the connection's thread.

        For reads that are almost always short but have no bound of their own (a
        laptop's outbox, the audit entries it has not sent): a sync with nothing to
        do makes no hop for them, and a large one pays one short read more.

        When a brief read would not run here (an encrypted store's never do; a job of
        the store is on its thread), ``job`` alone is handed over: ``few`` would be a
        hop of its own there, and a second one when there are more rows."""
        conn = self._conn
        if conn is not None and not conn.brief_runs_here:
            return await self._run(what, job)
        found = await self._run(what, few, brief=True)
        if found is not None:
            return found
        return await self._run(what, job)

    def _write(
        self, raw: sqlite3.Connection, body: Callable[[], T], *, accounts: bool = False
    ) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction, committed before returning."""
        if self.read_only or (self.accounts_only and not accounts):
            how = "read-only" if self.read_only else "for accounts only"
            raise StorageError(f"{self.path} was opened {how}; nothing was written")
        if self.damaged is not None:
            raise CorruptDatabaseError(
                f"{self.path} failed its integrity check ({self.damaged}); nothing was "
                "written. Export its unsynced changes (caresync export), then restore the "
                "database from a backup (or enrol a new one and import them)"
            )
        changes = raw.total_changes
        raw.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        if raw.total_changes != changes:
            # A commit that wrote waited for the disk (synchronous = FULL syncs the
            # whole write-ahead log), so every lazy commit before it is durable too.
            self._unsynced = self._lazy
        return result

    def _write_lazily(
        self, raw: sqlite3.Connection, body: Callable[[], T], *, accounts: bool = False
    ) -> T:
        """As :meth:`_write`, without waiting for the disk: committed and visible, safe
        from a crash of this process, durable at the next durable commit or
        :meth:`make_durable` (a power cut before then loses it, whole)."""
        raw.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: commits do not sync
        self._lazy = True
        try:
            return self._write(raw, body, accounts=accounts)
        finally:
            self._lazy = False
            raw.execute("PRAGMA synchronous = FULL")

    async def make_durable(self) -> None:
        """Return once every commit made so far is on disk (one synced commit if a lazy
        one waits; nothing otherwise)."""

        def job(raw: sqlite3.Connection) -> None:
            if self._unsynced:
                self._write(
                    raw,
                    lambda: raw.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (_SYNCED_AT, str(self._now_ms())),
                    ),
                    accounts=True,
                )

        await self._run("making the last commits durable", job)

    def _known(
        self, raw: sqlite3.Connection, writes: Sequence[WriteLike]
    ) -> dict[str, CachedRecord]:
        """What is known of the stored records among those written: cache, then one query."""
        ids = dict.fromkeys(w.record_id for w in writes)
        known = self.cache.get_many(ids)
        missing = [record_id for record_id in ids if record_id not in known]
        for start in range(0, len(missing), _IN_CHUNK):
            chunk = missing[start : start + _IN_CHUNK]
            rows = raw.execute(
                f"SELECT r.record_id, {HEAD_VECTOR}, r.organisation, {HEAD_PENDING}, r.rk"
                f" FROM records r{HEAD_JOIN} WHERE r.record_id IN ({_marks(len(chunk))})",
                chunk,
            )
            for record_id, vector, organisation, pending, key in rows:
                known[record_id] = CachedRecord(bytes(vector), organisation, bool(pending), key=key)
        return known

    def _name(self, pairs: Iterable[tuple[int | None, str]]) -> None:
        """Remember committed (key, record id) pairs (database thread only), keeping at
        most :data:`_NAMES_KEPT` (the oldest go first)."""
        names = self._names
        for key, record_id in pairs:
            if key is not None:
                names[key] = record_id
        excess = len(names) - _NAMES_KEPT
        if excess > 0:
            for key in list(islice(names, excess)):
                del names[key]

    def _current(self, raw: sqlite3.Connection, record_id: str) -> CachedRecord | None:
        """What is known of a committed record: from the cache, else its row (not its bytes)."""
        cached = self.cache.get(record_id)
        if cached is not None:
            return cached
        row = raw.execute(
            f"SELECT {HEAD_VECTOR}, r.organisation, {HEAD_PENDING}, r.rk"
            f" FROM records r{HEAD_JOIN} WHERE r.record_id = ?",
            (record_id,),
        ).fetchone()
        return (
            None if row is None else CachedRecord(bytes(row[0]), row[1], bool(row[2]), key=row[3])
        )

    def _own_id(self, raw: sqlite3.Connection) -> str:
        """This replica's id, whose audit chain is its own (read once: it never changes,
        and a durable edit should not read it again)."""
        if self._own_replica_id is None:
            identity = _read_identity(raw)
            if identity is None:
                raise StorageError(
                    f"{self.path} holds no replica yet: it has no audit trail of its own"
                )
            self._own_replica_id = identity.replica_id
        return self._own_replica_id
