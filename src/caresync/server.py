"""The clinic's sync server: accounts, enrolment, change feed and live fan-out.

A thin asyncio shell: each websocket connection drives one sans-I/O
:class:`~caresync.protocol.ServerProtocol`; the :class:`~caresync.storage.Store`
keeps records, the change feed, accounts and enrolled replicas. The server is
authoritative for identity and access, never for merges: every replica computes
the same merge from the same updates.

Ordering promise of the live feed: pushes are committed and fanned out under one
lock, so every subscriber receives feed entries in ascending sequence.

Several processes, one database (PostgreSQL; see
:mod:`caresync.replication.follow`): every push is committed inside the store's
exclusive commit section (one at a time across processes), after catching up
with what other processes committed (their records evicted from the pool, their
entries relayed live here, in seq order); the store's feed signal, or a poll
every ``feed_poll_s``, relays their commits between pushes.

Trust (see :mod:`caresync.gate`): a connection starts small (frames of a few
KiB, a few queued) and must log in within ``login_timeout_s``; at most
``max_pending_logins`` connections may wait to log in at once. Every pushed
update is admitted by :class:`~caresync.records.Admission` before anything of
its batch is stored: it may only add new revisions that the record schema
allows, dated no later than the server's clock allows. A session ends at its
absolute expiry, or as soon as its replica is revoked, its password changed or
its account disabled, even by another process (the accounts generation is
watched every ``security_poll_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Generic, TypeVar

from argon2 import PasswordHasher

from caresync.admin import AdminPage
from caresync.admin.handler import AdminHost
from caresync.audit import ANONYMOUS, SERVER_ACTIONS, AuditEvent, attempted_name
from caresync.conflicts import DEFAULT_RULEBOOK, Rulebook
from caresync.conflicts.duplicates import pair_conflicts
from caresync.credentials import ServerKey
from caresync.exceptions import (
    AuditError,
    CaresyncError,
    ConnectionLostError,
    InvalidInputError,
    InvalidUpdateError,
    LocalProtocolError,
    ProtocolError,
    RecordMismatchError,
    RefusedUpdateError,
    StorageError,
)
from caresync.fhir import require_models
from caresync.gate import PUSHED_KEY_PREFIX, Gatekeeper, Login, Refused, ensure_server_key
from caresync.hub.model import hub_mark
from caresync.hub.sender import HubSender, HubSnapshot, take_snapshot
from caresync.hub.status import HubMerge, hub_pending_counted, report_items
from caresync.listing import ConflictListing
from caresync.names import check_display_name, check_organisation, check_username
from caresync.observe import (
    METRICS_CONTENT_TYPE,
    STALE_AFTER_MS,
    ServerEvents,
    ServerMetrics,
    StoreFigures,
)
from caresync.protocol import (
    ACCOUNT_STATES_SINCE,
    BATCH_OVERHEAD_BYTES,
    COPY_PAIRS_SINCE,
    DEFAULT_MAX_FRAME_BYTES,
    ITEM_OVERHEAD_BYTES,
    MAX_BATCH_ITEMS,
    MAX_PUSH_ITEMS,
    MAX_SEQ,
    PROTOCOL_VERSION,
    RECORD_PARTS_SINCE,
    REFUSED_RECORD_DETAIL,
    SET_ASIDE_SINCE,
    AccountName,
    AccountState,
    AuditBatch,
    Authenticate,
    Authenticated,
    CheckedState,
    CopyBatch,
    CopyConflict,
    CopyPerson,
    CopyRequest,
    Enrol,
    ErrorCode,
    Goodbye,
    Hello,
    HubItem,
    OutboxReport,
    ProveServer,
    PullBatch,
    PullRequest,
    PushBatch,
    PushItem,
    RecordCheck,
    RecordPartRequest,
    RequestKind,
    ResumeSession,
    ServerProtocol,
    Subscribe,
    card_reference,
    encode_frame,
    item_wire_size,
    row_wire_size,
    rows_digest,
)
from caresync.protocol import FeedItem as WireItem
from caresync.records import Admission, AdmissionLimits, Record, Revision
from caresync.recovery import RecoveryReport
from caresync.recovery import recover_entries as _recover_entries
from caresync.replication.absorb import OnBadUpdate, Taken, WriteOptions, absorb
from caresync.replication.coalesce import Coalescer, MergeVerdicts
from caresync.replication.epochs import epoch_at
from caresync.replication.follow import FeedFollower
from caresync.replication.index import INDEX_RULEBOOK_KEY, ensure_index, read_wire_checks
from caresync.replication.parts import next_part
from caresync.replication.pool import DEFAULT_POOL_SIZE, RecordPool, check_pool_size
from caresync.storage import (
    ConflictRow,
    FeedEpoch,
    FeedItem,
    HubMark,
    LaptopStore,
    ReplicaInfo,
    ServerStore,
    own_identity,
)
from caresync.storage.base import check_text
from caresync.storage.servers import open_server_database, shown_database
from caresync.throttle import LoginThrottle
from caresync.transport import (
    Acceptor,
    Channel,
    ChannelHandler,
    HttpAnswer,
    HttpRequest,
    Listener,
    NowaitSend,
    WebSocketListener,
    nowait_sender,
    send_reply,
    serve_websockets,
)
from caresync.transport.forwarded import trusted_proxies as trusted_proxies_of
from caresync.versions import CLIENT_VERSION, check_version, is_older

__all__ = ["LoginThrottle", "RecoveryReport", "ServerKey", "SyncServer", "hash_password"]

_UNSET_THROTTLE: Any = object()


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


SESSION_TTL_S = 12 * 3600
"""How long a session lasts from its password login (absolute: resuming never extends it)."""
LOGIN_TIMEOUT_S = 10.0
"""A connection must log in within this long, or it is closed."""
PRE_LOGIN_MAX_FRAME_BYTES = 16 * 1024
"""The largest frame accepted before a login: Hello, ProveServer and credentials fit."""
PRE_LOGIN_QUEUED_FRAMES = 4
MAX_QUEUED_FRAMES = 8
"""Received frames that may wait per connection once logged in (each up to the frame limit)."""
MAX_PENDING_LOGINS = 256
"""Connections that may wait to log in at once; more are refused with ``busy``."""
SECURITY_POLL_S = 1.0
"""How often a running server looks for sessions ended by another process."""
LOGIN_SYNC_DELAY_S = 1.0
"""How long a login's audit entry may wait for the disk with other logins' (group commit):
it is committed at once, synced within this time, and before anything is served."""
# Requests a connection may make before its login is on disk: a pull is served so far
# as it sends nothing (see _Connection.serving); every other request waits for the sync.
_SERVES_NOTHING_YET = (PullRequest, OutboxReport, Goodbye)
_LIVE_BATCH_ENTRIES = 1000  # most queued entries taken into one live frame
_PULL_CHUNKS = 20  # most reads of ``limit`` feed entries one merged pull batch makes
_PULL_BYTES = 8 * 1024 * 1024  # most update bytes one merged pull batch carries
_HUB_PAGE = 10_000  # hub outbox changes read at once for a hub report
_HUB_PAGES = 10_000  # most pages one hub report reads (then it stops at the mark reached)
_CHECKS_REMEMBERED = 10_000  # records' latest checks kept for live frames, at most
_CARDS_REMEMBERED = 100_000  # records' cards (references) and since when, at most
LIVE_QUEUE_ENTRIES = 2 * MAX_BATCH_ITEMS  # one batch, however large, never drops a reader
"""Feed entries queued for one connected laptop at most, before it is dropped (see _fan_out)."""
LIVE_QUEUE_BYTES = 64 * 1024 * 1024
"""Update bytes queued for one connected laptop at most, before it is dropped."""
SLOW_READER_REASON = "too far behind the live updates; reconnect and pull from your checkpoint"
HEALTH_TIMEOUT_S = 5.0
"""How long ``/healthz`` and ``/metrics`` wait for the store before answering 503."""
FEED_POLL_S = 2.0
"""How often a server on a database shared by processes reads the feed even without a
notification (a lost one is recovered by this read)."""
METRICS_MAX_AGE_S = 5.0
"""How long the database figures of ``/metrics`` are reused before being read again."""
_TEXT = "text/plain; charset=utf-8"
_hasher = PasswordHasher()
logger = logging.getLogger("caresync.server")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    if not isinstance(password, str) or not password:
        raise InvalidInputError("a password must be a non-empty string")
    return _hasher.hash(password)


_tuple_new: Any = tuple.__new__  # cls(*fields) of a named tuple cls, in one C call
_REMEMBERED = 200_000  # Yjs client owners / record organisations kept in memory, at most

K = TypeVar("K")
V = TypeVar("V")


_Held = tuple[bytes, int, bytes, int]
"""A record's card and rows as this server last saw them, and since when: ``(card,
card_since, rows, rows_since)``, ``card`` the ``card_reference`` of the card (of ``b""``:
no card), ``rows`` the ``rows_digest`` of its conflict rows.

Plain tuples of bytes and numbers, as the record cache keeps its entries (see
:mod:`caresync.storage.cache`): the server keeps one per record it served, and the
garbage collector stops walking such a tuple after its first pass, where an object
would each be promoted to the oldest generation and bring its full collections sooner
(a pull of records not served before adds a thousand)."""

_Stored = tuple[bytes, bytes | None, tuple[CopyConflict, ...], tuple[bytes, bytes]]
"""A record's check as this server committed it with a push: ``(state_vector, card,
rows, (card_reference, rows_digest))``, what its index holds for as long as the
record's stored state vector is ``state_vector`` (conflict rows and a person card are
functions of a record's state and the rulebook, whoever stored them), with their
digests worked out once. A plain tuple, as :data:`_Held` (for most records, whose
rows are none, one the collector stops walking)."""


def _seen(held: _Held, card: bytes, rows: bytes, head: int) -> _Held:
    """What is known once a record ``held`` is seen with ``card`` and ``rows`` at ``head``:
    what changed since it was last seen counts from ``head``."""
    known_card, card_since, known_rows, rows_since = held
    if card == known_card and rows == known_rows:
        return held
    return (
        card,
        card_since if card == known_card else head,
        rows,
        rows_since if rows == known_rows else head,
    )


def _row_id(row: ConflictRow) -> str:
    return row.id


class _Remembered(Generic[K, V]):
    """A bounded map of facts that never change once stored (least recently used go first)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        items = self._items
        value = items.get(key)
        if value is not None:
            items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        items = self._items
        items[key] = value
        items.move_to_end(key)
        if len(items) > self._size:
            items.popitem(last=False)


def _read_to(items: Sequence[FeedItem], head: int, request: PullRequest) -> bool:
    """Whether a read of the feed for ``request`` (``items``) read it to its end: it came
    back short, or its last entry is the feed's ``head`` (nothing after it but what was
    committed since ``head`` was read)."""
    return len(items) < request.limit or items[-1].seq == head


def _fits_alone(record_id: str, update: bytes, frame: int) -> bool:
    """Whether a pull batch holding this one entry (and no checks) fits a frame of
    ``frame`` bytes: by its size when it is far from that, else by encoding one (the
    4 KiB batches keep spare is more than one entry's batch needs)."""
    if item_wire_size(record_id, update) <= frame - BATCH_OVERHEAD_BYTES:
        return True
    alone = PullBatch((WireItem(MAX_SEQ, record_id, update),), MAX_SEQ, MAX_SEQ, None, None, 1)
    try:
        encode_frame(alone, version=PROTOCOL_VERSION, max_frame_bytes=frame)
    except LocalProtocolError:
        return False
    return True


def _after_revocation(
    replica_id: str, revoked_ms: int, revisions: Sequence[tuple[str, Revision]]
) -> str | None:
    """Why entries vouched for as written on a revoked replica are not taken: one dated
    from its revocation on (no push of it was taken from then on); None if none is."""
    for record_id, rev in revisions:
        if rev.at.wall_ms >= revoked_ms:
            return (
                f"record {record_id}: revision {rev.id} is dated {rev.at.isoformat()}, "
                f"after replica {replica_id} was revoked ({revoked_ms} ms): nothing it "
                "wrote from then on was ever taken from it"
            )
    return None


def _refuse_push(conn: _Connection, code: str, message: str, record_id: str) -> None:
    """Refuse the connection's push (non-fatally); from protocol version 16 on, name the
    record whose updates caused it, so that the laptop sets them aside and pushes the
    rest (``record_id`` "": the push as a whole, named nowhere)."""
    version = conn.protocol.protocol_version or 0
    named = record_id and version >= SET_ASIDE_SINCE
    detail = {REFUSED_RECORD_DETAIL: record_id} if named else None
    conn.protocol.refuse(RequestKind.PUSH, code, message, detail=detail)


def _whole_organisation(_record_id: str) -> bool:
    """Whether a record of the laptop's organisation is in its first copy: every one is
    (a partial copy will pass its own test to :func:`_pairs_by_second`)."""
    return True


def _pairs_by_second(
    found: Iterable[tuple[str, str]], in_copy: Callable[[str], bool]
) -> dict[str, list[tuple[str, str]]]:
    """The person pairs a first copy sends, by the record whose batch carries them.

    The one place that says which pairs a replica is sent: those whose two records
    are both in its copy (``in_copy``). A pair goes with the batch holding its later
    record, ``second`` (a copy goes in record id order; ``first < second``), so the
    laptop holds both once that batch is stored. ``found`` is ordered by (second,
    first), and so is each list.
    """
    by_second: dict[str, list[tuple[str, str]]] = {}
    for first, second in found:
        if in_copy(first) and in_copy(second):
            by_second.setdefault(second, []).append((first, second))
    return by_second


class _EntryTooLarge(CaresyncError):
    """A feed entry too large for one frame of the pulling laptop (the pull is refused)."""

    def __init__(self, item: FeedItem, size: int, frame: int) -> None:
        needed = item_wire_size(item.record_id, item.update) + BATCH_OVERHEAD_BYTES
        super().__init__(
            f"feed entry {item.seq} (record {item.record_id}) holds {size} bytes, and this "
            f"laptop accepts frames of at most {frame} bytes: it cannot be sent, and the "
            f"entries after it wait behind it (nothing is lost: the server keeps them). "
            f"Let the laptop accept frames of at least {needed} bytes (caresync's own "
            f"laptops accept {DEFAULT_MAX_FRAME_BYTES})"
        )
        self.detail: dict[str, str | int] = {
            "seq": item.seq,
            "record_id": item.record_id,
            "needed": needed,
        }


class _Forbidden(CaresyncError):
    """A push this replica may not make: a record of another organisation, or revisions
    it did not write (see Gatekeeper.foreign_writers and unknown_author). ``record_id``:
    the record it is about, when one is ("": the push as a whole)."""

    def __init__(self, message: str, *, record_id: str = "") -> None:
        super().__init__(message)
        self.record_id = record_id


@dataclass(frozen=True, slots=True)
class _Pusher:
    """Whose entries a push commits: the replica that wrote them, its organisation, the
    connection they came on, or (``source`` None) the operator who vouches for them
    (see :meth:`SyncServer.recover_entries`)."""

    replica_id: str
    organisation: str | None
    source: _Connection | None
    vouched_by: str | None = None
    revoked_ms: int | None = None
    """For vouched entries of a revoked replica: when it was revoked (nothing it wrote
    from then on was ever taken from it)."""


@dataclass(eq=False)
class _Connection:
    """One connected replica: its protocol, channel and send lock."""

    protocol: ServerProtocol
    channel: Channel
    events: ServerEvents
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    user: str | None = None
    organisation: str | None = None
    login: Login | None = None
    # Feed entries to forward, queued in commit order by whoever committed them.
    live: asyncio.Queue[list[tuple[int, str, bytes]]] = field(default_factory=asyncio.Queue)
    # What ``live`` holds now, in entries and update bytes, with what the writer took
    # from it and has not yet handed to the protocol (see forward_live).
    queued_entries: int = 0
    queued_bytes: int = 0
    dropped: bool = False  # fell too far behind: its live queue was dropped, it is closing
    # The latest checks of records (version 8), for a laptop whose Subscribe named our
    # rulebook; None: its live frames carry none.
    checks: Callable[[Iterable[str]], dict[str, RecordCheck]] | None = None
    writer: asyncio.Task[None] | None = None
    # The channel's send without waiting (see transport.nowait_sender), or None.
    send_nowait: NowaitSend | None = None
    # First-copy progress on this connection: where the last batch ended, the
    # records and bytes sent up to there, and the records counted when it began.
    copy_last: str | None = None
    copy_done: int = 0
    copy_bytes: int = 0
    copy_total: int = 0
    # The login's audit entry is committed but maybe not yet on disk: nothing read from
    # the records goes out before it is (see SyncServer._login_on_record).
    login_unsynced: bool = False
    serving: bool = False  # the reply being built carries records or hub summaries
    # The refusal of the replica Hello named (revoked, unknown, another organisation),
    # held until this server proved itself: a laptop takes no refusal before the proof
    # as ours (anyone at our address could send one), and locks only on a proven one.
    refusal: Refused | None = None

    async def flush(self) -> None:
        for error in self.protocol.errors_sent():  # every refusal is logged and counted
            self.events.refused(
                self.channel.peer,
                self.protocol.replica_id,
                error.code,
                error.fatal,
                logged_in=self.login is not None,
            )
        # A small reply at once, in one write, where the channel takes it without waiting.
        await send_reply(self.channel, self.send_nowait, self.protocol.data_to_send())

    async def forward_live(self) -> None:
        """Send queued feed entries in order; entries already sent (by seq) are skipped.

        Whatever queued up while the last frame was being sent goes in one frame
        (a LiveBatch, protocol version 3 on), so a busy server sends fewer, larger
        frames instead of falling behind one frame per entry.
        """
        while True:
            # The queued lists are shared by every connection: copy before extending.
            entries = list(await self.live.get())
            while not self.live.empty() and len(entries) < _LIVE_BATCH_ENTRIES:
                entries.extend(self.live.get_nowait())
            size = sum(len(update) for _seq, _rid, update in entries)
            checks = None if self.checks is None else self.checks(rid for _s, rid, _u in entries)
            async with self.lock:
                # Still counted as queued while this waited for the connection (a request
                # held it): a fan-out then sends nothing at once, which would pass these
                # entries (live_seq moves on, and they would be skipped here).
                self.queued_entries -= len(entries)
                self.queued_bytes -= size
                before = self.protocol.live_seq
                sent = self.protocol.send_live_updates(entries, checks)
                await self.flush()
            if sent:
                self.events.relayed(
                    sent, sum(len(update) for seq, _rid, update in entries if seq > before)
                )


class SyncServer:
    """A sync server over a store. Make one with :meth:`open`; run it with :meth:`serve`."""

    def __init__(
        self,
        store: ServerStore,
        server_id: str,
        *,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        session_ttl_s: float = SESSION_TTL_S,
        now_ms: Callable[[], int] = _wall_clock_ms,
        password_hasher: PasswordHasher | None = None,
        server_key: ServerKey | None = None,
        throttle: LoginThrottle | None = _UNSET_THROTTLE,
        admission: AdmissionLimits | None = None,
        login_timeout_s: float = LOGIN_TIMEOUT_S,
        max_pending_logins: int = MAX_PENDING_LOGINS,
        security_poll_s: float = SECURITY_POLL_S,
        live_queue_entries: int = LIVE_QUEUE_ENTRIES,
        live_queue_bytes: int = LIVE_QUEUE_BYTES,
        client_min_version: str | None = None,
        stale_after_s: float = STALE_AFTER_MS / 1000,
        pool_size: int = DEFAULT_POOL_SIZE,
        feed_poll_s: float = FEED_POLL_S,
        login_sync_delay_s: float = LOGIN_SYNC_DELAY_S,
    ) -> None:
        """``password_hasher`` hashes new passwords (argon2id, the library's defaults
        unless given; a simulation may pass cheaper parameters). Stored hashes are
        checked with the parameters they were made with.

        ``server_key`` signs the server's proofs (default: the key kept in the
        store, made on first use). ``throttle`` slows password guessing (default:
        a :class:`~caresync.throttle.LoginThrottle`; None turns it off): its settings
        are the policy, and the failures are counted in the store, which on PostgreSQL
        every server process on the database shares.
        ``admission`` bounds what a pushed update may hold and how far ahead of
        this server's clock a revision may be dated. ``live_queue_entries`` and
        ``live_queue_bytes`` bound what waits to be sent to one live laptop; one
        that falls further behind is disconnected, and pulls when it returns.
        ``client_min_version`` refuses laptops running an older caresync (protocol
        version 7 on they say theirs; an older laptop cannot, and is refused too),
        before anything moves (see :mod:`caresync.versions`).
        ``stale_after_s`` is how long a laptop may go unseen (or keep a change
        unsynced) before the admin page marks it stale (24 hours).
        ``pool_size`` is how many records stay loaded to merge pushes into (1,024;
        see :mod:`caresync.replication.pool`); a value that is not an int from 1 to
        10,000,000 raises :class:`~caresync.exceptions.InvalidOptionError`.
        ``feed_poll_s``: on a database other processes write too, how often the feed
        is read for their commits when no notification came.
        ``login_sync_delay_s``: a login's audit entry (with the laptop's last contact)
        is committed before the login's next request is read, but synced to disk with
        the other logins of up to this many seconds (one sync, not one per login), and
        before the connection is sent any record or hub summary or may push, copy or
        stay connected: a sync with nothing to do then waits for no disk. A power cut
        within that time may lose the entries of logins that took nothing. 0: every
        login's entry is synced before its next request, as a push is (also what a
        store written before ``ServerStore.make_durable`` existed gets, whatever is asked).
        """
        if (
            not isinstance(stale_after_s, int | float)
            or isinstance(stale_after_s, bool)
            or not 0 < stale_after_s <= 100 * 365 * 86400
        ):
            raise InvalidInputError(
                f"stale_after_s must be in (0, a century] seconds, not {stale_after_s!r}"
            )
        self.stale_after_ms = int(stale_after_s * 1000)
        self.client_min_version = (
            None
            if client_min_version is None
            else check_version(client_min_version, "client_min_version")
        )
        newest = CLIENT_VERSION
        if self.client_min_version is not None and is_older(newest, self.client_min_version):
            newest = self.client_min_version
        self.client_newest_version = newest
        """The newest caresync the server knows of, as it tells laptops (its own, or the
        minimum it asks for when that is newer)."""
        if (
            not isinstance(login_sync_delay_s, int | float)
            or isinstance(login_sync_delay_s, bool)
            or not 0 <= login_sync_delay_s <= 60
        ):
            raise InvalidInputError(
                f"login_sync_delay_s must be in [0, 60] seconds, not {login_sync_delay_s!r}"
            )
        self.login_sync_delay_s = float(login_sync_delay_s)
        if not callable(getattr(store, "make_durable", None)):
            # A store written before make_durable (a third party's): it cannot sync
            # lazy commits later, so each login is synced before it is served, as before.
            self.login_sync_delay_s = 0.0
        self._login_syncer: asyncio.Task[None] | None = None
        self._stopping = False  # close() began: it syncs the last logins itself
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 3600
            for v in (login_timeout_s, security_poll_s, feed_poll_s)
        ):
            raise InvalidInputError(
                "login_timeout_s, security_poll_s and feed_poll_s must be in (0, 3600]"
            )
        self.feed_poll_s = float(feed_poll_s)
        for name, value in (
            ("max_pending_logins", max_pending_logins),
            ("live_queue_entries", live_queue_entries),
            ("live_queue_bytes", live_queue_bytes),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, not {value!r}")
        self.live_queue_entries = live_queue_entries
        self.live_queue_bytes = live_queue_bytes
        self.store = store
        self._hasher = password_hasher if password_hasher is not None else _hasher
        self.server_id = server_id
        self.session_ttl_s = session_ttl_s
        self._now_ms = now_ms
        self.rulebook = rulebook
        self.admission = admission if admission is not None else AdmissionLimits()
        self.login_timeout_s = login_timeout_s
        self.max_pending_logins = max_pending_logins
        self.security_poll_s = security_poll_s
        self._rechecks = 0
        """How many re-checks of the connections began (see :meth:`_still_open`)."""
        self.gate = Gatekeeper(
            store,
            server_id=server_id,
            hasher=self._hasher,
            session_ttl_s=session_ttl_s,
            now_ms=now_ms,
            throttle=LoginThrottle() if throttle is _UNSET_THROTTLE else throttle,
            server_key=server_key,
        )
        self._pool = RecordPool(
            store, replica=server_id, rulebook=rulebook, max_records=check_pool_size(pool_size)
        )
        # What this process relayed of the feed, and its catching up with other processes.
        self._follower = FeedFollower(store, self._pool, self._relay, self._know_epochs)
        # The feed's epochs (see caresync.replication.epochs), read when first needed, and
        # the feed head they answer for: every number of a store only this process writes
        # (the epoch it opened with is the last); with a store shared by processes, up to
        # the head read before them (an epoch begins only past the head).
        self._epochs: list[FeedEpoch] = []
        self._epochs_through = -1
        self._epochs_lock = asyncio.Lock()
        self._following: asyncio.Task[None] | None = None
        # Whether the stored conflict index was computed by ``rulebook`` (read once).
        self._index_current: bool | None = None
        self._connections: set[_Connection] = set()
        self._closing: set[asyncio.Task[None]] = set()  # slow readers being closed
        self._pending_logins = 0
        # What pushes check, remembered: both only ever gain entries, never change
        # (in any process: a stored fact stays true; only a miss is read, under the lock).
        self._owners: _Remembered[tuple[str, int], str] = _Remembered(_REMEMBERED)
        self._organisations: _Remembered[str, str] = _Remembered(_REMEMBERED)
        # Each record's check as stored after its last commit, for live frames (version 8).
        self._checks: _Remembered[str, RecordCheck] = _Remembered(_CHECKS_REMEMBERED)
        # Each record's check as a push here committed it: a pull or live frame of the
        # record still in that state takes it, not reading its card and rows again.
        self._stored: _Remembered[str, _Stored] = _Remembered(_CHECKS_REMEMBERED)
        # Each record's card and conflict rows as last seen here (their digests) and the
        # feed seqs by which the record had them (version 9: a laptop past them is sent
        # references instead). See _read_checks and _note_held.
        self._held: _Remembered[str, _Held] = _Remembered(_CARDS_REMEMBERED)
        # Which feed entries merge (version 10 pulls): every laptop reads the same ones.
        self._verdicts = MergeVerdicts()
        self._commit_lock = asyncio.Lock()
        self._listener: Listener | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.on_commit: list[Callable[[int], Awaitable[None] | None]] = []
        self.on_feed: list[Callable[[Sequence[FeedItem]], None]] = []
        """Called with the feed entries this process relays, in seq order: its own commits
        and, with a store shared by processes, the others' as it follows the feed."""
        self.metrics = ServerMetrics()
        """The server's Prometheus registry (``GET /metrics``)."""
        self.events = ServerEvents(self.metrics)
        self._figures: tuple[float, StoreFigures] | None = None
        self._figures_lock = asyncio.Lock()
        self.hub: HubSender | None = None
        """The health-hub sender, once :meth:`start_hub` started it."""
        # Each laptop's protocol and caresync version at its latest login here.
        self._versions: dict[str, tuple[int | None, str | None]] = {}
        self.admin_page = AdminPage(
            AdminHost(
                store=store,
                gate=self.gate,
                events=self.events,
                server_id=server_id,
                now_ms=now_ms,
                stale_after_ms=self.stale_after_ms,
                connections_open=lambda: len(self._connections),
                versions=self._versions,
                hub_sending=lambda: self.hub is not None,
                audit=self._audit,
                timeout_s=HEALTH_TIMEOUT_S,
            )
        )
        """``GET /admin``: the administrator's page (:mod:`caresync.admin`)."""

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        session_ttl_s: float = SESSION_TTL_S,
        now_ms: Callable[[], int] = _wall_clock_ms,
        password_hasher: PasswordHasher | None = None,
        server_key: ServerKey | None = None,
        throttle: LoginThrottle | None = _UNSET_THROTTLE,
        admission: AdmissionLimits | None = None,
        login_timeout_s: float = LOGIN_TIMEOUT_S,
        max_pending_logins: int = MAX_PENDING_LOGINS,
        security_poll_s: float = SECURITY_POLL_S,
        live_queue_entries: int = LIVE_QUEUE_ENTRIES,
        live_queue_bytes: int = LIVE_QUEUE_BYTES,
        key: bytes | None = None,
        client_min_version: str | None = None,
        stale_after_s: float = STALE_AFTER_MS / 1000,
        pool_size: int = DEFAULT_POOL_SIZE,
        feed_poll_s: float = FEED_POLL_S,
        login_sync_delay_s: float = LOGIN_SYNC_DELAY_S,
    ) -> SyncServer:
        """Open (or create) a server database and take its server id and key from it.

        ``path`` is an SQLite file, or a PostgreSQL database's URL
        (``postgresql://USER@HOST:PORT/DATABASE``; the ``postgres`` extra): see
        :func:`caresync.storage.servers.open_server_database`.

        The options are those of the constructor. A database whose conflict index
        another rulebook computed is re-indexed first, before this returns (see
        :mod:`caresync.replication.index`; on a database other processes serve, a
        chunk at a time under the commit lock they push under).
        ``key`` (32 bytes; :func:`caresync.storage.server_database_key` reads one
        from a file or the environment) opens, or creates, the database encrypted
        at rest (AEGIS-256, SQLite3 Multiple Ciphers); a PostgreSQL database takes
        none (InvalidInputError).
        A bad ``pool_size`` is refused before the database is opened.
        """
        check_pool_size(pool_size)
        store = await open_server_database(path, key=key)
        try:
            identity = await own_identity(
                store, "server", id_prefix="server", where=shown_database(path)
            )
            if server_key is None:
                server_key = await ensure_server_key(store)
            # Before serving; other processes on a shared database may be serving
            # already, so each chunk is re-indexed under their commit lock.
            await ensure_index(
                store,
                rulebook,
                replica=identity.replica_id,
                exclusive=store.exclusive_commits if store.shared else None,
            )
            return cls(
                store,
                identity.replica_id,
                rulebook=rulebook,
                session_ttl_s=session_ttl_s,
                now_ms=now_ms,
                password_hasher=password_hasher,
                server_key=server_key,
                throttle=throttle,
                admission=admission,
                login_timeout_s=login_timeout_s,
                max_pending_logins=max_pending_logins,
                security_poll_s=security_poll_s,
                live_queue_entries=live_queue_entries,
                live_queue_bytes=live_queue_bytes,
                client_min_version=client_min_version,
                stale_after_s=stale_after_s,
                pool_size=pool_size,
                feed_poll_s=feed_poll_s,
                login_sync_delay_s=login_sync_delay_s,
            )
        except BaseException:  # an option refused, too: the database is let go again
            await store.close()
            raise

    async def server_key_fingerprint(self) -> str:
        """The fingerprint of this server's key, as laptops pin it (compare it out of band)."""
        return (await self.gate.server_key()).fingerprint

    # ------------------------------------------------------------------ accounts

    async def add_user(
        self,
        organisation: str,
        username: str,
        password: str,
        *,
        display_name: str | None = None,
        admin: bool = False,
    ) -> None:
        """Create an account (password stored as an argon2id hash).

        ``display_name`` is how people see its entries ("Dr Aïcha Diallo");
        without one, they see the username. ``admin`` lets it open the admin
        page (``GET /admin``).
        """
        check_organisation(organisation)
        check_username(username)
        if display_name is not None:
            check_display_name(display_name)
        if not isinstance(password, str) or not password:
            raise InvalidInputError("a password must be a non-empty string")
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        await self.store.add_user(
            organisation, username, password_hash, display_name=display_name, admin=admin
        )

    async def set_admin(self, organisation: str, username: str, admin: bool) -> None:
        """Grant (True) or revoke (False) an account's administrator role; the admin
        page checks it at every request, so a revocation holds from the next one."""
        await self.store.set_user_admin(organisation, username, admin)

    async def set_password(self, organisation: str, username: str, password: str) -> None:
        """Give a user a new password: every session of theirs ends now."""
        if not isinstance(password, str) or not password:
            raise InvalidInputError("a password must be a non-empty string")
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        await self.store.set_password_hash(organisation, username, password_hash)
        await self.recheck_sessions()

    async def disable_user(self, organisation: str, username: str) -> None:
        """Disable an account: it cannot log in, and its sessions and connections end now."""
        await self.store.set_user_disabled(organisation, username, True)
        await self.recheck_sessions()

    async def enable_user(self, organisation: str, username: str) -> None:
        """Let a disabled account log in again (with its password)."""
        await self.store.set_user_disabled(organisation, username, False)

    async def recover_entries(
        self, laptop: LaptopStore, *, vouched_by: str, batch_records: int = 200
    ) -> RecoveryReport:
        """Take back what a laptop's database holds of this server's records and this
        server lacks: after a restore from an older backup, the entries of laptops lost
        with the server's data, which live on in the laptops that pulled them.

        ``laptop``: the store of a laptop's database enrolled to this server (opened
        read-only will do: it is only read). Each entry goes in as written by the
        replica it names, admitted as that replica's push would be but for its authors'
        logins (see :meth:`admit_vouched`); ``vouched_by`` (the operator, as the audit
        trail names them) vouches for the file, and each record taken into is an
        ``import`` entry of the server's audit trail. What the server refuses is
        reported by record and replica, and nothing of that replica's entries in that
        record goes in; running it again adds nothing twice. ``InvalidInputError`` for
        a database that is not a laptop's enrolled to this server. See ``caresync
        recover`` and docs/operations.md.
        """
        return await _recover_entries(
            self, laptop, vouched_by=vouched_by, batch_records=batch_records
        )

    async def admit_vouched(
        self,
        replica_id: str,
        updates: Sequence[tuple[str, bytes]],
        *,
        organisation: str,
        vouched_by: str,
    ) -> int:
        """Commit ``updates`` ((record id, update) pairs) as written on replica
        ``replica_id`` of ``organisation``, an operator (``vouched_by``, as the audit
        trail names them) vouching for them: entries a restored server lost, taken back
        from a laptop's database (see :func:`caresync.recovery.recover_entries`).

        Admitted as that replica's push would be (the record schema, the sizes, the
        dates, only that replica's Yjs clients, every revision naming it, records of
        its organisation only), except that their authors need not have logged in
        there: the restored server may have forgotten those logins. The replica may
        not be the server itself nor an enrolled replica of another organisation; a
        revoked one's revisions must be dated before its revocation; an unknown id
        (a laptop enrolled after the backup) is taken at its word. Each record the
        updates are taken into is an ``import`` entry of the server's audit trail,
        written once every check passed, before the commit. Returns how many updates
        were new here (0: it held them all). Raises, storing nothing (and auditing
        nothing), ``InvalidUpdateError`` (``RefusedUpdateError``) for an update it does
        not admit, ``InvalidInputError`` for a record of another organisation or a
        replica that could not have written it.
        """
        check_organisation(organisation)
        check_text(replica_id, "replica_id", max_length=256)
        check_text(vouched_by, "vouched_by", max_length=256)
        items = [PushItem(n, rid, update) for n, (rid, update) in enumerate(updates, 1)]
        if not items:
            return 0
        for item in items:
            # As a push's (see _on_push): an entry no laptop's default frame can carry
            # would stop every laptop's pull at it.
            if not _fits_alone(item.record_id, item.update, DEFAULT_MAX_FRAME_BYTES):
                raise RefusedUpdateError(
                    f"record {item.record_id}: an update of {len(item.update)} bytes is "
                    f"more than one frame of {DEFAULT_MAX_FRAME_BYTES} bytes to a laptop "
                    "can carry; nothing was taken",
                    record_id=item.record_id,
                )
        revoked_ms = await self._vouchable(replica_id, organisation)
        pusher = _Pusher(replica_id, organisation, None, vouched_by, revoked_ms)
        async with self._commit_lock, self.store.exclusive_commits():
            await self._follower.start()
            if self.store.shared:
                await self._follower.catch_up(max_pages=1_000_000)
            try:
                added = await self._commit_push(pusher, None, items)
            except _Forbidden as exc:
                raise InvalidInputError(str(exc)) from None
        logger.info(
            "admitted %d updates of replica %s, vouched for by %s",
            len(added),
            replica_id,
            vouched_by,
        )
        return len(added)

    async def _vouchable(self, replica_id: str, organisation: str) -> int | None:
        """Raise InvalidInputError unless entries vouched for may be admitted as written
        on ``replica_id`` of ``organisation``; returns when it was revoked (None: not).

        A push of that replica could not write them either: the server writes no
        entries, and an enrolled laptop writes only its organisation's records. An
        unknown id is taken at its word: a laptop enrolled after the backup the server
        was restored from is unknown to it."""
        if replica_id == self.server_id:
            raise InvalidInputError(
                f"entries naming replica {replica_id}, the server's own id, are not "
                "taken: a server writes no entries (a laptop's database that holds such "
                "was tampered with)"
            )
        info = await self.store.get_replica(replica_id)
        if info is None:
            return None
        if info.organisation != organisation:
            raise InvalidInputError(
                f"replica {replica_id} is a laptop of {info.organisation}, not of "
                f"{organisation}: it cannot have written that organisation's records"
            )
        return info.revoked_ms

    async def replicas(self, organisation: str | None = None) -> list[ReplicaInfo]:
        """Every enrolled replica (of ``organisation``), by id: when each was last seen,
        whether it is revoked, and what it last reported of its outbox (``pending``
        changes not yet acknowledged, the oldest made at ``oldest_pending_ms``)."""
        return await self.store.replicas(organisation)

    async def revoke(self, replica_id: str, *, by: str | None = None) -> None:
        """Revoke a replica: its sessions end, its live connections close now (told
        ``revoked``, so it locks itself), and it is refused at every later contact.
        ``by``: who revokes it, as the server's audit trail names them (``revoke``; once:
        revoking a revoked replica again changes nothing and writes no entry)."""
        actor = ANONYMOUS if by is None else attempted_name(by)
        # The entry in the revocation's own commit, written only by the call that revoked.
        await self.store.revoke_replica(  # NotFoundError for an unknown one
            replica_id,
            audit=[AuditEvent(actor, "revoke", None, replica_id)],
            audit_as=self.server_id,
        )
        await self.recheck_sessions()

    async def recheck_sessions(self) -> int:
        """Close every connection whose session ended (revoked, expired, new password,
        disabled account); returns how many. Runs by itself every ``security_poll_s``."""
        self._rechecks += 1  # before any await: a login under way sees it (_on_login)
        closed = 0
        for conn in list(self._connections):
            if conn.login is None:
                continue
            ended = await self._session_ended(conn)
            if ended is None:
                continue
            await self._end(conn, ended.code, ended.message)
            closed += 1
        return closed

    async def _session_ended(self, conn: _Connection) -> Refused | None:
        """Why the session of a logged-in ``conn`` ended (its replica revoked; the session
        expired or deleted by a new password or a disabled account), or None."""
        login = conn.login
        if login is None:
            return None
        replica_id = conn.protocol.replica_id
        if replica_id is not None:
            info = await self.store.get_replica(replica_id)
            if info is None or info.revoked:
                return Refused(ErrorCode.REVOKED, f"replica {replica_id} was revoked")
        if not await self.gate.session_valid(login.session_hash):
            return Refused(
                ErrorCode.SESSION_EXPIRED,
                "the session ended (expired, a new password, or the account was disabled): "
                "log in with your password",
            )
        return None

    async def _end(self, conn: _Connection, code: str, message: str) -> None:
        """Tell the peer why (a fatal Error), then close its connection."""
        async with conn.lock:
            if conn.login_unsynced:
                # Replies queued before the fault may carry records, and the login
                # is not on disk (its sync may be what failed): they never go.
                conn.protocol.data_to_send()
            if not conn.protocol.close_expected:
                try:
                    conn.protocol.reject(code, message)
                    await conn.flush()
                except CaresyncError as exc:
                    logger.debug("could not tell %s why it ends: %s", conn.channel.peer, exc)
        await conn.channel.close(message[:100])

    async def _watch_sessions(self) -> None:
        """Re-check open connections when another process ended sessions, or one expired."""
        generation = await self.store.accounts_generation()
        while True:
            await asyncio.sleep(self.security_poll_s)
            try:
                current = await self.store.accounts_generation()
                now = self._now_ms()
                expired = any(
                    c.login is not None and c.login.expires_ms <= now for c in self._connections
                )
                if current != generation or expired:
                    closed = await self.recheck_sessions()
                    # Handled only once every connection was looked at: a re-check the
                    # store failed is tried again next round, not taken as done.
                    generation = current
                    if closed:
                        self.events.sessions_ended(closed)
            except StorageError as exc:  # a busy or full disk: try again next round
                logger.warning("could not re-check sessions: %s", exc)

    # ------------------------------------------------------------------- serving

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | None = None,
        wrap: Callable[[ChannelHandler], ChannelHandler] | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> WebSocketListener:
        """Start listening; returns the listener (its ``url`` and ``port``).

        Connections start with the small pre-login limits; the key is ready
        before the first one arrives. ``wrap`` wraps the connection handler
        (a simulation counts the bytes on the wire that way).
        ``trusted_proxies``: addresses or networks of reverse proxies in front of
        this server, whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` say who a
        connection's client is, for the login throttle's per-address count, the logs
        and the admin page (:mod:`caresync.transport.forwarded`); InvalidInputError
        for an entry that is neither.
        """
        proxies = trusted_proxies_of(trusted_proxies)
        await self.gate.server_key()
        await self._follower.start()
        await self._warm_up()
        listener = await serve_websockets(
            self.handle if wrap is None else wrap(self.handle),
            host,
            port,
            ssl=ssl,
            max_frame_bytes=PRE_LOGIN_MAX_FRAME_BYTES,
            max_queued_frames=PRE_LOGIN_QUEUED_FRAMES,
            http_handler=self.answer_http,
            proxies=proxies,
        )
        self._listening(listener)
        return listener

    async def _warm_up(self) -> None:
        """Open and load, before the first laptop arrives, what the first push would
        otherwise wait for (measured: the first edit after a start was the slowest
        delivery of every fan-out run): the commit lock, taken and let go (on
        PostgreSQL its own connection is opened), and a first record's document (pycrdt
        loads anyio's event-loop backend for it)."""
        async with self.store.exclusive_commits():
            pass
        Record.create(replica=self.server_id)

    async def listen(
        self, acceptor: Acceptor, *, wrap: Callable[[ChannelHandler], ChannelHandler] | None = None
    ) -> Listener:
        """Start listening through any transport: e.g. ``network.host("server")`` of a
        :class:`~caresync.transport.MemoryNetwork`. As :meth:`serve` otherwise (the
        pre-login limits, ``wrap``); plain HTTP (``/healthz``) is websockets' only."""
        await self.gate.server_key()
        await self._follower.start()
        listener = await acceptor.listen(
            self.handle if wrap is None else wrap(self.handle),
            max_frame_bytes=PRE_LOGIN_MAX_FRAME_BYTES,
            max_queued_frames=PRE_LOGIN_QUEUED_FRAMES,
        )
        self._listening(listener)
        return listener

    def _listening(self, listener: Listener) -> None:
        self._listener = listener
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_sessions())
        if self._following is None and self.store.shared:
            self._following = asyncio.create_task(self._follow_feed())

    async def _follow_feed(self) -> None:
        """Relay what other processes commit: on the store's signal, or every
        ``feed_poll_s`` without one (a lost notification costs at most that)."""
        more = False
        while True:
            try:
                if not more:
                    await self.store.wait_for_feed(self.feed_poll_s)
                async with self._commit_lock:
                    more = await self._follower.catch_up()
            except StorageError as exc:  # the database is away: the poll goes on
                logger.warning("could not follow the change feed: %s", exc)
                more = False
                await asyncio.sleep(self.feed_poll_s)
            except Exception as exc:  # a bug must not end the relay for good
                logger.error("following the change feed failed: %s", exc, exc_info=exc)
                more = False
                await asyncio.sleep(self.feed_poll_s)

    async def answer_http(
        self, method: str, path: str, request: HttpRequest | None = None
    ) -> HttpAnswer | None:
        """Plain HTTP on the sync port: ``GET /healthz``, ``GET /metrics`` and the admin
        page (``/admin``, which needs ``request``: its credentials and connection).

        ``/healthz`` is 200 ``ok`` when the store answers within
        :data:`HEALTH_TIMEOUT_S`, 503 with the reason otherwise (a damaged
        database, a store that fails or hangs). ``/metrics`` is the Prometheus
        text format, its gauges read from the store now. Any other path is left
        to the websocket handshake (None).
        """
        route = path.split("?", 1)[0]
        if self.admin_page.handles(route):
            try:
                return await self.admin_page.answer(
                    method, route, request or HttpRequest((), None, False)
                )
            except Exception as exc:  # noqa: BLE001 - events.fault logs it with its traceback
                self.events.fault(f"GET {route}", exc)
                return HttpAnswer(500, _TEXT, b"internal error\n")
        if route not in ("/healthz", "/metrics"):
            return None
        if method != "GET":
            return HttpAnswer(405, _TEXT, b"only GET\n")
        try:
            return await self._answer(route)
        except Exception as exc:  # noqa: BLE001 - events.fault logs it with its traceback
            self.events.fault(f"GET {route}", exc)
            return HttpAnswer(500, _TEXT, b"internal error\n")

    async def _answer(self, route: str) -> HttpAnswer:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                damaged = getattr(self.store, "damaged", None)
                if damaged:
                    raise StorageError(f"the database is damaged: {damaged}")
                if route == "/healthz":
                    await self.store.feed_head()
                    return HttpAnswer(200, _TEXT, b"ok\n")
                figures = await self._recent_figures()
        except (StorageError, TimeoutError) as exc:
            # The reason goes to the log only: the endpoint needs no login.
            reason = str(exc) or f"the store did not answer within {HEALTH_TIMEOUT_S:g} s"
            logger.warning("%s: unhealthy: %s", route, reason)
            return HttpAnswer(503, _TEXT, b"unhealthy\n")
        self.metrics.refresh(figures, len(self._connections))
        return HttpAnswer(200, METRICS_CONTENT_TYPE, self.metrics.exposition())

    async def _recent_figures(self) -> StoreFigures:
        """The store's figures, read at most once per :data:`METRICS_MAX_AGE_S`: the
        endpoint needs no login, so scraping it often must not load the store."""
        async with self._figures_lock:
            now = asyncio.get_running_loop().time()
            if self._figures is None or now - self._figures[0] > METRICS_MAX_AGE_S:
                self._figures = (now, await self._store_figures())
            return self._figures[1]

    async def _store_figures(self) -> StoreFigures:
        now = self._now_ms()
        laptops = [r for r in await self.store.replicas() if not r.revoked]
        waiting = [r for r in laptops if r.pending]
        oldest = min((r.oldest_pending_ms for r in waiting if r.oldest_pending_ms), default=None)
        return StoreFigures(
            feed_head=await self.store.feed_head(),
            records=await self.store.count_records(),
            # From the indexes only (never building records, whoever asks): each
            # record's own conflicts and the duplicate-person findings.
            open_conflicts=await self.store.count_conflicts()
            + sum(len(pair_conflicts(p)) for p in await self.store.person_pairs()),
            laptops=len(laptops),
            laptops_stale=sum(
                1
                for r in laptops
                if r.last_seen_ms is None or now - r.last_seen_ms > STALE_AFTER_MS
            ),
            laptops_pending=len(waiting),
            pending_changes=sum(r.pending or 0 for r in waiting),
            oldest_pending_age_s=0.0 if oldest is None else max(0, now - oldest) / 1000,
            hub_pending=hub_pending_counted(await self.store.hub_state_counts()),
        )

    # ------------------------------------------------------- health hub (caresync.hub)

    def start_hub(self, url: str, **options: Any) -> HubSender:
        """Keep the summaries of the patients marked for it current on the hub at ``url``.

        The outbox is kept whether or not this runs (each push writes its rows);
        this starts the sender, woken by every commit, told which records each commit
        changed (:attr:`on_feed`: other processes' commits too). ``options`` go to
        :class:`~caresync.hub.sender.HubSender` (timeout, clock, randomness,
        client). Needs the ``hub`` extra (fhir.resources and httpx).
        """
        require_models()  # MissingExtraError now, not at the first summary
        if self.hub is not None:
            raise InvalidInputError("the hub sender is running already")
        options.setdefault("audit_as", self.server_id)
        sender = HubSender(self.store, url, self.hub_snapshot, **options)
        self.notify_hub(sender)
        sender.start()
        self.hub = sender
        return sender

    def notify_hub(self, sender: HubSender) -> None:
        """Tell ``sender`` of every record committed from now on (:meth:`start_hub` does;
        a sender stepped by hand needs it too): it looks at a held summary again only
        when its record, or one it waits on, changed."""
        self.on_feed.append(lambda items: sender.wake(item.record_id for item in items))

    async def hub_snapshot(self, record_id: str) -> HubSnapshot | None:
        """One record's hub summary as of its outbox row's version (under the commit lock,
        so the version and the record read are of one moment)."""
        async with self._commit_lock, self.store.exclusive_commits():
            if self.store.shared:
                # Every page: a record changed past the first pages would be read as it
                # was loaded (nobody else commits now, so this ends).
                await self._follower.catch_up(max_pages=1_000_000)
            return await take_snapshot(
                self.store, ConflictListing(self.store, self._pool), record_id
            )

    async def _send_hub_report(self, conn: _Connection, hub_since: int | None) -> None:
        """Tell a laptop (version 7 on) where its organisation's hub summaries stand.

        From protocol version 13, a laptop that holds the report of hub mark
        ``hub_since`` gets only what changed since (a laptop in step: nothing, read
        from an index); one that holds none, or a mark this server never reached (it
        went back to an older copy), gets the whole list with the mark it is at.
        """
        protocol = conn.protocol
        if not protocol.can_report_hub:
            return
        organisation = conn.organisation
        if not protocol.reports_hub_changes or organisation is None:
            rows = await self.store.hub_summaries(organisation)
            if protocol.reports_hub_changes:  # no organisation: nothing to follow, mark 0
                _queue_hub_report(conn, report_items(rows), mark=0, whole=True)
            else:
                _queue_hub_report(conn, report_items(rows))
            return
        if hub_since:  # None or 0: the laptop holds no report
            first = await self.store.hub_changes(organisation, hub_since, _HUB_PAGE)
            if hub_since <= first.mark:
                merged = HubMerge()
                changes = first
                for _page in range(_HUB_PAGES):  # bounded: each page moves the mark on
                    merged.add(changes)
                    if not changes.more:
                        break
                    changes = await self.store.hub_changes(organisation, changes.mark, _HUB_PAGE)
                _queue_hub_report(conn, merged.items(), mark=changes.mark, whole=False)
                return
            mark = first.mark  # the laptop is ahead: this server went back to an older copy
        else:
            # The mark alone (nothing is numbered above MAX_SEQ).
            mark = (await self.store.hub_changes(organisation, MAX_SEQ, 1)).mark
        # Read after the mark, the list may be newer than it, never older: the next
        # change report repeats what it already holds, which merging takes as it is.
        # Mark 0: the outbox never held a row (``ServerStore.hub_changes``), and a
        # server with no hub answers every sync so: nothing to read.
        rows = await self.store.hub_summaries(organisation) if mark else []
        _queue_hub_report(conn, report_items(rows), mark=mark, whole=True)

    @property
    def url(self) -> str:
        if self._listener is None:
            raise InvalidInputError("the server is not listening; call serve() first")
        return self._listener.url

    async def close(self) -> None:
        """Stop listening, drop connections, close the store."""
        self._stopping = True  # no login timer starts now: the sync below covers them
        if self.hub is not None:
            await self.hub.close()
            self.hub = None
        for task in (self._watcher, self._following, self._login_syncer):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        self._watcher = self._following = self._login_syncer = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        for conn in list(self._connections):
            await conn.channel.close("server stopping")
        if self._closing:  # slow readers still being closed
            await asyncio.wait(set(self._closing))
        if self.login_sync_delay_s:  # else no commit was left to sync later
            with contextlib.suppress(StorageError):  # closing: a checkpoint syncs it anyway
                await self.store.make_durable()
        await self.store.close()

    async def __aenter__(self) -> SyncServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def handle(self, channel: Channel) -> None:
        """Serve one connection until it closes (the listener calls this)."""
        conn = _Connection(
            ServerProtocol(self.server_id, feed_epoch_at=self._epoch_at),
            channel,
            self.events,
            send_nowait=nowait_sender(channel),
        )
        self.events.connected(channel.peer)
        if self._pending_logins >= self.max_pending_logins:
            await self._end(conn, ErrorCode.BUSY, "too many connections are logging in; retry")
            return
        self._pending_logins += 1
        waiting = True
        self._connections.add(conn)
        deadline = asyncio.get_running_loop().time() + self.login_timeout_s
        try:
            while not conn.protocol.close_expected:
                try:
                    if waiting:
                        async with asyncio.timeout_at(deadline):
                            frame = await channel.recv()
                    else:
                        frame = await channel.recv()
                except TimeoutError:
                    await channel.close(f"no login within {self.login_timeout_s:g} s")
                    return
                except ConnectionLostError:
                    conn.protocol.connection_lost()
                    return
                async with conn.lock:
                    try:
                        conn.protocol.receive_data(frame)
                    except CaresyncError:
                        # A malformed frame or a refusal (wrong server, ...): the
                        # protocol queued the Error frame that tells the peer why.
                        await conn.flush()
                        return
                    for event in conn.protocol.events_received():
                        if conn.login_unsynced and not isinstance(event, _SERVES_NOTHING_YET):
                            await self._login_on_record(conn)
                        await self._on_event(conn, event)
                    if conn.login_unsynced and conn.serving:
                        await self._login_on_record(conn)
                    conn.serving = False
                    await conn.flush()
                    if conn.protocol.failure is not None:
                        return  # a fatal reject() by this shell; its Error was just sent
                if waiting and conn.login is not None:
                    waiting = False
                    self._pending_logins -= 1
                    channel.set_limits(
                        max_frame_bytes=conn.protocol.max_frame_bytes,
                        max_queued_frames=MAX_QUEUED_FRAMES,
                    )
        except LocalProtocolError as exc:
            if conn.protocol.failure is not None or conn.protocol.close_expected:
                return  # the connection had failed or was closing: nothing more to say
            # A move of ours the protocol refused (a frame larger than the peer takes):
            # a fault of ours, logged, and the peer told, not closed on in silence.
            self.events.fault(channel.peer, exc)
            await self._end(conn, ErrorCode.INTERNAL, "the server failed; nothing more was done")
        except (ConnectionLostError, ProtocolError):
            return  # the peer went away or broke the protocol; nothing half-done stays
        except Exception as exc:  # noqa: BLE001 - events.fault logs it with its traceback
            # A fault of ours (a full disk outside a push, a bug): say so, keep serving others.
            self.events.fault(channel.peer, exc)
            await self._end(conn, ErrorCode.INTERNAL, "the server failed; nothing more was done")
        finally:
            if waiting:
                self._pending_logins -= 1
            self._connections.discard(conn)
            if conn.writer is not None:
                conn.writer.cancel()
            await channel.close()

    # -------------------------------------------------------------------- events

    async def _on_event(self, conn: _Connection, event: object) -> None:
        if isinstance(event, Hello):
            refused = await self.gate.check_hello(event)
            version = conn.protocol.protocol_version
            if refused is not None and version is not None and version >= ProveServer.SINCE_VERSION:
                conn.refusal = refused  # after the proof the laptop asks for next
            else:
                await self._refuse_if(conn, refused)
        elif conn.refusal is not None:
            # Whatever the peer sends next (a laptop: ProveServer), it is refused: proved
            # first, if that is what it asked.
            if isinstance(event, Goodbye):
                return
            if isinstance(event, ProveServer):
                await self._prove(conn, event)
            await self._refuse_if(conn, conn.refusal)
        elif isinstance(event, ProveServer):
            await self._prove(conn, event)
        elif isinstance(event, (Authenticate, ResumeSession)):
            await self._on_login(conn, event)
        elif isinstance(event, Enrol):
            await self._on_enrol(conn, event)
        elif isinstance(event, CopyRequest):
            await self._on_copy(conn, event)
        elif isinstance(event, RecordPartRequest):
            await self._on_record_part(conn, event)
        elif isinstance(event, PullRequest):
            await self._on_pull(conn, event)
        elif isinstance(event, PushBatch):
            await self._on_push(conn, event)
        elif isinstance(event, Subscribe):
            await self._on_subscribe(conn, event)
        elif isinstance(event, OutboxReport):
            await self._on_outbox_report(conn, event)
        elif isinstance(event, AuditBatch):
            await self._on_audit(conn, event)
        elif isinstance(event, Goodbye):
            return

    async def _prove(self, conn: _Connection, event: ProveServer) -> None:
        key, signature = await self.gate.prove(
            event.nonce, conn.protocol.replica_id, conn.channel.channel_binding
        )
        conn.protocol.send_server_proof(key, signature)

    async def _refuse_if(self, conn: _Connection, refused: Refused | None) -> None:
        if refused is not None:
            conn.protocol.reject(refused.code, refused.message)

    async def _on_login(self, conn: _Connection, login: Authenticate | ResumeSession) -> None:
        hello = conn.protocol.hello
        address = conn.channel.remote_host
        if await self._refuse_old_client(conn, login):
            return
        rechecks = self._rechecks
        if isinstance(login, Authenticate):
            outcome = await self.gate.password_login(login, hello, address)
        else:
            outcome = await self.gate.resume(login, hello, address)
        if not isinstance(outcome, Refused) and self._rechecks != rechecks:
            outcome = await self._still_open(conn, outcome)
        if isinstance(outcome, Refused):
            conn.protocol.reject(outcome.code, outcome.message)
            conn.protocol.errors_sent()  # logged here as a failed login, not as a refusal too
            user = login.username if isinstance(login, Authenticate) else None
            self.events.login_failed(conn.channel.peer, user, outcome.code, outcome.message)
            if outcome.code != ErrorCode.THROTTLED:  # no password checked: the log counts those
                await self._audit(
                    AuditEvent(_tried(user), "login-failed", None, f"refused: {outcome.code}")
                )
            return
        expected = conn.protocol.organisation
        if expected is not None and expected != outcome.organisation:
            conn.protocol.reject(
                ErrorCode.WRONG_ORGANISATION,
                f"this replica belongs to {expected}; {outcome.user} logged in to "
                f"{outcome.organisation}",
            )
            return
        conn.user, conn.organisation, conn.login = outcome.user, outcome.organisation, outcome
        accounts, account_states = await self._accounts_told(conn, outcome)
        conn.protocol.accept_authentication(
            outcome.token,
            outcome.expires_ms,
            outcome.user,
            outcome.organisation,
            pushed_up_to=outcome.pushed_up_to,
            replica_secret=outcome.new_secret,
            accounts=accounts,
            audit_tail=await self._audit_tail(conn, outcome.audit_tail),
            client_newest=self.client_newest_version,
            client_min=self.client_min_version,
            account_states=account_states,
        )
        # Authenticated goes now, and the login is recorded while it travels: this
        # connection handles nothing more (no request is read) until the records
        # below are committed, so nothing is served before the login is on record.
        # The logged-in limits first: the laptop may send its larger frames at once.
        conn.channel.set_limits(
            max_frame_bytes=conn.protocol.max_frame_bytes, max_queued_frames=MAX_QUEUED_FRAMES
        )
        await conn.flush()
        replica_id = conn.protocol.replica_id
        if replica_id is not None:
            self._versions[replica_id] = (conn.protocol.protocol_version, login.client_version)
        # Seen: only now that it proved who it is; with the login's entry, one commit,
        # synced with other logins' unless this connection is served first.
        durable = self.login_sync_delay_s == 0
        await self._audit(
            AuditEvent(outcome.user, "login", None, replica_id or "a new laptop"),
            seen=None if replica_id is None else (replica_id, self._now_ms()),
            durable=durable,
        )
        if not durable:
            conn.login_unsynced = True
            self._sync_logins_soon()
        self.events.logged_in(conn.channel.peer, outcome.user, outcome.organisation, replica_id)

    async def _still_open(self, conn: _Connection, outcome: Login) -> Login | Refused:
        """``outcome``, a login the gate accepted while a re-check of the connections ran
        (the watcher's, or a revocation's here), if its session still stands now.

        The gate read the store before this connection was logged in, and that re-check
        passed it by as not logged in: a revocation, a new password or a disabled account
        it was looking for, committed after the gate's reads, would be marked handled and
        never looked at again (a revoked laptop served, live, until its session's end).
        Logged in first, then read: any later change meets it at the next re-check."""
        conn.login = outcome  # seen by every re-check from now on
        try:
            ended = await self._session_ended(conn)
        finally:
            conn.login = None  # set for good by the caller, with no await in between
        return outcome if ended is None else ended

    async def _refuse_old_client(
        self, conn: _Connection, login: Authenticate | ResumeSession
    ) -> bool:
        """Refuse (fatally, before the password is checked) a laptop running a caresync
        older than ``client_min_version``; True if it was."""
        least = self.client_min_version
        if least is None or not is_older(login.client_version, least):
            return False
        said = login.client_version or "a caresync too old to say its version"
        conn.protocol.reject(
            ErrorCode.CLIENT_TOO_OLD,
            f"this server accepts caresync {least} or newer; this laptop runs {said}. "
            "Update caresync on it, then sync again: its unsynced changes are kept",
            detail={"client_min": least, "client_newest": self.client_newest_version},
        )
        conn.protocol.errors_sent()  # logged here as a failed login, not as a refusal too
        user = login.username if isinstance(login, Authenticate) else None
        self.events.login_failed(conn.channel.peer, user, ErrorCode.CLIENT_TOO_OLD, said)
        await self._audit(AuditEvent(_tried(user), "login-failed", None, "refused: client_too_old"))
        return True

    async def _audit(
        self, event: AuditEvent, *, seen: tuple[str, int] | None = None, durable: bool = True
    ) -> None:
        """Append to the server's own audit trail (what happened here, not on a laptop);
        with ``seen``, note that replica's last contact in the same commit; ``durable``
        False: without waiting for the disk (see :meth:`_login_on_record`)."""
        # Only what differs from the defaults: a store written before ``seen`` (or
        # ``durable``) existed still logs what it can (failed logins, refusals).
        options: dict[str, Any] = {}
        if seen is not None:
            options["seen"] = seen
        if not durable:
            options["durable"] = False
        await self.store.append_audit([event], replica_id=self.server_id, **options)

    async def _login_on_record(self, conn: _Connection) -> None:
        """Have the connection's login entry on disk before it is served: one sync for
        every login committed since the last (none if a synced commit followed)."""
        await self.store.make_durable()
        conn.login_unsynced = False

    def _sync_logins_soon(self) -> None:
        """Sync the logins' entries within ``login_sync_delay_s``: one timer for them all."""
        if self._stopping:
            return  # close() syncs every login committed before the store closes
        if self._login_syncer is None or self._login_syncer.done():
            self._login_syncer = asyncio.create_task(self._sync_logins())

    async def _sync_logins(self) -> None:
        """Sync after the delay; a failing disk is tried again after each delay until it
        syncs or the server closes (which cancels this and syncs once more itself)."""
        while True:
            await asyncio.sleep(self.login_sync_delay_s)
            try:
                await self.store.make_durable()
            except StorageError as exc:  # a full or failing disk: try again
                logger.warning("could not sync the logins' audit entries (retrying): %s", exc)
            else:
                return

    async def _audit_tail(
        self, conn: _Connection, known: tuple[int, bytes] | None = None
    ) -> tuple[int, bytes] | None:
        """Where the replica's audit chain held here ends, for a peer that sends it
        (``known``: as the login read it already)."""
        version = conn.protocol.protocol_version
        replica_id = conn.protocol.replica_id
        if replica_id is None or version is None or version < AuditBatch.SINCE_VERSION:
            return None
        if replica_id == self.server_id:
            return None
        return known if known is not None else await self.store.audit_tail(replica_id)

    async def _on_audit(self, conn: _Connection, batch: AuditBatch) -> None:
        """Keep a replica's audit entries, then acknowledge them; or refuse them whole.

        Only the replica's own entries, chained on what is held of its chain (or,
        for a copy restored from an older one, on an entry held: a new line).
        """
        replica_id = conn.protocol.replica_id or ""
        if replica_id == self.server_id:  # enrolled under the server's id before that was refused
            conn.protocol.refuse(
                RequestKind.AUDIT,
                ErrorCode.FORBIDDEN,
                "audit entries refused: this replica bears the server's own id",
            )
            return
        claimed = sorted({e.action for e in batch.entries if e.action in SERVER_ACTIONS})
        if claimed:  # what the server did: a laptop's chain never records it
            conn.protocol.refuse(
                RequestKind.AUDIT,
                ErrorCode.BAD_MESSAGE,
                f"audit entries refused: {', '.join(claimed)} is recorded by the server "
                "only, never on a laptop's trail",
            )
            return
        try:
            up_to = await self.store.receive_audit(replica_id, batch.entries)
        except AuditError as exc:
            conn.protocol.refuse(
                RequestKind.AUDIT, ErrorCode.BAD_MESSAGE, f"audit entries refused: {exc}"
            )
            return
        except StorageError as exc:
            logger.error("audit entries from %s not stored: %s", replica_id, exc)
            conn.protocol.refuse(
                RequestKind.AUDIT,
                ErrorCode.BUSY,
                f"the server could not store these audit entries ({exc}); try again later",
            )
            return
        conn.protocol.ack_audit(up_to)

    async def _accounts_told(
        self, conn: _Connection, login: Login
    ) -> tuple[list[AccountName] | None, list[AccountState] | None]:
        """The login's organisation's accounts and display names, for a peer that reads
        them; and, for a peer of version 16 on, whether each is disabled and its password
        mark (read with the names, in one read, so the two lists name the same accounts).
        What the login read already (a resumed one) is not read again."""
        version = conn.protocol.protocol_version
        if version is None or version < Authenticated.FIELDS_SINCE["accounts"]:
            return None, None
        organisation, known = login.organisation, login.accounts
        if version >= ACCOUNT_STATES_SINCE:
            standings = login.standings
            if standings is None:
                standings = await self.store.account_standings(organisation)
            users = sorted(standings)
            return (
                [AccountName(user, standings[user].display_name) for user in users],
                [
                    AccountState(user, standings[user].disabled, standings[user].password_mark)
                    for user in users
                ],
            )
        names = known if known is not None else await self.store.organisation_accounts(organisation)
        return [AccountName(user, names[user]) for user in sorted(names)], None

    async def _on_enrol(self, conn: _Connection, enrol: Enrol) -> None:
        login = conn.login
        if login is None:  # pragma: no cover - the protocol allows Enrol only once READY
            raise InvalidInputError("Enrol before a login")
        version = conn.protocol.protocol_version
        if version is not None and version < ProveServer.SINCE_VERSION:
            # Before version 4, Enrolled carries no secret, and the server requires one
            # at every later login: the laptop would be enrolled and never log in again.
            conn.protocol.refuse(
                RequestKind.ENROL,
                ErrorCode.UNSUPPORTED_VERSION,
                f"enrolment needs protocol version {ProveServer.SINCE_VERSION} or later (this "
                f"connection agreed on {version}): a laptop proves a secret of its own at "
                "every login, which older versions cannot receive; update caresync there",
            )
            return
        outcome = await self.gate.enrol(login, enrol.device_name, enrol.replica_id)
        if isinstance(outcome, Refused):
            conn.protocol.refuse(RequestKind.ENROL, outcome.code, outcome.message)
            return
        replica_id, secret, again = outcome  # on the trail in the enrolment's commit
        conn.protocol.accept_enrolment(replica_id, login.organisation, replica_secret=secret)
        self.events.enrolled(
            conn.channel.peer,
            replica_id,
            login.organisation,
            login.user,
            enrol.device_name,
            again=again,
        )

    async def _on_copy(self, conn: _Connection, request: CopyRequest) -> None:
        organisation = conn.organisation
        send_rows = request.rulebook == self.rulebook.fingerprint and await self._index_is_current()
        # Person cards (version 5 on) go with the rows: a laptop taking the rows as
        # they are would otherwise have to build every record to index who it is.
        version = conn.protocol.protocol_version
        send_persons = (
            send_rows and version is not None and version >= CopyBatch.FIELDS_SINCE["persons"]
        )
        # The person index's pairs (version 12 on) go with the cards: a laptop then
        # compares only those, not every stored card sharing a blocking key.
        send_pairs = send_persons and version is not None and version >= COPY_PAIRS_SINCE
        if request.after_record_id is not None and request.after_record_id == conn.copy_last:
            done_before, bytes_before = conn.copy_done, conn.copy_bytes
        else:
            # A copy starts, or resumes on a new connection (or at a point of the client's
            # choosing): count once for the progress (the bytes sent before a resume point
            # are not known here). Outside the commit lock: a count reads every id of the
            # organisation, and a client choosing resume points must not hold every push
            # for as long. Records are only ever added, so what a batch says it has done
            # never falls short of this total (a final batch's counts meet).
            conn.copy_total = await self.store.count_records(organisation)
            done_before, bytes_before = 0, 0
            if request.after_record_id is not None:
                done_before = len(await self.store.record_ids(organisation))
                done_before -= len(
                    await self.store.record_ids(organisation, after=request.after_record_id)
                )
        # Under the commit lock: the records, their conflict rows and the feed head
        # are read as of one moment (a push committing in between would pair a
        # record's state with rows of another state), in every process.
        async with self._commit_lock, self.store.exclusive_commits():
            checkpoint = await self.store.feed_head()
            # One read for the page: its records as stored, with their rows and cards
            # as stored, none of it through the record cache (which a copy would churn).
            page = await self.store.copy_page(
                organisation,
                after=request.after_record_id,
                limit=request.batch_records,
                rows=send_rows,
                persons=send_persons,
                pairs=send_pairs,
            )
        more = page.more
        budget = conn.protocol.peer_max_frame_bytes - BATCH_OVERHEAD_BYTES
        if request.batch_bytes is not None:  # sized by what it holds (version 8 on)
            budget = min(budget, request.batch_bytes)
        stored_rows, cards = page.rows, page.cards
        # Each record's wire size (item_wire_size, inline: 2,000 a batch), with its rows
        # and card; the batch takes the longest prefix within the budget, at least one.
        sizes = [
            len(record_id.encode("utf-8", "surrogatepass")) + len(stored) + ITEM_OVERHEAD_BYTES
            for record_id, stored in page.records
        ]
        in_copy = _whole_organisation  # what this replica copies (partial: its own test)
        pairs_of = _pairs_by_second(page.pairs, in_copy) if send_pairs else {}
        if stored_rows or cards:
            for index, (record_id, _stored) in enumerate(page.records):
                found_rows = stored_rows.get(record_id)
                if found_rows:
                    sizes[index] += sum(row_wire_size(CopyConflict(*row)) for row in found_rows)
                card = cards.get(record_id)
                if card is not None:
                    sizes[index] += item_wire_size(record_id, card)
                for first, second in pairs_of.get(record_id, ()):
                    sizes[index] += 2 * ITEM_OVERHEAD_BYTES + 4 * (len(first) + len(second))
        ends = list(accumulate(sizes))
        taken = max(1, bisect_right(ends, budget)) if ends else 0
        if taken < len(ends):
            more = True  # the rest goes in the next batch
        records = page.records[:taken]
        size = ends[taken - 1] if taken else 0
        rows = (
            [
                CopyConflict(*row)
                for record_id, _ in records
                for row in stored_rows.get(record_id, ())
            ]
            if stored_rows
            else []
        )
        persons = (
            [
                CopyPerson(record_id, cards[record_id])
                for record_id, _ in records
                if record_id in cards
            ]
            if cards
            else []
        )
        # Only pairs whose records of this batch have cards (a damaged index's others
        # would make the batch one the laptop must refuse).
        start = records[0][0] if records else ""
        pairs = [
            pair
            for record_id, _ in records
            if record_id in cards
            for pair in pairs_of.get(record_id, ())
            if pair[0] < start or pair[0] in cards
        ]
        done = done_before + len(records)
        sent_bytes = bytes_before + size
        await self._know_epochs(checkpoint)
        try:
            conn.protocol.send_copy_batch(
                records,
                done_records=done,
                total_records=max(conn.copy_total, done),
                done_bytes=sent_bytes,
                total_bytes=sent_bytes,  # the total is unknown without reading every record
                feed_checkpoint=checkpoint,
                final=not more or not records,
                conflicts=rows if send_rows else None,
                persons=persons if send_persons else None,
                pairs=pairs if send_pairs else None,
            )
        except LocalProtocolError:
            if len(records) != 1:
                raise  # batches keep 4 KiB spare: a fault of ours, logged by handle()
            record_id = records[0][0]
            if (version or 0) >= RECORD_PARTS_SINCE:
                # One record, with its rows and card, larger than the laptop's frames: it
                # takes it in parts (RecordPartRequest), then asks for the records after.
                conn.protocol.send_copy_batch(
                    (),
                    done_records=done_before,
                    total_records=max(conn.copy_total, done_before),
                    done_bytes=bytes_before,
                    total_bytes=bytes_before,
                    feed_checkpoint=checkpoint,
                    final=False,
                    conflicts=[] if send_rows else None,
                    persons=[] if send_persons else None,
                    pairs=[] if send_pairs else None,
                    in_parts=record_id,
                )
                # Its next request resumes after that record, which counts as copied.
                conn.copy_last, conn.copy_done = record_id, done
                conn.copy_bytes = bytes_before
                return
            # Before version 15: say which, instead of closing on it (nothing is sent;
            # the copy stops here).
            conn.protocol.refuse(
                RequestKind.COPY,
                ErrorCode.TOO_LARGE,
                f"record {record_id} takes {size} bytes with its conflict rows and person "
                f"card, more than one frame of {conn.protocol.peer_max_frame_bytes} bytes "
                "to this laptop carries: the first copy cannot go past it (copying one "
                "record in several frames is not built yet). The server keeps it whole",
                detail={"record_id": record_id, "needed": size + BATCH_OVERHEAD_BYTES},
            )
            return
        conn.copy_last = records[-1][0] if records else request.after_record_id
        conn.copy_done, conn.copy_bytes = done, sent_bytes
        self.events.copied(
            conn.protocol.replica_id or conn.channel.peer,
            len(records),
            size,
            done,
            not more or not records,
        )

    async def _on_record_part(self, conn: _Connection, request: RecordPartRequest) -> None:
        """The next part of a record the laptop's first copy takes in parts
        (:mod:`caresync.replication.parts`): what it lacks of the record as stored now,
        from the state vector it named, within one of its frames."""
        record_id = request.record_id
        owners = await self.store.record_organisations([record_id])
        # Read only once it is known to be the laptop's own: reading another
        # organisation's record first cost a load per request, and its time told
        # that the id exists.
        mine = owners.get(record_id) == conn.organisation
        state = await self.store.load(record_id) if mine else None
        if state is None:
            # One answer for a record of another organisation and one that does not
            # exist: which ids exist elsewhere is not this laptop's to learn.
            conn.protocol.refuse(
                RequestKind.PART,
                ErrorCode.FORBIDDEN,
                f"record {record_id} is not a record this replica copies",
            )
            return
        budget = conn.protocol.peer_max_frame_bytes - BATCH_OVERHEAD_BYTES
        try:
            # Off the event loop: a part costs a diff and a walk of the whole record (a
            # record of tens of MB, a few hundred milliseconds), which every other
            # connection would otherwise wait for.
            part = await asyncio.to_thread(
                next_part,
                state,
                request.state_vector,
                budget,
                record_id=record_id,
                per_update=ITEM_OVERHEAD_BYTES,
                max_updates=MAX_BATCH_ITEMS,
            )
        except InvalidUpdateError:
            conn.protocol.refuse(
                RequestKind.PART,
                ErrorCode.BAD_MESSAGE,
                f"the state vector sent for record {record_id} is not a Yjs state vector",
            )
            return
        too_large = (
            f"record {record_id} cannot be copied in parts to this laptop: it is not "
            "entries only (stored before this server checked what it admits), or one of "
            f"its entries is larger than a frame of {conn.protocol.peer_max_frame_bytes} "
            "bytes. The server keeps it whole"
        )
        if part is None:
            conn.protocol.refuse(RequestKind.PART, ErrorCode.TOO_LARGE, too_large)
            return
        try:
            conn.protocol.send_record_part(part.updates, final=part.final)
        except LocalProtocolError:
            conn.protocol.refuse(RequestKind.PART, ErrorCode.TOO_LARGE, too_large)

    async def _sends_checks(self, conn: _Connection, rulebook: str | None) -> bool:
        """True if this connection's pulls and live frames may carry the server's checks:
        version 8, the client's rulebook is ours, and our index is current."""
        version = conn.protocol.protocol_version
        return (
            version is not None
            and version >= PullBatch.FIELDS_SINCE["checked"]
            and rulebook == self.rulebook.fingerprint
            and await self._index_is_current()
        )

    async def _read_checks(
        self, record_ids: Sequence[str], head: int | None = None
    ) -> dict[str, RecordCheck]:
        """The records' checks as the store holds them now (under the commit lock).

        ``head`` is the feed's head now (None: read here). Each check says since when
        the record has had its card (``RecordCheck.card_since``): the head when this
        server first read that card, so a laptop that pulled past it holds the card
        and is sent a reference (version 9). A card first read here, or changed since
        it was last read, counts from ``head``: a laptop behind gets the card itself.
        """
        ids = list(dict.fromkeys(record_ids))
        if not ids:
            return {}
        # A record still in the state a push here committed: its check as committed
        # (the state vector read now, under the commit lock, says it is that state).
        vectors = await self.store.state_vectors(ids)
        # By record: its check as a push here committed it (a plain _Stored tuple), or
        # as read from the store (a RecordCheck).
        checks: dict[str, _Stored | RecordCheck] = {}
        unknown: list[str] = []
        remembered = self._stored.get  # (bound once: a pull reads a thousand records)
        for record_id in ids:
            found = vectors.get(record_id)
            if found is None or found[1]:
                continue  # not stored, or holding waiting items: no check (as read)
            stored = remembered(record_id)
            if stored is not None and stored[0] == found[0]:
                checks[record_id] = stored
            else:
                unknown.append(record_id)
        if unknown:
            checks.update(await read_wire_checks(self.store, unknown))
        if not checks:
            return {}
        if head is None:
            head = await self.store.feed_head()
        wired: dict[str, RecordCheck] = {}
        held_get, held_put = self._held.get, self._held.put
        for record_id in ids:
            wire = checks.get(record_id)
            if wire is None:
                continue
            if isinstance(wire, RecordCheck):  # as read from the store
                state, wire_rows = wire.state, wire.rows
                if wire.digests is not None:
                    digests = wire.digests
                    card, rows = digests
                else:
                    card = card_reference(state.card or b"")
                    rows = rows_digest(wire_rows)
                    digests = (card, rows)
            else:  # as committed here: digests worked out then
                vector, card_bytes, wire_rows, digests = wire
                # CheckedState(...) in one C call (a pull builds a thousand).
                state = _tuple_new(CheckedState, (record_id, vector, card_bytes))
                card, rows = digests
            known = held_get(record_id)
            if known is None:
                # Not seen since this server started: as far as it knows, always so (a
                # laptop that lacks it after all builds the record, as without a check).
                held: _Held = (card, 0, rows, 0)
                held_put(record_id, held)
            elif known[0] == card and known[2] == rows:
                held = known  # what _seen says when nothing changed, without a call
            else:
                held = _seen(known, card, rows, head)
                if held is not known:
                    held_put(record_id, held)
            # RecordCheck(...) in one C call (a pull builds a thousand).
            wired[record_id] = _tuple_new(
                RecordCheck, (state, wire_rows, held[1], held[3], digests)
            )
        return wired

    async def _note_held(
        self,
        before: tuple[Mapping[str, bytes], Mapping[str, tuple[ConflictRow, ...]]],
        taken: Mapping[str, Taken],
        head: int,
    ) -> None:
        """After a push's commit at feed seq ``head`` (under the commit lock): the cards
        and rows it changed count from ``head`` (``before``: the records' cards and rows
        before it), and each record's check as committed is kept (``_stored``)."""
        cards, rows = before
        # The state vectors just committed (the store's cache holds them).
        vectors = await self.store.state_vectors(list(taken))
        for record_id, found in taken.items():
            old_card = card_reference(cards.get(record_id, b""))
            old_rows = rows_digest(rows.get(record_id, ()))
            card_bytes = None if found.person is None else found.person.to_bytes()
            new_card = card_reference(card_bytes or b"")
            new_rows = rows_digest(found.rows)
            known = self._held.get(record_id) or (old_card, 0, old_rows, 0)
            held = _seen(_seen(known, old_card, old_rows, head), new_card, new_rows, head)
            if held is not known:
                self._held.put(record_id, held)
            vector = vectors.get(record_id)
            if vector is None or vector[1]:
                continue  # waiting items: its state vector does not say its state
            # In id order, as the store reads them back (a frame carries them so).
            wire_rows = tuple(
                CopyConflict(record_id, row.id, row.kind, row.subject, row.severity, row.payload)
                for row in sorted(found.rows, key=_row_id)
            )
            # A plain tuple (see _Stored): the check is built when a pull or live frame
            # takes it.
            self._stored.put(record_id, (vector[0], card_bytes, wire_rows, (new_card, new_rows)))

    def _remembered_checks(self, record_ids: Iterable[str]) -> dict[str, RecordCheck]:
        return {rid: check for rid in record_ids if (check := self._checks.get(rid)) is not None}

    async def _remember_checks(self, source: _Connection | None, record_ids: Sequence[str]) -> None:
        """After a commit: keep the records' checks for the live frames that carry them,
        read only when a live connection takes checks."""
        if any(c.checks is not None and c is not source for c in self._connections):
            for record_id, check in (await self._read_checks(record_ids)).items():
                self._checks.put(record_id, check)

    async def _index_is_current(self) -> bool:
        """True if the stored conflict index was computed by this server's rulebook."""
        if self._index_current is None:
            marked = await self.store.get_meta(INDEX_RULEBOOK_KEY)
            self._index_current = marked == self.rulebook.fingerprint
        return self._index_current

    async def _know_epochs(self, seq: int) -> None:
        """Make :meth:`_epoch_at` answer for feed numbers up to ``seq``."""
        if seq <= self._epochs_through:
            return
        async with self._epochs_lock:
            if seq <= self._epochs_through:
                return
            # The head first: an epoch begun after it was read begins past it.
            through = await self.store.feed_head() if self.store.shared else MAX_SEQ
            self._epochs = await self.store.feed_epochs()
            self._epochs_through = through

    def _epoch_at(self, seq: int) -> int:
        """The feed epoch of feed number ``seq`` (:meth:`_know_epochs` went first)."""
        return epoch_at(self._epochs, seq)

    async def _diverged(self, request: PullRequest, head: int) -> str | None:
        """Why a pull from ``request.after_seq`` names feed entries this server does not
        hold (a server restored from an older backup), or None."""
        after = request.after_seq
        if after > head:
            return (
                f"this laptop read the change feed up to entry {after}, and this server's "
                f"feed ends at {head}: the server went back in time (restored from an older "
                "backup?)"
            )
        if request.feed_epoch is None or after == 0:
            return None
        await self._know_epochs(after)
        if self._epoch_at(after) != request.feed_epoch:
            return (
                f"entry {after} of this server's change feed is not the one this laptop read "
                "(another feed epoch): the server went back in time (restored from an older "
                "backup?) and wrote new entries since"
            )
        return None

    async def _on_pull(self, conn: _Connection, request: PullRequest) -> None:
        send_checks = await self._sends_checks(conn, request.rulebook)
        checks: dict[str, RecordCheck] | None = None
        # Under the commit lock when checks go too: each record's rows, card and state
        # vector are read as of one commit (the laptop compares the state vector).
        async with self._commit_lock if send_checks else contextlib.nullcontext():
            head = await self.store.feed_head()
            diverged = await self._diverged(request, head)
            if diverged is not None:
                self.events.feed_diverged(conn.protocol.replica_id or conn.channel.peer, diverged)
                conn.protocol.refuse(
                    RequestKind.PULL,
                    ErrorCode.FEED_DIVERGED,
                    f"{diverged}. The laptop sends what it wrote again and pulls from the start",
                )
                return
            try:
                items, taken, to_end = (
                    # A laptop at the head (a sync with nothing to do): nothing to read.
                    ((), [], True)
                    if head <= request.after_seq
                    else await self._pull_entries(conn, request, head)
                )
            except _EntryTooLarge as exc:
                conn.serving = True  # it names the record: sent once the login is on disk
                conn.protocol.refuse(
                    RequestKind.PULL, ErrorCode.TOO_LARGE, str(exc), detail=exc.detail
                )
                return
            if send_checks:
                record_ids = list(dict.fromkeys(i.record_id for i in items))
                checks = await self._read_checks(record_ids, head)
            if not to_end:  # entries are left: the batch must say so, however far it read
                head = max(head, await self.store.feed_head())
        # Merged outside the commit lock: pushes need not wait for it.
        entries = taken.entries() if isinstance(taken, Coalescer) else taken
        if entries is None:  # bytes that do not merge: the entries as they are, as before
            items = items[: request.limit]
            entries = [(i.seq, i.record_id, i.update) for i in items]
            to_end = False
        if to_end:
            checkpoint = max(head, items[-1].seq if items else request.after_seq)
        else:
            checkpoint = items[-1].seq
        conn.serving = conn.serving or bool(entries)
        await self._know_epochs(max(checkpoint, request.after_seq))
        conn.protocol.send_pull_batch(
            entries,
            checkpoint=max(checkpoint, request.after_seq),
            head_seq=max(head, checkpoint),
            checks=checks,
            feed_entries=len(items) if conn.protocol.coalesces_pulls else None,
        )
        if max(checkpoint, request.after_seq) >= max(head, checkpoint):  # the pull's last batch
            await self._send_hub_report(conn, request.hub_since)
        self.events.pulled(
            conn.protocol.replica_id or conn.channel.peer,
            len(items),
            sum(len(i.update) for i in items),
            max(checkpoint, request.after_seq),
        )

    async def _pull_entries(
        self, conn: _Connection, request: PullRequest, head: int
    ) -> tuple[Sequence[FeedItem], Coalescer | list[tuple[int, str, bytes]], bool]:
        """The feed entries a pull batch stands for, what it sends of them (a coalescer
        that merges them, for version 10 on), and whether the feed was read to its end
        (the checkpoint may then move to the head).

        To a client of version 10 on, a record's edits go merged into one entry
        (:mod:`caresync.replication.coalesce`), and the batch reads on until it holds
        ``limit`` entries or half the client's frame (at most :data:`_PULL_CHUNKS`
        reads of ``limit`` feed entries); to an older one, ``limit`` entries as they are.

        ``head`` is the feed's head as the caller read it: a read whose last entry is
        the head read the feed to its end, though it came back full (a laptop that
        pulls ``limit`` new entries exactly): no read after it, which could only
        find entries committed since (under the commit lock, none), as a next pull does.
        """

        async def read(after_seq: int) -> list[FeedItem]:
            # A replica is not sent back its own updates (it holds them already),
            # unless it asks: a copy restored from a backup lacks its later ones.
            return await self.store.feed_since(
                after_seq,
                limit=request.limit,
                organisation=conn.organisation,
                exclude_origin=None if request.include_own else conn.protocol.replica_id,
            )

        items = await read(request.after_seq)
        frame = conn.protocol.peer_max_frame_bytes
        if items and not _fits_alone(items[0].record_id, items[0].update, frame):
            raise _EntryTooLarge(items[0], len(items[0].update), frame)
        if not conn.protocol.coalesces_pulls:
            # As many as fit the client's frame (the first always does, checked above).
            fit = len(items)
            budget = frame - BATCH_OVERHEAD_BYTES
            for count, item in enumerate(items):
                budget -= item_wire_size(item.record_id, item.update)
                if budget < 0:
                    fit = count
                    break
            as_they_are = [(i.seq, i.record_id, i.update) for i in items[:fit]]
            return items[:fit], as_they_are, fit == len(items) and _read_to(items, head, request)
        budget = min(conn.protocol.peer_max_frame_bytes // 2, _PULL_BYTES) - BATCH_OVERHEAD_BYTES
        coalescer = Coalescer(items=request.limit, budget=budget, verdicts=self._verdicts)
        to_end = False
        for chunk in range(_PULL_CHUNKS):
            coalescer.take(items)
            to_end = _read_to(items, head, request)
            if coalescer.full or to_end or chunk == _PULL_CHUNKS - 1:
                break
            items = await read(items[-1].seq)
        return coalescer.taken, coalescer, to_end and not coalescer.full

    async def _on_push(self, conn: _Connection, batch: PushBatch) -> None:
        """Admit and commit a pushed batch whole, then acknowledge it; or refuse it whole.

        Every item is committed whatever its ``local_seq`` says: the store keeps
        an update it already holds once, so a resent batch changes nothing,
        and no number a client claims can make the server skip an edit. The
        replica's mark (``pushed:<replica>``, the highest seq committed) only
        tells a replica restored from an older copy that it must renumber.
        """
        replica_id = conn.protocol.replica_id or ""
        key = PUSHED_KEY_PREFIX + replica_id
        refusal: tuple[str, str, str] | None = None  # code, message, record ("": none)
        if len(batch.items) > MAX_PUSH_ITEMS:
            # Checked before anything: a push is merged on the event loop under the commit
            # lock, and tens of thousands of tiny updates would hold every connection.
            conn.protocol.refuse(
                RequestKind.PUSH,
                ErrorCode.TOO_LARGE,
                f"push refused, nothing stored: it holds {len(batch.items)} updates, and "
                f"this server takes at most {MAX_PUSH_ITEMS} in one push; send them in "
                "several batches, each acknowledged before the next",
            )
            return
        # An entry must fit one pull frame of a laptop that accepts frames as large as
        # the server's, or it would be stored and never delivered.
        frame = conn.protocol.max_frame_bytes
        for item in batch.items:
            if not _fits_alone(item.record_id, item.update, frame):
                _refuse_push(
                    conn,
                    ErrorCode.TOO_LARGE,
                    f"push refused, nothing stored: the update of record {item.record_id} "
                    f"takes {len(item.update)} bytes, more than one frame of {frame} bytes "
                    "to a laptop can carry; it stays in the outbox of the laptop that made it",
                    item.record_id,
                )
                return
        async with self._commit_lock:
            try:
                async with self.store.exclusive_commits():
                    added = await self._commit_exclusively(conn, key, batch)
            except (InvalidUpdateError, RecordMismatchError) as exc:
                # Nothing was stored: an update the schema forbids, that is not one,
                # or that names another record would reach every replica.
                refusal = (
                    ErrorCode.BAD_MESSAGE,
                    f"push refused, nothing stored: {exc}",
                    getattr(exc, "record_id", ""),
                )
            except _Forbidden as exc:
                refusal = (ErrorCode.FORBIDDEN, str(exc), exc.record_id)
            except StorageError as exc:
                logger.error("push from %s not stored: %s", replica_id, exc)
                refusal = (
                    ErrorCode.BUSY,
                    f"the server could not store this push ({exc}); nothing was committed; "
                    "it stays in your outbox: try again later",
                    "",
                )
            if refusal is not None:
                _refuse_push(conn, *refusal)
                return
            # Acknowledge only now: the batch is committed (or was, before a resend).
            conn.protocol.ack_push(batch.items[-1].local_seq)
        # What the push added: a batch sent again (its acknowledgement lost) adds nothing.
        self.events.pushed(
            replica_id,
            len(added),
            sum(len(update) for _seq, _record, update in added),
            len({record_id for _seq, record_id, _update in added}),
            resent=len(batch.items) - len(added),
        )

    async def _commit_exclusively(
        self, conn: _Connection, key: str, batch: PushBatch
    ) -> list[tuple[int, str, bytes]]:
        """Inside the store's exclusive section: catch up with other processes, then
        commit the batch with the replica's mark."""
        await self._follower.start()
        if self.store.shared:
            await self._follower.catch_up(max_pages=1_000_000)  # nobody else commits now
        committed = int(await self.store.get_meta(key) or 0)
        mark = str(max(committed, batch.items[-1].local_seq))
        pusher = _Pusher(conn.protocol.replica_id or "", conn.organisation, conn)
        return await self._commit_push(pusher, (key, mark), list(batch.items))

    async def _commit_push(
        self, pusher: _Pusher, checkpoint: tuple[str, str] | None, items: list[PushItem]
    ) -> list[tuple[int, str, bytes]]:
        """Admit, then commit pushed items with the replica's mark; fan out what was new.

        Returns the feed entries the push added (none for a batch sent again).

        Each record's conflict rows are computed once, after all its updates in
        the batch, and committed with its last one. Raises (storing nothing)
        RefusedUpdateError for an update admission refuses, InvalidUpdateError
        or RecordMismatchError for bytes that are not an update of that record,
        _Forbidden for a record of another organisation. Called under the
        commit lock, so fan-out is queued in commit order.
        """
        record_ids = list(dict.fromkeys(item.record_id for item in items))
        owners = await self._record_organisations(record_ids)
        for record_id, owner in owners.items():
            if owner is not None and owner != pusher.organisation:
                # Said the same way whatever the reason: nothing about the record leaks.
                raise _Forbidden(
                    f"record {record_id} cannot be written by this replica", record_id=record_id
                )
        # The Yjs clients this batch writes new changes under, with the record of each:
        # a client id means something only within one record, and is bound per record.
        writers: set[tuple[str, int]] = set()
        # And those whose changes the record held already: a resend is harmless from
        # the client's owner, and never comes from anyone else (see Admission.last_client).
        senders: set[tuple[str, int]] = set()
        revisions: list[tuple[str, Revision]] = []  # what the batch adds, by record
        replica_id = pusher.replica_id

        def admit(record_id: str, record: Record | None, updates: Sequence[bytes]) -> None:
            admission = (
                Admission(record_id, now_ms=self._now_ms, limits=self.admission)
                if record is None
                else Admission.for_record(record, now_ms=self._now_ms, limits=self.admission)
            )
            for update in updates:
                revisions.extend((record_id, rev) for rev in admission.admit(update))
                if admission.last_writer is not None:
                    writers.add((record_id, admission.last_writer))
                elif admission.last_client is not None:
                    senders.add((record_id, admission.last_client))

        async def vet(taken: Mapping[str, Taken]) -> WriteOptions:
            await self._check_authorship(pusher, revisions)
            bound = await self._client_owners(writers | senders)
            for (record_id, client), owner in sorted(bound.items()):
                if owner != replica_id:
                    raise RefusedUpdateError(
                        f"record {record_id}: update refused: it writes as Yjs client "
                        f"{client}, which another replica writes with in this record (a "
                        "document's client id belongs to its writer; never reuse one)",
                        record_id=record_id,
                    )
            if pusher.vouched_by is not None and taken:
                # Every check passed: the operator's word is on record before the commit,
                # once for each record it adds to (a refused one, or one held whole, has none).
                # One commit for them all (a recovery may take in thousands of records).
                actor = attempted_name(pusher.vouched_by)
                detail = f"entries of replica {replica_id}, vouched for from a laptop's database"
                await self.store.append_audit(
                    [AuditEvent(actor, "import", record_id, detail) for record_id in taken],
                    replica_id=self.server_id,
                )
            hub: dict[str, HubMark] = {}  # health-hub outbox rows, committed with the push
            for record_id, found in taken.items():
                mark = None if found.record is None else hub_mark(found.record, found.rows)
                if mark is not None:
                    hub[record_id] = mark
            return WriteOptions(
                to_feed=True,
                origin=replica_id or None,
                claim_clients=dict.fromkeys(writers - bound.keys(), replica_id),
                hub=hub or None,
            )

        # What the records hold before the push: a card or rows it changes are new from
        # its feed entries on (version 9 sends references to what a laptop holds).
        before = (
            await self.store.person_card_bytes(record_ids),
            await self.store.conflict_rows(record_ids),
        )
        try:
            absorbed = await absorb(
                self._pool,
                self.store,
                [(item.record_id, item.update) for item in items],
                checkpoint=checkpoint,
                organisation=pusher.organisation,
                keep_each=True,
                on_bad=OnBadUpdate.REFUSE,
                admit=admit,
                vet=vet,
            )
        except InvalidInputError as exc:
            # The store's own check, in its transaction: a record another process
            # gave another organisation meanwhile. Said as above: nothing leaks.
            logger.info("push from %s refused by the store: %s", replica_id, exc)
            raise _Forbidden("a record of this push cannot be written by this replica") from None
        for pair in writers:
            self._owners.put(pair, replica_id)  # committed: now theirs
        for record_id in record_ids:
            if pusher.organisation is not None:
                self._organisations.put(record_id, pusher.organisation)
        # Updates the server held already got no feed entry (seq 0): nothing to relay.
        entries = [entry for entry in absorbed.written if entry[0] > 0]
        if not entries:
            return entries
        try:
            await self._note_held(before, absorbed.taken, entries[-1][0])
            await self._remember_checks(
                pusher.source, [record_id for _seq, record_id, _u in entries]
            )
        except StorageError as exc:
            # Committed already, and what these read is only remembered to save work
            # (a stale or missing check costs a laptop a rebuild, never a wrong row):
            # the entries are relayed now and the push acknowledged, not left for some
            # later commit to relay and reported as not stored.
            logger.warning(
                "push from %s committed, but its checks were not noted: %s", replica_id, exc
            )
        origin = replica_id or None
        try:
            await self._follower.committed(
                [
                    FeedItem(seq, rid, update, pusher.organisation, origin)
                    for seq, rid, update in entries
                ]
            )
        except StorageError as exc:
            # Committed already: the push is acknowledged, not reported as not stored.
            # The follower's mark did not move, so these entries go live with the next
            # commit's (ahead of it) or the next catch-up, and pulls read them as ever.
            logger.warning("push from %s committed, but not relayed live yet: %s", replica_id, exc)
        for hook in self.on_commit:
            result = hook(entries[-1][0])
            if result is not None:
                await result
        return entries

    async def _check_authorship(
        self, pusher: _Pusher, revisions: list[tuple[str, Revision]]
    ) -> None:
        """Raise _Forbidden unless every revision was written on this replica by an
        account that logged in there (for entries an operator vouches for, the replica
        alone: the restored server may have forgotten who logged in there)."""
        if not revisions:  # a batch sent again adds none: no store query for it
            return
        replicas = {rev.replica for _rid, rev in revisions}
        why = self.gate.foreign_writers(pusher.replica_id, replicas)
        if why is not None:
            # The first record holding a foreign revision is the one the refusal is about.
            record_id = next(rid for rid, rev in revisions if rev.replica != pusher.replica_id)
            raise _Forbidden(f"push refused, nothing stored: {why}", record_id=record_id)
        if pusher.vouched_by is None:
            found = await self.gate.unknown_author(revisions)
            if found is not None:
                raise _Forbidden(f"push refused, nothing stored: {found[1]}", record_id=found[0])
        if pusher.revoked_ms is not None:
            why = _after_revocation(pusher.replica_id, pusher.revoked_ms, revisions)
            if why is not None:
                raise _Forbidden(f"push refused, nothing stored: {why}")

    async def _record_organisations(self, record_ids: list[str]) -> dict[str, str | None]:
        """Each stored record's organisation: remembered, else read (one query for the rest).

        A record's organisation never changes once set, so what was read or committed
        stays true in every process; a record missing here is read under the exclusive
        commit section (and the store checks again in its transaction).
        """
        known: dict[str, str | None] = {
            rid: org for rid in record_ids if (org := self._organisations.get(rid))
        }
        missing = [rid for rid in record_ids if rid not in known]
        if missing:
            read = await self.store.record_organisations(missing)
            for record_id, organisation in read.items():
                if organisation is not None:
                    self._organisations.put(record_id, organisation)
            known.update(read)
        return known

    async def _client_owners(
        self, clients: Collection[tuple[str, int]]
    ) -> dict[tuple[str, int], str]:
        """The replica each (record, Yjs client) is bound to: remembered, else read.

        A binding never changes once read (a legacy one holds for a client its record
        lists, and a record never forgets a client), so it is remembered for good."""
        known = {c: owner for c in clients if (owner := self._owners.get(c)) is not None}
        missing = [c for c in clients if c not in known]
        if missing:
            read = await self.store.client_owners(missing)
            for client, owner in read.items():
                self._owners.put(client, owner)
            known.update(read)
        return known

    async def _on_outbox_report(self, conn: _Connection, report: OutboxReport) -> None:
        # Kept for operators (``replicas()``): who carries unsynced work, since when.
        replica_id = conn.protocol.replica_id
        if replica_id is not None:
            if conn.login is not None:
                # Seen at this login already: a report of what is stored (a laptop with
                # nothing waiting, as last time) is not committed again. A read, not a
                # commit (an fsync) before the requests that follow it; read now, not at
                # the login: another connection of the replica may have written since.
                info = await self.store.get_replica(replica_id)
                if info is not None and (info.pending, info.oldest_pending_ms) == (
                    report.pending,
                    report.oldest_pending_ms,
                ):
                    return
            await self.store.touch_replica(
                replica_id,
                self._now_ms(),
                pending=report.pending,
                oldest_pending_ms=report.oldest_pending_ms,
            )

    def _relay(self, items: Sequence[FeedItem]) -> None:
        """New feed entries, in seq order (this process's commits and others'): to the
        live connections, then to :attr:`on_feed`."""
        self._fan_out(items)
        for hook in self.on_feed:
            hook(items)

    def _fan_out(self, items: Sequence[FeedItem]) -> None:
        """Queue new feed entries (in seq order) for every live connection they are for
        (see :meth:`_live_entries`). Every live relay, of this process's commits and of
        other processes', goes through here.

        A connection with nothing queued and nothing being sent, whose channel can take
        frames without waiting, is sent its frames here and now (no queue, no task):
        the frames of one selection of entries are encoded once, for every connection
        that gets the same entries in the same encoding (``ServerProtocol.live_encoding``:
        its protocol version, whether checks go, its largest frame and, when checks go
        from version 9 on, how far it had the feed), and the same bytes handed to each.

        Otherwise the entries are queued for the connection's writer. A connection whose
        queue would pass ``live_queue_entries`` or ``live_queue_bytes`` (a laptop that
        stopped reading, or reads slower than the clinic writes) is dropped instead: its
        queue is emptied at once and the connection closed, so it never holds the
        server's memory. Nothing is lost: the laptop reconnects and pulls from its
        checkpoint, as after any dropped connection. (A channel takes frames without
        waiting only while its own buffer is under its high-water mark, so a laptop that
        stops reading soon goes through the queue, and is dropped by its bound.)
        """
        by_organisation: dict[str, list[FeedItem]] = {}
        for item in items:
            if item.organisation is not None:
                by_organisation.setdefault(item.organisation, []).append(item)
        if not by_organisation:
            return
        origins = {org: {i.origin for i in mine} for org, mine in by_organisation.items()}
        # The bytes of each organisation's entries, counted once (most connections get all).
        sizes = {org: sum(len(i.update) for i in mine) for org, mine in by_organisation.items()}
        encoded: dict[tuple[object, ...], tuple[bytes, ...]] = {}
        sent = sent_bytes = 0
        for conn in self._connections:
            if conn.writer is None or conn.dropped or conn.organisation is None:
                continue
            mine = by_organisation.get(conn.organisation)
            if not mine:
                continue
            chosen = self._live_entries(conn, mine, origins[conn.organisation])
            if not chosen:
                continue
            if self._send_live_now(conn, mine, chosen, encoded):
                sent += len(chosen)
                sent_bytes += (
                    sizes[conn.organisation]
                    if chosen is mine
                    else sum(len(i.update) for i in chosen)
                )
                continue
            entries = [(i.seq, i.record_id, i.update) for i in chosen]
            size = sum(len(update) for _seq, _rid, update in entries)
            if (
                conn.queued_entries + len(entries) > self.live_queue_entries
                or conn.queued_bytes + size > self.live_queue_bytes
            ):
                self._drop_slow_reader(conn)
                continue
            conn.live.put_nowait(entries)
            conn.queued_entries += len(entries)
            conn.queued_bytes += size
        if sent:
            self.events.relayed(sent, sent_bytes)

    def _live_entries(
        self, conn: _Connection, items: list[FeedItem], origins: set[str | None]
    ) -> list[FeedItem]:
        """The entries of ``items`` (its organisation's, in seq order; ``origins``, the
        replicas that sent them) that ``conn`` is sent live: all but those its own
        replica sent. The one place a live entry is chosen per replica (partial
        replication filters here too). Returns ``items`` itself when every one goes,
        which lets connections share frames."""
        replica_id = conn.protocol.replica_id
        if replica_id not in origins:
            return items
        return [item for item in items if item.origin != replica_id]

    def _send_live_now(
        self,
        conn: _Connection,
        items: list[FeedItem],
        chosen: list[FeedItem],
        encoded: dict[tuple[object, ...], tuple[bytes, ...]],
    ) -> bool:
        """Send ``chosen`` to ``conn`` now if nothing of its own is queued or being sent
        and its channel takes frames without waiting; False (nothing sent) otherwise.

        ``encoded`` holds this fan-out's frames by what they depend on: the entries
        (``items`` itself, or the seqs chosen) and the connection's encoding, which
        holds, when checks go from version 9 on, how far it had the feed (what goes as a
        reference); every connection reads the same remembered checks."""
        protocol = conn.protocol
        if (
            conn.send_nowait is None
            or conn.lock.locked()
            or conn.queued_entries
            or not conn.live.empty()
            or protocol.has_data_to_send
            or not protocol.can_send_live
            or chosen[0].seq <= protocol.live_seq
        ):
            return False
        checks = None if conn.checks is None else conn.checks(i.record_id for i in chosen)
        selection: object = 0 if chosen is items else tuple(item.seq for item in chosen)
        key = (id(items), selection, *protocol.live_encoding(checks is not None))
        frames = encoded.get(key)
        if frames is None:
            entries = [(i.seq, i.record_id, i.update) for i in chosen]
            try:
                frames = protocol.encode_live(entries, checks)
            except LocalProtocolError:
                # An entry too large for this laptop's frames: its writer meets the same
                # refusal and closes the connection, as it always has (see _forward).
                frames = ()
            encoded[key] = frames
        if not frames or not conn.send_nowait(frames):
            return False
        # Written: the protocol records them as sent (it allowed them: can_send_live).
        protocol.sent_encoded_live(chosen[-1].seq)
        return True

    def _drop_slow_reader(self, conn: _Connection) -> None:
        """Empty a connection's live queue now, then close it (see _fan_out)."""
        self.events.live_dropped(
            conn.channel.peer,
            conn.protocol.replica_id,
            conn.queued_entries,
            conn.queued_bytes,
        )
        conn.dropped = True
        while not conn.live.empty():
            conn.live.get_nowait()
        conn.queued_entries = conn.queued_bytes = 0
        task = asyncio.create_task(self._close_slow_reader(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_slow_reader(self, conn: _Connection) -> None:
        # Its writer may be stuck sending to a peer that does not read, holding the
        # connection's lock: cancel it rather than queue a polite Error behind it.
        if conn.writer is not None:
            conn.writer.cancel()
        await conn.channel.close(SLOW_READER_REASON)

    async def _on_subscribe(self, conn: _Connection, request: Subscribe) -> None:
        # Start forwarding first: anything committed from now on is queued for this
        # connection; the backlog below covers what was committed before.
        if await self._sends_checks(conn, request.rulebook):
            conn.checks = self._remembered_checks
        conn.writer = asyncio.create_task(self._forward(conn))
        after = request.after_seq
        while True:
            checks: dict[str, RecordCheck] | None = None
            async with self._commit_lock if conn.checks is not None else contextlib.nullcontext():
                items = await self.store.feed_since(
                    after,
                    limit=1000,
                    organisation=conn.organisation,
                    exclude_origin=conn.protocol.replica_id,
                )
                if conn.checks is not None:
                    checks = await self._read_checks([i.record_id for i in items])
            if items:
                await self._know_epochs(items[-1].seq)
            conn.protocol.send_live_updates([(i.seq, i.record_id, i.update) for i in items], checks)
            if len(items) < 1000:
                return  # the last chunk goes with the reply (the connection's flush)
            # Sent before the next is read, at the laptop's pace: a laptop far behind (it
            # names its checkpoint) costs the server one chunk, not its organisation's feed.
            await conn.flush()
            after = items[-1].seq

    async def _forward(self, conn: _Connection) -> None:
        try:
            await conn.forward_live()
        except (ConnectionLostError, ProtocolError):
            await conn.channel.close()  # the replica catches up by pulling when it returns


def _queue_hub_report(
    conn: _Connection,
    items: Sequence[HubItem],
    *,
    mark: int | None = None,
    whole: bool | None = None,
) -> None:
    """Queue a hub report; one that names summaries serves the connection (its login is
    then synced before it goes)."""
    conn.serving = conn.serving or bool(items)
    if mark is None and whole is None:
        conn.protocol.send_hub_report(items)
    else:
        conn.protocol.send_hub_report(items, mark=mark, whole=whole)


def _tried(username: str | None) -> str:
    """Who a refused login tried to be, as an audit entry's actor."""
    return "(a session token)" if username is None else attempted_name(username)
