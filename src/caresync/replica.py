"""The embedding API for a laptop: open, edit, read, conflicts, resolve, sync, status.

Every edit is committed to the local database (with its outbox entry and the
record's conflict index rows) before the call returns. Sync is a thin shell
around the sans-I/O :class:`~caresync.protocol.ClientProtocol`: it pushes the
outbox (entries leave it only when the server acknowledged its commit) and
pulls the change feed from the last checkpoint, committing each batch with its
checkpoint.

Two ways to sync:

* :meth:`Replica.sync` runs one round (finish the first copy, push, pull) and
  disconnects;
* :meth:`Replica.stay_connected` keeps a connection open until told to stop:
  after a full round it subscribes to the server's live feed, commits every
  live update with its checkpoint, and pushes each local edit as soon as it is
  committed. When the link drops it reconnects by itself, waiting delays drawn
  from :func:`backoff_delays`. Refusals (wrong server, wrong organisation, bad
  credentials or an expired session, a revoked replica) are never retried.

Theory of operation of a live connection: one task reads frames and routes
them (live updates to a committer, everything else to whoever waits for a
reply); one task commits live updates, as many as have arrived in one
transaction with the checkpoint of the last; one task pushes the outbox
whenever an edit wakes it, one batch at a time, each waiting for its
acknowledgement. Whichever fails first ends the connection; the outbox is only
ever emptied by acknowledgements, so no failure loses unsynced work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import random
import ssl as ssl_module
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher

from caresync.audit import ANONYMOUS, SERVER_ACTIONS, AuditAction, AuditEvent, attempted_name
from caresync.conflicts import DEFAULT_RULEBOOK, Conflict, RecordView, Rulebook
from caresync.conflicts.duplicates import paired_record
from caresync.credentials import key_fingerprint, parse_fingerprint
from caresync.exceptions import (
    AuthenticationError,
    AuthorError,
    ConnectionLostError,
    CorruptDatabaseError,
    InvalidInputError,
    InvalidResolutionError,
    LoginLockedError,
    NotEnrolledError,
    PasswordNeededError,
    ProtocolError,
    RemoteProtocolError,
    ReplicaRevokedError,
    StorageError,
    SyncRefusedError,
)
from caresync.listing import ConflictListing
from caresync.logins import (
    LOGIN_IDLE_S,
    LaptopLogins,
)
from caresync.names import shown
from caresync.protocol import (
    BATCH_OVERHEAD_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    Enrolled,
    item_wire_size,
)
from caresync.records import JSONValue, Record, Revision
from caresync.records.crdt import merge as merge_updates_of
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    DISPUTED_RULE,
    DUPLICATE_RULE,
    SAME_PERSON,
    UNLINKED,
    PairState,
    PersonCard,
    PersonPair,
    link_path,
    person_card,
)
from caresync.records.spans import simple_items, simple_pieces
from caresync.replication import meta
from caresync.replication.absorb import PreparedCopy, ServerCheck, TrustedCopy, absorb
from caresync.replication.index import ensure_index
from caresync.replication.pool import DEFAULT_POOL_SIZE, RecordPool, check_pool_size
from caresync.replication.session import (
    CopyProgress,
    LiveAttempt,
    ProgressCallback,
    Session,
    SyncLimits,
    SyncReport,
    finish_closing,
)
from caresync.replication.status import ReplicaState, StatusListener, SyncStatus
from caresync.storage import (
    DEFAULT_KDF,
    ConflictRow,
    Identity,
    IncomingUpdate,
    KdfParams,
    LaptopStore,
    QuarantinedUpdate,
    SetAsideRecord,
    SQLiteStore,
    key_file_for,
    own_identity,
)
from caresync.storage.laptop_key import (
    FailedLogin,
    LaptopKey,
    create_laptop_key,
    is_encrypted,
    unlock_laptop_key,
)
from caresync.transport import Connector, WebSocketConnector
from caresync.versions import CLIENT_VERSION, check_version, is_older

__all__ = [
    "AcknowledgedListener",
    "BackoffFactory",
    "CopyProgress",
    "ProgressCallback",
    "ReceivedListener",
    "Replica",
    "ReplicaState",
    "ReplicaStatus",
    "StatusListener",
    "SyncLimits",
    "SyncReport",
    "backoff_delays",
]

T = TypeVar("T")
_UNSET: Any = object()
_hasher = PasswordHasher()
logger = logging.getLogger("caresync.replica")
_AUTHOR_PAGE = 500  # outbox entries, then records, read at a time for their authors
_PIECE_ITEMS = 1000
"""Entries in one piece of a large local update (an import): far below what a server
admits in one update (``AdmissionLimits.max_revisions``, 10,000 by default)."""
_PIECE_BYTES = 1 << 20
"""Bytes a piece grows to before the next begins (one entry may be more)."""

LAPTOP_CHECKPOINT_PAGES = 8192
"""A laptop's write-ahead log grows to this many pages (32 MiB) before a commit copies it
into the database file itself: a sync's commit (about 1,200 pages for 1,000 records of
100,000) leaves that to the checkpoint run once the sync is done (``Replica.sync``)."""


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A snapshot of the replica's sync status."""

    state: ReplicaState
    replica_id: str
    server_id: str | None
    organisation: str | None
    pending: int
    """Local changes the server has not acknowledged (those set aside too)."""
    oldest_pending_age_s: float | None
    last_sync: datetime | None
    """When the local copy was last known in step with the server (now, while ONLINE)."""
    copy_age_s: float | None
    """Seconds since the local copy was last brought up to date (None before the first copy)."""
    conflicts_open: int
    records: int
    last_error: str | None = None
    """Why the last connection ended badly (cleared when a sync round succeeds)."""
    quarantined: int = 0
    """Updates from the server that could not be merged, kept aside (see ``quarantined()``)."""
    client_version: str = CLIENT_VERSION
    """The caresync this laptop runs."""
    client_newest: str | None = None
    """The newest caresync the server said it knows of, at the last login (None: not said)."""
    client_min: str | None = None
    """The oldest caresync the server said it accepts (None: it asks for none, or has not said)."""
    update_available: bool = False
    """The server knows of a newer caresync than this laptop runs."""
    update_required: bool = False
    """The server refuses this laptop until caresync is updated (its outbox is kept)."""
    audit_refused: str | None = None
    """Why the server refused this laptop's audit entries at the last sync (they stay here,
    and are sent again); None when it took them."""
    offline_logins_ended: Mapping[str, str] = field(default_factory=dict)
    """The accounts whose offline login this laptop ended on its server's word, and why:
    ``"disabled on the server"``, ``"password changed on the server: log in online"``
    (see :meth:`LaptopLogins.learn_accounts <caresync.logins.LaptopLogins.learn_accounts>`);
    an online login of that account gives it back."""
    set_aside: tuple[SetAsideRecord, ...] = ()
    """Records whose changes the server refused (protocol version 16 on), each with the
    server's reason: held back, kept, tried again at each sync until the server takes
    them; every other change syncs meanwhile. Empty when none is."""


ReceivedListener = Callable[[tuple[str, ...]], None]
"""Called with the ids of the records changed by each committed batch from the server."""
AcknowledgedListener = Callable[[int], None]
"""Called with how many outbox entries the server acknowledged (they left the outbox)."""
BackoffFactory = Callable[[], Iterator[float]]
"""Makes a fresh sequence of reconnection delays (seconds); a finite one bounds the retries."""


def backoff_delays(
    initial: float = 0.5,
    *,
    factor: float = 2.0,
    maximum: float = 30.0,
    jitter: float = 0.5,
    attempts: int | None = None,
    rand: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Delays before each reconnection: exponential, capped at ``maximum``, with jitter.

    The n-th delay (from 0) is ``min(maximum, initial * factor**n)`` scaled by a
    random factor in ``[1 - jitter, 1]``, so laptops cut off together by a
    server restart do not all come back at the same instant. ``attempts``
    bounds how many delays are given (None: without end). Pure: the only
    source of randomness is ``rand`` (give a seeded ``Random().random`` for a
    repeatable sequence); nothing sleeps here.
    """
    if not initial > 0 or not maximum >= initial:
        raise InvalidInputError("backoff needs 0 < initial <= maximum")
    if not factor >= 1 or not 0 <= jitter <= 1:
        raise InvalidInputError("backoff needs factor >= 1 and 0 <= jitter <= 1")
    if attempts is not None and attempts < 0:
        raise InvalidInputError("attempts must be None or >= 0")
    delay = initial
    given = 0
    while attempts is None or given < attempts:
        yield delay * (1.0 - jitter * rand())
        given += 1
        delay = min(maximum, delay * factor)


class _WriteLock(asyncio.Lock):
    """The replica's write lock, counting how often it has been released (``released``):
    a sync that read what is stored before taking it can tell whether a write ended
    meanwhile (a local write that may have stored a record it read as absent). Counted
    at the release, not the acquisition: a write that held the lock during the read
    commits after it."""

    def __init__(self) -> None:
        super().__init__()
        self.released = 0

    def release(self) -> None:
        self.released += 1
        super().release()


class Replica:
    """A laptop's replica. Open with :meth:`open`; use as ``async with``."""

    def __init__(
        self,
        store: LaptopStore,
        identity: Identity,
        *,
        rulebook: Rulebook,
        limits: SyncLimits | None = None,
        locked: str | None = None,
        password_hasher: PasswordHasher | None = None,
        secret: bytes | None = None,
        pinned_key: bytes | None = None,
        login_idle_s: float | None = LOGIN_IDLE_S,
        database_key: LaptopKey | None = None,
        connector: Connector | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.store = store
        self.connector: Connector = connector if connector is not None else WebSocketConnector()
        """How this laptop reaches its server (default: websockets; tests pass a MemoryLink)."""
        self._hasher = password_hasher if password_hasher is not None else _hasher
        self.logins = LaptopLogins(
            store, hasher=self._hasher, idle_s=login_idle_s, database_key=database_key
        )
        """Who is logged in here, and so who writes its entries (see :mod:`caresync.logins`)."""
        self.identity = identity
        self.rulebook = rulebook
        self.limits = limits or SyncLimits()
        self._pool = RecordPool(
            store, replica=identity.replica_id, rulebook=rulebook, max_records=pool_size
        )
        self._listing = ConflictListing(store, self._pool)
        self._locked = locked
        self._status = SyncStatus(locked=locked is not None)
        self._received: list[ReceivedListener] = []
        self._acknowledged: list[AcknowledgedListener] = []
        self._sync_lock = asyncio.Lock()
        self._closing = set[asyncio.Task[None]]()  # links of ended syncs, closing
        self._known_meta = meta.KnownMeta(store)  # notes a sync need not read each time
        self._write_lock = _WriteLock()
        self._outbox_changed = asyncio.Event()
        self._live = False
        self._checkpointing: asyncio.Task[None] | None = None  # after a sync, see sync()
        self._secret = secret
        self._pinned_key = pinned_key
        self._host = _ReplicaHost(self)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        limits: SyncLimits | None = None,
        password_hasher: PasswordHasher | None = None,
        login_idle_s: float | None = LOGIN_IDLE_S,
        username: str | None = None,
        password: str | None = None,
        encrypt: bool = True,
        kdf: KdfParams = DEFAULT_KDF,
        connector: Connector | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        quick_check: bool = True,
    ) -> Replica:
        """Open a laptop database (created unless ``create=False``).

        A database whose conflict index another rulebook computed is re-indexed
        first (see :mod:`caresync.replication.index`).

        **Encryption at rest** (see :mod:`caresync.storage.laptop_key`): a new database
        opened with ``username`` and ``password`` is encrypted whole (unless
        ``encrypt=False``), its key wrapped for that user in ``<db>.keys``; an
        encrypted database opens only with the ``password`` of a user with a
        copy of its key (``username`` picks one; else each is tried), and
        raises :class:`~caresync.exceptions.PasswordNeededError` without one,
        :class:`~caresync.exceptions.WrongPasswordError` for a wrong one (its
        message says how a user with no copy yet gets one), and
        :class:`~caresync.exceptions.LoginLockedError` after too many wrong
        ones in a row (counted in the key file; no password is tried until the
        lock has passed). Each online login then wraps the key for that user
        too. Failed attempts since they were last recorded are in
        :attr:`pending_failed_logins`. The login kept in the database (:attr:`user`)
        counts for this opening only if ``password`` opens that user's copy of the key
        too: opened with a colleague's password, nobody is logged in until they log in.

        **Without a password a new database is a plain SQLite file**, whatever
        ``encrypt`` says (it matters only when a password is given): tests,
        simulations and tools open plain replicas this way. An application that
        keeps patients on a laptop passes the username and password its user
        logged in with, as ``caresync enrol`` does, and may check
        :attr:`encrypted`; ``caresync encrypt`` converts a plain laptop later.
        ``kdf`` sets the cost of the password derivation (a simulation may pass
        cheaper parameters). ``connector`` is how the laptop reaches its server
        (default: websockets; see :mod:`caresync.transport`).

        ``password_hasher`` makes the hash kept for offline login (argon2id with
        the library's defaults unless given; a simulation may pass cheaper
        parameters). ``login_idle_s``: a login with no edit for this long
        expires (None: it lasts until :meth:`logout`).

        ``pool_size`` is how many records stay loaded (1,024 unless given; see
        :mod:`caresync.replication.pool`): a smaller pool takes less memory and
        reloads evicted records from the database when they are needed again.
        A value that is not an int from 1 to 10,000,000 raises
        :class:`~caresync.exceptions.InvalidOptionError` before the database is
        opened.

        ``quick_check=False`` skips the database's integrity check at open (see
        :meth:`SQLiteStore.open <caresync.storage.SQLiteStore.open>`): only for a
        file this process checked and closed itself, as the simulation reopens a
        laptop for each step.
        """
        check_pool_size(pool_size)
        database_key, made_key = await asyncio.to_thread(
            _database_key, Path(path), create, username, password, encrypt, kdf
        )
        try:
            store = await SQLiteStore.open(
                path,
                create=create,
                key=None if database_key is None else database_key.key,
                checkpoint_pages=LAPTOP_CHECKPOINT_PAGES,
                quick_check=quick_check,
            )
        except BaseException:
            if made_key:  # the database was not made: neither is its key file
                key_file_for(path).unlink(missing_ok=True)
            raise
        try:
            identity = await own_identity(store, "laptop", id_prefix="replica", where=path)
            await ensure_index(store, rulebook, replica=identity.replica_id)
            return await cls.from_store(
                store,
                identity,
                rulebook=rulebook,
                limits=limits,
                password_hasher=password_hasher,
                login_idle_s=login_idle_s,
                database_key=database_key,
                connector=connector,
                pool_size=pool_size,
                password=password,
            )
        except BaseException:
            await store.close()
            raise

    @classmethod
    async def from_store(
        cls,
        store: LaptopStore,
        identity: Identity,
        *,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        limits: SyncLimits | None = None,
        password_hasher: PasswordHasher | None = None,
        login_idle_s: float | None = LOGIN_IDLE_S,
        database_key: LaptopKey | None = None,
        connector: Connector | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        password: str | None = None,
    ) -> Replica:
        """A replica over a store already open (read-only tools use this); writes nothing
        but its audit trail.

        ``database_key``: the unlocked key an encrypted store was opened with
        (each online login wraps it for that user too), and ``password``, the password
        that unlocked it: the login kept in the store is this replica's only if that
        password opens the logged-in user's copy of the key too (without it, only if
        that user is ``database_key.unlocked_by``); otherwise someone else opened the
        laptop, and nobody is logged in until they log in. ``connector`` and
        ``pool_size``: as in :meth:`open`.

        What the replica keeps in its store is read here: whether it is locked,
        its secret, the server key it pinned, and who is logged in.
        """
        check_pool_size(pool_size)
        replica = cls(
            store,
            identity,
            rulebook=rulebook,
            limits=limits,
            locked=await store.get_meta(meta.LOCKED),
            password_hasher=password_hasher,
            secret=_unb64(await store.get_meta(meta.SECRET)),
            pinned_key=_unb64(await store.get_meta(meta.PINNED_KEY)),
            login_idle_s=login_idle_s,
            database_key=database_key,
            connector=connector,
            pool_size=pool_size,
        )
        await replica.logins.load(password=password)
        await replica._record_failed_unlocks()
        return replica

    async def close(self) -> None:
        """Close the local database (stop :meth:`stay_connected` first), once the
        links of the last syncs are closed and the last checkpoint is done."""
        await finish_closing(self._host)
        if self._checkpointing is not None:
            await self._checkpointing  # logs its failure; never raises one
        await self.store.close()

    def _checkpoint_soon(self) -> None:
        """After a sync: copy the write-ahead log into the database file in the store's
        thread, once the sync has returned (its commits were durable in the log already),
        rather than in the commit of a later sync."""
        if self._checkpointing is None or self._checkpointing.done():
            self._checkpointing = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            await self.store.checkpoint()
        except StorageError as exc:  # a later commit checkpoints by itself
            logger.warning("checkpoint after a sync not done: %s", exc)

    async def __aenter__(self) -> Replica:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def replica_id(self) -> str:
        """This replica's id (chosen when the database was created)."""
        return self.identity.replica_id

    @property
    def encrypted(self) -> bool:
        """True when the database is encrypted at rest (opened with a user's password)."""
        return self.logins.database_key is not None

    @property
    def pending_failed_logins(self) -> tuple[FailedLogin, ...]:
        """Failed attempts to unlock this encrypted laptop (wrong passwords, unknown
        users) not yet recorded elsewhere, oldest first, as they were when it was
        opened; always empty on a plain laptop (see :mod:`caresync.storage.laptop_key`).
        At most :data:`~caresync.lockout.MAX_FAILED_KEPT`; how many older ones were
        dropped is ``logins.database_key.failed_logins_dropped``."""
        key = self.logins.database_key
        return () if key is None else key.failed_logins

    async def _record_failed_unlocks(self) -> None:
        """Append the failed unlocks the key file kept (a wrong password opens nothing,
        so they wait there) to the audit trail, then clear them from the key file."""
        key = self.logins.database_key
        if key is None or not (key.failed_logins or key.failed_logins_dropped):
            return
        events = [
            AuditEvent(
                attempted_name(failed.username or "(no name given)"),
                "login-failed",
                None,
                f"unlock at {datetime.fromtimestamp(failed.at_ms / 1000, UTC):%Y-%m-%dT%H:%M:%SZ}",
            )
            for failed in key.failed_logins
        ]
        if key.failed_logins_dropped:
            events.insert(
                0,
                AuditEvent(
                    ANONYMOUS,
                    "login-failed",
                    None,
                    f"{key.failed_logins_dropped} earlier, not kept",
                ),
            )
        try:
            await self.store.append_audit(events)
        except StorageError as exc:  # a read-only copy: they wait for the next open
            logger.warning("failed unlocks not recorded in the audit trail: %s", exc)
            return
        await self._clear_failed_logins()

    async def _clear_failed_logins(self) -> None:
        """Clear :attr:`pending_failed_logins` (and the dropped count) from the key file,
        once they are durably recorded (an audit trail): until then every open returns
        them again. Failures that came since the open are kept."""
        key = self.logins.database_key
        if key is not None:
            await asyncio.to_thread(key.failures_recorded)

    @property
    def enrolled(self) -> bool:
        """True once the replica is bound to a server and an organisation."""
        return self.identity.server_id is not None

    @property
    def locked(self) -> bool:
        """True once the server revoked this replica: it no longer syncs; its work is kept."""
        return self._locked is not None

    # ---------------------------------------------------------------- editing

    async def create_record(self, *, record_id: str | None = None) -> str:
        """A new patient record, committed; returns its id.

        On an enrolled laptop someone must be logged in (NotLoggedInError).
        ``record_id``: the new record's id; one this replica holds already raises
        InvalidInputError (nothing is written). It must be unique across the server's
        organisations (the default, a random UUID, is): one another organisation's record
        has there is refused at every push, and every change after it waits behind it.
        """
        actor = await self.logins.author(None) if self.enrolled else self._actor()
        async with self._write_lock:
            if record_id is not None and await self.store.has_record(record_id):
                # Its creation would be merged into the record stored, and the new, empty
                # record kept loaded, its rows and card stored, in the record's place.
                raise InvalidInputError(f"record {record_id!r:.80} exists here already")
            record = self._pool.create(record_id)
            try:
                await self.store.write_local(
                    record.record_id,
                    record.update_since(),
                    conflicts=(),
                    organisation=self.identity.organisation,
                    person=person_card(record),
                    audit=[AuditEvent(actor, "write", record.record_id, "created")],
                )
            except BaseException:
                self._pool.forget(record.record_id)
                raise
            self._outbox_changed.set()
            return record.record_id

    async def set(
        self, record_id: str, path: str, value: JSONValue, *, author: str | None = None
    ) -> Revision:
        """Write a field (committed before this returns).

        Every edit is written as the account logged in (see :meth:`author_of`):
        ``author`` may be left out, and naming anyone else raises AuthorError.
        """
        writer = await self.author_of(author)
        return await self._edit(
            record_id, lambda r: r.set(path, value, author=writer), actor=writer
        )

    async def adjust(
        self, record_id: str, path: str, change: int, *, author: str | None = None
    ) -> Revision:
        """Add ``change`` to a count (``stock/...``): concurrent changes add up everywhere.

        ``set`` on a count records the change from the count read now; this
        records a change directly ("dispense 1": ``change=-1``).
        """
        writer = await self.author_of(author)
        return await self._edit(
            record_id, lambda r: r.adjust(path, change, author=writer), actor=writer
        )

    async def add_entry(
        self,
        record_id: str,
        collection: str,
        fields: dict[str, JSONValue] | None = None,
        *,
        author: str | None = None,
    ) -> str:
        """Add a collection entry; returns its id."""
        writer = await self.author_of(author)
        return await self._edit(
            record_id, lambda r: r.add_entry(collection, fields, author=writer), actor=writer
        )

    async def set_status(
        self,
        record_id: str,
        collection: str,
        entry_id: str,
        status: str,
        *,
        author: str | None = None,
    ) -> Revision:
        """Change an entry's status (``stopped``, ``entered-in-error``, ...)."""
        writer = await self.author_of(author)
        return await self._edit(
            record_id,
            lambda r: r.set_status(collection, entry_id, status, author=writer),
            actor=writer,
        )

    async def sign_note(
        self, record_id: str, entry_id: str, *, author: str | None = None
    ) -> Revision:
        """Sign a note: its text can no longer change (add addenda instead)."""
        writer = await self.author_of(author)
        return await self._edit(
            record_id, lambda r: r.sign_note(entry_id, author=writer), actor=writer
        )

    async def add_addendum(
        self, record_id: str, entry_id: str, text: str, *, author: str | None = None
    ) -> str:
        """Add an addendum to a signed note; returns its id."""
        writer = await self.author_of(author)
        return await self._edit(
            record_id, lambda r: r.add_addendum(entry_id, text, author=writer), actor=writer
        )

    async def author_of(self, named: str | None = None) -> str:
        """Who an edit made now is written as.

        On an enrolled laptop: the account logged in (:attr:`user`); ``named``
        may be left out, and naming anyone else raises
        :class:`~caresync.exceptions.AuthorError`; nobody logged in (or a login
        gone idle) raises :class:`~caresync.exceptions.NotLoggedInError`. A
        replica not enrolled to a server has no accounts: it writes ``named``
        as given (required), and the server will refuse those entries unless
        the account that enrols the laptop has that name.
        """
        if not self.enrolled:
            if named is None:
                raise InvalidInputError(
                    "name the author: this replica is not enrolled to a server, so nobody "
                    "can be logged in on it"
                )
            return named
        return await self.logins.author(named)

    async def commit_records(self, edited: Sequence[tuple[Record, bytes]]) -> None:
        """Commit updates made to records outside this replica (an import), all in one
        transaction, each with its conflict rows and person card; or nothing.

        Each ``(record, update)``: a :class:`~caresync.records.Record` of this replica
        (``replica=self.replica_id``) holding the record's whole state, and the update
        that was made to it. What a sync committed to a record since it was read is
        merged into it first (its rows and card are of the record as stored). Copies
        of these records already loaded are read again. An update of more than
        1,000 entries, or too large for a frame, is kept in the outbox as several,
        which a server admits one after another.

        On an enrolled laptop these are edits like any other: someone must be logged in
        (NotLoggedInError), and every revision an update adds must name that account as
        its author (AuthorError) and this replica as its writer (InvalidInputError);
        otherwise nothing is written.
        """
        # An import may write thousands of entries into one record (a lab history):
        # one update of them all would be refused at every push (a server admits at
        # most 10,000 entries, and a frame's bytes, in one), holding back the outbox.
        pieces = [_pieces_to_send(record.record_id, update) for record, update in edited]
        if not edited:
            return
        actor = await self.logins.author(None) if self.enrolled else self._actor()
        async with self.writing(record.record_id for record, _update in edited):
            # Read before the lock was taken: a sync may have committed to them since.
            stored = await self.store.load_many([record.record_id for record, _u in edited])
            for record, update in edited:
                state = stored.get(record.record_id)
                if self.enrolled:
                    self._check_written_here(record.record_id, state, update, actor)
                if state is not None:
                    record.apply_update(state)
            edits = [
                # The record's rows and card with its last piece, written after the others.
                IncomingUpdate(
                    record.record_id,
                    piece,
                    self._pool.rows(record) if last else None,
                    self.identity.organisation,
                    person_card(record) if last else None,
                )
                for (record, _update), parts in zip(edited, pieces, strict=True)
                for piece, last in zip(parts, _last_marks(len(parts)), strict=True)
            ]
            audit = [AuditEvent(actor, "import", record.record_id) for record, _u in edited]
            await self.store.write_local_many(edits, audit=audit)

    def _check_written_here(
        self, record_id: str, state: bytes | None, update: bytes, actor: str
    ) -> None:
        """Refuse an update that adds a revision not written here by ``actor``: the edit
        would be someone else's in their name, or one the server refuses for good, left
        in the outbox keeping back what follows it. Reads the record as stored."""
        if state is None:
            held: set[str] = set()
            after = Record.from_update(record_id, update, replica=self.replica_id)
        else:
            after = Record.from_update(record_id, state, replica=self.replica_id)
            held = {rev.id for rev in after.revisions()}
            after.apply_update(update)
        for rev in after.revisions():
            if rev.id in held:
                continue
            if rev.replica != self.replica_id:
                raise InvalidInputError(
                    f"record {record_id}: revision {rev.id} was written on replica "
                    f"{shown(rev.replica)}, not on this one ({self.replica_id}): a laptop "
                    "pushes only its own changes; nothing was written"
                )
            if rev.author != actor:
                raise AuthorError(
                    f"record {record_id}: {shown(rev.author)} is not the account logged in "
                    f"on this laptop ({actor}): every entry is written as the account "
                    "logged in; nothing was written"
                )

    @contextlib.asynccontextmanager
    async def writing(self, record_ids: Iterable[str]) -> AsyncIterator[None]:
        """Hold the replica's write lock, for code that reads records from :attr:`store`
        and writes them itself (an import: ``caresync.cli.transfer.import_file``): no
        edit, sync or other import of this replica commits meanwhile, so what it reads
        is what it writes onto. The copies of ``record_ids`` loaded here are dropped
        when it ends, committed or not (read again next time), and a live connection
        looks at the outbox again.
        """
        touched = list(record_ids)
        async with self._write_lock:
            try:
                yield
            finally:
                for record_id in touched:
                    self._pool.forget(record_id)
                self._outbox_changed.set()  # wakes a live connection's pusher

    async def _edit(
        self,
        record_id: str,
        mutate: Callable[[Record], T],
        *,
        actor: str,
        action: AuditAction = "write",
        detail: str | None = None,
        linked: list[Record] | None = None,
    ) -> T:
        """Apply ``mutate`` to the record under the write lock and commit what it wrote.

        ``linked``: filled with the records linked to this one, read under the same
        lock before ``mutate`` runs, so a decision is checked against them as stored
        (read before the lock, a commit to one in between went unseen).
        """
        async with self._write_lock:
            return await self._edit_locked(
                record_id, mutate, actor=actor, action=action, detail=detail, linked=linked
            )

    async def _edit_locked(
        self,
        record_id: str,
        mutate: Callable[[Record], T],
        *,
        actor: str,
        action: AuditAction = "write",
        detail: str | None = None,
        linked: list[Record] | None = None,
    ) -> T:
        """:meth:`_edit`, for a caller that holds the write lock."""
        if linked is not None:
            linked[:] = await self._listing.linked_records(record_id)
        record = await self._pool.get(record_id)
        captured: list[bytes] = []
        unsubscribe = record.on_update(
            lambda update, local: captured.append(update) if local else None
        )
        try:
            with record.batch():
                result = mutate(record)
        except BaseException:
            if captured:  # memory ran ahead of disk: reload from the store next time
                self._pool.forget(record_id)
            raise
        finally:
            unsubscribe()
        if not captured:
            return result
        update = (
            captured[0] if len(captured) == 1 else merge_updates_of(captured, record_id=record_id)
        )
        try:
            _check_sendable(record_id, update)
            await self.store.write_local(
                record_id,
                update,
                conflicts=self._pool.rows(record),
                organisation=self.identity.organisation,
                person=person_card(record),
                audit=[AuditEvent(actor, action, record_id, detail)],
            )
        except BaseException:
            self._pool.forget(record_id)
            raise
        # Kept as the loaded copy even if a reader's load replaced it meanwhile; a
        # reader's load still under way read what was stored before, and is not kept.
        self._pool.adopt(record)
        self._outbox_changed.set()  # wakes a live connection's pusher
        return result

    # ---------------------------------------------------------------- reading

    async def record(self, record_id: str, *, audited: bool = True) -> RecordView:
        """A read-only view of a record (UnknownRecordError if there is none).

        Each read is an entry of the audit trail (committed before this returns).
        ``audited=False`` leaves it out: for a screen that lists many records, which
        records one ``list`` entry for them all (``audit("list", None, ...)``).
        """
        view = RecordView(await self._pool.get(record_id))
        if audited:
            await self.audit("read", record_id)
        return view

    async def fields(self, record_id: str) -> dict[str, Any]:
        """Every field's state, as ``path -> FieldState`` (an audited read)."""
        fields = (await self._pool.get(record_id)).fields()
        await self.audit("read", record_id)
        return fields

    async def record_ids(self) -> list[str]:
        """The ids of every record stored here, in ascending order."""
        return await self.store.record_ids()

    async def conflicts(self, record_id: str | None = None) -> list[Conflict]:
        """Open conflicts of one record, or of all, by record id (blocks first).

        A record's own conflicts (read from the index, not a scan), the person
        index's findings (a possible duplicate is listed on both records), and
        the findings across records linked as one person (an allergy on one
        chart against a prescription on another).
        """
        if record_id is not None:
            found = await self._listing.of_record(record_id)
            await self.audit("read", record_id, "conflicts")
            return found
        listed = await self._listing.all()
        await self.audit("list", None, "conflicts")
        return listed

    async def count_conflicts(self) -> int:
        """How many conflicts are open: as many as :meth:`conflicts` lists."""
        return await self._listing.count()

    async def contested(self, record_id: str) -> dict[str, Conflict]:
        """The fields of a record that an open ``block`` conflict involves, and that conflict.

        Until a person chooses, such a field has no settled value: show the conflict
        and its candidates, not one of them (see :meth:`Rulebook.contested`). An audited read.
        """
        found = await self._listing.contested(record_id)
        await self.audit("read", record_id, "contested")
        return found

    async def find_conflict(self, conflict_id: str, *, audited: bool = True) -> Conflict:
        """The open conflict with that id (UnknownConflictError if none); an audited read
        (``audited=False``: a lookup before resolving it, whose entry is the resolution)."""
        conflict = await self._listing.find(conflict_id)
        if audited:
            await self.audit("read", conflict.record_id, "conflict")
        return conflict

    async def resolve(
        self,
        conflict_id: str,
        *,
        author: str | None = None,
        choose: int | None = None,
        value: JSONValue | object = _UNSET,
    ) -> Revision:
        """Resolve a conflict by choosing candidate ``choose`` or entering ``value``.

        A possible duplicate (or a disputed link) is resolved by choosing its
        candidate 0, the same person (:meth:`link_records`), or 1, different
        people (:meth:`mark_different_people`); the decision is written to both records.
        """
        writer = await self.author_of(author)
        conflict = await self._listing.find(conflict_id)  # the resolution is its entry
        if conflict.rule in (DUPLICATE_RULE, DISPUTED_RULE):
            return await self._decide_pair(conflict, choose, value, writer)
        kwargs: dict[str, Any] = {"choose": choose}
        if value is not _UNSET:
            kwargs["value"] = value
        linked: list[Record] = []  # read under the write lock, with the record
        return await self._edit(
            conflict.record_id,
            lambda r: self.rulebook.resolve(r, conflict_id, author=writer, linked=linked, **kwargs),
            actor=writer,
            action="resolve",
            detail=conflict_id,
            linked=linked,
        )

    async def acknowledge(self, conflict_id: str, *, author: str | None = None) -> Revision:
        """Acknowledge a flag or info finding."""
        writer = await self.author_of(author)
        conflict = await self._listing.find(conflict_id)  # the acknowledgement is its entry
        if conflict.rule in (DUPLICATE_RULE, DISPUTED_RULE):
            raise InvalidResolutionError(
                f"conflict {conflict_id} asks whether two records are one person: choose "
                "0 (the same person: link them) or 1 (different people)"
            )
        linked: list[Record] = []  # read under the write lock, with the record
        return await self._edit(
            conflict.record_id,
            lambda r: self.rulebook.acknowledge(r, conflict_id, author=writer, linked=linked),
            actor=writer,
            action="resolve",
            detail=conflict_id,
            linked=linked,
        )

    # ----------------------------------------------------------------- people

    async def link_records(
        self, record_id: str, other_id: str, *, author: str | None = None
    ) -> Revision:
        """Link two records as one person: shown together, checked together, never merged.

        A replicated decision written to both records (``links/<other id>``);
        undone with :meth:`unlink_records`. Returns the revision written to ``record_id``.
        """
        return await self._decide(record_id, other_id, SAME_PERSON, await self.author_of(author))

    async def unlink_records(
        self, record_id: str, other_id: str, *, author: str | None = None
    ) -> Revision:
        """Undo a link: the two records are separate again (a match is a finding again).

        Only a link made between these two records can be undone: two records linked
        through others stay one chart whatever is written between them, so that is
        refused, naming the records in between.
        """
        author = await self.author_of(author)
        linked = await self._listing.linked(record_id)
        if other_id not in linked:
            raise InvalidInputError(f"records {record_id} and {other_id} are not linked")
        direct = {
            rid
            for pair in await self.store.person_pairs(record_id, state=PairState.LINKED)
            for rid in pair.record_ids
        }
        if other_id not in direct:
            between = ", ".join(sorted(set(linked) - {other_id}))
            raise InvalidInputError(
                f"records {record_id} and {other_id} are not linked to each other but through "
                f"other records ({between}): unlink the links that join them (person_pairs "
                "lists each record's links)"
            )
        return await self._decide(record_id, other_id, UNLINKED, author)

    async def mark_different_people(
        self, record_id: str, other_id: str, *, author: str | None = None
    ) -> Revision:
        """Decide that two records that look alike are different people (no finding again)."""
        writer = await self.author_of(author)
        return await self._decide(record_id, other_id, DIFFERENT_PEOPLE, writer)

    async def linked_records(self, record_id: str) -> list[str]:
        """The records linked to this one as the same person (through others too), sorted."""
        await self._pool.get(record_id)  # UnknownRecordError for a record not here
        return await self._listing.linked(record_id)

    async def person_pairs(self, record_id: str | None = None) -> list[PersonPair]:
        """The person index's pairs: possible duplicates, linked and disputed records
        (what identifies each person shows: an audited read)."""
        pairs = await self.store.person_pairs(record_id)
        if record_id is None:
            await self.audit("list", None, "person pairs")
        else:
            await self.audit("read", record_id, "person pairs")
        return pairs

    async def _decide(
        self,
        record_id: str,
        other_id: str,
        decision: str,
        author: str,
        *,
        conflict_id: str | None = None,
    ) -> Revision:
        if record_id == other_id:
            raise InvalidInputError(f"record {record_id} cannot be linked to itself")
        path, other_path = link_path(other_id), link_path(record_id)
        action: AuditAction = "write" if conflict_id is None else "resolve"
        # Both written under one hold of the lock; a pair's finding is looked up again
        # under it: a decision that arrived since it was listed is never written over.
        async with self._write_lock:
            await self._pool.get(record_id)  # both must be here before either is written
            await self._pool.get(other_id)
            if conflict_id is not None:
                await self._listing.find(conflict_id)  # UnknownConflictError if not open
            await self._edit_locked(
                other_id,
                lambda r: r.set(other_path, decision, author=author),
                actor=author,
                action=action,
                detail=conflict_id,
            )
            return await self._edit_locked(
                record_id,
                lambda r: r.set(path, decision, author=author),
                actor=author,
                action=action,
                detail=conflict_id,
            )

    async def _decide_pair(
        self, conflict: Conflict, choose: int | None, value: object, author: str
    ) -> Revision:
        if value is not _UNSET or choose not in (0, 1):
            raise InvalidResolutionError(
                f"conflict {conflict.id} asks whether two records are one person: choose "
                "0 (the same person: link them) or 1 (different people)"
            )
        other_id = paired_record(conflict)
        if other_id is None:  # pragma: no cover - a pair's finding always names the other
            raise InvalidResolutionError(f"conflict {conflict.id} names no other record")
        decision = SAME_PERSON if choose == 0 else DIFFERENT_PEOPLE
        return await self._decide(
            conflict.record_id, other_id, decision, author, conflict_id=conflict.id
        )

    # ----------------------------------------------------------------- status

    @property
    def state(self) -> ReplicaState:
        """The current state (also reported to :meth:`on_status` listeners)."""
        return self._status.state

    def on_status(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(state)`` on every state change; returns an unsubscribe."""
        return self._status.listen(listener)

    def on_received(self, listener: ReceivedListener) -> Callable[[], None]:
        """Call ``listener(record_ids)`` after each batch from the server is committed.

        Covers the first copy, pulls and live updates: the place for an
        application to refresh what it shows. Returns an unsubscribe.
        """
        self._received.append(listener)
        return lambda: self._received.remove(listener) if listener in self._received else None

    def on_acknowledged(self, listener: AcknowledgedListener) -> Callable[[], None]:
        """Call ``listener(count)`` when the server acknowledged ``count`` outbox entries.

        They have left the outbox by then: the place to refresh a "changes not
        yet synced" counter. Returns an unsubscribe.
        """
        self._acknowledged.append(listener)
        return lambda: (
            self._acknowledged.remove(listener) if listener in self._acknowledged else None
        )

    def _notify_received(self, record_ids: tuple[str, ...]) -> None:
        for listener in list(self._received):
            listener(record_ids)

    def _notify_acknowledged(self, count: int) -> None:
        for listener in list(self._acknowledged):
            listener(count)

    async def status(self) -> ReplicaStatus:
        """Where the replica stands: state, unsynced changes, age of the copy, conflicts."""
        now = time.time()
        outbox = await self.store.outbox_summary()
        oldest = outbox.oldest_pending_ms
        set_aside = tuple(await self.store.set_aside_records())
        stored = await self.store.get_meta(meta.LAST_SYNC_MS)
        known = [int(stored)] if stored else []
        if self._status.last_sync_ms is not None:
            known.append(self._status.last_sync_ms)  # newer than the store's, if anything
        last_s = max(known) / 1000 if known else None
        if self._status.state is ReplicaState.ONLINE:
            last_s = now  # in step: live updates arrive as they commit
        return ReplicaStatus(
            state=self._status.state,
            replica_id=self.replica_id,
            server_id=self.identity.server_id,
            organisation=self.identity.organisation,
            pending=await self.store.pending_count(),  # what is set aside too
            oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest / 1000),
            last_sync=None if last_s is None else datetime.fromtimestamp(last_s, tz=UTC),
            copy_age_s=None if last_s is None else max(0.0, now - last_s),
            conflicts_open=await self.count_conflicts(),
            records=await self.store.count_records(),
            last_error=self._status.last_error,
            quarantined=await self.store.count_quarantined(),
            audit_refused=await self.store.get_meta(meta.AUDIT_REFUSED) or None,
            offline_logins_ended=await self.logins.ended_offline(),
            set_aside=set_aside,
            **await self._client_versions(),
        )

    async def _client_versions(self) -> dict[str, Any]:
        newest = await self.store.get_meta(meta.CLIENT_NEWEST) or None
        least = await self.store.get_meta(meta.CLIENT_MIN) or None
        return {
            "client_newest": newest,
            "client_min": least,
            "update_available": newest is not None and is_older(CLIENT_VERSION, newest),
            "update_required": least is not None and is_older(CLIENT_VERSION, least),
        }

    async def _remember_client_versions(self, newest: str | None, least: str | None) -> None:
        """Keep what the server said of caresync versions (shown by :meth:`status`)."""
        try:
            for said in (newest, least):
                if said is not None:
                    check_version(said)
        except InvalidInputError as exc:  # a server's word is checked like any other
            logger.warning("the server named a caresync version that is none: %s", exc)
            return
        if newest is not None:  # only when changed: a sync with nothing to do commits nothing
            await meta.write_if_changed(self._known_meta, meta.CLIENT_NEWEST, newest)
            await meta.write_if_changed(self._known_meta, meta.CLIENT_MIN, least or "")

    async def quarantined(self, record_id: str | None = None) -> list[QuarantinedUpdate]:
        """Updates from the server that could not be merged, kept aside with the reason.

        A record named here may lack what those updates held; the sync went on
        with everything else. Show them to an administrator. An audited read.
        """
        kept = await self.store.quarantined(record_id)
        if record_id is None:
            await self.audit("list", None, "quarantined")
        else:
            await self.audit("read", record_id, "quarantined")
        return kept

    @property
    def pinned_server_key(self) -> str | None:
        """The fingerprint of the server key pinned at enrolment (None before)."""
        return None if self._pinned_key is None else key_fingerprint(self._pinned_key)

    async def login_offline(self, username: str, password: str) -> None:
        """Log ``username`` in offline; only users who logged in online here before can.

        After :data:`OFFLINE_LOGIN_ATTEMPTS` failed attempts in a row (any user,
        a wrong password or an unknown name), the laptop checks no password for
        a time that doubles with each further failure, from
        :data:`OFFLINE_LOCK_FIRST_S` up to :data:`OFFLINE_LOCK_MAX_S`:
        :class:`~caresync.exceptions.LoginLockedError` says how long. The count
        is kept in the database, so closing the program does not reset it; a
        right password does. See :mod:`caresync.logins`.
        """
        try:
            await self.logins.login_offline(username, password)
        except AuthenticationError as exc:
            detail = "locked" if isinstance(exc, LoginLockedError) else "offline"
            await self.audit("login-failed", None, detail, actor=attempted_name(username))
            raise
        await self.audit("login", None, "offline", actor=username)

    async def logout(self) -> None:
        """Log out whoever is logged in: edits are refused until someone logs in."""
        user = self.logins.user
        await self.logins.logout()
        if user is not None:
            await self.audit("logout", None, None, actor=user)

    # ------------------------------------------------------------ audit trail

    def _actor(self) -> str:
        """Who an audit entry names: the account logged in; else, on an encrypted laptop,
        the user whose password opened it (who is at the keyboard); else nobody known."""
        user = self.logins.user
        if user is not None:
            return user
        key = self.logins.database_key
        return ANONYMOUS if key is None else key.unlocked_by

    async def audit(
        self,
        action: AuditAction,
        record_id: str | None = None,
        detail: str | None = None,
        *,
        actor: str | None = None,
    ) -> None:
        """Append an entry to this laptop's audit trail (committed before returning):
        ``actor`` (the account logged in, unless given) did ``action`` to ``record_id``.

        Reads, writes, resolutions, imports, logins and logouts made through this
        class are recorded by it; an application records what it does beside them
        (an export of its own, say). See :mod:`caresync.audit`. ``enrol`` and ``revoke``
        are the server's own (InvalidInputError): its trail records them.
        """
        if action in SERVER_ACTIONS:
            raise InvalidInputError(
                f"audit action {action!r} is the server's own: its trail records enrolments "
                "and revocations, a laptop's never does"
            )
        event = AuditEvent(actor if actor is not None else self._actor(), action, record_id, detail)
        await self.store.append_audit([event])
        self._outbox_changed.set()  # a live connection sends it on

    async def export_unsynced(self, path: str | Path) -> int:
        """Write what waits in the outbox to a new file (encrypted, on an encrypted
        laptop) and record the export in the audit trail; returns how many changes."""
        count = await self.store.export_unsynced(path)
        await self.audit("export", None, f"unsynced changes: {count}")
        return count

    @property
    def user(self) -> str | None:
        """The account logged in on this laptop, who writes its entries (None: nobody,
        or the login expired after ``login_idle_s`` without an edit)."""
        return self.logins.user

    def shown_as(self, author: str) -> str:
        """How people know an author: the account's display name, as the server last
        sent it, else the author's name itself."""
        return self.logins.shown_as(author)

    # ------------------------------------------------------------------- sync

    async def enrol(
        self,
        url: str,
        *,
        username: str,
        password: str,
        organisation: str,
        ssl: ssl_module.SSLContext | None = None,
        device_name: str = "",
        progress: ProgressCallback | None = None,
        server_key: str | None = None,
        insecure: bool = False,
    ) -> SyncReport:
        """Bind this laptop to the server at ``url`` and one organisation; make the first copy.

        The server's key is pinned here: every later connection must prove it
        holds it, before the laptop sends a password, a token or its outbox.
        Give ``server_key`` (its fingerprint, from the administrator:
        ``caresync server-key``) to check the key now, so that not even this
        first connection can be an impostor's. ``insecure`` allows plain
        ``ws://`` to another machine (refused otherwise).

        The binding is stored before the copy starts: if the copy is interrupted,
        :meth:`sync` (or :meth:`stay_connected`) resumes it where it stopped.
        AuthorError (nothing enrolled) if a change made here before names as its author
        no account of ``organisation``: the server would refuse it at every push.
        """
        if self.enrolled:
            raise InvalidInputError(
                f"this laptop is already enrolled to server {self.identity.server_id}; "
                "it syncs with `sync` (a laptop enrols once)"
            )
        expected = None if server_key is None else parse_fingerprint(server_key)
        self.connector.check_url(url, insecure=insecure)
        async with self._sync_lock, Session.connect(self._host, url, ssl, expected) as session:
            await session.login(username, password, organisation)
            await self._refuse_unknown_authors(session.accounts, organisation)
            # Noted before Enrol goes: from then on the server may commit it and the
            # answer be lost, and it gives the id again only to the account that asked.
            asked_as = await self._known_meta.get_meta(meta.ENROLLING) or username
            await meta.write_if_changed(self._known_meta, meta.ENROLLING, asked_as)
            session.protocol.enrol(device_name, self.replica_id)
            enrolled = await session.expect(Enrolled)
            if enrolled.replica_id != self.replica_id:
                raise RemoteProtocolError(
                    f"the server assigned replica id {enrolled.replica_id}; "
                    f"this laptop is {self.replica_id}" + self._asked_before(asked_as, username)
                )
            if enrolled.replica_secret is None or session.server_key is None:
                raise RemoteProtocolError("the server enrolled this laptop without a secret")
            # The secret and the pinned key first: an identity without them could
            # never log in again.
            await self._remember_credentials(enrolled.replica_secret, session.server_key)
            identity = Identity(
                replica_id=self.replica_id,
                role="laptop",
                server_id=enrolled.server_id,
                server_url=url,
                organisation=enrolled.organisation,
            )
            await self.store.set_identity(identity)
            self.identity = identity  # enrolled once stored: a failed write leaves it not
            # Only now: a laptop stopped before its binding was stored enrols again, as
            # the account that asked (a note left after it is dropped at its first login).
            await self._known_meta.set_meta(meta.ENROLLING, "")
            report = await session.synchronise(progress)
        self._checkpoint_soon()  # the copy's last commits: not in the next sync's
        return report

    async def _refuse_unknown_authors(
        self, accounts: Collection[str] | None, organisation: str
    ) -> None:
        """Before a laptop enrols: refuse (AuthorError; nothing enrolled) if a change it
        made before, waiting in its outbox, names as author no account of the
        organisation. The server takes an entry only from an account that logged in on
        the laptop: that one would be refused at every push, and every change after it
        would wait behind it for good. (An author who is an account logs in once.)"""
        if accounts is None:
            return  # a server before protocol version 6 names no accounts to check
        unknown = sorted(await self._pending_authors() - frozenset(accounts))
        if unknown:
            named = ", ".join(shown(author) for author in unknown[:5])
            raise AuthorError(
                f"this laptop's unsynced changes name {named} as author, and "
                f"{'that is no account' if len(unknown) == 1 else 'those are no accounts'} "
                f"of {organisation} on this server: it would refuse them at every push, and "
                "every change after them would wait for ever. Nothing was enrolled: add "
                "accounts of those names to the organisation first (caresync user add), "
                "or enrol a new, empty database (this one keeps its changes)"
            )

    async def _pending_authors(self) -> frozenset[str]:
        """The authors of this replica's revisions in the records its outbox names."""
        record_ids: dict[str, None] = {}
        after = 0
        while page := await self.store.pending(_AUTHOR_PAGE, after_seq=after):
            record_ids.update(dict.fromkeys(item.record_id for item in page))
            after = page[-1].seq
        ordered = sorted(record_ids)
        authors: dict[str, None] = {}
        for start in range(0, len(ordered), _AUTHOR_PAGE):
            loaded = await self.store.load_many(ordered[start : start + _AUTHOR_PAGE])
            for record_id, state in loaded.items():
                record = Record.from_update(record_id, state, replica=self.replica_id)
                authors.update(
                    (rev.author, None)
                    for rev in record.revisions()
                    if rev.replica == self.replica_id
                )
        return frozenset(authors)

    async def enrol_again(
        self,
        *,
        url: str | None = None,
        username: str,
        password: str,
        ssl: ssl_module.SSLContext | None = None,
        progress: ProgressCallback | None = None,
        insecure: bool = False,
    ) -> SyncReport:
        """Enrol this laptop again, under its own id, with the server it is enrolled to:
        for a server restored from a backup older than this laptop's enrolment, which
        refuses its syncs as not enrolled (``NotEnrolledError``).

        The server must prove the key pinned at enrolment (the same server, its key kept
        in its database and its backups), and ``username`` must be an account of this
        laptop's organisation allowed to enrol. The server gives this laptop a new
        secret; everything the laptop wrote is sent again (the server lost what it had
        acknowledged) and the feed is read from its start, in this round
        (``SyncReport.server_went_back``). Its unsynced work stays in its outbox and goes
        too. A server that still knows this laptop is refused (``SyncRefusedError``:
        sync instead), and one that revoked it too (``ReplicaRevokedError``), before
        anything is enrolled. ``url``: where to reach it, if not where this laptop last
        did.
        """
        url, organisation = url or self.identity.server_url, self.identity.organisation
        if not self.enrolled or self._pinned_key is None or not url or not organisation:
            raise InvalidInputError(
                "this laptop is not enrolled (or enrolled before servers had keys): "
                "use enrol, which pins the server's key"
            )
        self._check_can_sync()
        if self._live:
            raise InvalidInputError(
                "this replica is in live mode (stay_connected); stop it to enrol it again"
            )
        self.connector.check_url(url, insecure=insecure)
        pinned = key_fingerprint(self._pinned_key)
        async with self._sync_lock:
            # Asked first, as this laptop: a server that knows it (or revoked it) would
            # otherwise enrol a new replica id under the account, which nothing holds.
            # Not after an enrolment whose answer never came: the server knows the id
            # from it, and gives the same account a new secret for it.
            asked_as = await self._known_meta.get_meta(meta.ENROLLING) or ""
            if not asked_as:
                await self._check_server_forgot(url, ssl, pinned)
            async with Session.connect(self._host, url, ssl, pinned, as_new=True) as session:
                report = await self._enrolled_again(session, username, password, progress, asked_as)
        self._checkpoint_soon()
        return replace(report, server_went_back=True)

    def _asked_before(self, asked_as: str, username: str) -> str:
        """What to add to a refusal of this laptop's id when an earlier try, whose answer
        never came, asked as another account: the server gives the id again only to it."""
        if asked_as == username:
            return ""
        return (
            f": an earlier try as {shown(asked_as)} was enrolled and its answer lost on the "
            f"way; enrol again as {shown(asked_as)}"
        )

    async def _check_server_forgot(
        self, url: str, ssl: ssl_module.SSLContext | None, pinned: str
    ) -> None:
        """Return if the server at ``url`` does not know this laptop; else refuse."""
        try:
            async with Session.connect(self._host, url, ssl, pinned):
                pass
        except NotEnrolledError:
            return  # what enrolling again is for
        raise SyncRefusedError(
            f"the server still knows replica {self.replica_id}: sync this laptop instead"
        )

    async def _enrolled_again(
        self,
        session: Session,
        username: str,
        password: str,
        progress: ProgressCallback | None,
        asked_as: str,
    ) -> SyncReport:
        """``enrol_again``'s work on the connection that says Hello as a new laptop;
        ``asked_as``: the account of an earlier try whose answer never came, or "" (the
        server enrols an id again only for the account that enrolled it)."""
        organisation = self.identity.organisation or ""
        await session.login(username, password, organisation)
        if not asked_as:
            # Noted once the login is accepted, before Enrol goes: a try refused before
            # (a wrong password) enrolled nothing, and must not skip the next one's probe.
            await self._known_meta.set_meta(meta.ENROLLING, username)
        session.protocol.enrol("", self.replica_id)
        enrolled = await session.expect(Enrolled)
        if enrolled.replica_id != self.replica_id:
            unused = (
                f"it gave a new laptop id, {enrolled.replica_id}, which nothing uses: an "
                "administrator may revoke it"
            )
            if asked_as and asked_as != username:
                raise SyncRefusedError(
                    f"the server knows replica {self.replica_id} ({unused})"
                    + self._asked_before(asked_as, username)
                )
            # Not given again to the account that asked: used or revoked, so no try of
            # ours waits for an answer; the next enrol_again asks as this laptop first.
            await self._known_meta.set_meta(meta.ENROLLING, "")
            raise SyncRefusedError(
                f"the server still knows replica {self.replica_id} ({unused}); sync this "
                "laptop instead"
            )
        if (enrolled.server_id, enrolled.organisation) != (
            self.identity.server_id,
            self.identity.organisation,
        ):
            raise RemoteProtocolError(
                f"the server enrolled this laptop as {enrolled.server_id} "
                f"({enrolled.organisation}), not {self.identity.server_id} "
                f"({self.identity.organisation})"
            )
        if enrolled.replica_secret is None:
            raise RemoteProtocolError("the server enrolled this laptop without a secret")
        await self._remember_credentials(enrolled.replica_secret, self._pinned_key)
        await self._known_meta.set_meta(meta.ENROLLING, "")
        await session.after_server_forgot(
            f"server {enrolled.server_id} enrolled replica {self.replica_id} again: it "
            "had forgotten it (restored from a backup older than its enrolment)"
        )
        return await session.synchronise(progress)

    async def sync(
        self,
        *,
        url: str | None = None,
        username: str | None = None,
        password: str | None = None,
        organisation: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        progress: ProgressCallback | None = None,
        insecure: bool = False,
        pull: bool = True,
    ) -> SyncReport:
        """One round with the enrolled server: finish the first copy, push, pull.

        ``url`` may point elsewhere only if it is the same server: it must prove
        it holds the key pinned at enrolment before anything moves. Logs in with
        ``username``/``password``, or else with the session from the last online
        login, which only that account resumes (someone else logged in here, or whose
        password opened an encrypted laptop: AuthenticationError, nothing sent).
        Raises :class:`~caresync.exceptions.ConnectionLostError` if the
        link fails (unsynced work stays in the outbox; call again), or a
        :class:`~caresync.exceptions.SyncRefusedError` for a refusal.
        ``insecure`` allows plain ``ws://`` to another machine. ``pull=False`` only
        pushes (the outbox, then the audit chain): what waits here reaches the server
        and nothing is taken in (``downloaded`` is 0, the first copy is not resumed, and
        the time of the last sync is not moved).
        """
        self._check_can_sync()
        if self._live:
            raise InvalidInputError(
                "this replica is in live mode (stay_connected); it syncs by itself"
            )
        target = self.connector.check_url(url or self.identity.server_url or "", insecure=insecure)
        async with self._sync_lock, Session.connect(self._host, target, ssl) as session:
            if password is not None:
                org = organisation or self.identity.organisation or ""
                await session.login(username or "", password, org)
            else:
                await session.resume(pull_ahead=pull)
            report = await session.synchronise(progress, pull=pull)
        if report.downloaded or report.uploaded:  # a sync with nothing to do wrote nothing
            self._checkpoint_soon()
        return report

    async def login(
        self,
        username: str,
        password: str,
        *,
        organisation: str | None = None,
        url: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        insecure: bool = False,
    ) -> None:
        """Log ``username`` in online, without syncing: from now on the laptop's
        entries are written as that account (see :mod:`caresync.logins`).

        The server checks the password (and this laptop's secret); the laptop
        keeps the new session and what lets the user log in offline later.
        Raises :class:`~caresync.exceptions.AuthenticationError` for a bad
        password, :class:`~caresync.exceptions.ConnectionLostError` when the
        server cannot be reached (log in offline then: :meth:`login_offline`).
        Not while in live mode: the live connection's session is the laptop's.
        """
        self._check_can_sync()
        if self._live:
            raise InvalidInputError(
                "this replica is in live mode (stay_connected); stop it to log in online, "
                "or log in offline (login_offline)"
            )
        target = self.connector.check_url(url or self.identity.server_url or "", insecure=insecure)
        org = organisation or self.identity.organisation or ""
        async with self._sync_lock, Session.connect(self._host, target, ssl) as session:
            await session.login(username, password, org)
            await session.remember_login()

    async def stay_connected(
        self,
        *,
        stop: asyncio.Event,
        url: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        backoff: BackoffFactory = backoff_delays,
        progress: ProgressCallback | None = None,
        insecure: bool = False,
    ) -> None:
        """Stay in step with the server until ``stop`` is set (live mode).

        Each connection resumes the session of the last online login (only for that
        account, as :meth:`sync`), runs a
        full round (first copy if unfinished, push, pull), subscribes to the
        live feed, then commits every live update with its checkpoint and
        pushes each local edit as soon as it is committed. States:
        CONNECTING → SYNCHRONISING → ONLINE; OFFLINE when the link drops.

        A dropped or failed connection, and any transient error (a protocol
        error, a busy or full local disk), is retried after the next delay
        from ``backoff()``; the sequence starts afresh once a connection
        reached ONLINE. If the sequence runs out, the last error is raised.
        Refusals are raised at once, never retried: wrong server or
        organisation, bad credentials or an expired session (log in again with
        :meth:`sync`), a revoked replica (state LOCKED); so are bad arguments
        and a damaged database. In every case the outbox keeps what the server
        has not acknowledged.

        Returns promptly once ``stop`` is set (saying Goodbye if connected).
        """
        self._check_can_sync()
        if self._live:
            raise InvalidInputError("this replica is already in live mode")
        target = self.connector.check_url(url or self.identity.server_url or "", insecure=insecure)
        self._live = True
        try:
            delays = backoff()
            while not stop.is_set():
                attempt = LiveAttempt()
                try:
                    await self._live_attempt(target, ssl, stop, progress, attempt)
                except (ConnectionLostError, ProtocolError, StorageError) as exc:
                    if isinstance(exc, CorruptDatabaseError):
                        raise  # not transient: the database needs a person
                    logger.debug("live connection failed: %r", exc)
                    self._status.last_error = str(exc)
                    if stop.is_set():
                        return
                    if attempt.online:
                        delays = backoff()  # it worked for a while: start gently again
                    delay = next(delays, None)
                    if delay is None:
                        raise
                    logger.info(
                        "replica %s offline (%s); retry in %.2fs", self.replica_id, exc, delay
                    )
                    await _wait_for_event(stop, delay)
        finally:
            self._live = False

    async def _remember_credentials(
        self, secret: bytes | None = None, pinned_key: bytes | None = None
    ) -> None:
        """Store the replica's secret and the server's pinned key, then use them."""
        if secret is not None:
            await self.store.set_meta(meta.SECRET, base64.b64encode(secret).decode("ascii"))
            self._secret = secret
        if pinned_key is not None:
            await self.store.set_meta(meta.PINNED_KEY, base64.b64encode(pinned_key).decode("ascii"))
            self._pinned_key = pinned_key

    def _check_can_sync(self) -> None:
        if not self.enrolled:
            raise NotEnrolledError("this laptop is not enrolled to a server; enrol it first")
        if self._locked is not None:
            raise ReplicaRevokedError(
                f"this replica is locked: {self._locked}; its unsynced changes are kept "
                "(export them with store.export_unsynced)"
            )

    async def _live_attempt(
        self,
        target: str,
        ssl: ssl_module.SSLContext | None,
        stop: asyncio.Event,
        progress: ProgressCallback | None,
        attempt: LiveAttempt,
    ) -> None:
        """One connection in live mode, raced against ``stop``."""
        task = asyncio.create_task(self._live_session(target, ssl, stop, progress, attempt))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller cancelled stay_connected
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            stopper.cancel()
        if not task.done():
            # Stopped. A live connection notices by itself and says Goodbye; one still
            # connecting or in its first round is cancelled (nothing half-committed:
            # every store write is one transaction).
            if not attempt.live:
                task.cancel()
            await asyncio.wait({task})
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            raise error

    async def _live_session(
        self,
        target: str,
        ssl: ssl_module.SSLContext | None,
        stop: asyncio.Event,
        progress: ProgressCallback | None,
        attempt: LiveAttempt,
    ) -> None:
        async with self._sync_lock, Session.connect(self._host, target, ssl) as session:
            await session.resume()
            await session.synchronise(progress)
            await session.live(stop, attempt)


def _database_key(
    path: Path,
    create: bool,
    username: str | None,
    password: str | None,
    encrypt: bool,
    kdf: KdfParams,
) -> tuple[LaptopKey | None, bool]:
    """The key to open ``path`` with (None: a plain database), and whether it was made
    now. Blocks (file checks, an argon2id derivation): run it in a thread."""
    if is_encrypted(path):
        if password is None:
            raise PasswordNeededError(
                f"{path} is encrypted: a password is needed to open it, that of a user who "
                "logged in online on this laptop (password=...; on the command line "
                "CARESYNC_PASSWORD, or the prompt)"
            )
        return unlock_laptop_key(path, password, username, params=kdf), False
    if password is None or not encrypt or not create or path.exists():
        return None, False
    if username is None:
        raise InvalidInputError(
            "a new encrypted database needs the username whose password protects its key"
        )
    return create_laptop_key(path, username, password, params=kdf), True


def _unb64(text: str | None) -> bytes | None:
    """Bytes kept base64 in meta (None if absent)."""
    if not text:
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise CorruptDatabaseError("a credential stored in this database is damaged") from None


async def _wait_for_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, whichever comes first."""
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


def _check_sendable(record_id: str, update: bytes) -> None:
    """Refuse (InvalidInputError) a change no sync frame could carry: stored, it would
    wait in the outbox for ever (a server refuses it), keeping back what follows it."""
    size = item_wire_size(record_id, update)
    room = DEFAULT_MAX_FRAME_BYTES - BATCH_OVERHEAD_BYTES
    if size > room:
        raise InvalidInputError(
            f"this change to record {record_id} takes {size} bytes, more than one sync "
            f"frame carries ({room}); nothing was written: make it as several smaller edits"
        )


def _pieces_to_send(record_id: str, update: bytes) -> list[bytes]:
    """``update`` as the outbox keeps it: itself, or, past :data:`_PIECE_ITEMS` entries
    or a frame's bytes, its entries in pieces of at most that many entries and about
    :data:`_PIECE_BYTES` each, in order (the server admits each after the ones before
    it). Refuses (InvalidInputError) what no piece could carry, as :func:`_check_sendable`."""
    read = simple_items(update)
    room = DEFAULT_MAX_FRAME_BYTES - BATCH_OVERHEAD_BYTES
    large = item_wire_size(record_id, update) > room
    if read is not None and (len(read.items) > _PIECE_ITEMS or large):
        pieces = simple_pieces(update, None, max_items=_PIECE_ITEMS, max_bytes=_PIECE_BYTES)
        if pieces:
            for piece in pieces:
                _check_sendable(record_id, piece)
            return pieces
    _check_sendable(record_id, update)
    return [update]


def _last_marks(count: int) -> list[bool]:
    """``[False, ..., False, True]``, ``count`` long: which piece is a record's last."""
    return [index == count - 1 for index in range(count)]


def _commits_lazily(store: LaptopStore) -> bool:
    """True when ``store`` can commit what the server sent without waiting for the disk
    (``durable=False``) and make it durable later; a store written before those options
    (a third party's) has every intake committed durably, as before."""
    try:
        return (
            callable(getattr(store, "make_durable", None))
            and "durable" in inspect.signature(store.write_remote).parameters
            and "durable" in inspect.signature(store.write_copy).parameters
        )
    except (TypeError, ValueError):  # no signature to read: the safe way
        return False


class _ReplicaHost:
    """The replica as its sync sessions see it (a
    :class:`~caresync.replication.session.SessionHost`): what a session may read and do."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self._lazy_intake = False  # what the last take_in found the store can do...
        self._methods_seen: tuple[object, ...] = ()  # ...with these methods of it
        # A take_in may have committed without waiting for the disk since the last
        # make_durable began: set before its commit is asked, so a make_durable that
        # starts meanwhile syncs it, and again once it ends, as one that started
        # meanwhile may have synced before the commit (a sync with nothing to do then
        # waits for nothing).
        self._maybe_unsynced = False

    @property
    def store(self) -> LaptopStore:
        return self._replica.store

    @property
    def identity(self) -> Identity:
        return self._replica.identity

    @property
    def limits(self) -> SyncLimits:
        return self._replica.limits

    @property
    def rulebook(self) -> Rulebook:
        return self._replica.rulebook

    @property
    def connector(self) -> Connector:
        return self._replica.connector

    @property
    def status(self) -> SyncStatus:
        return self._replica._status

    @property
    def logins(self) -> LaptopLogins:
        return self._replica.logins

    @property
    def closing(self) -> set[asyncio.Task[None]]:
        return self._replica._closing

    @property
    def known_meta(self) -> meta.KnownMeta:
        return self._replica._known_meta

    @property
    def secret(self) -> bytes | None:
        return self._replica._secret

    @property
    def pinned_key(self) -> bytes | None:
        return self._replica._pinned_key

    @property
    def enrolled(self) -> bool:
        return self._replica.enrolled

    @property
    def outbox_changed(self) -> asyncio.Event:
        return self._replica._outbox_changed

    async def remember_credentials(
        self, secret: bytes | None = None, pinned_key: bytes | None = None
    ) -> None:
        await self._replica._remember_credentials(secret, pinned_key)

    async def remember_client_versions(self, newest: str | None, least: str | None) -> None:
        await self._replica._remember_client_versions(newest, least)

    async def revoked(self, why: str) -> None:
        replica = self._replica
        replica._locked = why
        replica._status.last_error = why
        await replica.store.set_meta(meta.LOCKED, why)
        replica._status.move(ReplicaState.LOCKED)

    async def audit(
        self,
        action: AuditAction,
        record_id: str | None = None,
        detail: str | None = None,
        *,
        actor: str | None = None,
    ) -> None:
        await self._replica.audit(action, record_id, detail, actor=actor)

    async def take_in(
        self,
        updates: Sequence[tuple[str, bytes]],
        checkpoint: tuple[str, str],
        *,
        absent: Collection[str] = (),
        trusted_rows: Mapping[str, tuple[ConflictRow, ...]] | None = None,
        trusted_persons: Mapping[str, PersonCard] | None = None,
        checked: Mapping[str, ServerCheck] | None = None,
        prepared: PreparedCopy | None = None,
        durable: bool = False,
        absent_as_of: int | None = None,
    ) -> None:
        """Merge updates from the server and commit them with ``checkpoint``, in one
        transaction (:func:`caresync.replication.absorb.absorb`), under the replica's
        write lock, so a local edit never interleaves with the merge.

        ``prepared``: a first-copy batch already taken in
        (:func:`~caresync.replication.absorb.prepare_copy`), written as it is if its
        every record is in ``absent``.

        ``absent`` names records known not to be stored here (a first copy's), not
        looked up, if read when :attr:`writes_ended` was ``absent_as_of`` and no write
        has ended since; else they are looked up under the lock (a
        local write meanwhile, an import or a record created with its id, may have
        stored one: it is merged, not taken for new). With ``trusted_rows`` (a first
        copy from a server whose rulebook is ours), an absent record is stored with
        those conflict rows and its card from ``trusted_persons`` as they are: it is
        not built and its rules do not run.
        ``checked`` (a pull or live entries from such a server): a record the batch
        leaves in the state the server checked is stored with its rows and card.

        Committed without waiting for the disk (the server holds what it sent; see
        ``ReplicaStore.write_remote``) unless ``durable`` or the store cannot.
        """
        replica = self._replica
        lazily = self._commits_lazily()
        if lazily and not durable:
            self._maybe_unsynced = True
        try:
            async with replica._write_lock:
                released = replica._write_lock.released
                if absent and (absent_as_of is None or released != absent_as_of):
                    stored = await replica.store.record_organisations(list(absent))
                    if stored:
                        absent = set(absent).difference(stored)
                await absorb(
                    replica._pool,
                    replica.store,
                    updates,
                    checkpoint=checkpoint,
                    organisation=replica.identity.organisation,
                    absent=absent,
                    trusted=None
                    if trusted_rows is None
                    else TrustedCopy(trusted_rows, trusted_persons or {}),
                    checked=checked,
                    prepared=prepared,
                    durable=durable or not lazily,
                )
        finally:
            if lazily and not durable:
                # Again once committed (or cancelled, its job perhaps still to run): a
                # make_durable that began while this waited (for the lock, for its
                # reads) may have synced before the commit and cleared the mark.
                self._maybe_unsynced = True
        record_ids = tuple(dict.fromkeys(record_id for record_id, _update in updates))
        if record_ids:
            replica._notify_received(record_ids)

    @property
    def writes_ended(self) -> int:
        return self._replica._write_lock.released

    async def make_durable(self) -> None:
        if not (self._lazy_intake and self._maybe_unsynced):
            return  # nothing taken in lazily since the last sync began
        self._maybe_unsynced = False
        try:
            await self._replica.store.make_durable()
        except BaseException:
            self._maybe_unsynced = True  # not synced: the next call tries again
            raise

    def _commits_lazily(self) -> bool:
        """:func:`_commits_lazily` of the store, read again only when its methods change
        (reading their signatures costs about 50 µs: a live batch is often one update)."""
        store = self._replica.store
        methods = tuple(
            getattr(store, name, None) for name in ("write_remote", "write_copy", "make_durable")
        )
        if methods != self._methods_seen:
            self._methods_seen = methods
            self._lazy_intake = _commits_lazily(store)
        return self._lazy_intake

    def acknowledged(self, count: int) -> None:
        self._replica._notify_acknowledged(count)

    async def count_conflicts(self) -> int:
        return await self._replica.count_conflicts()
