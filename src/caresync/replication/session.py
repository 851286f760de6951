"""A laptop's connection to its server: one sync session, over a narrow host interface.

A :class:`Session` drives the sans-I/O :class:`~caresync.protocol.ClientProtocol`
over one :class:`~caresync.transport.Channel` for a :class:`SessionHost` (the
replica, as far as a session may see it: its store, identity, limits, status,
credentials, and the one path that commits what the server sends,
:func:`caresync.replication.absorb.absorb`).

**One reader.** As in websockets, one place feeds the protocol: a reader task,
started when the channel opens, receives every frame, feeds it to the protocol
and routes the events: live updates to the live committer (a bounded queue: a
laptop that cannot keep up stops reading, and TCP slows the server down), every
other event to whoever waits for a reply (:meth:`Session.expect`). When the
reader ends (the link dropped, the server said Goodbye or refused us), every
waiter gets why.

Theory of operation of a round: push the outbox (entries leave it only when the
server acknowledged their commit), finish the first copy, pull the change feed
from the checkpoint (each batch committed with its checkpoint), send the audit
trail. In live mode, after a round: subscribe; one task commits live updates,
as many as have arrived, in one transaction with the checkpoint of the last;
one task pushes the outbox whenever an edit wakes it, one batch at a time, each
waiting for its acknowledgement. Whichever fails first ends the connection; the
outbox is only ever emptied by acknowledgements, so no failure loses unsynced work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import ssl as ssl_module
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol, TypeVar

from caresync.audit import AuditAction, AuditEntry, attempted_name
from caresync.conflicts import Rulebook
from caresync.credentials import key_fingerprint, verify_server_signature
from caresync.exceptions import (
    AuthenticationError,
    CaresyncError,
    ClientTooOldError,
    ConnectionLostError,
    FeedDivergedError,
    InvalidInputError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ReplicaRevokedError,
    ServerSilentError,
    StorageError,
    SyncRefusedError,
    WrongServerError,
)
from caresync.logins import LaptopLogins
from caresync.protocol import (
    BATCH_OVERHEAD_BYTES,
    ITEM_OVERHEAD_BYTES,
    MAX_AUDIT_ITEMS,
    MAX_BATCH_ITEMS,
    MAX_MAX_FRAME_BYTES,
    MAX_PUSH_ITEMS,
    REFUSED_RECORD_DETAIL,
    SUPPORTED_VERSIONS,
    AccountState,
    AuditAck,
    Authenticated,
    ClientProtocol,
    CopyBatch,
    CopyConflict,
    EarlyProofLost,
    Error,
    Goodbye,
    HubItem,
    HubReport,
    LiveBatch,
    LiveUpdate,
    ProveServer,
    PullBatch,
    PushAck,
    RecordPart,
    ServerProof,
    Welcome,
    audit_wire_size,
    error_for,
    item_wire_size,
    server_proof_payload,
)
from caresync.records.persons import PersonCard, PersonCards
from caresync.replication import meta
from caresync.replication.absorb import PreparedCopy, TrustedCopy, prepare_copy
from caresync.replication.checked import LiveFrames, ServerCheck, card_from_wire, from_wire
from caresync.replication.epochs import FeedPosition, own_items
from caresync.replication.parts import PartsTaken
from caresync.replication.status import ReplicaState, SyncStatus
from caresync.storage import (
    MAX_REASON_LENGTH,
    OUTBOX_SEQ_LIMIT,
    ConflictRow,
    CopiedRecords,
    Identity,
    LaptopStore,
    OutboxSummary,
    SetAsideRecord,
)
from caresync.transport import (
    Channel,
    Connector,
    closing_sender,
    nowait_sender,
    send_reply,
)
from caresync.versions import CLIENT_VERSION, check_version

__all__ = [
    "COPY_BATCH_BYTES",
    "COPY_BATCH_RECORDS",
    "LIVE_QUEUE_ITEMS",
    "MAX_HUB_REPORT_FRAMES",
    "MAX_HUB_REPORT_ITEMS",
    "MAX_QUEUED_REPLIES",
    "PULL_LIMIT",
    "PUSH_BATCH_BYTES",
    "PUSH_BATCH_ITEMS",
    "CopyProgress",
    "LiveAttempt",
    "ProgressCallback",
    "Session",
    "SessionHost",
    "SyncLimits",
    "SyncReport",
]

T = TypeVar("T")
logger = logging.getLogger("caresync.replica")

# A server must prove itself: version 4 on. Version 5 adds person cards to a first copy.
_RECORD_AND_UPDATE = operator.itemgetter(1, 2)  # a pulled FeedItem's (record_id, update)
_PROTOCOL_VERSIONS = tuple(v for v in SUPPORTED_VERSIONS if v >= ProveServer.SINCE_VERSION)

MAX_HUB_REPORT_FRAMES = 10_000
"""The most HubReport frames one pull's report may take (each up to a frame's size)."""
MAX_HUB_REPORT_ITEMS = 1_000_000
"""The most summaries one pull's report may name (a server cannot fill a laptop's memory)."""
PUSH_BATCH_ITEMS = 500
PUSH_BATCH_BYTES = 4 * 1024 * 1024
PULL_LIMIT = 1000
COPY_BATCH_RECORDS = 2000
"""Records per first-copy batch, each committed with its resume point: a copy cut short
loses at most the batch in flight. 2,000 rather than 500: a quarter of the commits and
of the per-batch round trips and queries on both sides (issue 18)."""
COPY_BATCH_BYTES = 4 * 1024 * 1024
"""Bytes per first-copy batch at most (records with their rows and cards): a batch of
large records stays well under a frame (16 MiB by default)."""
LIVE_DURABLE_DELAY_S = 1.0
"""How long live updates, committed as they arrive, may wait for the disk: one sync for
every live batch committed in that time (see :attr:`SyncLimits.live_durable_delay_s`)."""
MAX_LIVE_DURABLE_DELAY_S = 60.0
"""The longest delay a ``SyncLimits`` accepts."""
REPLY_TIMEOUT_S = 120.0
"""How long a laptop waits for the server's next reply before it ends the session."""
MAX_REPLY_TIMEOUT_S = 3600.0
"""The longest reply timeout a ``SyncLimits`` accepts."""
WHY_CLOSED_WAIT_S = 5.0
"""After a failed send, how long the reader may take to read why the server closed."""
MAX_QUEUED_REPLIES = 8
"""Replies read ahead of whoever waits for them; past it the reader stops reading."""
LIVE_QUEUE_ITEMS = 10_000
"""Live updates received but not yet committed before the reader stops reading."""
LIVE_QUEUE_BYTES = 64 * 1024 * 1024
"""The most bytes of live entries (:func:`_live_bytes`) received but not yet committed
before the reader stops reading: a server cannot fill the laptop's memory with frames
faster than it commits them. A frame larger than this is still taken, alone."""


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """Progress of the first copy, reported after each committed batch."""

    done_records: int
    total_records: int
    done_bytes: int
    total_bytes: int


_RESEND_PAGE = 1000
"""Records read at a time when a server that went back is sent this laptop's writes again."""


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync round moved."""

    uploaded: int
    downloaded: int
    conflicts_open: int
    copied: int = 0
    server_went_back: bool = False
    """The server had forgotten part of its change feed (restored from an older backup):
    this round sent again everything this laptop wrote (the server stored what it
    lacked) and pulled the feed from its start (see :mod:`caresync.replication.epochs`)."""
    set_aside: tuple[SetAsideRecord, ...] = ()
    """Records whose changes the server refused, held back after this round with its
    reason (protocol version 16 on): the rest was pushed and pulled; these are kept and
    tried again at the next sync, until the server takes them."""


@dataclass(frozen=True, slots=True)
class SyncLimits:
    """Batch sizes a replica asks for and sends. The defaults suit a laptop."""

    copy_batch_records: int = COPY_BATCH_RECORDS
    """Records per first-copy batch: the unit that is committed, and resumed after."""
    copy_batch_bytes: int = COPY_BATCH_BYTES
    """Bytes per first-copy batch at most, records with their rows and cards (a server of
    protocol version 8 on; one larger record still comes alone)."""
    push_batch_items: int = PUSH_BATCH_ITEMS
    """Outbox entries per push batch (each batch waits for its acknowledgement); at most
    ``MAX_PUSH_ITEMS`` (1,000) go in one batch whatever this says: a server refuses more."""
    push_batch_bytes: int = PUSH_BATCH_BYTES
    """Update bytes per push batch (one larger entry still goes alone)."""
    pull_limit: int = PULL_LIMIT
    """Feed entries per pull batch."""
    live_durable_delay_s: float = LIVE_DURABLE_DELAY_S
    """What a laptop takes in from its server is committed without waiting for the
    disk (the server holds it: a power cut loses at most the last batches, with their
    checkpoint, and the next pull fetches them again). A sync makes it durable before
    it returns; in live mode it is made durable within this many seconds, one sync for
    every batch committed meanwhile (0: after each batch)."""
    reply_timeout_s: float = REPLY_TIMEOUT_S
    """How long the laptop waits for the server's next reply to what it asked (a proof,
    a login, a batch, an acknowledgement) before it ends the session with
    :class:`~caresync.exceptions.ServerSilentError`: a server that hangs, or a link that
    carries nothing, does not hold a sync (and its status) for ever. Live updates are no
    replies: a live connection with nothing to say is not silent."""

    def __post_init__(self) -> None:
        for name in (
            "copy_batch_records",
            "copy_batch_bytes",
            "push_batch_items",
            "push_batch_bytes",
            "pull_limit",
        ):
            value = getattr(self, name)
            top = MAX_MAX_FRAME_BYTES if name.endswith("_bytes") else MAX_BATCH_ITEMS
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise InvalidInputError(f"{name} must be an integer in 1..{top}, not {value!r}")
        delay = self.live_durable_delay_s
        if (
            not isinstance(delay, int | float)
            or isinstance(delay, bool)
            or not 0 <= delay <= MAX_LIVE_DURABLE_DELAY_S
        ):
            raise InvalidInputError(
                "live_durable_delay_s must be a number of seconds in"
                f" 0..{MAX_LIVE_DURABLE_DELAY_S:g}, not {delay!r}"
            )
        timeout = self.reply_timeout_s
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 < timeout <= MAX_REPLY_TIMEOUT_S
        ):
            raise InvalidInputError(
                "reply_timeout_s must be a number of seconds above 0, at most"
                f" {MAX_REPLY_TIMEOUT_S:g}, not {timeout!r}"
            )


ProgressCallback = Callable[[CopyProgress], None]
"""Called with the first copy's progress after each committed batch."""


class SessionHost(Protocol):
    """What a sync session may see and do of the replica it serves."""

    @property
    def store(self) -> LaptopStore: ...

    @property
    def identity(self) -> Identity: ...

    @property
    def limits(self) -> SyncLimits: ...

    @property
    def rulebook(self) -> Rulebook: ...

    @property
    def connector(self) -> Connector:
        """How to reach the server (websockets, or an in-memory link)."""
        ...

    @property
    def status(self) -> SyncStatus:
        """The replica's state, which the session moves."""
        ...

    @property
    def logins(self) -> LaptopLogins: ...

    @property
    def secret(self) -> bytes | None:
        """The secret this replica proves at every login (None before enrolment)."""
        ...

    @property
    def pinned_key(self) -> bytes | None:
        """The server's public key, pinned at enrolment."""
        ...

    @property
    def outbox_changed(self) -> asyncio.Event:
        """Set whenever an edit is committed (wakes the live pusher)."""
        ...

    async def remember_credentials(
        self, secret: bytes | None = None, pinned_key: bytes | None = None
    ) -> None: ...

    async def remember_client_versions(self, newest: str | None, least: str | None) -> None: ...

    async def revoked(self, why: str) -> None:
        """The server revoked this replica: lock it, for good."""
        ...

    @property
    def enrolled(self) -> bool: ...

    async def audit(
        self,
        action: AuditAction,
        record_id: str | None = None,
        detail: str | None = None,
        *,
        actor: str | None = None,
    ) -> None: ...

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
        """Commit what the server sent with ``checkpoint`` (see ``Replica``), without
        waiting for the disk where the store allows it (:meth:`make_durable`), unless
        ``durable`` (the last batch of a pull or a copy: it syncs those before it).
        ``absent`` is trusted only if read when :attr:`writes_ended` was
        ``absent_as_of`` and no write ended since; else it is looked up again."""
        ...

    @property
    def writes_ended(self) -> int:
        """How many times the replica's write lock has been released (see :meth:`take_in`)."""
        ...

    async def make_durable(self) -> None:
        """Have every commit :meth:`take_in` made on disk (nothing to do when none waits)."""
        ...

    def acknowledged(self, count: int) -> None:
        """``count`` outbox entries left the outbox (the server committed them)."""
        ...

    async def count_conflicts(self) -> int: ...

    @property
    def known_meta(self) -> meta.KnownMeta:
        """The notes a sync need not read from the store each time (:class:`KnownMeta`)."""
        ...

    @property
    def closing(self) -> set[asyncio.Task[None]]:
        """Closing handshakes of sessions that ended well, still under way: a sync
        does not wait for its link to close (awaited before the next connection
        and when the replica closes)."""
        ...


def _trusted_copy(batch: CopyBatch) -> TrustedCopy:
    """A first-copy batch's rows, person cards and person pairs by record (the cards
    with the bytes they came as, which the store keeps as they are);
    RemoteProtocolError for a bad card."""
    # Each card checked as it is read, and made a PersonCard only if asked for: of a
    # copy's 100,000s of cards, the store compares only those in a pair.
    cards = PersonCards.read(batch.persons or (), card_from_wire)  # (record_id, card) pairs
    return TrustedCopy(
        _rows_by_record(batch),
        cards,
        cards.data,
        None if batch.pairs is None else [(pair.first, pair.second) for pair in batch.pairs],
    )


async def _pairs_not_held(store: LaptopStore, batch: CopyBatch) -> set[tuple[str, str]]:
    """The batch's person pairs naming a record of an earlier batch that this laptop
    does not hold with a person card: they are left out, not refused.

    Such a record was added on the server during the copy, behind its cursor (it comes
    by the pull after the copy, and its write pairs it against the keys stored here),
    or kept aside here (its bytes did not merge). Refusing the batch would stop the
    copy at the same place at every try. A pair left out stores nothing; what the
    message itself says of a pair (its shape, and that a record of this batch it names
    has a card) was checked when the frame was read.
    """
    if not batch.pairs or not batch.records:
        return set()
    start = batch.records[0].record_id
    earlier = sorted({pair.first for pair in batch.pairs if pair.first < start})
    if not earlier:
        return set()
    held = await store.person_card_bytes(earlier)
    if len(held) == len(earlier):
        return set()
    left_out = {(p.first, p.second) for p in batch.pairs if p.first < start and p.first not in held}
    logger.info(
        "%d person pairs of the first copy name records not held here (yet); left out: %s",
        len(left_out),
        ", ".join(sorted({first for first, _second in left_out})[:5]),
    )
    return left_out


def _rows_by_record(batch: CopyBatch) -> dict[str, tuple[ConflictRow, ...]]:
    """A first-copy batch's conflict rows, as the store's rows, per record."""
    return _grouped_rows(batch.conflicts or ())


def _grouped_rows(conflicts: Sequence[CopyConflict]) -> dict[str, tuple[ConflictRow, ...]]:
    grouped: dict[str, list[ConflictRow]] = {}
    for row in conflicts:
        grouped.setdefault(row.record_id, []).append(
            ConflictRow(row.id, row.record_id, row.kind, row.subject, row.severity, row.payload)
        )
    return {record_id: tuple(rows) for record_id, rows in grouped.items()}


def _live_bytes(event: LiveUpdate | LiveBatch) -> int:
    """What a live frame's entries hold in memory, roughly: their updates and record ids,
    and a batch's checks (state vectors, cards, and conflict rows as expanded)."""
    if isinstance(event, LiveUpdate):
        return item_wire_size(event.record_id, event.update)
    size = sum(item_wire_size(item.record_id, item.update) for item in event.items)
    for state in event.checked or ():
        size += len(state.state_vector) + len(state.card or b"") + ITEM_OVERHEAD_BYTES
    for row in event.conflicts or ():
        size += len(row.payload) + len(row.subject) + len(row.id) + ITEM_OVERHEAD_BYTES
    return size


def _check_hub_report(report: HubReport, hub_since: int | None) -> None:
    """The first frame of a hub report, against the mark the pull named (version 13 on).

    A frame of version 13 carries its mark (the codec checks); a report of changes
    only answers a pull that named a report held, and cannot bring it back before it.
    """
    if report.mark is None:
        return  # an older server: the whole list, as before
    if hub_since is None:
        raise RemoteProtocolError("a hub report carries a mark the pull did not ask for")
    if report.changes_only:
        if hub_since == 0:
            raise RemoteProtocolError(
                "a hub report of changes only, to a pull that holds no report"
            )
        if report.mark < hub_since:
            raise RemoteProtocolError(
                f"a hub report of changes brings the mark back from {hub_since} to {report.mark}"
            )


@dataclass(slots=True)
class LiveAttempt:
    """What one live connection got to: ONLINE at some point, in its live phase now."""

    online: bool = False
    live: bool = False


async def _until(event: asyncio.Event) -> None:
    await event.wait()


async def _close_quietly(channel: Channel) -> None:
    """Close a link whose session ended well (Goodbye sent): a failure here loses nothing."""
    try:
        await channel.close()
    except Exception as exc:  # noqa: BLE001 - the work is done; only the handshake is lost
        logger.debug("closing the link failed: %s", exc)


CLOSING_WAIT_S = 15.0
"""How long a new connection, or the replica's close, waits for the links of earlier
syncs to finish closing; a link still closing then is dropped (its session had
committed everything and said Goodbye: only the courtesy of the handshake is lost).
Longer than a websocket's own close timeout (10 s), which aborts the connection
itself, so that a real link is never cut off before its socket is released."""


async def finish_closing(host: SessionHost) -> None:
    """Wait for the host's links still closing (see :attr:`SessionHost.closing`), at
    most :data:`CLOSING_WAIT_S`: a peer that never answers a close keeps nothing waiting."""
    if not host.closing:
        return
    _done, late = await asyncio.wait(set(host.closing), timeout=CLOSING_WAIT_S)
    if late:
        logger.debug("%d links did not close within %s s: dropped", len(late), CLOSING_WAIT_S)
        for task in late:
            task.cancel()
        await asyncio.wait(late, timeout=CLOSING_WAIT_S)


_ENDED = object()
"""Put in the replies queue when the reader ends: every waiter then learns why."""


class _PullAsk(NamedTuple):
    """A pull's first request (``ClientProtocol.request_pull``'s arguments)."""

    checkpoint: int
    limit: int
    own: bool
    rulebook: str | None
    hub_since: int | None
    feed_epoch: int | None


class Session:
    """One connection to the server, driving a ClientProtocol for a replica (its host)."""

    def __init__(self, host: SessionHost, channel: Channel, protocol: ClientProtocol) -> None:
        self.host = host
        self.channel = channel
        self.protocol = protocol
        self.limits = host.limits
        self._send_lock = asyncio.Lock()
        # Small sends written at once (one write for all) where the channel can.
        self._send_nowait = nowait_sender(channel)
        self.server_key: bytes | None = None  # proven on this connection
        self.include_own = False  # pull this replica's own updates too (after a restore)
        self._token_to_store: tuple[str, str, str] | None = None  # token, user, password
        self._names_to_store: dict[str, str] | None = None  # account → display name
        self.accounts: frozenset[str] | None = None
        """The organisation's accounts the login named (protocol version 6 on), else None."""
        # What the proven server says of its accounts (version 16), acted on with the names.
        self._states_to_learn: tuple[AccountState, ...] | None = None
        self._audit_after: int | None = None  # send own audit entries after this one
        self._outbox_said: tuple[int, int | None] | None = None  # the last OutboxReport sent
        # The outbox as the login read it (nothing renumbered): the first report's.
        self._outbox_read: OutboxSummary | None = None
        # The PullRequest sent with the login (see resume), until pull() takes its reply.
        self._ahead: _PullAsk | None = None
        # Why the server's login said it lost pushes it had acknowledged, with its mark
        # (see _logged_in), until this session sent them again.
        self._lost_pushes: tuple[str, int] | None = None
        # What the reader routes: replies to whoever expects one, live updates (once
        # subscribed) to the live committer.
        self._replies: asyncio.Queue[object] = asyncio.Queue()
        self._reply_room = asyncio.Semaphore(MAX_QUEUED_REPLIES)
        # Live frames read and not yet committed, each with its _live_bytes (counted once).
        self._live_updates: asyncio.Queue[tuple[LiveUpdate | LiveBatch, int]] | None = None
        self._live_held = 0  # bytes of live entries read and not yet committed
        self._live_room = asyncio.Event()  # set when the committer frees some
        self._durable_later: asyncio.Task[None] | None = None  # live batches' sync, pending
        self._live_batches = 0  # live batches committed: the sync above sees if more came
        self._reader: asyncio.Task[None] | None = None
        self._read_error: BaseException | None = None
        self._retried_aside = False  # this session queued what was set aside again

    @classmethod
    def connect(
        cls,
        host: SessionHost,
        url: str,
        ssl: ssl_module.SSLContext | None,
        expected_key: str | None = None,
        *,
        as_new: bool = False,
    ) -> SessionContext:
        """Connect to ``url`` (see :class:`SessionContext`); ``as_new``: say Hello as a
        laptop not yet enrolled, though this one is (to enrol it again)."""
        return SessionContext(host, url, ssl, expected_key, as_new=as_new)

    def start_reading(self) -> None:
        """Start the one reader of this session's channel."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())

    async def stop_reading(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})

    async def _read(self) -> None:
        """The one place that feeds the protocol: every frame from the server comes here."""
        try:
            while True:
                frame = await self.channel.recv()
                try:
                    self.protocol.receive_data(frame)  # raises a fatal Error's refusal
                except CaresyncError:
                    await self._send_last_words()
                    raise
                for event in self.protocol.events_received():
                    if isinstance(event, LiveUpdate | LiveBatch) and self._live_updates is not None:
                        size = _live_bytes(event)
                        await self._room_for_live(size)
                        await self._live_updates.put((event, size))  # full: stop reading
                        continue
                    # Bounded: a server sending what nobody asked for waits, on TCP.
                    await self._reply_room.acquire()
                    self._replies.put_nowait(event)
                    if isinstance(event, Goodbye):
                        raise ConnectionLostError(f"the server closed the session: {event.reason}")
        except asyncio.CancelledError:
            self._read_error = ConnectionLostError("the session was closed")
            self._replies.put_nowait(_ENDED)
            raise
        except Exception as exc:  # noqa: BLE001 - kept for every waiter; the task ends quietly
            self._read_error = exc
            self._replies.put_nowait(_ENDED)

    async def _room_for_live(self, size: int) -> None:
        """Wait until ``size`` more bytes of live entries fit :data:`LIVE_QUEUE_BYTES`
        (or none are held: a larger frame goes alone), and count them held."""
        while self._live_held and self._live_held + size > LIVE_QUEUE_BYTES:
            self._live_room.clear()
            await self._live_room.wait()  # set by each commit of live entries
        self._live_held += size

    async def _next_reply(self) -> object:
        replies = self._replies
        if replies.empty():
            timeout = self.limits.reply_timeout_s
            try:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow the
                # cancellation of a task whose reply arrives as it is cancelled (live
                # mode's pusher then ran on, and stopping live mode waited for ever).
                async with asyncio.timeout(timeout):
                    event = await replies.get()
            except TimeoutError:
                raise ServerSilentError(
                    f"the server at {self.channel.peer} sent no reply for {timeout:g} s;"
                    " the sync was ended and unsynced changes are kept: try again later"
                ) from None
        else:
            event = replies.get_nowait()
        if event is _ENDED:
            self._replies.put_nowait(_ENDED)  # for whoever waits next
            raise self._read_error or ConnectionLostError("the session ended")
        self._reply_room.release()
        return event

    async def prove_server(self, expected_key: str | None, nonce: bytes | None = None) -> None:
        """Have the server prove it holds the pinned key (or, enrolling, the expected one).

        ``nonce``: the proof was asked for already, with Hello. Nothing secret has
        been sent yet. A proof that does not verify, or a key other than the pinned
        one, fails the session with WrongServerError and sends nothing more.
        """
        host = self.host
        if nonce is None:
            nonce = os.urandom(32)
            self.protocol.prove_server(nonce)
        proof = await self.expect(ServerProof)
        payload = server_proof_payload(
            nonce,
            self.protocol.server_id or "",
            self.protocol.replica_id,
            self.channel.channel_binding,
        )
        if not verify_server_signature(proof.server_key, payload, proof.signature):
            self.protocol.reject_server(
                f"the server at {self.channel.peer} could not prove its identity (its "
                "signature does not verify for this connection); refusing to send anything"
            )
        pinned = host.pinned_key
        if pinned is not None and proof.server_key != pinned:
            self.protocol.reject_server(
                f"the server at {self.channel.peer} holds key "
                f"{key_fingerprint(proof.server_key)}, not the key "
                f"{key_fingerprint(pinned)} pinned when this laptop enrolled: an impostor, or "
                "a server that was replaced; refusing to send anything"
            )
        # Its fingerprint only where it is compared or shown (a sync that pins the key
        # compares bytes).
        shown = key_fingerprint(proof.server_key) if expected_key is not None else ""
        if expected_key is not None and shown != expected_key:
            self.protocol.reject_server(
                f"the server at {self.channel.peer} holds key {shown}, not the expected "
                f"{expected_key}; refusing to enrol"
            )
        # Proven, before the protocol hears so: a refusal read ahead (the server proves
        # itself, then refuses a revoked replica) fails the protocol, and confirming
        # then raises; the refusal is still the proven server's word.
        self.server_key = proof.server_key
        self.protocol.confirm_server()
        if pinned is None and host.enrolled:
            # Enrolled before servers had keys: pin this one from now on.
            logger.warning(
                "pinning server key %s for replica %s",
                key_fingerprint(proof.server_key),
                host.identity.replica_id,
            )
            await host.remember_credentials(pinned_key=proof.server_key)

    async def flush(self) -> None:
        """Send what the protocol queued.

        After a failed send outside live mode, the reader is let finish: a server
        that refuses (e.g. a revoked replica, right after Welcome) sends a fatal
        Error and closes, and if our frame crossed that close the Error is still
        buffered. The refusal it means tells the caller more than "connection lost".
        """
        try:
            async with self._send_lock:
                await send_reply(self.channel, self._send_nowait, self.protocol.data_to_send())
        except ConnectionLostError:
            reader = self._reader
            if self._live_updates is None and reader is not None and self.channel.closed:
                # Bounded: a reader held up by unread replies must not hold us forever.
                await asyncio.wait({reader}, timeout=WHY_CLOSED_WAIT_S)
                why = self._read_error
                if isinstance(why, CaresyncError) and not isinstance(why, ConnectionLostError):
                    raise why from None
            raise

    async def say_goodbye(self, reason: str) -> bool:
        """Say Goodbye (the work is done); True if the link's closing frame went with
        it, in the same write (where the channel can): its closing handshake is then
        under way, and ``channel.close()`` waits for its end."""
        self.protocol.close(reason)
        async with self._send_lock:
            frames = self.protocol.data_to_send()
            closing = closing_sender(self.channel)
            if closing is not None and closing(frames, reason):
                return True
            for frame in frames:  # ConnectionLostError if the link went meanwhile
                await self.channel.send(frame)
        return False

    async def _send_last_words(self) -> None:
        """Send what the protocol queued on failing (the Error telling the server why).

        The link may already be gone; then the server learns nothing more, and the
        error that ended the session is what the caller sees.
        """
        try:
            async with self._send_lock:
                for frame in self.protocol.data_to_send():
                    await self.channel.send(frame)
        except ConnectionLostError as exc:
            logger.debug("could not tell the server why the session ends: %s", exc)

    async def expect(self, kind: type[T]) -> T:
        """The next reply of ``kind`` (others are passed over); a refusal raises."""
        reply = await self._reply_or_error(kind)
        if isinstance(reply, Error):
            raise error_for(reply.code, reply.message)
        return reply

    async def _reply_or_error(self, kind: type[T]) -> T | Error:
        """The next reply of ``kind``, or the non-fatal Error refusing the request."""
        while True:
            await self.flush()
            event = await self._next_reply()
            if isinstance(event, kind | Error):
                return event
            if isinstance(event, Goodbye):
                raise ConnectionLostError(f"the server closed the session: {event.reason}")

    async def login(self, username: str, password: str, organisation: str) -> None:
        """Log in with a password (and this replica's secret, once enrolled).

        The new token and the offline-login hash are stored after the push
        (:meth:`remember_login`): a laptop whose disk is full still gets its
        work to the server.
        """
        self.protocol.authenticate(username, password, organisation, self.host.secret)
        try:
            session = await self.expect(Authenticated)
        except AuthenticationError:
            with contextlib.suppress(StorageError):  # the refusal is what the caller needs
                await self.host.audit(
                    "login-failed", None, "online", actor=attempted_name(username)
                )
            raise
        self._token_to_store = (session.session_token, session.user, password)
        await self._logged_in(session)

    async def resume(self, *, pull_ahead: bool = False) -> None:
        """Log in with the session of the last password login (and this replica's secret).

        ``pull_ahead`` (a sync that pulls): if nothing waits to be pushed and the first
        copy is done, the pull's first request goes with the login, not a round trip
        after it (the server reads it once it has answered the login).
        """
        token = await self.host.known_meta.get_meta(meta.SESSION_TOKEN)
        if not token:
            raise AuthenticationError("no session on this laptop: log in with a password")
        if self.host.secret is None:
            raise AuthenticationError(
                "this laptop holds no replica secret yet: log in with a password once"
            )
        # Before anything is sent: the session acts on the server as its account.
        refusal = self.host.logins.resume_refusal()
        if refusal is not None:
            raise AuthenticationError(refusal)
        self.protocol.resume_session(token, self.host.secret)
        if pull_ahead:
            await self.flush()  # the login travels while this laptop reads what to ask
            await self._pull_ahead()
        await self._logged_in(await self.expect(Authenticated))

    async def _pull_ahead(self) -> None:
        """Send the pull's first request now if the sync's first step is that pull: the
        first copy is done and the outbox is empty (a push goes before any pull)."""
        if await self.host.known_meta.get_meta(meta.COPY_DONE_MS) is None:
            return
        outbox = await self.host.store.outbox_summary()
        if outbox.pending:
            return
        self._outbox_read = outbox  # the login's read, as catch_up_after_restore's
        ask = await self._pull_ask()
        self.protocol.request_pull(*ask)
        # The outbox's report goes in the same write, after the request (the server
        # answers the pull first): not a frame of its own later in the sync.
        self._report(outbox)
        await self.flush()
        self._ahead = ask

    async def _logged_in(self, session: Authenticated) -> None:
        host = self.host
        if session.accounts is not None:
            self._names_to_store = dict(session.accounts)
            self.accounts = frozenset(self._names_to_store)
        if session.account_states is not None and self.protocol.server_confirmed:
            # Only the server that proved it holds the pinned key may end offline logins:
            # the protocol sends no credential before that proof, so this always holds.
            self._states_to_learn = session.account_states
        if session.replica_secret is not None:
            # The server gave a replica enrolled before secrets its first one: keep it
            # now, or this laptop could never log in again.
            await host.remember_credentials(secret=session.replica_secret)
        if session.pushed_up_to is not None:
            if session.pushed_up_to > OUTBOX_SEQ_LIMIT:
                # Taken as a restore, it would number this laptop's outbox to its end:
                # every later edit would fail. Refused before anything moves.
                raise RemoteProtocolError(
                    f"the server says it holds this laptop's pushes up to "
                    f"{session.pushed_up_to}; no laptop numbers that far (at most "
                    f"{OUTBOX_SEQ_LIMIT}): a fault of the server, nothing was changed here"
                )
            await self.catch_up_after_restore(session.pushed_up_to)
            acked = int(await host.store.get_meta(meta.ACKED) or 0)
            if session.pushed_up_to < acked:
                # Pushes it acknowledged are gone: a server restored from an older backup
                # (its feed may even reach this laptop's checkpoint again, with new entries).
                self._lost_pushes = (
                    f"the server holds this laptop's pushes up to {session.pushed_up_to}, and "
                    f"it had acknowledged them up to {acked}: the server went back in time "
                    "(restored from an older backup?)",
                    session.pushed_up_to,
                )
        await host.remember_client_versions(session.client_newest, session.client_min)
        if session.audit_seq is not None and session.audit_hash is not None:
            self._audit_after = await self._audit_start(session.audit_seq, session.audit_hash)

    async def _audit_start(self, server_seq: int, server_hash: bytes) -> int:
        """After which entry to send this laptop's audit chain, given the last the server
        holds: that one if this copy holds it too; else (a copy restored from an older
        one, whose chain went another way) after the last the server acknowledged to
        this copy, which the server then keeps as a new line of the chain."""
        store = self.host.store
        if server_seq == 0:
            return 0
        held = await store.audit_entries(
            replica_id=self.host.identity.replica_id, after_seq=server_seq - 1, limit=1
        )
        if held and held[0].seq == server_seq and held[0].hash == server_hash:
            return server_seq
        return int(await store.get_meta(meta.AUDIT_SENT) or 0)

    async def push_audit(self) -> int:
        """Send the entries of this laptop's audit chain the server does not hold, a
        batch at a time, each acknowledged before the next (protocol version 7 on)."""
        if not self.protocol.can_send_audit:
            return 0
        store = self.host.store
        if self._audit_after is None:  # the login said nothing (an enrolment): what we know
            self._audit_after = int(await store.get_meta(meta.AUDIT_SENT) or 0)
        budget = min(self.protocol.peer_max_frame_bytes - BATCH_OVERHEAD_BYTES, 1 << 20)
        sent = 0
        from_start = False
        while True:
            entries = await store.audit_entries(
                replica_id=self.host.identity.replica_id,
                after_seq=self._audit_after,
                limit=MAX_AUDIT_ITEMS,
            )
            if not entries:
                return sent
            batch: list[AuditEntry] = []
            size = 0
            for entry in entries:
                entry_size = audit_wire_size(entry)
                if batch and size + entry_size > budget:
                    break
                batch.append(entry)
                size += entry_size
            self.protocol.send_audit(batch)
            try:
                ack = await self.expect(AuditAck)
            except (ProtocolError, SyncRefusedError) as refused:
                if self.protocol.failure is not None:
                    raise  # the connection ended: not a refusal of these entries alone
                if self._audit_after and not from_start:
                    # The server lacks an entry this copy thinks it holds (a server restored
                    # from a backup): send the whole chain; it skips what it holds.
                    from_start, self._audit_after = True, 0
                    continue
                # The records' sync goes on; the entries stay here, and are tried again.
                logger.warning(
                    "audit entries of %s refused: %s", self.host.identity.replica_id, refused
                )
                await store.set_meta(meta.AUDIT_REFUSED, str(refused))
                return sent
            self._audit_after = ack.up_to_seq
            await store.set_meta(meta.AUDIT_SENT, str(ack.up_to_seq))
            await store.set_meta(meta.AUDIT_REFUSED, "")
            sent += sum(1 for entry in batch if entry.seq <= ack.up_to_seq)

    async def catch_up_after_restore(self, pushed_up_to: int) -> None:
        """If the server holds more of this replica's pushes than this copy knows of,
        this copy is older than the replica (a backup, a snapshot, a copied file):
        renumber what waits after the server's mark, and pull our own updates back.

        Nothing would be lost without it (the server commits whatever is pushed,
        whatever its number), but the numbering stays true and this copy gets
        back the edits it made after the copy was taken.
        """
        store = self.host.store
        outbox = self._outbox_read or await store.outbox_summary()
        if pushed_up_to <= outbox.acknowledged_up_to:
            self._outbox_read = outbox
            return
        self._outbox_read = None  # renumbered below: the first report reads it again
        logger.warning(
            "replica %s: the server has committed its changes up to %d, this copy only "
            "knows of %d (restored from an older copy?); renumbering %d waiting changes "
            "and pulling this replica's own changes back",
            self.host.identity.replica_id,
            pushed_up_to,
            outbox.acknowledged_up_to,
            outbox.pending,
        )
        self.include_own = True
        try:
            await store.renumber_outbox(pushed_up_to, checkpoint=(meta.PULL_OWN, "1"))
        except StorageError as exc:  # a full disk: pushing is still safe, pulling own too
            logger.warning("could not renumber the outbox: %s", exc)

    async def remember_login(self) -> None:
        """Store the account names the server sent, and the session token and the
        offline-login hash of a password login (whose account is then logged in)."""
        if self._names_to_store is not None:
            await self.host.logins.remember_names(self._names_to_store)
            self._names_to_store = None
        states, self._states_to_learn = self._states_to_learn, None
        logging_in = None if self._token_to_store is None else self._token_to_store[1]
        if states is not None:
            await self._learn_accounts(states, logging_in)
        if self.protocol.replica_id is not None:
            # Logged in as this laptop, with its secret: no enrolment of it waits for an
            # answer, and a note of one (its answer lost, then a newer backup put back;
            # a laptop stopped before dropping it) would make enrol_again skip its probe.
            await meta.write_if_changed(self.host.known_meta, meta.ENROLLING, "")
        if self._token_to_store is None:
            return
        token, user, password = self._token_to_store
        self._token_to_store = None
        # Its account first: a token stored without it would resume as the one before.
        await self.host.logins.session_kept(user)
        await self.host.known_meta.set_meta(meta.SESSION_TOKEN, token)
        marks = {state.username: state.password_mark for state in states or ()}
        await self.host.logins.logged_in_online(user, password, mark=marks.get(user))
        await self.host.audit("login", None, "online", actor=user)

    async def _learn_accounts(
        self, states: tuple[AccountState, ...], logging_in: str | None
    ) -> None:
        """End the offline logins the server no longer allows (disabled accounts,
        changed passwords), each with an entry in the audit trail, as its account."""
        for ended in await self.host.logins.learn_accounts(states, logging_in=logging_in):
            logger.warning("%s: %s", ended.user, ended.audit_detail())
            await self.host.audit("logout", None, ended.audit_detail(), actor=ended.user)

    async def synchronise(self, progress: ProgressCallback | None, pull: bool = True) -> SyncReport:
        """One round: push, then (``pull``) finish the first copy and pull."""
        host = self.host
        host.status.move(ReplicaState.SYNCHRONISING)
        await self.report_outbox()  # what waits, even if this round fails
        # Push first: what this laptop holds alone reaches the server before
        # anything is written here (a full disk must not keep work back).
        went_back = False
        if self._lost_pushes is not None:
            # Before any push: the server's mark would move past the gap (a push-only
            # sync too: pulling from the start waits for the next sync that pulls).
            went_back = True
            await self._after_server_went_back(*self._lost_pushes)
        try:
            try:
                uploaded = await self.push()
            except ProtocolError as refused:
                # An edit that continues what a server restored from an older backup lost
                # is refused before a pull could tell: ask the pull's question now.
                if type(refused) is not ProtocolError or not pull:
                    raise
                diverged = await self._diverged()
                if diverged is None:
                    raise
                went_back = True
                await self._after_server_went_back(str(diverged), refused_pull=True)
                uploaded = await self.push()
        except BaseException:
            # The server accepted the password even if it refused the push (or the link
            # dropped): the user is logged in, whatever happens to what waits.
            with contextlib.suppress(StorageError):
                await self.remember_login()
            raise
        await self.remember_login()
        copied = downloaded = 0
        if pull:
            copied = await self.first_copy(progress)
            if uploaded or copied:
                await self.report_outbox()  # what is left, if that is news
            try:
                downloaded = await self.pull()
            except FeedDivergedError as exc:
                # Pulled from 0 after what this laptop wrote went again: a server that
                # refuses that too is answered by the error (the outbox keeps it all).
                went_back = True
                await self._after_server_went_back(str(exc), refused_pull=True)
                uploaded += await self.push()
                downloaded = await self.pull()
            # The last batch of the copy and of the pull waited for the disk, so nothing
            # is left to sync; this is for a pull whose last reply wrote nothing (a sync
            # cut short leaves its batches to the next durable commit, or to a power cut
            # and a pull that fetches them again).
            await host.make_durable()
        await self.push_audit()  # after the login's own entry, and anything read meanwhile
        if pull:  # a push alone is not a sync: the laptop took nothing in
            await self._synced()
        host.status.last_error = None
        return SyncReport(
            uploaded=uploaded,
            downloaded=downloaded + copied,
            conflicts_open=await host.count_conflicts(),
            copied=copied,
            server_went_back=went_back,
            set_aside=tuple(await host.store.set_aside_records()),
        )

    async def after_server_forgot(self, why: str) -> int:
        """The server no longer knows this replica (enrolled again under its own id, see
        ``Replica.enrol_again``): everything it acknowledged from it is gone. Queue
        again everything this replica wrote and pull from the feed's start, as after a
        server that went back in time; returns how many updates were queued.
        Its audit chain goes from the start: the server holds none of it."""
        self._audit_after = 0
        return await self._after_server_went_back(why, server_mark=0)

    async def _after_server_went_back(
        self, why: str, server_mark: int | None = None, *, refused_pull: bool = False
    ) -> int:
        """The server does not hold what this laptop read or wrote (``why``): queue
        again everything this replica wrote, record by record (the server keeps once
        what it holds), and pull from the feed's start, in one transaction; the hub
        report is asked whole again. ``server_mark``: the server's mark of this
        replica's pushes, from which acknowledgements are counted again;
        ``refused_pull``: the server refused a pull from this laptop's checkpoint.
        Returns how many updates were queued (several for a record written by
        several Yjs clients of this replica, or by many items)."""
        store = self.host.store
        at_start = FeedPosition.parse(await store.get_meta(meta.CHECKPOINT)).seq == 0
        if refused_pull and at_start:
            # No server refuses a pull from its feed's start (nothing there to lose):
            # a refusal of one is not answered by queueing everything yet again, which
            # a server saying so at every sync would grow without end.
            raise RemoteProtocolError(
                f"the server refused a pull from the start of its change feed ({why})"
            )
        if self._ahead is not None:
            # The pull sent with the login named this laptop's hub mark, of the history
            # the server lost: its reply is read now, before that mark is set aside
            # below (dropped later, its report would bring the mark back, and the
            # report held would miss what the server changed up to that mark again).
            ahead, self._ahead = self._ahead, None
            await self._drop_reply(ahead)
        replica_id = self.host.identity.replica_id
        again: list[tuple[str, bytes]] = []
        after: str | None = None
        while True:  # every record once, a page at a time
            record_ids = await store.record_ids(after=after, limit=_RESEND_PAGE)
            if not record_ids:
                break
            loaded = await store.load_many(record_ids)
            for record_id in record_ids:
                state = loaded.get(record_id)
                if state is not None:
                    again.extend((record_id, own) for own in own_items(state, replica_id))
            after = record_ids[-1]
        # The hub report held names a mark of the server's lost history: asked whole
        # (first: a sync cut short in between is refused again, and comes back here).
        await self.host.known_meta.set_meta(meta.HUB_MARK, "0")
        queued = await store.queue_again(again, checkpoint=(meta.CHECKPOINT, "0"))
        # What was set aside may have been refused for the history this server lost (an
        # update that continues it): the next push tries it again, with the rest.
        self._retried_aside = False
        # Then what the server acknowledges from now on, from its mark: after the queue
        # (a sync cut short in between finds the mark short again, and comes back here).
        self._lost_pushes = None
        if server_mark is not None:
            await store.set_meta(meta.ACKED, str(server_mark))
        logger.warning(
            "%s; sending again what this laptop wrote (%d records, %d updates) and pulling "
            "from the start",
            why,
            len({record_id for record_id, _update in again}),
            queued,
        )
        return queued

    async def _synced(self) -> None:
        """Note the time of this sync: in memory always, on disk when it has grown old."""
        now_ms = time.time_ns() // 1_000_000
        self.host.status.last_sync_ms = now_ms
        await meta.note_last_sync(self.host.known_meta, now_ms)

    async def report_outbox(self) -> None:
        """Tell the server what waits in the outbox (protocol version 2 on), for operators;
        not again what this connection already told it (the server keeps a report)."""
        read, self._outbox_read = self._outbox_read, None
        if self.protocol.can_report_outbox:
            # One read: two would let an acknowledgement slip between them. The
            # login's, when it has just read it (an edit made meanwhile is told next).
            self._report(read or await self.host.store.outbox_summary())

    def _report(self, outbox: OutboxSummary) -> None:
        """Queue an OutboxReport of ``outbox`` (version 2 on), unless this connection
        said the same already."""
        if not self.protocol.can_report_outbox:
            return
        said = (outbox.pending, outbox.oldest_pending_ms)
        if said != self._outbox_said:
            self.protocol.report_outbox(*said)
            self._outbox_said = said

    async def first_copy(self, progress: ProgressCallback | None) -> int:
        """Copy every record this replica may see, a batch per transaction, resumable.

        Pipelined: batch *k* is committed while batch *k+1* is read by the server,
        sent, and (with the server's rows and cards) taken in here
        (:func:`~caresync.replication.absorb.prepare_copy`); it is committed only
        after batch *k*'s commit succeeded, and each batch's progress is reported
        once it is committed. A copy cut short (a failed commit, a lost
        connection, a progress callback that raises) has committed whole batches
        in order, and resumes after the last. A server whose rulebook is ours sends
        each record's conflict rows, stored as they are (see
        :mod:`caresync.replication.index`).
        """
        store = self.host.store
        if await self.host.known_meta.get_meta(meta.COPY_DONE_MS) is not None:
            return 0
        resume = await store.get_meta(meta.COPY_RESUME) or None
        rulebook = self.host.rulebook.fingerprint
        batch_records = self.limits.copy_batch_records
        batch_bytes = self.limits.copy_batch_bytes
        copied = 0
        ended = False  # a batch marked the copy's last was written
        committing: asyncio.Task[None] | None = None  # the previous batch's commit
        as_of = 0  # writes ended when the last batch's records were read
        reported: CopyProgress | None = None  # its progress, once committed
        self.protocol.request_copy(resume, batch_records, rulebook, batch_bytes)
        batch = await self.expect(CopyBatch)
        try:
            while True:
                updates = batch.records  # (record_id, update) pairs already
                # Rows are taken as they are only with the records' cards (version 5
                # on): without them every record would have to be built anyway.
                trusted = None if batch.persons is None else _trusted_copy(batch)
                prepared = (
                    prepare_copy(
                        updates, trusted, self.host.identity.organisation, last=batch.final
                    )
                    if trusted is not None and updates
                    else None
                )
                if committing is not None:
                    await committing  # the previous batch: committed, or raised
                    committing = None
                if reported is not None:  # the previous batch, now committed
                    if progress is not None:
                        progress(reported)
                    reported = None
                if not batch.final and batch.in_parts is None:
                    # Asked before this batch is committed: the server reads the next
                    # while this laptop writes.
                    self.protocol.request_copy(
                        batch.last_record_id, batch_records, rulebook, batch_bytes
                    )
                    await self.flush()
                # After the previous commit: the pairs may name its records.
                left_out = await _pairs_not_held(store, batch)
                if left_out and prepared is not None and prepared.records.pairs is not None:
                    records = prepared.records
                    kept = [pair for pair in records.pairs or () if pair not in left_out]
                    prepared = replace(prepared, records=replace(records, pairs=kept))
                if await store.get_meta(meta.COPY_CHECKPOINT) is None:
                    await store.set_meta(
                        meta.COPY_CHECKPOINT,
                        FeedPosition(batch.feed_checkpoint, batch.feed_epoch).to_meta(),
                    )
                if batch.in_parts is not None:
                    # The next record is larger than one frame (a batch of none naming
                    # it): taken in parts now the batches before it are committed, then
                    # the copy goes on after it.
                    await self._copy_in_parts(batch.in_parts)
                    copied += 1  # counted as a batch's records are, held here before or not
                    resume = batch.in_parts
                    self.protocol.request_copy(resume, batch_records, rulebook, batch_bytes)
                    batch = await self.expect(CopyBatch)
                    continue
                if updates:
                    # Records after the resume point are new here, unless this laptop
                    # created them itself: one query instead of a lookup per record.
                    # A write that ends after it (an import) has take_in look again.
                    as_of = self.host.writes_ended
                    ours = set(await store.record_ids(after=resume))
                    absent = {r.record_id for r in batch.records} - ours
                    committing = asyncio.create_task(
                        self.host.take_in(
                            updates,
                            checkpoint=(meta.COPY_RESUME, batch.last_record_id or ""),
                            absent=absent,
                            trusted_rows=None if trusted is None else trusted.rows,
                            trusted_persons=None if trusted is None else trusted.persons,
                            prepared=prepared,
                            durable=batch.final,  # the last: one sync for the copy's batches
                            absent_as_of=as_of,
                        )
                    )
                    copied += len(batch.records)
                    # Written the copy's way (take_in writes a prepared batch whole
                    # when its every record is absent here), the last batch included.
                    ended = (
                        prepared is not None
                        and prepared.records.last
                        and prepared.record_ids <= absent
                    )
                resume = batch.last_record_id
                reported = CopyProgress(
                    batch.done_records, batch.total_records, batch.done_bytes, batch.total_bytes
                )
                if batch.final:
                    break
                batch = await self.expect(CopyBatch)
            if committing is not None:
                await committing
                committing = None
            if ended and self.host.writes_ended != as_of + 1:
                # Another write ended after the last batch's read: take_in may have
                # looked its records up again, and not written it the copy's way.
                ended = False
            if not ended:
                # The last batch wrote nothing the copy's way (a copy resumed after its
                # last records were committed, say): what the store set aside for the
                # copy's end (SQLite: the key rows) is done now, in a write of its own.
                organisation = self.host.identity.organisation
                await store.write_copy(CopiedRecords((), (), (), organisation, {}, {}, last=True))
            if progress is not None and reported is not None:
                progress(reported)
        finally:
            if committing is not None:
                # Cut short while a batch commits: let it finish (it is whole), then
                # raise what cut the copy, not what the commit may say.
                with contextlib.suppress(Exception):
                    await committing
        start = await store.get_meta(meta.COPY_CHECKPOINT) or "0"
        if await store.get_meta(meta.CHECKPOINT) is None:
            await store.set_meta(meta.CHECKPOINT, start)
        await self.host.known_meta.set_meta(meta.COPY_DONE_MS, str(time.time_ns() // 1_000_000))
        return copied

    async def _copy_in_parts(self, record_id: str) -> None:
        """Take in a record the first copy sends in parts (:mod:`caresync.replication.parts`):
        each part asked from what is held, checked to continue it; then the whole record
        taken in as any record from the server is (built, checked and indexed here), with
        the copy's resume point after it, in one commit."""
        store = self.host.store
        held = await store.state_vector(record_id)
        taken = PartsTaken(record_id, held)
        while True:
            self.protocol.request_part(record_id, taken.vector())
            part = await self.expect(RecordPart)
            taken.add(part.updates)
            if part.final:
                break
        if held is None and not taken.updates:
            # A record holds its id at least: taking none of it would move the copy
            # past a record this laptop then never gets (as a final batch that counts
            # records it did not send would).
            raise RemoteProtocolError(
                f"the server named record {record_id} to copy in parts, then sent none "
                "of it; the copy resumes at the next sync"
            )
        resume = (meta.COPY_RESUME, record_id)
        if not taken.updates:  # everything was held here already
            await store.set_meta(*resume)
            return
        await self.host.take_in([(record_id, update) for update in taken.updates], resume)

    async def push(self) -> int:
        """Push the whole outbox, a batch at a time, each acknowledged before the next.

        The first push of a session queues what was set aside again (tried again once
        per connection: the cause may be fixed); later ones set aside the new entries of
        a record still set aside (they build on what the server refused). A refusal
        naming one record of the batch (protocol version 16 on) sets that record aside
        and goes on with the rest; any other refusal raises, the outbox kept."""
        store = self.host.store
        if not self._retried_aside:
            self._retried_aside = True
            # Against a server older than version 16 too: it refuses them as before.
            await store.take_back_set_aside()
        else:
            for held in await store.set_aside_records():
                await store.set_aside(held.record_id, held.reason)
        uploaded = 0
        after = 0
        while True:
            # Never more than a server takes in one push (it would refuse the batch).
            most = min(self.limits.push_batch_items, MAX_PUSH_ITEMS)
            pending = await store.pending(most, after_seq=after)
            if not pending:
                return uploaded
            # Within our own budget and within the largest frame the server accepts
            # (one entry larger than that still goes alone, and the protocol says so).
            budget = min(
                self.limits.push_batch_bytes,
                self.protocol.peer_max_frame_bytes - BATCH_OVERHEAD_BYTES,
            )
            batch: list[tuple[int, str, bytes]] = []
            size = 0
            for item in pending:
                item_size = item_wire_size(item.record_id, item.update)
                if batch and size + item_size > budget:
                    break
                batch.append((item.seq, item.record_id, item.update))
                size += item_size
            self.protocol.push(batch)
            if self._ahead is not None:
                # An edit made while the login travelled: the pull asked with the login
                # is answered before this push. Its reply is read (and dropped: the pull
                # asks again after the push) here, or the wait for PushAck would pass
                # over it and the pull would wait for a reply already gone.
                ahead, self._ahead = self._ahead, None
                await self.flush()  # the push travels meanwhile
                await self._drop_reply(ahead)
            ack = await self._reply_or_error(PushAck)
            if isinstance(ack, Error):
                await self._set_aside(ack, batch)
                continue  # nothing of the batch was stored: the rest goes again
            # Leave the outbox only what the server says it committed, and remember how
            # far (a server that later says less went back in time).
            dropped = await store.acknowledge(
                ack.up_to_local_seq, checkpoint=(meta.ACKED, str(ack.up_to_local_seq))
            )
            uploaded += dropped
            after = ack.up_to_local_seq
            if dropped:
                self.host.acknowledged(dropped)

    async def _set_aside(self, refusal: Error, batch: Sequence[tuple[int, str, bytes]]) -> None:
        """Set aside the record a push refusal names (protocol version 16 on), or raise
        the refusal as before: one that names none refuses the push as a whole (a busy
        server), and an older server names none. The record must be one of the batch's,
        and have entries to move: each refusal so takes a record out of what is pushed."""
        refused = error_for(refusal.code, refusal.message)
        named = refusal.detail.get(REFUSED_RECORD_DETAIL)
        if not self.protocol.can_set_aside or named is None:
            raise refused
        if not isinstance(named, str) or named not in {rid for _seq, rid, _u in batch}:
            raise RemoteProtocolError(
                f"the server refused a push for record {named!r:.140}, which it did not hold"
                f" ({refused})"
            )
        reason = str(refused)[:MAX_REASON_LENGTH]
        if not await self.host.store.set_aside(named, reason):
            raise refused  # none of its entries waits any more (discarded meanwhile)
        logger.warning(
            "record %s set aside (its changes are kept and tried again at the next sync): %s",
            named,
            reason,
        )

    async def _pull_ask(self) -> _PullAsk:
        """What the pull's first request asks, as this laptop's store says now."""
        store = self.host.store
        position = FeedPosition.parse(await store.get_meta(meta.CHECKPOINT))
        own = self.include_own or await store.get_meta(meta.PULL_OWN) == "1"
        # A server whose index our rulebook computed sends its rows (version 8 on).
        # Every request names the hub report held (version 13 on): the server answers
        # the last one with what changed since.
        return _PullAsk(
            position.seq,
            self.limits.pull_limit,
            own,
            self.host.rulebook.fingerprint,
            await self._hub_since(),
            position.epoch,
        )

    async def _drop_reply(self, ask: _PullAsk) -> None:
        """Read the reply to a request sent ahead that no longer fits (the login said
        this copy was restored from an older one: its own updates are pulled too; or an
        edit made meanwhile is pushed first), and take none of its entries; the hub
        report after its last batch is the server's own, and is kept. A refusal as
        ``feed_diverged`` is dropped too: the pull asks again, and meets it there."""
        await self._reply_or_refusal(ask)

    async def _reply_or_refusal(self, ask: _PullAsk) -> FeedDivergedError | None:
        """Read the reply to ``ask`` and take none of its entries (as
        :meth:`_drop_reply`); the server's ``feed_diverged`` refusal if that was it."""
        try:
            batch = await self.expect(PullBatch)
        except FeedDivergedError as refused:
            return refused
        if not batch.more:
            await self.take_hub_report(ask.hub_since)
        return None

    async def _diverged(self) -> FeedDivergedError | None:
        """Ask the server for the feed from this laptop's checkpoint and take none of
        it: its ``feed_diverged`` refusal, or None when it holds what this laptop read."""
        ask = await self._pull_ask()
        self.protocol.request_pull(*ask)
        await self.flush()
        return await self._reply_or_refusal(ask)

    async def pull(self) -> int:
        store = self.host.store
        ask = await self._pull_ask()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead != ask:
            await self._drop_reply(ahead)
            ask = await self._pull_ask()
        if ahead != ask:
            self.protocol.request_pull(*ask)
        checkpoint, limit, own, rulebook, hub_since, epoch = ask
        downloaded = 0
        batch = await self.expect(PullBatch)
        while True:
            if batch.more:
                # Ask for the next batch before committing this one: the server
                # reads it while this laptop writes.
                self.protocol.request_pull(
                    batch.checkpoint, limit, own, rulebook, hub_since, batch.feed_epoch
                )
                await self.flush()
            if batch.items or batch.checkpoint != checkpoint or batch.feed_epoch != epoch:
                position = FeedPosition(batch.checkpoint, batch.feed_epoch)
                await self.host.take_in(
                    list(map(_RECORD_AND_UPDATE, batch.items)),
                    checkpoint=(meta.CHECKPOINT, position.to_meta()),
                    checked=from_wire(batch.checked, batch.conflicts),
                    durable=not batch.more,  # the last: one sync for the pull's batches
                )
            downloaded += batch.feed_entries  # a merged item stands for several (v10)
            checkpoint, epoch = batch.checkpoint, batch.feed_epoch
            if not batch.more:
                if own:  # caught up with our own changes: back to leaving them out
                    await store.set_meta(meta.PULL_OWN, "0")
                    self.include_own = False
                await self.take_hub_report(hub_since)
                return downloaded
            batch = await self.expect(PullBatch)

    async def _hub_since(self) -> int | None:
        """The hub mark of the report this laptop holds, if the connection's version
        (13 on) carries it."""
        if not self.protocol.reports_hub_changes:
            return None
        from caresync.hub.status import stored_mark

        return await stored_mark(self.host.known_meta)

    async def take_hub_report(self, hub_since: int | None = None) -> None:
        """Keep what the server says of the hub summaries after a pull (version 7 on).

        The health-hub outbox (:mod:`caresync.hub`): a laptop shows what the server knows.
        From version 13 the report carries the server's hub mark, and, to a pull that
        named the mark of the report held (``hub_since`` above 0), may carry only what
        changed since: it is merged into the report held. Every frame is checked before
        anything is stored; a report that breaks the rules is a RemoteProtocolError.
        """
        version = self.protocol.protocol_version
        if version is None or version < HubReport.SINCE_VERSION:
            return
        from caresync.hub.status import store_report

        items: list[HubItem] = []
        first: HubReport | None = None
        for _frame in range(MAX_HUB_REPORT_FRAMES):  # bounded: a server cannot stream forever
            report = await self.expect(HubReport)
            if first is None:
                first = report
                _check_hub_report(report, hub_since)
            elif (report.mark, report.whole) != (first.mark, first.whole):
                raise RemoteProtocolError("a hub report's frames disagree on its mark")
            if items and report.items and report.items[0].record_id <= items[-1].record_id:
                raise RemoteProtocolError("a hub report's frames are not in record order")
            items.extend(report.items)
            if len(items) > MAX_HUB_REPORT_ITEMS:
                raise RemoteProtocolError(
                    f"a hub report of more than {MAX_HUB_REPORT_ITEMS} summaries"
                )
            if report.final:
                if report.changes_only and report.mark == hub_since and items:
                    raise RemoteProtocolError(
                        "a hub report of changes since the mark held names changes at that mark"
                    )
                await store_report(
                    self.host.known_meta,
                    items,
                    mark=report.mark,
                    whole=not report.changes_only,
                    max_items=MAX_HUB_REPORT_ITEMS,  # merged with the report held, too
                )
                return
        raise RemoteProtocolError(f"a hub report of more than {MAX_HUB_REPORT_FRAMES} frames")

    # ------------------------------------------------------------------- live

    async def live(self, stop: asyncio.Event, attempt: LiveAttempt) -> None:
        """Subscribe, then apply live updates and push new edits until ``stop`` or a failure."""
        host = self.host
        checkpoint = FeedPosition.parse(await host.store.get_meta(meta.CHECKPOINT)).seq
        # The queue before the Subscribe: the reader routes the backlog here as it arrives.
        updates: asyncio.Queue[tuple[LiveUpdate | LiveBatch, int]] = asyncio.Queue(LIVE_QUEUE_ITEMS)
        self._live_updates = updates
        self._live_held = 0
        self.protocol.subscribe(checkpoint, host.rulebook.fingerprint)
        await self.flush()
        attempt.online = attempt.live = True
        host.status.move(ReplicaState.ONLINE)
        host.outbox_changed.set()  # push whatever was written during the round
        tasks = {
            asyncio.create_task(self._commit_live(updates)),
            asyncio.create_task(self._push_live()),
        }
        stopper = asyncio.create_task(_until(stop))
        reader = self._reader
        watched = {*tasks, stopper} if reader is None else {*tasks, stopper, reader}
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.wait({*tasks, stopper})
            await self._live_made_durable()
            await self._synced()
        if reader is not None and reader in done and self._read_error is not None:
            raise self._read_error
        for task in done:
            if task in tasks and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error

    async def _commit_live(
        self, updates: asyncio.Queue[tuple[LiveUpdate | LiveBatch, int]]
    ) -> None:
        while True:
            frame, held = await updates.get()
            frames = [frame]
            taken = len(frame.items) if isinstance(frame, LiveBatch) else 1
            while not updates.empty() and taken < self.limits.pull_limit:
                frame, size = updates.get_nowait()
                taken += len(frame.items) if isinstance(frame, LiveBatch) else 1
                frames.append(frame)
                held += size
            live = LiveFrames.of(frames)
            await self.host.take_in(
                live.entries,
                checkpoint=(
                    meta.CHECKPOINT,
                    FeedPosition(live.last_seq, live.last_epoch).to_meta(),
                ),
                checked=live.checks or None,
            )
            # Committed: their bytes are no longer held (the reader may read on).
            self._live_held = max(0, self._live_held - held)
            self._live_room.set()
            self._live_batches += 1
            if not self.limits.live_durable_delay_s:
                await self.host.make_durable()
            elif self._durable_later is None or self._durable_later.done():
                self._durable_later = asyncio.create_task(self._make_durable_later())

    async def _live_made_durable(self) -> None:
        """Live mode ends: what it took in is made durable now, not after the delay."""
        later, self._durable_later = self._durable_later, None
        if later is not None:
            later.cancel()
            await asyncio.wait({later})
        with contextlib.suppress(StorageError):  # a failing disk: the next durable commit
            await self.host.make_durable()

    async def _make_durable_later(self) -> None:
        """Make the live batches durable after ``live_durable_delay_s``: one sync for all
        that were committed meanwhile. A batch committed while that sync ran, or a
        failing disk, waits one more delay (live mode's end syncs whatever is left)."""
        while True:
            await asyncio.sleep(self.limits.live_durable_delay_s)
            batches = self._live_batches
            try:
                await self.host.make_durable()
            except StorageError as exc:
                logger.warning("live updates not yet made durable (tried again): %s", exc)
                continue
            if self._live_batches == batches:
                return

    async def _push_live(self) -> None:
        changed = self.host.outbox_changed
        while True:
            await changed.wait()
            changed.clear()  # an edit committed from now on wakes the next round
            await self.push()
            await self.push_audit()


class SessionContext:
    """``async with Session.connect(...)``: connect, hello, and always clean up."""

    def __init__(
        self,
        host: SessionHost,
        url: str,
        ssl: ssl_module.SSLContext | None,
        expected_key: str | None = None,
        *,
        as_new: bool = False,
    ) -> None:
        self.host, self.url, self.ssl = host, url, ssl
        self.expected_key = expected_key
        self.as_new = as_new
        self.session: Session | None = None

    async def __aenter__(self) -> Session:
        host = self.host
        if host.status.state is ReplicaState.LOCKED:
            # Revoked while this caller waited for the sync lock.
            raise ReplicaRevokedError(
                f"this replica is locked: {host.status.last_error}; its unsynced changes "
                "are kept (export them with store.export_unsynced)"
            )
        early = await self._expected_version()
        try:
            return await self._open(early)
        except EarlyProofLost:
            # The server chose another version than last time (an upgrade or a
            # downgrade): forget it, and connect again the plain way, once.
            logger.info("the server changed its protocol version; connecting again")
            return await self._open(None)

    async def _expected_version(self) -> int | None:
        """The version the server chose last time, if the proof request may go with
        Hello in it (an enrolled laptop that offers it still); else None."""
        if self.expected_key is not None or not self.host.identity.server_id:
            return None  # enrolling: the server is not known yet
        said = await self.host.known_meta.get_meta(meta.SERVER_PROTOCOL)
        if said is None or not said.isdigit() or int(said) not in _PROTOCOL_VERSIONS:
            return None
        return int(said)

    async def _open(self, early: int | None) -> Session:
        """Connect, say Hello (with the proof request, written in ``early``, if given),
        and have the server prove itself."""
        host = self.host
        host.status.move(ReplicaState.CONNECTING)
        try:
            await finish_closing(host)  # the last session's link: one closing at a time
            channel = await host.connector.connect(self.url, ssl=self.ssl)
        except BaseException as exc:
            host.status.last_error = str(exc)
            host.status.move(ReplicaState.OFFLINE)
            raise
        identity = host.identity
        enrolled = bool(identity.server_id) and not self.as_new
        protocol = ClientProtocol(
            replica_id=identity.replica_id if enrolled else None,
            server_id=identity.server_id if enrolled else None,
            organisation=identity.organisation if enrolled else None,
            protocol_versions=_PROTOCOL_VERSIONS,
            client_version=CLIENT_VERSION,
        )
        session = self.session = Session(host, channel, protocol)
        session.start_reading()
        try:
            protocol.send_hello()
            nonce = None
            if early is not None:  # one round trip less: the server reads in order
                nonce = os.urandom(32)
                protocol.prove_server(nonce, version=early)
            welcome = await session.expect(Welcome)
            await session.prove_server(self.expected_key, nonce)
            # Kept once the server proved itself: written only when it changed.
            await meta.write_if_changed(
                host.known_meta, meta.SERVER_PROTOCOL, str(welcome.protocol_version)
            )
        except BaseException as exc:
            await self._finish(exc)
            raise
        return session

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self._finish(exc)

    async def _finish(self, exc: BaseException | None) -> None:
        """Say Goodbye if all went well, close, and keep what the session's end means.

        The reader reads ahead: a refusal the server sent (a revoked replica, right
        after Welcome) may have failed the protocol before our next request, which
        then could not be sent. That refusal, not the request, is raised.
        """
        session = self.session
        if session is None:
            return
        self.session = None
        failure = session.protocol.failure
        if isinstance(exc, LocalProtocolError) and failure is not None and failure is not exc:
            await self._finish_with(session, failure)
            raise failure from None
        await self._finish_with(session, exc)

    async def _finish_with(self, session: Session, exc: BaseException | None) -> None:
        host = self.host
        try:
            if exc is None and session.protocol.failure is None:
                try:
                    # With the link's closing frame, in one write, where it can.
                    await session.say_goodbye("sync done")
                except CaresyncError as goodbye_lost:  # the work is done; only Goodbye is lost
                    logger.debug("could not say Goodbye to the server: %s", goodbye_lost)
                # Everything is committed and Goodbye said: the closing handshake (a
                # round trip) finishes in the background, not in the sync's time.
                await session.stop_reading()
                closing = asyncio.create_task(_close_quietly(session.channel))
                host.closing.add(closing)
                closing.add_done_callback(host.closing.discard)
            else:
                await session.channel.close()
                await session.stop_reading()
            error = exc if isinstance(exc, ReplicaRevokedError) else session.protocol.failure
            if isinstance(error, ReplicaRevokedError):
                if session.server_key is None:
                    # Anyone answering at the server's address can say "revoked": only
                    # the server that proved its key locks this laptop (for good).
                    unproven = WrongServerError(
                        f"the server at {session.channel.peer} said this replica was revoked "
                        f"({error}) before it proved its identity: not locked, and "
                        "unsynced changes are kept. If that is the clinic's server, it is "
                        "older than this laptop: have it upgraded; else it is an impostor"
                    )
                    host.status.last_error = str(unproven)
                    raise unproven from error
                await host.revoked(str(error))
                return
            refusal = session.protocol.peer_error
            if isinstance(error, ClientTooOldError) and refusal is not None:
                newest = refusal.detail.get("client_newest")
                least = refusal.detail.get("client_min")
                if isinstance(newest, str) and isinstance(least, str):
                    with contextlib.suppress(InvalidInputError, StorageError):
                        await host.remember_client_versions(
                            check_version(newest), check_version(least)
                        )
            if isinstance(exc, Exception):
                host.status.last_error = str(exc) or type(exc).__name__
        finally:
            # Whatever stopped the closing (a cancellation while the link closes), the
            # session is over: its reader stops and the replica is OFFLINE, unless LOCKED.
            await session.stop_reading()
            if host.status.state is not ReplicaState.LOCKED:
                host.status.move(ReplicaState.OFFLINE)
