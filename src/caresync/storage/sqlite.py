"""The durable replica store: SQLite through aiosqlite.

Theory of operation
-------------------
Every call runs as **one job on aiosqlite's connection thread**: the whole
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) is a single function handed
to that thread, so statements of two coroutines never interleave inside one
transaction, and a durable edit costs one thread round trip plus one fsync.
(aiosqlite has no public call for "run this function on your thread"; we use
its ``_execute``, pinned by the ``aiosqlite`` version range in
``pyproject.toml`` and checked when a store opens.)

Durability: WAL with ``synchronous = FULL`` (see :mod:`caresync.storage.schema`),
so a call that returned has its commit fsynced to the write-ahead log. One
process writes a replica: the store holds a writer lock (:mod:`._lock`) while
open, so the bounded :class:`RecordCache` of merged record bytes can never go
stale behind its back. Other processes may open the same file with
``read_only=True`` while it runs (an operator reading a live server's
database); a read-only store caches nothing and refuses every write.

Opening never writes to a file before recognising it (:mod:`.migrations`).
A new database is built under a temporary name beside the target and
hard-linked into place when complete; nothing here ever renames, truncates or
deletes a file at a path the caller gave.

Errors from sqlite3 and aiosqlite are translated into
:class:`~caresync.exceptions.StorageError` and its subclasses at this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import aiosqlite

from caresync.audit.chain import AuditEntry, AuditEvent
from caresync.exceptions import (
    CorruptDatabaseError,
    DatabaseNotFoundError,
    ExportFileError,
    InvalidInputError,
    NotACaresyncDatabaseError,
    StorageError,
    UnknownRecordError,
    UnsyncedChangesError,
)
from caresync.names import check_display_name, check_organisation, check_username
from caresync.records.persons import PairState, PersonCard, PersonPair, pair_of
from caresync.storage._audit import (
    check_audit_query,
    check_events,
    sql_append,
    sql_entries,
    sql_receive,
    sql_tail,
)
from caresync.storage._cipher import (
    DATABASE_ERRORS,
    INTEGRITY_ERRORS,
    SQLITE_ERRORS,
    check_key,
    connect,
    refuse_plain,
    refuse_unless_plain,
)
from caresync.storage._lock import AVAILABLE as LOCK_AVAILABLE
from caresync.storage._lock import WriterLock
from caresync.storage._updates import (
    EMPTY_UPDATE,
    has_pending,
    merge,
    same_state_vector,
    state_vector_of,
    verify_compaction,
)
from caresync.storage._writes import (
    PersonWrite,
    PlannedRecord,
    Write,
    WriteLike,
    check_meta_key,
    check_rebind,
    local_writes,
    pair_persons,
    plan_writes,
)
from caresync.storage.base import (
    ConflictRow,
    FeedItem,
    HubMark,
    HubOutcome,
    HubSummaryRow,
    Identity,
    IncomingUpdate,
    OutboxItem,
    OutboxSummary,
    QuarantinedUpdate,
    ReplicaInfo,
    SessionRow,
    StoreOpener,
    StrPath,
    UserAccount,
    check_bytes,
    check_client_claims,
    check_client_id,
    check_conflicts,
    check_conflicts_by_record,
    check_count,
    check_hub_marks,
    check_optional_text,
    check_outbox_report,
    check_pair_state,
    check_person,
    check_persons_by_record,
    check_quarantine,
    check_record_ids,
    check_session_selector,
    check_text,
    check_write_remote,
    hub_versions,
    import_conflicts,
    import_persons,
    unknown_records_error,
)
from caresync.storage.cache import CachedRecord, RecordCache
from caresync.storage.migrations import (
    create_schema,
    migrate,
    read_header,
    read_marks,
    refuse_unless_ours,
)
from caresync.storage.schema import (
    APPLICATION_ID,
    CONNECTION_PRAGMAS,
    FORMAT_VALUE,
    SCHEMA_VERSION,
)
from caresync.storage.unsynced import (
    ExportedUpdate,
    UnsyncedExport,
    content_key,
    read_export_file,
    write_export_file,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

_BUSY_TIMEOUT_S = 2.0
_IN_CHUNK = 500  # record ids per "IN (...)" lookup, well under SQLite's parameter limit
_MAX_PROBLEMS = 100


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SQLiteStore:
    """A replica's records, outbox, change feed and accounts in one SQLite file.

    Open it with :meth:`open`; it satisfies :class:`~caresync.storage.base.Store`.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        cache: RecordCache,
        clock: Callable[[], int],
    ) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self._raw: sqlite3.Connection = conn._conn
        self.path = path
        self.cache = cache
        self._now_ms = clock
        self.migrated_from: int | None = None
        """The schema version the file had, if opening migrated it; else None."""
        self.read_only = False
        self._own_replica_id: str | None = None  # cached: a replica's id never changes
        """True for a store opened with ``read_only=True``: it refuses every write."""
        self.accounts_only = False
        """True for a store opened with ``accounts_only=True`` (see :meth:`open`)."""
        self.damaged: str | None = None
        """Why the database failed its integrity check, or None. A damaged database
        refuses every write (reads, and exporting unsynced work, still work)."""
        self._lock: WriterLock | None = None
        self._key: bytes | None = None  # the database key; never shown (no repr of it)

    # ------------------------------------------------------------------ opening

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
    ) -> StoreOpener[SQLiteStore]:
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
        creates, an encrypted database (SQLCipher: pages, write-ahead log and
        journal; :mod:`caresync.storage._cipher`); exports of its unsynced work
        are encrypted under it too. No key opens a plain one, as always. An
        encrypted file opened without a key or with a wrong one, and a plain
        file opened with a key, raise DatabaseKeyError and are left byte for
        byte as they were (no -wal or -shm made).
        """
        if read_only and accounts_only:
            raise InvalidInputError("open a store read_only or accounts_only, not both")
        if key is not None:
            check_key(key)
        side_door = read_only or accounts_only

        async def factory() -> SQLiteStore:
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
    ) -> SQLiteStore:
        await asyncio.to_thread(_recognise_or_create, path, create, clock(), key)
        side_door = read_only or accounts_only
        lock = None if side_door else WriterLock.acquire(path)
        resolved = await asyncio.to_thread(path.resolve)
        target: str | Path = resolved.as_uri() + "?mode=ro" if read_only else path
        conn = _connection(target, key=key, uri=read_only)
        try:
            await conn
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if isinstance(exc, SQLITE_ERRORS):
                raise _translate(exc, f"opening {path}") from exc
            raise
        if not callable(getattr(conn, "_execute", None)):
            await conn.close()
            if lock is not None:
                lock.release()
            raise StorageError("this aiosqlite version is not supported (no connection thread)")
        store = cls(conn, path, cache=cache, clock=clock)
        store._lock = lock
        store._key = key
        store.read_only = read_only
        store.accounts_only = accounts_only
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
        # Checked before anything is written: SQLite writes into a damaged page
        # without a word when it does not read it first (a sync, a new record).
        try:
            problems = [str(row[0]) for row in raw.execute("PRAGMA quick_check(5)")]
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
        return before if before != SCHEMA_VERSION else None

    def _prepare_side_door(self, raw: sqlite3.Connection) -> None:
        if self.read_only:
            raw.execute("PRAGMA query_only = 1")
        else:
            raw.execute("PRAGMA synchronous = FULL")
        version = read_marks(raw).user_version
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}; this caresync reads version "
                f"{SCHEMA_VERSION}. Open it once for writing (it migrates forward), then read it"
            )

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
        """True for a store opened with a key (an SQLCipher database)."""
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

    async def _run(self, what: str, job: Job[T]) -> T:
        """Run ``job(raw_connection)`` on the connection's thread; translate its errors."""
        conn = self._conn
        if conn is None:
            raise StorageError(f"{what}: the store at {self.path} is closed")
        execute = cast(Callable[..., Any], conn._execute)
        try:
            return cast(T, await execute(job, self._raw))
        except SQLITE_ERRORS as exc:
            error = _translate(exc, what)
            if isinstance(error, CorruptDatabaseError) and self.damaged is None:
                self.damaged = str(exc)  # found damaged while running: no more writes
            raise error from exc

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
        raw.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        return result

    # ----------------------------------------------------------- identity, meta

    async def get_identity(self) -> Identity | None:
        """This replica's identity, or None before it is set."""
        return await self._run("reading the identity", _read_identity)

    async def set_identity(self, identity: Identity) -> None:
        """Store the identity; refuses to rebind the replica (see :class:`Identity`)."""

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                check_rebind(_read_identity(raw), identity)
                raw.execute(
                    "INSERT OR REPLACE INTO identity (singleton, replica_id, role, server_id,"
                    " server_url, organisation) VALUES (1, ?, ?, ?, ?, ?)",
                    (
                        identity.replica_id,
                        identity.role,
                        identity.server_id,
                        identity.server_url,
                        identity.organisation,
                    ),
                )

            self._write(raw, body)

        check_rebind(None, identity)
        await self._run("storing the identity", job)

    async def get_meta(self, key: str) -> str | None:
        """A stored setting or checkpoint, or None."""
        check_text(key, "meta key")

        def job(raw: sqlite3.Connection) -> str | None:
            row = raw.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(f"reading meta {key!r}", job)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a setting or checkpoint, committed before returning."""
        check_meta_key(key)
        if not isinstance(value, str):
            raise InvalidInputError("meta values must be strings")

        def job(raw: sqlite3.Connection) -> None:
            self._write(raw, lambda: _put_meta(raw, key, value))

        await self._run(f"storing meta {key!r}", job)

    # ------------------------------------------------------------------ writing

    async def write_local(
        self,
        record_id: str,
        update: bytes,
        *,
        conflicts: Sequence[ConflictRow] | None,
        organisation: str | None = None,
        person: PersonCard | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Commit a local edit: the record's log, the outbox and its conflict rows, at once.

        Returns the edit's outbox sequence number (strictly increasing for the
        life of the file). The commit is fsynced before this returns.
        Raises InvalidUpdateError for bytes that are not an update (nothing stored).
        ``person`` replaces the record's person card, and its pairs, in the same commit;
        ``audit`` is appended to this replica's audit chain in it too.
        """
        check_text(record_id, "record_id")
        events = check_events(audit)
        write = Write(
            record_id,
            check_bytes(update, "update"),
            None if conflicts is None else check_conflicts(record_id, conflicts),
            check_optional_text(organisation, "organisation"),
            check_person(record_id, person),
        )
        seqs = await self._run(
            f"writing record {record_id}", lambda raw: self._write_local(raw, [write], events)
        )
        return seqs[0]

    async def write_local_many(
        self, edits: Sequence[IncomingUpdate], *, audit: Sequence[AuditEvent] = ()
    ) -> list[int]:
        """Commit several local edits in one transaction, all or nothing (see write_local)."""
        writes = local_writes(edits)
        events = check_events(audit)
        if not writes:
            return []
        return await self._run(
            f"writing {len(writes)} records", lambda raw: self._write_local(raw, writes, events)
        )

    def _write_local(
        self, raw: sqlite3.Connection, writes: Sequence[Write], audit: Sequence[AuditEvent] = ()
    ) -> list[int]:
        now = self._now_ms()

        def body() -> tuple[list[int], dict[str, PlannedRecord]]:
            planned = plan_writes(
                writes,
                self._known(raw, writes),
                lambda rid: _full(raw, rid),
                skip_duplicates=False,
            )
            self._store_planned(raw, writes, planned, now, log=True)
            if audit:
                sql_append(raw, self._own_id(raw), audit, now)
            if len(writes) == 1:  # the durable single edit: as few statements as can be
                cursor = raw.execute(
                    "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, ?)",
                    (writes[0].record_id, writes[0].update, now),
                )
                if cursor.lastrowid is None:
                    raise CorruptDatabaseError("the outbox gave the edit no number")
                return [cursor.lastrowid], planned
            head = _sequence(raw, "outbox")
            raw.executemany(
                "INSERT INTO outbox (record_id, data, created_ms) VALUES (?, ?, ?)",
                [(w.record_id, w.update, now) for w in writes],
            )
            seqs = list(range(head + 1, head + 1 + len(writes)))
            _expect_sequence(raw, "outbox", seqs[-1] if seqs else head)
            return seqs, planned

        return self._commit_planned(raw, body)

    async def write_remote(
        self,
        items: Sequence[IncomingUpdate],
        *,
        checkpoint: tuple[str, str] | None = None,
        to_feed: bool = False,
        origin: str | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        claim_clients: Mapping[int, str] | None = None,
        hub: Mapping[str, HubMark] | None = None,
    ) -> list[int]:
        """Commit a batch of received updates, and the checkpoint, in one transaction.

        Returns one number per item: its change-feed sequence number when
        ``to_feed`` (the server), or 0 when nothing was appended — without
        ``to_feed``, or when the record already held every part of the update
        (a resent update is stored once). Remote updates never enter the outbox.
        ``quarantine``: updates that could not be merged, kept aside with them.
        """
        writes = check_write_remote(items, checkpoint, to_feed, origin)
        kept_aside = check_quarantine(quarantine)
        claims = check_client_claims(claim_clients)
        marks = check_hub_marks(hub, to_feed)
        if checkpoint is not None:
            check_meta_key(checkpoint[0])
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> list[int]:
            def body() -> tuple[list[int], dict[str, PlannedRecord]]:
                planned = plan_writes(
                    writes,
                    self._known(raw, writes),
                    lambda rid: _full(raw, rid),
                    skip_duplicates=True,
                )
                # Into the feed, an update is stored once: its feed row is its log row.
                self._store_planned(raw, writes, planned, now, log=not to_feed)
                seqs = [0] * len(writes)
                if to_feed:
                    appended = sorted(i for p in planned.values() for i in p.appended)
                    # Numbered explicitly after the highest: a clash would raise, not reuse.
                    head = _feed_head(raw)
                    rows = []
                    for seq, i in enumerate(appended, start=head + 1):
                        plan = planned[writes[i].record_id]
                        rows.append((seq, plan.key, plan.organisation, origin, writes[i].update))
                        seqs[i] = seq
                    raw.executemany(
                        "INSERT INTO feed (seq, rk, organisation, origin, data)"
                        " VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )
                if claims:
                    raw.executemany(
                        "INSERT OR IGNORE INTO yjs_clients (client, replica_id) VALUES (?, ?)",
                        list(claims.items()),
                    )
                if kept_aside:
                    raw.executemany(
                        "INSERT INTO quarantine (record_id, data, reason, received_ms)"
                        " VALUES (?, ?, ?, ?)",
                        [(q.record_id, q.update, q.reason, now) for q in kept_aside],
                    )
                if marks:
                    _write_hub_marks(raw, marks, hub_versions(writes, seqs), planned)
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return seqs, planned

            return self._commit_planned(raw, body)

        return await self._run(f"storing {len(writes)} received updates", job)

    # --------------------------------------------------------------- hub outbox

    async def hub_summaries(self, organisation: str | None = None) -> list[HubSummaryRow]:
        """The health-hub outbox (of that organisation's records), by record id."""
        check_optional_text(organisation, "organisation")
        sql = f"SELECT {_HUB_COLUMNS} FROM hub_outbox"
        args: tuple[object, ...] = ()
        if organisation is not None:
            sql += " WHERE organisation = ?"
            args = (organisation,)
        sql += " ORDER BY record_id"
        return await self._run(
            "reading the hub outbox",
            lambda raw: [HubSummaryRow(*row) for row in raw.execute(sql, args)],
        )

    async def record_hub_attempt(self, record_id: str, attempted_ms: int) -> None:
        """Note that a summary of the record is being sent now."""
        check_text(record_id, "record_id")
        check_count(attempted_ms, "attempted_ms")

        def job(raw: sqlite3.Connection) -> None:
            self._write(
                raw,
                lambda: raw.execute(
                    "UPDATE hub_outbox SET last_attempt_ms = ? WHERE record_id = ?",
                    (attempted_ms, record_id),
                ),
            )

        await self._run(f"noting a hub attempt for {record_id}", job)

    async def record_hub_outcome(self, record_id: str, version: int, outcome: HubOutcome) -> bool:
        """Store what became of sending ``version`` (see :class:`HubOutcome`)."""
        check_text(record_id, "record_id")
        check_count(version, "version", minimum=1)
        if not isinstance(outcome, HubOutcome):
            raise InvalidInputError(f"outcome must be a HubOutcome, not {type(outcome).__name__}")

        def job(raw: sqlite3.Connection) -> bool:
            def body() -> bool:
                if outcome.acknowledged:
                    raw.execute(
                        "UPDATE hub_outbox SET sent_version = MAX(COALESCE(sent_version, 0), ?)"
                        " WHERE record_id = ?",
                        (version, record_id),
                    )
                cursor = raw.execute(
                    "UPDATE hub_outbox SET state = ?, reason = ?, attempts = ?,"
                    " next_attempt_ms = ? WHERE record_id = ? AND version = ?",
                    (
                        outcome.state,
                        outcome.reason,
                        outcome.attempts,
                        outcome.next_attempt_ms,
                        record_id,
                        version,
                    ),
                )
                return bool(cursor.rowcount)

            return self._write(raw, body)

        return await self._run(f"storing a hub outcome for {record_id}", job)

    def _commit_planned(
        self,
        raw: sqlite3.Connection,
        body: Callable[[], tuple[list[int], dict[str, PlannedRecord]]],
    ) -> list[int]:
        try:
            seqs, planned = self._write(raw, body)
        except BaseException:
            # The cache holds only committed state; after a failed commit, be sure.
            self.cache.clear()
            raise
        self.cache.put_many([(record_id, plan.cached) for record_id, plan in planned.items()])
        return seqs

    def _store_planned(
        self,
        raw: sqlite3.Connection,
        writes: Sequence[WriteLike],
        planned: dict[str, PlannedRecord],
        now: int,
        *,
        log: bool,
    ) -> None:
        """Write the records' rows, their log rows (with ``log``) and their conflict rows.

        Gives each new record its integer key first (``plan.key``).
        """
        new_rows = []
        changed_rows = []
        organisation_rows = []
        appended: list[int] = []
        next_key = 0
        for plan in planned.values():
            if plan.is_new:
                if not next_key:
                    next_key = _scalar(raw, "SELECT MAX(rk) FROM records") + 1
                plan.key, next_key = next_key, next_key + 1
                new_rows.append(
                    (
                        plan.record_id,
                        plan.organisation,
                        plan.state_vector,
                        plan.pending,
                        len(plan.appended),
                        plan.appended_bytes,
                        now,
                        now,
                        plan.key,
                    )
                )
            else:
                if plan.key is None:
                    raise CorruptDatabaseError(f"record {plan.record_id} has no key; run check()")
                if plan.changed or plan.appended:
                    changed_rows.append(
                        (
                            plan.state_vector,
                            plan.pending,
                            len(plan.appended),
                            plan.appended_bytes,
                            now,
                            plan.record_id,
                        )
                    )
                if plan.organisation_set:
                    organisation_rows.append((plan.organisation, plan.record_id))
            appended.extend(plan.appended)
        if new_rows:
            raw.executemany(
                "INSERT INTO records (record_id, organisation, state_vector, pending, log_count,"
                " log_bytes, created_ms, updated_ms, rk) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_rows,
            )
        if changed_rows:
            # The organisation is set apart: naming it here would rewrite its index entry.
            raw.executemany(
                "UPDATE records SET state_vector = ?, pending = ?, log_count = log_count + ?,"
                " log_bytes = log_bytes + ?, updated_ms = ? WHERE record_id = ?",
                changed_rows,
            )
        if organisation_rows:
            raw.executemany(
                "UPDATE records SET organisation = ? WHERE record_id = ? AND organisation IS NULL",
                organisation_rows,
            )
        if log:
            # Log rows in the order the writes came, whatever their record.
            raw.executemany(
                "INSERT INTO log (rk, data, created_ms) VALUES (?, ?, ?)",
                [
                    (planned[writes[i].record_id].key, writes[i].update, now)
                    for i in sorted(appended)
                ],
            )
        replaced = {p.record_id: p.conflicts for p in planned.values() if p.conflicts is not None}
        if replaced:
            _replace_conflicts_of(raw, replaced)
        persons = {
            p.record_id: PersonWrite(p.organisation, p.person, p.is_new)
            for p in planned.values()
            if p.person is not None
        }
        # A record given an organisation keeps its card, now compared within it.
        moved = [p for p in planned.values() if p.organisation_set and p.person is None]
        if moved:
            stored = _read_cards(raw, [p.record_id for p in moved])
            persons.update(
                (p.record_id, PersonWrite(p.organisation, stored[p.record_id]))
                for p in moved
                if p.record_id in stored
            )
        if persons:
            _store_persons(raw, persons)

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
                "SELECT record_id, state_vector, organisation, pending, rk FROM records"
                f" WHERE record_id IN ({_marks(len(chunk))})",
                chunk,
            )
            for record_id, vector, organisation, pending, key in rows:
                known[record_id] = CachedRecord(bytes(vector), organisation, bool(pending), key=key)
        return known

    def _current(self, raw: sqlite3.Connection, record_id: str) -> CachedRecord | None:
        """What is known of a committed record: from the cache, else its row (not its bytes)."""
        cached = self.cache.get(record_id)
        if cached is not None:
            return cached
        row = raw.execute(
            "SELECT state_vector, organisation, pending, rk FROM records WHERE record_id = ?",
            (record_id,),
        ).fetchone()
        return (
            None if row is None else CachedRecord(bytes(row[0]), row[1], bool(row[2]), key=row[3])
        )

    async def set_conflicts(self, record_id: str, conflicts: Sequence[ConflictRow]) -> None:
        """Replace a stored record's conflict rows (after the rules changed, say)."""
        check_text(record_id, "record_id")
        rows = check_conflicts(record_id, conflicts)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if _record_row(raw, record_id) is None:
                    raise UnknownRecordError(f"no record {record_id} is stored here")
                _replace_conflicts_of(raw, {record_id: rows})

            self._write(raw, body)

        await self._run(f"storing conflicts of {record_id}", job)

    async def set_conflicts_many(
        self,
        rows_by_record: Mapping[str, Sequence[ConflictRow]],
        *,
        persons: Mapping[str, PersonCard] | None = None,
    ) -> None:
        """Replace the conflict rows (and person cards) of many stored records in one transaction.

        All checked first (see :meth:`Store.set_conflicts_many`); a re-index
        writes a chunk of records per commit instead of one commit per record.
        Each card is stored under its record's stored organisation.
        """
        rows = check_conflicts_by_record(rows_by_record)
        cards = check_persons_by_record(persons)
        ids = list(dict.fromkeys([*rows, *cards]))

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                # Committed records are in the cache or the table; ask SQLite for the rest.
                cached = self.cache.get_many(ids)
                found = {record_id: known.organisation for record_id, known in cached.items()}
                for chunk in _chunks([i for i in ids if i not in cached]):
                    sql = (
                        "SELECT record_id, organisation FROM records"
                        f" WHERE record_id IN ({_marks(len(chunk))})"
                    )
                    found.update((row[0], row[1]) for row in raw.execute(sql, chunk))
                missing = [record_id for record_id in ids if record_id not in found]
                if missing:
                    raise unknown_records_error(missing, len(ids))
                _replace_conflicts_of(raw, rows)
                if cards:
                    _store_persons(
                        raw,
                        {rid: PersonWrite(found[rid], card) for rid, card in cards.items()},
                    )

            if ids:
                self._write(raw, body)

        await self._run(f"storing conflicts of {len(ids)} records", job)

    # ------------------------------------------------------------------ reading

    async def load(self, record_id: str) -> bytes | None:
        """The record's state merged with its log, as one update; None if unknown."""
        check_text(record_id, "record_id")
        cached = self.cache.get(record_id)
        if cached is not None and cached.merged is not None:
            return cached.merged

        def job(raw: sqlite3.Connection) -> bytes | None:
            current = self._current(raw, record_id)
            if current is None:
                return None
            merged = _full(raw, record_id)
            self.cache.put(record_id, current._replace(merged=merged))
            return merged

        return await self._run(f"loading record {record_id}", job)

    async def load_many(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """What :meth:`load` returns, for many records in one database job.

        Unknown ids are absent from the dict; it lists the others in the order
        asked. Records whose merged bytes are cached cost nothing; the rest are
        read in one read transaction (so all of them as of one commit), a few
        hundred ids per query, and merged on the database thread.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))
        found: dict[str, bytes] = {}
        missing: list[str] = []
        for record_id in ids:
            cached = self.cache.get(record_id)
            if cached is not None and cached.merged is not None:
                found[record_id] = cached.merged
            else:
                missing.append(record_id)
        if missing or self._conn is None:
            found.update(
                await self._run(
                    f"loading {len(missing)} records", lambda raw: self._load_many(raw, missing)
                )
            )
        return {record_id: found[record_id] for record_id in ids if record_id in found}

    def _load_many(self, raw: sqlite3.Connection, ids: list[str]) -> dict[str, bytes]:
        rows: list[tuple[str, CachedRecord, bytes, int]] = []
        pieces: dict[int, list[bytes]] = {}
        raw.execute("BEGIN")  # one snapshot for every chunk, even beside another process
        try:
            for chunk in _chunks(ids):
                first = len(rows)
                for record_id, vector, organisation, pending, log_count, key, state in raw.execute(
                    "SELECT r.record_id, r.state_vector, r.organisation, r.pending, r.log_count,"
                    " r.rk, s.state FROM records r LEFT JOIN states s ON s.record_id = r.record_id"
                    f" WHERE r.record_id IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    known = CachedRecord(bytes(vector), organisation, bool(pending), key=key)
                    state = EMPTY_UPDATE if state is None else bytes(state)
                    rows.append((record_id, known, state, log_count))
                keys = [row[1].key for row in rows[first:] if row[3]]
                if not keys:
                    continue
                marks = _marks(len(keys))
                for key, data in raw.execute(
                    f"SELECT rk, data FROM log WHERE rk IN ({marks}) ORDER BY rk, id", keys
                ):
                    pieces.setdefault(key, []).append(bytes(data))
                # Unfolded feed rows, by record; sorted here, which spares SQLite a sort.
                fed: dict[int, list[tuple[int, bytes]]] = {}
                for key, seq, data in raw.execute(
                    "SELECT f.rk, f.seq, f.data FROM feed f JOIN records r ON r.rk = f.rk"
                    f" WHERE f.rk IN ({marks}) AND f.seq > r.feed_folded",
                    keys,
                ):
                    fed.setdefault(key, []).append((seq, bytes(data)))
                for key, rows_of_key in fed.items():
                    pieces.setdefault(key, []).extend(data for _, data in sorted(rows_of_key))
        finally:
            raw.execute("COMMIT")
        loaded: dict[str, bytes] = {}
        for record_id, known, state, log_count in rows:
            more = pieces.get(known.key) if log_count and known.key is not None else None
            merged = merge([state, *more], record_id=record_id) if more else state
            loaded[record_id] = merged
            self.cache.put(record_id, known._replace(merged=merged))
        return loaded

    async def state_vector(self, record_id: str) -> bytes | None:
        """The record's stored state vector (of state and log together), or None."""
        check_text(record_id, "record_id")
        cached = self.cache.get(record_id)
        if cached is not None:
            return cached.state_vector

        def job(raw: sqlite3.Connection) -> bytes | None:
            row = raw.execute(
                "SELECT state_vector FROM records WHERE record_id = ?", (record_id,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(f"reading the state vector of {record_id}", job)

    async def has_record(self, record_id: str) -> bool:
        """True if the record is stored here."""
        check_text(record_id, "record_id")
        if self.cache.get(record_id) is not None:
            return True
        return await self._run(
            f"looking up {record_id}", lambda raw: _record_row(raw, record_id) is not None
        )

    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Record ids in ascending order, after ``after``: pages for a first copy."""
        check_optional_text(organisation, "organisation")
        check_optional_text(after, "after")
        lim = -1 if limit is None else check_count(limit, "limit")
        if organisation is None:
            sql = "SELECT record_id FROM records WHERE record_id > ? ORDER BY record_id LIMIT ?"
            args: tuple[object, ...] = (after or "", lim)
        else:
            sql = (
                "SELECT record_id FROM records WHERE organisation = ? AND record_id > ?"
                " ORDER BY record_id LIMIT ?"
            )
            args = (organisation, after or "", lim)
        return await self._run(
            "listing records", lambda raw: [r[0] for r in raw.execute(sql, args)]
        )

    async def count_records(self, organisation: str | None = None) -> int:
        """How many records are stored (in that organisation)."""
        check_optional_text(organisation, "organisation")
        if organisation is None:
            return await self._run(
                "counting records", lambda raw: _scalar(raw, "SELECT COUNT(*) FROM records")
            )
        return await self._run(
            "counting records",
            lambda raw: _scalar(
                raw, "SELECT COUNT(*) FROM records WHERE organisation = ?", organisation
            ),
        )

    async def client_owners(self, clients: Collection[int]) -> dict[int, str]:
        """The replica each of these Yjs client ids is bound to (unbound ones are absent)."""
        wanted = sorted({check_client_id(c) for c in clients})

        def job(raw: sqlite3.Connection) -> dict[int, str]:
            found: dict[int, str] = {}
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                for client, replica_id in raw.execute(
                    "SELECT client, replica_id FROM yjs_clients"
                    f" WHERE client IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    found[int(client)] = str(replica_id)
            return found

        return await self._run("reading Yjs client owners", job)

    async def record_organisations(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """The organisation of each stored record named (unknown ids are absent)."""
        ids = check_record_ids(record_ids)

        def job(raw: sqlite3.Connection) -> dict[str, str | None]:
            found: dict[str, str | None] = {}
            for chunk in _chunks(ids):
                for record_id, organisation in raw.execute(
                    "SELECT record_id, organisation FROM records"
                    f" WHERE record_id IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    found[record_id] = organisation
            return found

        return await self._run(f"reading the organisations of {len(ids)} records", job)

    async def log_length(self, record_id: str) -> int:
        """How many updates the record's log holds since its last compaction (0 if unknown)."""
        check_text(record_id, "record_id")
        return await self._run(
            f"reading the log of {record_id}",
            lambda raw: _scalar(
                raw, "SELECT log_count FROM records WHERE record_id = ?", record_id
            ),
        )

    # ---------------------------------------------------------------- conflicts

    async def conflicts(
        self,
        record_id: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ConflictRow]:
        """Open conflict rows ordered by (record_id, id), read from the conflict index.

        ``after`` is the (record_id, id) of the last row of the previous page.
        """
        check_optional_text(record_id, "record_id")
        lim = -1 if limit is None else check_count(limit, "limit")
        after_key = ("", "") if after is None else (str(after[0]), str(after[1]))
        columns = "id, record_id, kind, subject, severity, payload"
        if record_id is None:
            sql = (
                f"SELECT {columns} FROM conflicts WHERE (record_id, id) > (?, ?)"
                " ORDER BY record_id, id LIMIT ?"
            )
            args: tuple[object, ...] = (*after_key, lim)
        else:
            sql = (
                f"SELECT {columns} FROM conflicts WHERE record_id = ? AND id > ?"
                " ORDER BY id LIMIT ?"
            )
            args = (record_id, after_key[1] if after_key[0] == record_id else "", lim)

        def job(raw: sqlite3.Connection) -> list[ConflictRow]:
            return [
                ConflictRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
                for r in raw.execute(sql, args)
            ]

        return await self._run("listing conflicts", job)

    async def count_conflicts(self, record_id: str | None = None) -> int:
        """How many conflict rows are open (for one record, or in all)."""
        check_optional_text(record_id, "record_id")
        if record_id is None:
            return await self._run(
                "counting conflicts", lambda raw: _scalar(raw, "SELECT COUNT(*) FROM conflicts")
            )
        return await self._run(
            "counting conflicts",
            lambda raw: _scalar(
                raw, "SELECT COUNT(*) FROM conflicts WHERE record_id = ?", record_id
            ),
        )

    async def conflict_rows(self, record_ids: Sequence[str]) -> dict[str, tuple[ConflictRow, ...]]:
        """The stored conflict rows of many records, in one database job.

        Each record's rows are ordered by id. A record without rows (or not
        stored here) is absent: read the result with ``rows.get(record_id, ())``.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: sqlite3.Connection) -> dict[str, tuple[ConflictRow, ...]]:
            found: dict[str, list[ConflictRow]] = {}
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                for chunk in _chunks(ids):
                    for r in raw.execute(
                        "SELECT id, record_id, kind, subject, severity, payload FROM conflicts"
                        f" WHERE record_id IN ({_marks(len(chunk))}) ORDER BY record_id, id",
                        chunk,
                    ):
                        row = ConflictRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]))
                        found.setdefault(row.record_id, []).append(row)
            finally:
                raw.execute("COMMIT")
            return {record_id: tuple(found[record_id]) for record_id in ids if record_id in found}

        return await self._run(f"reading the conflicts of {len(ids)} records", job)

    # ---------------------------------------------------------- the person index

    async def person_cards(self, record_ids: Sequence[str]) -> dict[str, PersonCard]:
        """The stored person cards of these records, in the order asked (none: absent).

        CorruptDatabaseError, naming the record, for a stored card that does not parse.
        """
        ids = list(dict.fromkeys(check_record_ids(record_ids)))

        def job(raw: sqlite3.Connection) -> dict[str, PersonCard]:
            raw.execute("BEGIN")  # one snapshot for every chunk
            try:
                found = _read_cards(raw, ids)
            finally:
                raw.execute("COMMIT")
            return {record_id: found[record_id] for record_id in ids if record_id in found}

        return await self._run(f"reading the person cards of {len(ids)} records", job)

    async def person_pairs(
        self,
        record_id: str | None = None,
        *,
        state: PairState | None = None,
        organisation: str | None = None,
    ) -> list[PersonPair]:
        """Stored pairs (of one record, in one state, of one organisation), by record ids.

        CorruptDatabaseError, naming the two records, for a stored pair that
        does not parse or does not match its row.
        """
        check_optional_text(record_id, "record_id")
        wanted = check_pair_state(state)
        check_optional_text(organisation, "organisation")
        where: list[str] = []
        args: list[object] = []
        if wanted is not None:
            where.append("state = ?")
            args.append(wanted.value)
        if organisation is not None:
            where.append("organisation = ?")
            args.append(organisation)
        columns = "SELECT first, second, state, payload FROM person_pairs"
        if record_id is None:
            sql = columns + (f" WHERE {' AND '.join(where)}" if where else "")
        else:
            # Either side: the primary key finds it as first, an index as second.
            more = "".join(f" AND {w}" for w in where)
            sql = f"{columns} WHERE first = ?{more} UNION ALL {columns} WHERE second = ?{more}"
            args = [record_id, *args, record_id, *args]
        sql += " ORDER BY first, second"

        def job(raw: sqlite3.Connection) -> list[PersonPair]:
            return [
                _parse_pair(first, second, row_state, bytes(payload))
                for first, second, row_state, payload in raw.execute(sql, args)
            ]

        return await self._run("reading person pairs", job)

    # ------------------------------------------------------------------- outbox

    async def pending(self, limit: int = 1000, *, after_seq: int = 0) -> list[OutboxItem]:
        """Up to ``limit`` unacknowledged local updates with seq > ``after_seq``, oldest first."""
        check_count(limit, "limit")
        check_count(after_seq, "after_seq")

        def job(raw: sqlite3.Connection) -> list[OutboxItem]:
            return [
                OutboxItem(r[0], r[1], bytes(r[2]), r[3])
                for r in raw.execute(
                    "SELECT seq, record_id, data, created_ms FROM outbox WHERE seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
            ]

        return await self._run("reading the outbox", job)

    async def pending_count(self) -> int:
        """How many local updates wait for the server's acknowledgement."""
        return await self._run(
            "counting the outbox", lambda raw: _scalar(raw, "SELECT COUNT(*) FROM outbox")
        )

    async def oldest_pending_ms(self) -> int | None:
        """When the oldest unacknowledged update was written (ms), or None if none waits."""

        def job(raw: sqlite3.Connection) -> int | None:
            row = raw.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
            return None if row is None else int(row[0])

        return await self._run("reading the outbox", job)

    async def acknowledge(self, up_to_seq: int) -> int:
        """Drop outbox rows with seq <= ``up_to_seq`` (the server committed them).

        Only the outbox shrinks; the records keep every update. Refuses a
        sequence number this replica never gave out. Returns how many rows went.
        """
        check_count(up_to_seq, "up_to_seq")

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                head = _sequence(raw, "outbox")
                if up_to_seq > head:
                    raise InvalidInputError(
                        f"cannot acknowledge up to {up_to_seq}: this replica's outbox has only "
                        f"reached {head}"
                    )
                return raw.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,)).rowcount

            return self._write(raw, body)

        return await self._run("acknowledging the outbox", job)

    async def outbox_summary(self) -> OutboxSummary:
        """The outbox's count, oldest time and seq range, read in one query."""

        def job(raw: sqlite3.Connection) -> OutboxSummary:
            row = raw.execute(
                "SELECT COUNT(*), MIN(seq),"
                " (SELECT created_ms FROM outbox ORDER BY seq LIMIT 1),"
                " (SELECT seq FROM sqlite_sequence WHERE name = 'outbox')"
                " FROM outbox"
            ).fetchone()
            return OutboxSummary(int(row[0]), row[2], row[1], int(row[3] or 0))

        return await self._run("reading the outbox", job)

    async def renumber_outbox(
        self, above: int, *, checkpoint: tuple[str, str] | None = None
    ) -> int:
        """Number every waiting update after ``above`` and every seq given out, in order."""
        check_count(above, "above")
        if checkpoint is not None:
            check_meta_key(checkpoint[0])
            check_text(checkpoint[1], "checkpoint value", max_length=4096)

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                start = max(above, _sequence(raw, "outbox"))
                seqs = [r[0] for r in raw.execute("SELECT seq FROM outbox ORDER BY seq")]
                # Highest first, each to a number above every existing one: no clash.
                moves = [(start + index + 1, seq) for index, seq in enumerate(seqs)]
                raw.executemany("UPDATE outbox SET seq = ? WHERE seq = ?", reversed(moves))
                last = start + len(seqs)
                if (
                    raw.execute(
                        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (last,)
                    ).rowcount
                    == 0
                ):
                    raw.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (last,)
                    )
                if checkpoint is not None:
                    _put_meta(raw, checkpoint[0], checkpoint[1])
                return len(seqs)

            return self._write(raw, body)

        return await self._run("renumbering the outbox", job)

    # -------------------------------------------------------------------- feed

    async def feed_since(
        self,
        after_seq: int,
        *,
        limit: int,
        organisation: str | None = None,
        exclude_origin: str | None = None,
    ) -> list[FeedItem]:
        """Change-feed items with seq > ``after_seq``, in order, at most ``limit``.

        ``exclude_origin`` leaves out items written with that origin (they
        still count as passed for a caller that checkpoints at the head).
        """
        check_count(after_seq, "after_seq")
        check_count(limit, "limit")
        check_optional_text(organisation, "organisation")
        if exclude_origin is not None:
            check_text(exclude_origin, "exclude_origin")
        where = ["seq > ?"]
        args: list[object] = [after_seq]
        if organisation is not None:
            where.insert(0, "organisation = ?")
            args.insert(0, organisation)
        if exclude_origin is not None:
            where.append("origin IS NOT ?")  # rows of no origin are kept
            args.append(exclude_origin)
        # A row names its record by key; the id is read from records_by_key.
        sql = (
            "SELECT seq, (SELECT r.record_id FROM records r WHERE r.rk = feed.rk), data,"
            f" organisation, origin FROM feed WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        )
        args.append(limit)

        def job(raw: sqlite3.Connection) -> list[FeedItem]:
            items = [FeedItem(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in raw.execute(sql, args)]
            if any(item.record_id is None for item in items):
                raise CorruptDatabaseError("the change feed holds a row of no record; run check()")
            return items

        return await self._run("reading the change feed", job)

    async def feed_head(self) -> int:
        """The highest change-feed number given out (0 when the feed is empty)."""
        return await self._run("reading the change feed", _feed_head)

    # ------------------------------------------------------------- maintenance

    async def compact(self, record_id: str) -> int:
        """Fold the record's log into its state, in one transaction; returns how many updates.

        Before committing, checks that the new state holds exactly what state
        and log held (same state vector as stored, same decoded content);
        otherwise raises CorruptDatabaseError and changes nothing. History is
        never dropped (merging keeps every revision) and the outbox is not touched.
        """
        check_text(record_id, "record_id")

        def job(raw: sqlite3.Connection) -> int:
            def body() -> tuple[int, CachedRecord | None]:
                row = raw.execute(
                    "SELECT organisation, state_vector, rk, feed_folded FROM records"
                    " WHERE record_id = ?",
                    (record_id,),
                ).fetchone()
                if row is None:
                    raise UnknownRecordError(f"no record {record_id} is stored here")
                organisation, vector, key, folded = row[0], bytes(row[1]), row[2], row[3]
                state = _state(raw, record_id)
                log = raw.execute(
                    "SELECT id, data FROM log WHERE rk = ? ORDER BY id", (key,)
                ).fetchall()
                fed = raw.execute(
                    "SELECT seq, data FROM feed WHERE rk = ? AND seq > ? ORDER BY seq",
                    (key, folded),
                ).fetchall()
                if not log and not fed:
                    return 0, None
                updates = [bytes(r[1]) for r in log] + [bytes(r[1]) for r in fed]
                compacted = merge([state, *updates], record_id=record_id)
                problem = verify_compaction(state, updates, compacted, vector)
                if problem is not None:
                    raise CorruptDatabaseError(
                        f"compaction of record {record_id} refused, nothing changed: {problem}"
                    )
                pending = has_pending(compacted, vector)
                raw.execute(
                    "INSERT OR REPLACE INTO states (record_id, state) VALUES (?, ?)",
                    (record_id, compacted),
                )
                # Feed rows are folded by moving the mark past them: the feed keeps them.
                raw.execute(
                    "UPDATE records SET pending = ?, log_count = 0, log_bytes = 0,"
                    " feed_folded = ? WHERE record_id = ?",
                    (pending, fed[-1][0] if fed else folded, record_id),
                )
                if log:
                    raw.execute("DELETE FROM log WHERE rk = ? AND id <= ?", (key, log[-1][0]))
                return len(updates), CachedRecord(vector, organisation, pending, compacted, key=key)

            try:
                folded_count, cached = self._write(raw, body)
            except BaseException:
                self.cache.discard(record_id)
                raise
            if cached is not None:
                self.cache.put(record_id, cached)
            return folded_count

        return await self._run(f"compacting record {record_id}", job)

    async def check(self) -> list[str]:
        """A full consistency check; returns the problems found (empty when sound).

        Reads the whole database: SQLite's own ``quick_check``, the format
        marks, rows without their record, every record's state and log
        (decodable, and merging to the stored state vector), log counters,
        and outbox and feed numbers.
        """
        return await self._run("checking the database", self._check)

    def _check(self, raw: sqlite3.Connection) -> list[str]:
        problems: list[str] = []
        raw.execute("BEGIN")
        try:
            problems.extend(
                f"sqlite: {r[0]}" for r in raw.execute("PRAGMA quick_check") if r[0] != "ok"
            )
            if problems:
                return problems
            marks = read_marks(raw)
            if marks.application_id != APPLICATION_ID or marks.format != FORMAT_VALUE:
                problems.append("the caresync marks (application id, format) are missing")
            if marks.user_version != SCHEMA_VERSION:
                problems.append(f"schema version {marks.user_version}, not {SCHEMA_VERSION}")
            for table in ("states", "outbox", "conflicts"):
                orphans = _scalar(
                    raw,
                    f"SELECT COUNT(*) FROM {table} WHERE record_id NOT IN"
                    " (SELECT record_id FROM records)",
                )
                if orphans:
                    problems.append(f"{orphans} {table} rows belong to no stored record")
            for sql, problem in _KEY_CHECKS:
                count = _scalar(raw, sql)
                if count:
                    problems.append(f"{count} {problem}")
            if _scalar(raw, "SELECT COALESCE(MAX(seq), 0) FROM outbox") > _sequence(raw, "outbox"):
                problems.append("outbox numbers run ahead of their sequence")
            for seq, record_id, data in raw.execute("SELECT seq, record_id, data FROM outbox"):
                try:
                    merge([bytes(data)], record_id=record_id)
                except InvalidInputError as exc:
                    problems.append(f"outbox row {seq}: {exc}")
            problems.extend(self._check_records(raw))
            problems.extend(_check_persons(raw))
        finally:
            raw.execute("ROLLBACK")
        if len(problems) > _MAX_PROBLEMS:
            problems[_MAX_PROBLEMS:] = [f"... and {len(problems) - _MAX_PROBLEMS} more"]
        return problems

    def _check_records(self, raw: sqlite3.Connection) -> Iterable[str]:
        records = raw.execute(
            "SELECT r.record_id, COALESCE(s.state, ?), r.state_vector, r.pending, r.log_count,"
            " r.log_bytes, r.rk, r.feed_folded FROM records r"
            " LEFT JOIN states s ON s.record_id = r.record_id",
            (EMPTY_UPDATE,),
        )
        for record_id, state, vector, pending, log_count, log_bytes, key, folded in records:
            log = _pieces(raw, key, folded)
            if len(log) != log_count or sum(map(len, log)) != log_bytes:
                yield f"record {record_id}: its log counters do not match its log"
            try:
                merged = merge([bytes(state), *log], record_id=record_id)
                if not same_state_vector(state_vector_of(merged, record_id=record_id), vector):
                    yield f"record {record_id}: its stored state vector does not match its content"
                elif not pending and has_pending(merged, vector):
                    yield f"record {record_id}: holds waiting updates but is not marked so"
            except InvalidInputError as exc:
                yield f"record {record_id}: {exc}"
            cached = self.cache.get(record_id)
            if cached is not None and not same_state_vector(cached.state_vector, vector):
                yield f"record {record_id}: the cache disagrees with the database"

    # ------------------------------------------------------------ unsynced work

    # ---------------------------------------------------------------- audit trail

    async def append_audit(
        self, events: Sequence[AuditEvent], *, replica_id: str | None = None
    ) -> list[AuditEntry]:
        """Append ``events`` to this replica's own audit chain, in one transaction."""
        checked = check_events(events)
        if replica_id is not None:
            check_text(replica_id, "replica_id")
        if not checked:
            return []
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> list[AuditEntry]:
            # Through the side door too: a reader beside a running writer records its reads.
            return self._write(
                raw,
                lambda: sql_append(raw, replica_id or self._own_id(raw), checked, now),
                accounts=True,
            )

        return await self._run("writing the audit trail", job)

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

    async def audit_entries(
        self,
        *,
        replica_id: str | None = None,
        record_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Audit entries in chain order (replica, line, number), filtered as asked."""
        check_audit_query(replica_id, record_id, after_seq, limit)
        return await self._run(
            "reading the audit trail",
            lambda raw: sql_entries(
                raw, replica_id=replica_id, record_id=record_id, after_seq=after_seq, limit=limit
            ),
        )

    async def audit_tail(self, replica_id: str | None = None) -> tuple[int, bytes]:
        """The last (number, hash) of the replica's newest chain line (this replica's
        own chain when None); ``(0, GENESIS)`` when it has none."""
        if replica_id is not None:
            check_text(replica_id, "replica_id")

        def job(raw: sqlite3.Connection) -> tuple[int, bytes]:
            rid = replica_id if replica_id is not None else self._own_id(raw)
            row = raw.execute(
                "SELECT MAX(line) FROM audit_trail WHERE replica_id = ?", (rid,)
            ).fetchone()
            return sql_tail(raw, rid, 0 if row is None or row[0] is None else int(row[0]))

        return await self._run("reading the audit trail", job)

    async def receive_audit(self, replica_id: str, entries: Sequence[AuditEntry]) -> int:
        """Keep the audit entries another replica sent, in one transaction (a server's
        job); returns the number of the last one. AuditError, with nothing kept, for
        entries that are malformed, of another replica, or that continue no chain line."""
        check_text(replica_id, "replica_id")
        batch = tuple(entries)

        def job(raw: sqlite3.Connection) -> int:
            return self._write(raw, lambda: sql_receive(raw, replica_id, batch))

        return await self._run(f"keeping the audit trail of {replica_id}", job)

    async def export_unsynced(self, path: StrPath) -> int:
        """Write every pending update to a new file at ``path``; returns how many.

        The file never overwrites an existing one, is fsynced, and carries a
        version and a checksum (format: :mod:`caresync.storage.unsynced`). An
        encrypted store writes it encrypted under its key.
        """

        def job(raw: sqlite3.Connection) -> UnsyncedExport:
            identity = _read_identity(raw)
            rows = raw.execute(
                "SELECT o.seq, o.record_id, r.organisation, o.created_ms, o.data FROM outbox o"
                " LEFT JOIN records r ON r.record_id = o.record_id ORDER BY o.seq"
            ).fetchall()
            return UnsyncedExport(
                replica_id=None if identity is None else identity.replica_id,
                exported_ms=self._now_ms(),
                updates=tuple(ExportedUpdate(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows),
            )

        export = await self._run("exporting unsynced changes", job)
        await asyncio.to_thread(partial(write_export_file, key=self._key), path, export)
        return len(export.updates)

    async def import_unsynced(
        self,
        path: StrPath,
        *,
        conflicts: Mapping[str, Sequence[ConflictRow]] | None = None,
        persons: Mapping[str, PersonCard] | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Re-apply an export's updates as local writes (they enter the outbox again).

        All or nothing, in one transaction, with the conflict rows given for
        the records touched (the others keep theirs), and ``audit`` appended to
        this replica's audit chain. Returns how many updates.
        """
        events = check_events(audit)
        export = await asyncio.to_thread(partial(read_export_file, key=self._key), path)
        ids = [u.record_id for u in export.updates]
        rows_at = import_conflicts(ids, conflicts)
        cards_at = import_persons(ids, persons)
        writes = [
            Write(u.record_id, u.update, rows_at.get(i), u.organisation, cards_at.get(i))
            for i, u in enumerate(export.updates)
        ]
        seqs = await self._run(
            "importing unsynced changes", lambda raw: self._write_local(raw, writes, events)
        )
        return len(seqs)

    async def discard_unsynced(self, *, exported_to: StrPath) -> int:
        """Empty the outbox, if and only if ``exported_to`` holds every pending update.

        Raises UnsyncedChangesError (and deletes nothing) when the file is
        missing, damaged, or lacks any pending update. The records keep the
        updates; only the duty to upload them goes. Returns how many rows went.
        """
        try:
            export = await asyncio.to_thread(partial(read_export_file, key=self._key), exported_to)
        except ExportFileError as exc:
            raise UnsyncedChangesError(
                f"refused to discard unsynced changes: {exc}; export them first"
            ) from exc
        kept = export.keys()

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                rows = raw.execute("SELECT seq, record_id, data FROM outbox ORDER BY seq")
                missing = [
                    seq
                    for seq, record_id, data in rows
                    if content_key(record_id, bytes(data)) not in kept
                ]
                if missing:
                    raise UnsyncedChangesError(
                        f"refused to discard unsynced changes: {len(missing)} pending updates "
                        f"(outbox {missing[0]}...) are not in {exported_to}; export them again"
                    )
                return raw.execute("DELETE FROM outbox").rowcount

            return self._write(raw, body)

        return await self._run("discarding unsynced changes", job)

    # --------------------------------------------------------------- quarantine

    async def quarantined(self, record_id: str | None = None) -> list[QuarantinedUpdate]:
        """Updates kept aside because they could not be merged, oldest first."""
        if record_id is not None:
            check_text(record_id, "record_id")
        sql = "SELECT record_id, data, reason, received_ms, id FROM quarantine"
        args: tuple[object, ...] = ()
        if record_id is not None:
            sql += " WHERE record_id = ?"
            args = (record_id,)

        def job(raw: sqlite3.Connection) -> list[QuarantinedUpdate]:
            return [
                QuarantinedUpdate(r[0], bytes(r[1]), r[2], r[3], r[4])
                for r in raw.execute(sql + " ORDER BY id", args)
            ]

        return await self._run("reading the quarantine", job)

    async def count_quarantined(self) -> int:
        """How many updates are kept aside."""
        return await self._run(
            "counting the quarantine", lambda raw: _scalar(raw, "SELECT COUNT(*) FROM quarantine")
        )

    # ----------------------------------------------------------------- accounts

    async def add_user(
        self,
        organisation: str,
        username: str,
        password_hash: str,
        *,
        display_name: str | None = None,
    ) -> None:
        """Add a user to an organisation; InvalidInputError if the name is taken there."""
        check_organisation(organisation)
        check_username(username)
        check_text(password_hash, "password_hash", max_length=4096)
        if display_name is not None:
            check_display_name(display_name)
        now = self._now_ms()

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if raw.execute(
                    "SELECT 1 FROM users WHERE organisation = ? AND username = ?",
                    (organisation, username),
                ).fetchone():
                    raise InvalidInputError(f"user {username!r} exists in {organisation!r}")
                raw.execute(
                    "INSERT INTO users (organisation, username, password_hash, created_ms,"
                    " display_name) VALUES (?, ?, ?, ?, ?)",
                    (organisation, username, password_hash, now, display_name),
                )

            self._write(raw, body, accounts=True)

        await self._run(f"adding user {username!r}", job)

    async def get_user(self, organisation: str, username: str) -> UserAccount | None:
        """A user of the organisation, or None."""
        check_text(organisation, "organisation")
        check_text(username, "username")

        def job(raw: sqlite3.Connection) -> UserAccount | None:
            row = raw.execute(
                "SELECT password_hash, created_ms, disabled_ms, display_name FROM users"
                " WHERE organisation = ? AND username = ?",
                (organisation, username),
            ).fetchone()
            if row is None:
                return None
            return UserAccount(organisation, username, row[0], row[1], row[2], row[3])

        return await self._run(f"reading user {username!r}", job)

    async def set_display_name(
        self, organisation: str, username: str, display_name: str | None
    ) -> None:
        """Set (or clear) how people see an account; InvalidInputError for an unknown user."""
        check_text(organisation, "organisation")
        check_text(username, "username")
        if display_name is not None:
            check_display_name(display_name)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if not raw.execute(
                    "UPDATE users SET display_name = ? WHERE organisation = ? AND username = ?",
                    (display_name, organisation, username),
                ).rowcount:
                    raise InvalidInputError(f"no user {username!r} in {organisation!r}")

            self._write(raw, body, accounts=True)

        await self._run(f"naming user {username!r}", job)

    async def organisation_accounts(self, organisation: str) -> dict[str, str]:
        """Every account of the organisation: username → display name (else username)."""
        check_text(organisation, "organisation")

        def job(raw: sqlite3.Connection) -> dict[str, str]:
            return {
                str(name): str(shown or name)
                for name, shown in raw.execute(
                    "SELECT username, display_name FROM users WHERE organisation = ?"
                    " ORDER BY username",
                    (organisation,),
                )
            }

        return await self._run(f"listing the accounts of {organisation!r}", job)

    async def replica_accounts(self, replica_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """The accounts that have logged in on each of these replicas."""
        wanted = sorted({check_text(r, "replica_id") for r in replica_ids})

        def job(raw: sqlite3.Connection) -> dict[str, frozenset[str]]:
            found: dict[str, set[str]] = {}
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                for replica_id, username in raw.execute(
                    "SELECT replica_id, username FROM replica_accounts"
                    f" WHERE replica_id IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    found.setdefault(str(replica_id), set()).add(str(username))
            return {replica_id: frozenset(names) for replica_id, names in found.items()}

        return await self._run("reading who logged in on replicas", job)

    async def set_password_hash(
        self, organisation: str, username: str, password_hash: str, *, end_sessions: bool = True
    ) -> None:
        """Replace a user's password hash; InvalidInputError for an unknown user.

        A new password ends the user's sessions (in the same transaction), so a
        token taken before the change resumes nothing; ``end_sessions=False``
        keeps them (a rehash of the same password).
        """
        check_text(organisation, "organisation")
        check_text(username, "username")
        check_text(password_hash, "password_hash", max_length=4096)

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                changed = raw.execute(
                    "UPDATE users SET password_hash = ? WHERE organisation = ? AND username = ?",
                    (password_hash, organisation, username),
                ).rowcount
                if not changed:
                    raise InvalidInputError(f"no user {username!r} in {organisation!r}")
                if end_sessions:
                    _end_user_sessions(raw, organisation, username)

            self._write(raw, body, accounts=True)

        await self._run(f"updating user {username!r}", job)

    async def set_user_disabled(self, organisation: str, username: str, disabled: bool) -> None:
        """Disable an account (its sessions end at once) or enable it again."""
        check_text(organisation, "organisation")
        check_text(username, "username")
        when = self._now_ms() if disabled else None

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                changed = raw.execute(
                    "UPDATE users SET disabled_ms = CASE WHEN ? IS NULL THEN NULL"
                    " ELSE COALESCE(disabled_ms, ?) END"
                    " WHERE organisation = ? AND username = ?",
                    (when, when, organisation, username),
                ).rowcount
                if not changed:
                    raise InvalidInputError(f"no user {username!r} in {organisation!r}")
                if disabled:
                    _end_user_sessions(raw, organisation, username)

            self._write(raw, body, accounts=True)

        await self._run(f"{'disabling' if disabled else 'enabling'} user {username!r}", job)

    async def enrol_replica(
        self,
        replica_id: str,
        organisation: str,
        *,
        enrolled_by: str | None = None,
        device_name: str | None = None,
        secret_hash: str | None = None,
    ) -> ReplicaInfo:
        """Record a replica's enrolment; InvalidInputError for a replica id already known."""
        check_text(replica_id, "replica_id")
        check_text(organisation, "organisation")
        check_optional_text(enrolled_by, "enrolled_by")
        check_optional_text(device_name, "device_name")
        check_optional_text(secret_hash, "secret_hash")
        info = ReplicaInfo(
            replica_id,
            organisation,
            enrolled_by,
            self._now_ms(),
            None,
            None,
            device_name=device_name,
        )

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if raw.execute(
                    "SELECT 1 FROM replicas WHERE replica_id = ?", (replica_id,)
                ).fetchone():
                    raise InvalidInputError(f"replica {replica_id!r} is enrolled already")
                raw.execute(
                    "INSERT INTO replicas (replica_id, organisation, enrolled_by, enrolled_ms,"
                    " device_name, secret_hash) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        replica_id,
                        organisation,
                        enrolled_by,
                        info.enrolled_ms,
                        device_name,
                        secret_hash,
                    ),
                )

            self._write(raw, body)

        await self._run(f"enrolling replica {replica_id!r}", job)
        return info

    async def get_replica(self, replica_id: str) -> ReplicaInfo | None:
        """An enrolled replica, or None."""
        check_text(replica_id, "replica_id")

        def job(raw: sqlite3.Connection) -> ReplicaInfo | None:
            row = raw.execute(
                f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE replica_id = ?", (replica_id,)
            ).fetchone()
            return None if row is None else ReplicaInfo(*row)

        return await self._run(f"reading replica {replica_id!r}", job)

    async def replica_secret_hash(self, replica_id: str) -> str | None:
        """The SHA-256 (hex) of the replica's secret, or None."""
        check_text(replica_id, "replica_id")

        def job(raw: sqlite3.Connection) -> str | None:
            row = raw.execute(
                "SELECT secret_hash FROM replicas WHERE replica_id = ?", (replica_id,)
            ).fetchone()
            return None if row is None or row[0] is None else str(row[0])

        return await self._run(f"reading replica {replica_id!r}", job)

    async def set_replica_secret_hash(self, replica_id: str, secret_hash: str) -> None:
        """Give a replica enrolled without a secret its first one; never replaces one."""
        check_text(replica_id, "replica_id")
        check_text(secret_hash, "secret_hash")

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                changed = raw.execute(
                    "UPDATE replicas SET secret_hash = ? WHERE replica_id = ?"
                    " AND secret_hash IS NULL",
                    (secret_hash, replica_id),
                ).rowcount
                if not changed:
                    raise InvalidInputError(
                        f"replica {replica_id!r} is not enrolled here, or has a secret already"
                    )

            self._write(raw, body, accounts=True)

        await self._run(f"updating replica {replica_id!r}", job)

    async def replicas(self, organisation: str | None = None) -> list[ReplicaInfo]:
        """Every enrolled replica (of that organisation), by id."""
        check_optional_text(organisation, "organisation")
        if organisation is None:
            sql = f"SELECT {_REPLICA_COLUMNS} FROM replicas ORDER BY replica_id"
            args: tuple[object, ...] = ()
        else:
            sql = (
                f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE organisation = ?"
                " ORDER BY replica_id"
            )
            args = (organisation,)
        return await self._run(
            "listing replicas", lambda raw: [ReplicaInfo(*r) for r in raw.execute(sql, args)]
        )

    async def touch_replica(
        self,
        replica_id: str,
        seen_ms: int | None = None,
        *,
        pending: int | None = None,
        oldest_pending_ms: int | None = None,
    ) -> None:
        """Note that a replica was seen now (or at ``seen_ms``), and what it reported."""
        check_text(replica_id, "replica_id")
        seen = self._now_ms() if seen_ms is None else check_count(seen_ms, "seen_ms")
        count, oldest = check_outbox_report(pending, oldest_pending_ms)
        if count is None:
            await self._update_replica(
                replica_id, "UPDATE replicas SET last_seen_ms = ? WHERE replica_id = ?", seen
            )
            return
        await self._update_replica(
            replica_id,
            "UPDATE replicas SET last_seen_ms = ?, pending = ?, oldest_pending_ms = ?"
            " WHERE replica_id = ?",
            seen,
            count,
            oldest,
        )

    async def revoke_replica(self, replica_id: str) -> None:
        """Revoke a replica: it is locked at its next contact, and its sessions end now.

        Revoking twice keeps the first time.
        """
        check_text(replica_id, "replica_id")
        await self._update_replica(
            replica_id,
            "UPDATE replicas SET revoked_ms = COALESCE(revoked_ms, ?) WHERE replica_id = ?",
            self._now_ms(),
            end_sessions=True,
        )

    async def _update_replica(
        self, replica_id: str, sql: str, *values: int | None, end_sessions: bool = False
    ) -> None:
        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if not raw.execute(sql, (*values, replica_id)).rowcount:
                    raise InvalidInputError(f"no replica {replica_id!r} is enrolled here")
                if end_sessions:
                    raw.execute("DELETE FROM sessions WHERE replica_id = ?", (replica_id,))
                    _bump_accounts_generation(raw)

            self._write(raw, body, accounts=True)

        await self._run(f"updating replica {replica_id!r}", job)

    # ----------------------------------------------------------------- sessions

    async def add_session(self, session: SessionRow) -> None:
        """Store a new session; InvalidInputError for a token hash already stored."""
        if not isinstance(session, SessionRow):
            raise InvalidInputError(f"a session must be a SessionRow, not {type(session).__name__}")

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                try:
                    raw.execute(
                        "INSERT INTO sessions (token_hash, organisation, username, replica_id,"
                        " created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            session.token_hash,
                            session.organisation,
                            session.username,
                            session.replica_id,
                            session.created_ms,
                            session.expires_ms,
                        ),
                    )
                except INTEGRITY_ERRORS:
                    raise InvalidInputError("that session token is stored already") from None
                if session.replica_id is not None:
                    _note_replica_account(
                        raw, session.replica_id, session.username, session.created_ms
                    )

            self._write(raw, body, accounts=True)

        await self._run("storing a session", job)

    async def get_session(self, token_hash: str) -> SessionRow | None:
        """The session with that token hash, or None."""
        check_text(token_hash, "token_hash")

        def job(raw: sqlite3.Connection) -> SessionRow | None:
            row = raw.execute(
                "SELECT token_hash, organisation, username, replica_id, created_ms, expires_ms"
                " FROM sessions WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            return None if row is None else SessionRow(*row)

        return await self._run("reading a session", job)

    async def bind_session(self, token_hash: str, replica_id: str) -> None:
        """Bind a session opened before enrolment to its new replica (only an unbound one)."""
        check_text(token_hash, "token_hash")
        check_text(replica_id, "replica_id")

        def job(raw: sqlite3.Connection) -> None:
            def body() -> None:
                if not raw.execute(
                    "UPDATE sessions SET replica_id = ? WHERE token_hash = ?"
                    " AND replica_id IS NULL",
                    (replica_id, token_hash),
                ).rowcount:
                    raise InvalidInputError("no unbound session with that token")
                (username,) = raw.execute(
                    "SELECT username FROM sessions WHERE token_hash = ?", (token_hash,)
                ).fetchone()
                _note_replica_account(raw, replica_id, username, self._now_ms())

            self._write(raw, body, accounts=True)

        await self._run("binding a session", job)

    async def end_sessions(
        self,
        *,
        replica_id: str | None = None,
        user: tuple[str, str] | None = None,
        expired_at_ms: int | None = None,
        token_hash: str | None = None,
    ) -> int:
        """Delete sessions of a replica, of a user, expired ones, or one; returns how many."""
        where, args = _session_filter(replica_id, user, expired_at_ms, token_hash)

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                ended = raw.execute(f"DELETE FROM sessions WHERE {where}", args).rowcount
                if ended and expired_at_ms is None:
                    _bump_accounts_generation(raw)  # ended early: connections re-check
                return ended

            return self._write(raw, body, accounts=True)

        return await self._run("ending sessions", job)

    async def accounts_generation(self) -> int:
        """Grows whenever sessions end early; see :class:`~caresync.storage.base.Store`."""
        return await self._run(
            "reading the accounts generation",
            lambda raw: _scalar(raw, "SELECT value FROM meta WHERE key = ?", _GENERATION_KEY),
        )


_HUB_COLUMNS = (
    "record_id, organisation, version, state, reason, sent_version, attempts,"
    " next_attempt_ms, last_attempt_ms"
)


def _write_hub_marks(
    raw: sqlite3.Connection,
    marks: Mapping[str, HubMark],
    versions: Mapping[str, int],
    planned: Mapping[str, PlannedRecord],
) -> None:
    """Upsert (or delete) the hub outbox rows of the records a batch added to."""
    for record_id, mark in marks.items():
        version = versions.get(record_id)
        if version is None:
            continue  # the batch added nothing to it: its row stays as it is
        if not mark.enabled:
            raw.execute("DELETE FROM hub_outbox WHERE record_id = ?", (record_id,))
            continue
        plan = planned.get(record_id)
        organisation = None if plan is None else plan.organisation
        raw.execute(
            "INSERT INTO hub_outbox (record_id, organisation, version, state, reason,"
            " attempts, next_attempt_ms) VALUES (?, ?, ?, ?, ?, 0, 0)"
            " ON CONFLICT (record_id) DO UPDATE SET organisation = excluded.organisation,"
            " version = excluded.version, state = excluded.state, reason = excluded.reason,"
            " attempts = 0, next_attempt_ms = 0",
            (
                record_id,
                organisation,
                version,
                "pending" if mark.held is None else "held",
                mark.held,
            ),
        )


_REPLICA_COLUMNS = (
    "replica_id, organisation, enrolled_by, enrolled_ms, last_seen_ms, revoked_ms,"
    " pending, oldest_pending_ms, device_name"
)
_GENERATION_KEY = "caresync.accounts_generation"


def _bump_accounts_generation(raw: sqlite3.Connection) -> None:
    raw.execute(
        "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key)"
        " DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (_GENERATION_KEY,),
    )


def _note_replica_account(
    raw: sqlite3.Connection, replica_id: str, username: str, now_ms: int
) -> None:
    """Record that ``username`` logged in on ``replica_id`` (kept from the first time)."""
    raw.execute(
        "INSERT OR IGNORE INTO replica_accounts (replica_id, username, first_ms) VALUES (?, ?, ?)",
        (replica_id, username, now_ms),
    )


def _end_user_sessions(raw: sqlite3.Connection, organisation: str, username: str) -> None:
    raw.execute(
        "DELETE FROM sessions WHERE organisation = ? AND username = ?", (organisation, username)
    )
    _bump_accounts_generation(raw)


_SESSION_WHERE = {
    "replica_id": "replica_id = ?",
    "user": "organisation = ? AND username = ?",
    "expired_at_ms": "expires_ms <= ?",
    "token_hash": "token_hash = ?",
}


def _session_filter(
    replica_id: str | None,
    user: tuple[str, str] | None,
    expired_at_ms: int | None,
    token_hash: str | None,
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause of the one way of choosing sessions the caller gave."""
    kind, values = check_session_selector(replica_id, user, expired_at_ms, token_hash)
    return _SESSION_WHERE[kind], values


# ---------------------------------------------------------------- SQL helpers


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
        "SELECT log_count, rk, feed_folded FROM records WHERE record_id = ?", (record_id,)
    ).fetchone()
    if row is None:
        raise UnknownRecordError(f"no record {record_id} is stored here")
    state = _state(raw, record_id)
    if not row[0]:
        return state
    return merge([state, *_pieces(raw, row[1], row[2])], record_id=record_id)


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


_KEY_CHECKS = (
    ("SELECT COUNT(*) FROM records WHERE rk IS NULL", "records have no key"),
    (
        "SELECT COUNT(*) FROM log WHERE rk NOT IN (SELECT rk FROM records WHERE rk IS NOT NULL)",
        "log rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM feed WHERE rk NOT IN (SELECT rk FROM records WHERE rk IS NOT NULL)",
        "feed rows belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM records WHERE feed_folded > (SELECT COALESCE(MAX(seq), 0) FROM feed)",
        "records are folded past the end of the feed",
    ),
)
"""Queries that count broken links between records, log and feed, and what they mean."""


_PERSON_CHECKS = (
    (
        "SELECT COUNT(*) FROM person_cards WHERE record_id NOT IN (SELECT record_id FROM records)",
        "person cards belong to no stored record",
    ),
    (
        "SELECT COUNT(*) FROM person_keys WHERE rk NOT IN"
        " (SELECT r.rk FROM records r JOIN person_cards c ON c.record_id = r.record_id)",
        "person keys belong to no stored card",
    ),
    (
        "SELECT COUNT(*) FROM person_pairs WHERE first NOT IN (SELECT record_id FROM person_cards)"
        " OR second NOT IN (SELECT record_id FROM person_cards)",
        "person pairs name a record with no stored card",
    ),
    (
        "SELECT COUNT(*) FROM person_cards c JOIN records r ON r.record_id = c.record_id"
        " WHERE c.organisation IS NOT COALESCE(r.organisation, '')",
        "person cards are filed under another organisation than their record's",
    ),
    # Keys filed under another organisation than their card's differ in hash:
    # the check of each card's keys below finds them.
)
"""Queries that count broken links of the person index, and what they mean."""


def _check_persons(raw: sqlite3.Connection) -> Iterable[str]:
    """The person index: rows naming records, cards that parse and hold their keys,
    pairs that parse and are what their two cards make."""
    for sql, problem in _PERSON_CHECKS:
        count = _scalar(raw, sql)
        if count:
            yield f"{count} {problem}"
    for record_id, organisation, data in raw.execute(
        "SELECT record_id, organisation, card FROM person_cards"
    ):
        try:
            card = _parse_card(record_id, bytes(data))
        except CorruptDatabaseError as exc:
            yield str(exc)
            continue
        stored = {
            int(r[0])
            for r in raw.execute(
                "SELECT hash FROM person_keys"
                " WHERE rk = (SELECT rk FROM records WHERE record_id = ?)",
                (record_id,),
            )
        }
        if stored != {_key_hash(organisation, key) for key in card.blocking_keys()}:
            yield f"record {record_id}: its stored person keys do not match its card"
    for first, second, state, data in raw.execute(
        "SELECT first, second, state, payload FROM person_pairs"
    ):
        try:
            pair = _parse_pair(first, second, state, bytes(data))
            cards = _read_cards(raw, [first, second])
        except CorruptDatabaseError as exc:
            yield str(exc)
            continue
        if len(cards) == 2 and pair_of(cards[first], cards[second]) != pair:
            yield f"the person pair of records {first} and {second} is not what their cards make"


def _put_meta(raw: sqlite3.Connection, key: str, value: str) -> None:
    raw.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


_INSERT_CONFLICT = (
    "INSERT INTO conflicts (record_id, id, kind, subject, severity, payload)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _replace_conflicts_of(
    raw: sqlite3.Connection, rows_by_record: Mapping[str, Sequence[ConflictRow]]
) -> None:
    """Replace the rows of many records: two statements for all, not two per record."""
    raw.executemany("DELETE FROM conflicts WHERE record_id = ?", [(rid,) for rid in rows_by_record])
    raw.executemany(
        _INSERT_CONFLICT,
        [
            (c.record_id, c.id, c.kind, c.subject, c.severity, c.payload)
            for record_rows in rows_by_record.values()
            for c in record_rows
        ],
    )


# ----------------------------------------------------------- the person index

_NO_ORGANISATION = ""
"""How a record of no organisation is keyed in the person tables (an organisation is
never empty, and a primary key column of a WITHOUT ROWID table cannot be NULL)."""


def _org_column(organisation: str | None) -> str:
    return _NO_ORGANISATION if organisation is None else organisation


def _key_hash(organisation_column: str, key: str) -> int:
    """How a blocking key is stored: 64 bits of BLAKE2b of its organisation and text."""
    digest = hashlib.blake2b(f"{organisation_column}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _record_keys(raw: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
    """The rk of each of these stored records."""
    found: dict[str, int] = {}
    for chunk in _chunks(list(ids)):
        found.update(
            raw.execute(
                f"SELECT record_id, rk FROM records WHERE record_id IN ({_marks(len(chunk))})",
                chunk,
            )
        )
    return found


def _parse_card(record_id: str, data: bytes) -> PersonCard:
    """A stored card; CorruptDatabaseError naming the record for bytes that are not one."""
    try:
        card = PersonCard.from_bytes(data)
    except InvalidInputError as exc:
        raise CorruptDatabaseError(
            f"the stored person card of record {record_id} is damaged ({exc}); re-index it"
        ) from None
    if card.record_id != record_id:
        raise CorruptDatabaseError(
            f"the stored person card of record {record_id} is record {card.record_id}'s; "
            "re-index it"
        )
    return card


def _parse_pair(first: str, second: str, state: str, data: bytes) -> PersonPair:
    """A stored pair; CorruptDatabaseError naming its records for bytes that are not it."""
    try:
        pair = PersonPair.from_bytes(data)
    except InvalidInputError as exc:
        raise CorruptDatabaseError(
            f"the stored person pair of records {first} and {second} is damaged ({exc}); "
            "re-index them"
        ) from None
    if pair.record_ids != (first, second) or pair.state.value != state:
        raise CorruptDatabaseError(
            f"the stored person pair of records {first} and {second} does not match its row; "
            "re-index them"
        )
    return pair


def _read_cards(raw: sqlite3.Connection, ids: Sequence[str]) -> dict[str, PersonCard]:
    """The stored cards of these records (an ``IN`` list per 500 ids); none: absent."""
    found: dict[str, PersonCard] = {}
    wanted = list(ids)
    for chunk in _chunks(wanted):
        for record_id, data in raw.execute(
            f"SELECT record_id, card FROM person_cards WHERE record_id IN ({_marks(len(chunk))})",
            chunk,
        ):
            found[record_id] = _parse_card(record_id, bytes(data))
    return found


def _key_holders(
    raw: sqlite3.Connection,
    organisation: str | None,
    keys: Collection[str],
    hashed: dict[tuple[str, str], int],
) -> list[tuple[str, str]]:
    """(key, record id) of every stored card holding one of ``keys`` in the organisation.

    Keys are stored hashed: a stored record whose key only hashes alike is
    named too, which costs a comparison and changes no pair. ``hashed``
    remembers each key's hash for the writes that follow.
    """
    column = _org_column(organisation)
    by_hash: dict[int, list[str]] = {}
    for key in keys:
        value = hashed.get((column, key))
        if value is None:
            value = hashed[column, key] = _key_hash(column, key)
        by_hash.setdefault(value, []).append(key)
    holders: list[tuple[str, str]] = []
    for chunk in _chunks(sorted(by_hash)):
        for value, record_id in raw.execute(
            "SELECT k.hash, r.record_id FROM person_keys k JOIN records r ON r.rk = k.rk"
            f" WHERE k.hash IN ({_marks(len(chunk))})",
            chunk,
        ):
            holders.extend((key, record_id) for key in by_hash[value])
    return holders


def _store_persons(raw: sqlite3.Connection, written: Mapping[str, PersonWrite]) -> None:
    """Replace the cards of ``written``, their keys and every pair of their records.

    The pairs are worked out first (reads only), then written in a few
    statements for the whole batch: a write's share is indexed lookups of its
    keys' holders and of their cards, never a scan.
    """
    hashed: dict[tuple[str, str], int] = {}
    pairs = pair_persons(
        written,
        lambda organisation, keys: _key_holders(raw, organisation, keys, hashed),
        lambda ids: _read_cards(raw, list(ids)),
    )
    # A record new in this write has nothing indexed to delete. (Only a damaged
    # file could hold keys or pairs of it: OR REPLACE below keeps them from
    # failing the write, and check() names them.)
    rks = _record_keys(raw, list(written))
    ids = [(record_id,) for record_id, w in written.items() if not w.new]
    if ids:
        raw.executemany("DELETE FROM person_pairs WHERE first = ?", ids)
        raw.executemany("DELETE FROM person_pairs WHERE second = ?", ids)
        raw.executemany("DELETE FROM person_keys WHERE rk = ?", [(rks[i],) for (i,) in ids])
    raw.executemany(
        "INSERT OR REPLACE INTO person_cards (record_id, organisation, card) VALUES (?, ?, ?)",
        [
            (record_id, _org_column(w.organisation), w.card.to_bytes())
            for record_id, w in written.items()
        ],
    )
    raw.executemany(
        "INSERT OR REPLACE INTO person_keys (hash, rk) VALUES (?, ?)",
        sorted(
            {
                (hashed[_org_column(w.organisation), key], rks[record_id])
                for record_id, w in written.items()
                for key in w.keys
            }
        ),
    )
    raw.executemany(
        "INSERT OR REPLACE INTO person_pairs (first, second, organisation, state, payload)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (
                pair.first.record_id,
                pair.second.record_id,
                # Both records are of one organisation: a card is only compared within it.
                _org_column(
                    (
                        written.get(pair.first.record_id) or written[pair.second.record_id]
                    ).organisation
                ),
                pair.state.value,
                pair.to_bytes(),
            )
            for pair in pairs
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


# ---------------------------------------------------------------- file helpers


def _connection(target: str | Path, *, key: bytes | None, uri: bool) -> aiosqlite.Connection:
    """The store's aiosqlite connection: plain as ever, or encrypted with ``key``."""
    if key is None:
        return aiosqlite.connect(target, isolation_level=None, timeout=_BUSY_TIMEOUT_S, uri=uri)
    return aiosqlite.Connection(
        lambda: connect(target, key=key, uri=uri, timeout=_BUSY_TIMEOUT_S),
        iter_chunk_size=64,  # aiosqlite.connect's default
    )


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
    through SQLCipher (after refusing a plain file, which a key cannot open).
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
        copy = connect(partial_copy, key=key)
        try:
            raw.backup(copy)  # one step: one consistent snapshot, same cipher and key
            copy.execute("PRAGMA journal_mode = DELETE").fetchone()  # no -wal beside it
        finally:
            copy.close()
        with partial_copy.open("rb+") as file:
            os.fsync(file.fileno())
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
            os.fsync(file.fileno())
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
            os.fsync(target.fileno())
    # Our connection used WAL; the link is the only name the database keeps.
    if path.stat().st_size == 0:
        raise StorageError(f"{path} was created empty")
