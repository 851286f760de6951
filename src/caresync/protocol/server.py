"""The server's end of a sync connection (sans-I/O).

Theory of operation
-------------------

One :class:`ServerProtocol` per accepted connection, built with the server's id. It
decides nothing that needs a database: it checks the shape and order of what the
client sends, negotiates the version, and turns each client message into an event
(:data:`ServerEvent`) that the server shell answers through a method.

=====================  ======================================================
event                  the shell answers with
=====================  ======================================================
``Hello``              nothing needed: Welcome was already queued; may
                       ``reject`` (e.g. ``revoked``) before credentials arrive
``ProveServer``        ``send_server_proof(key, signature)`` (version 4 on)
``Authenticate``       ``accept_authentication(...)`` or ``reject(...)``
``ResumeSession``      ``accept_authentication(...)`` or ``reject(...)``
``Enrol``              ``accept_enrolment(...)`` or ``refuse``/``reject``
``CopyRequest``        ``send_copy_batch(...)``
``PullRequest``        ``send_pull_batch(...)``
``PushBatch``          commit, then ``ack_push()`` — never before the commit
``Subscribe``          ``send_live_updates(...)`` (or ``send_live_update``) for
                       new entries, in seq order
``OutboxReport``       nothing to send; keep it for operators (version 2 on)
``AuditBatch``         commit, then ``ack_audit()`` (version 7 on)
``RecordPartRequest``  ``send_record_part(...)`` (version 15 on)
``Goodbye``            close the websocket
=====================  ======================================================

What the protocol decides on its own, because it needs no database:

* **Version.** The highest version both sides speak; none → fatal
  ``unsupported_version`` and :class:`~caresync.exceptions.SyncRefusedError`.
* **Server identity.** A Hello whose ``server_id_expected`` is not this server's id →
  fatal ``wrong_server`` naming both and :class:`~caresync.exceptions.WrongServerError`.
  Nothing else has moved: no Welcome is sent.
* **Organisation.** An enrolled replica's Authenticate for another organisation than
  its Hello named → fatal ``wrong_organisation`` and
  :class:`~caresync.exceptions.WrongOrganisationError`.
* **Enrolment.** Copy, pull, push or subscribe from a replica not enrolled → fatal
  ``not_enrolled`` and :class:`~caresync.exceptions.RemoteProtocolError`.

Whether a password is right, a session valid, a replica revoked or a record visible to
the organisation is the shell's to decide; it answers with ``reject`` (fatal) or
``refuse`` (non-fatal, one request).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from caresync.exceptions import (
    LocalProtocolError,
    RemoteProtocolError,
    SyncRefusedError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.protocol.base import SyncProtocol
from caresync.protocol.codec import (
    BATCH_OVERHEAD_BYTES,
    ITEM_OVERHEAD_BYTES,
    encode_frame,
    item_wire_size,
)
from caresync.protocol.errors import ErrorCode
from caresync.protocol.messages import (
    ACCOUNT_STATES_SINCE,
    CARD_REFERENCE_SINCE,
    COALESCED_PULL_SINCE,
    DEFAULT_MAX_FRAME_BYTES,
    FEED_EPOCHS_SINCE,
    HUB_CHANGES_SINCE,
    MAX_ID_LENGTH,
    RECORD_PARTS_SINCE,
    SUPPORTED_VERSIONS,
    AccountName,
    AccountState,
    AuditAck,
    AuditBatch,
    Authenticate,
    Authenticated,
    CheckedState,
    CopyBatch,
    CopyConflict,
    CopyPair,
    CopyPerson,
    CopyRecord,
    CopyRequest,
    DetailValue,
    Enrol,
    Enrolled,
    Error,
    FeedItem,
    Goodbye,
    Hello,
    HubItem,
    HubReport,
    LiveBatch,
    LiveUpdate,
    Message,
    OutboxReport,
    ProveServer,
    PullBatch,
    PullRequest,
    PushAck,
    PushBatch,
    RecordPart,
    RecordPartRequest,
    ResumeSession,
    ServerProof,
    Subscribe,
    Welcome,
    card_reference,
    held_reference,
)
from caresync.protocol.states import (
    NEEDS_ENROLMENT,
    REQUESTS,
    SERVER_TRANSITIONS,
    Direction,
    RequestKind,
    ServerState,
)

_LIVE_STATES = tuple(
    state for state, moves in SERVER_TRANSITIONS.items() if (Direction.SEND, LiveBatch) in moves
)  # where live frames may be sent (a tuple: found by identity, no enum hashing)

__all__ = ["RecordCheck", "ServerEvent", "ServerProtocol", "check_wire_size", "row_wire_size"]

_RECORD_ID = operator.itemgetter(1)  # a FeedItem's record id
_UPDATE = operator.itemgetter(2)  # and its update
_tuple_new: Any = tuple.__new__  # cls(*fields) of a named tuple cls, in one C call


class RecordCheck(NamedTuple):
    """What the server's index holds for one record's stored state (version 8 on):
    the state (its state vector and person card) and its conflict rows.

    A named tuple rather than a frozen dataclass: a pull builds one per record, and
    the server keeps thousands (a tuple costs less to build and to the collector)."""

    state: CheckedState
    rows: tuple[CopyConflict, ...]
    card_since: int = 0
    """A feed seq by which the record had this card already (0: as far as the server
    knows, always). A version 9 client that pulls from this seq on, or takes live
    entries after it, holds that card, so it is sent a reference to it
    (:func:`~caresync.protocol.card_reference`); an earlier one is sent the card."""
    rows_since: int | None = None
    """The same for the record's conflict rows (None: not known; the rows go in full).
    A client past both is sent one reference to the card and rows
    (:func:`~caresync.protocol.held_reference`) and none of the rows."""
    digests: tuple[bytes, bytes] | None = None
    """The card's :func:`~caresync.protocol.card_reference` (of ``b""``: no card) and
    the rows' :func:`~caresync.protocol.rows_digest`, when the caller has them already
    (else they are computed for each frame that refers to them)."""

    def card_reference(self) -> bytes:
        """The reference to this check's card (of ``b""``: no card)."""
        if self.digests is not None:
            return self.digests[0]
        return card_reference(self.state.card or b"")

    def held_reference(self) -> bytes:
        """The reference to this check's card and rows together."""
        if self.digests is not None:
            return b"\x01" + self.digests[0][1:] + self.digests[1]
        return held_reference(self.state.card, self.rows)


def row_wire_size(row: CopyConflict) -> int:
    """An upper bound on the bytes one conflict row takes in a frame."""
    text = len(row.record_id) + len(row.id) + len(row.kind) + len(row.subject) + len(row.severity)
    # UTF-8 takes at most 4 bytes a character; msgpack adds a few bytes per field.
    return 4 * text + len(row.payload) + ITEM_OVERHEAD_BYTES


def check_wire_size(check: RecordCheck) -> int:
    """An upper bound on the bytes one record's check takes in a frame."""
    state = check.state
    size = 4 * len(state.record_id) + len(state.state_vector) + len(state.card or b"")
    return size + ITEM_OVERHEAD_BYTES + sum(row_wire_size(row) for row in check.rows)


ServerEvent = (
    Hello
    | ProveServer
    | Authenticate
    | ResumeSession
    | Enrol
    | CopyRequest
    | RecordPartRequest
    | PullRequest
    | PushBatch
    | Subscribe
    | OutboxReport
    | AuditBatch
    | Goodbye
)
"""What :meth:`ServerProtocol.events_received` returns: messages from the client, checked."""


def _versions_text(versions: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(versions))


class ServerProtocol(SyncProtocol[ServerState, ServerEvent]):
    """The server end of one sync connection.

    ``server_id`` is this server's stable id (what replicas are enrolled to);
    ``max_frame_bytes`` the largest frame this end accepts. ``feed_epoch_at`` gives
    the feed epoch of a feed number (:func:`caresync.replication.epochs.epoch_at`
    over the server's epochs): from version
    :data:`~caresync.protocol.messages.FEED_EPOCHS_SINCE` on, every feed position
    sent carries it (None: none is sent).
    """

    _side = "server"
    _peer = "client"

    def __init__(
        self,
        server_id: str,
        *,
        protocol_versions: Iterable[int] = SUPPORTED_VERSIONS,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        feed_epoch_at: Callable[[int], int] | None = None,
    ) -> None:
        versions = tuple(protocol_versions)
        if not versions or any(v not in SUPPORTED_VERSIONS for v in versions):
            raise LocalProtocolError(
                f"protocol_versions must be a non-empty subset of {SUPPORTED_VERSIONS}"
            )
        if (
            type(server_id) is not str
            or not 0 < len(server_id) <= MAX_ID_LENGTH
            or not server_id.isprintable()
        ):
            raise LocalProtocolError(
                f"server_id must be a printable str of 1 to {MAX_ID_LENGTH} characters"
            )
        super().__init__(
            transitions=SERVER_TRANSITIONS,
            initial=ServerState.AWAITING_HELLO,
            closed=ServerState.CLOSED,
            failed=ServerState.FAILED,
            max_frame_bytes=max_frame_bytes,
            fallback_version=max(versions),
        )
        self._server_id = server_id
        self._versions = versions
        self._hello: Hello | None = None
        self._credentials: Authenticate | ResumeSession | None = None
        self._session: Authenticated | None = None
        self._replica_id: str | None = None
        self._organisation: str | None = None
        self._subscribed = False
        self._live_rulebook: str | None = None
        self._live_seq = 0
        self._nonce: bytes | None = None
        self._feed_epoch_at = feed_epoch_at

    # ----------------------------------------------------------------- properties

    @property
    def server_id(self) -> str:
        """This server's id."""
        return self._server_id

    @property
    def hello(self) -> Hello | None:
        """The client's Hello, once received."""
        return self._hello

    @property
    def credentials(self) -> Authenticate | ResumeSession | None:
        """What the client logged in with, once received."""
        return self._credentials

    @property
    def session(self) -> Authenticated | None:
        """The Authenticated this server sent, once sent."""
        return self._session

    @property
    def replica_id(self) -> str | None:
        """The client replica's id: from its Hello, or as enrolled here."""
        return self._replica_id

    @property
    def organisation(self) -> str | None:
        """The organisation of the session, once authenticated (else the Hello's, if any)."""
        return self._session.organisation if self._session else self._organisation

    @property
    def subscribed(self) -> bool:
        """True once the client subscribed to live updates."""
        return self._subscribed

    @property
    def live_seq(self) -> int:
        """The highest seq sent live (or the Subscribe's ``after_seq``): send only later ones."""
        return self._live_seq

    @property
    def live_rulebook(self) -> str | None:
        """The rulebook fingerprint the client's Subscribe named (version 8 on), or None."""
        return self._live_rulebook

    # ---------------------------------------------------------------- moves

    def send_server_proof(self, server_key: bytes, signature: bytes) -> None:
        """Queue ServerProof answering the client's ProveServer (PROVING → PROVEN).

        ``signature`` signs :func:`~caresync.protocol.identity.server_proof_payload`
        of the client's nonce (:attr:`proof_nonce`), this server's id, the client's
        replica id and the connection's TLS channel binding.
        """
        self._send(ServerProof(server_key, signature))

    @property
    def proof_nonce(self) -> bytes | None:
        """The nonce of the client's ProveServer, once received."""
        return self._nonce

    def accept_authentication(
        self,
        session_token: str,
        expires_at_ms: int,
        user: str,
        organisation: str,
        *,
        pushed_up_to: int | None = None,
        replica_secret: bytes | None = None,
        accounts: Sequence[AccountName] | None = None,
        audit_tail: tuple[int, bytes] | None = None,
        client_newest: str | None = None,
        client_min: str | None = None,
        account_states: Sequence[AccountState] | None = None,
    ) -> None:
        """Queue Authenticated (AUTHENTICATING → READY).

        ``organisation`` must be the one the client asked for (and, for an enrolled
        replica, the one its Hello named): otherwise ``reject`` with
        ``wrong_organisation`` instead. ``pushed_up_to`` and ``replica_secret``
        are sent from version 4 on, ``accounts`` from version 6 on (dropped, as
        "not said", before), ``audit_tail`` (the number and hash of the last entry of
        the replica's audit chain held here), ``client_newest`` and ``client_min``
        (the newest caresync version the server knows, the oldest it accepts) from
        version 7 on, ``account_states`` (whether each account of ``accounts`` is
        disabled, and its password mark) from version
        :data:`~caresync.protocol.messages.ACCOUNT_STATES_SINCE` on.
        """
        if self._version is not None and self._version < ProveServer.SINCE_VERSION:
            pushed_up_to = replica_secret = None
        if self._version is not None and self._version < Authenticated.FIELDS_SINCE["accounts"]:
            accounts = None
        if self._version is not None and self._version < AuditBatch.SINCE_VERSION:
            audit_tail = None
            client_newest = client_min = None
        if self._version is not None and self._version < ACCOUNT_STATES_SINCE:
            account_states = None
        message = Authenticated(
            session_token,
            expires_at_ms,
            user,
            organisation,
            pushed_up_to,
            replica_secret,
            None if accounts is None else tuple(accounts),
            None if audit_tail is None else audit_tail[0],
            None if audit_tail is None else audit_tail[1],
            client_newest,
            client_min,
            None if account_states is None else tuple(account_states),
        )
        asked = (
            self._credentials.organisation if isinstance(self._credentials, Authenticate) else None
        )
        for wanted in (asked, self._hello.organisation if self._hello else None):
            if wanted is not None and organisation != wanted:
                raise LocalProtocolError(
                    f"the client asked for organisation {wanted!r}, not {organisation!r}; "
                    f"reject it with {ErrorCode.WRONG_ORGANISATION!s} instead"
                )
        self._send(message)
        self._session = message

    def accept_enrolment(
        self,
        replica_id: str,
        organisation: str | None = None,
        *,
        replica_secret: bytes | None = None,
    ) -> None:
        """Queue Enrolled: the replica ``replica_id`` is bound to this server and organisation.

        ``organisation`` defaults to the session's, and must equal it.
        ``replica_secret`` (version 4 on) is the secret the replica proves from now on.
        """
        if self._version is not None and self._version < ProveServer.SINCE_VERSION:
            replica_secret = None
        session_organisation = self._session.organisation if self._session else None
        organisation = organisation if organisation is not None else session_organisation
        if organisation is None or organisation != session_organisation:
            raise LocalProtocolError(
                f"a replica is enrolled to the session's organisation {session_organisation!r}, "
                f"not {organisation!r}"
            )
        message = Enrolled(replica_id, self._server_id, organisation, replica_secret)
        self._send(message)
        self._replica_id = replica_id
        self._organisation = organisation
        self._enrolled = True

    def send_copy_batch(
        self,
        records: Iterable[CopyRecord | tuple[str, bytes]],
        *,
        done_records: int,
        total_records: int,
        done_bytes: int,
        total_bytes: int,
        feed_checkpoint: int,
        final: bool,
        conflicts: Iterable[CopyConflict | tuple[str, str, str, str, str, bytes]] | None = None,
        persons: Iterable[CopyPerson | tuple[str, bytes]] | None = None,
        pairs: Iterable[CopyPair | tuple[str, str]] | None = None,
        in_parts: str | None = None,
    ) -> None:
        """Queue CopyBatch answering the outstanding CopyRequest.

        ``records`` in ascending id order, all after the request's ``after_record_id``,
        at most its ``batch_records``; ``last_record_id`` is derived. ``conflicts``:
        ``None``, or every conflict index row of those records, computed by the
        rulebook the request named (``CopyRequest.rulebook``); ``persons``: with
        them (protocol version 5 on), the records' person cards; ``pairs``: with the
        cards (version :data:`~caresync.protocol.messages.COPY_PAIRS_SINCE` on), the
        person index's pairs whose later record is in the batch. ``in_parts``
        (version :data:`~caresync.protocol.messages.RECORD_PARTS_SINCE` on): the id of
        the next record, too large for one frame, which the client then takes in parts
        (the batch holds no record and is not final). Raises
        :class:`~caresync.exceptions.LocalProtocolError`, queueing nothing, if the
        batch breaks those rules or its frame would exceed the client's maximum.
        """
        request = self._expect(RequestKind.COPY)
        if not isinstance(request, CopyRequest):  # pragma: no cover - kept by the tables
            raise LocalProtocolError("no CopyRequest outstanding")
        # CopyBatch checks the records and makes them CopyRecords (in one pass of
        # builtins when they are plain pairs): not converted here first.
        items = tuple(records)
        last = items[-1][0] if items else request.after_record_id
        batch = CopyBatch(
            cast("tuple[CopyRecord, ...]", items),
            done_records,
            total_records,
            done_bytes,
            total_bytes,
            last,
            feed_checkpoint,
            final,
            None
            if conflicts is None
            else tuple(
                row if isinstance(row, CopyConflict) else CopyConflict(*row) for row in conflicts
            ),
            None
            if persons is None
            else tuple(p if isinstance(p, CopyPerson) else CopyPerson(*p) for p in persons),
            None
            if pairs is None
            else tuple(p if isinstance(p, CopyPair) else CopyPair(*p) for p in pairs),
            self._epoch_of(feed_checkpoint),
            in_parts,
        )
        if in_parts is not None and (self._version or 0) < RECORD_PARTS_SINCE:
            raise LocalProtocolError(
                f"a record in parts needs protocol version {RECORD_PARTS_SINCE}; this "
                f"connection speaks {self._version}"
            )
        after = request.after_record_id
        if in_parts is not None and after is not None and in_parts <= after:
            raise LocalProtocolError(f"the record in parts must come after {after!r}")
        if batch.conflicts is not None and request.rulebook is None:
            raise LocalProtocolError("conflict index rows for a request that named no rulebook")
        if len(items) > request.batch_records:
            raise LocalProtocolError(
                f"{len(items)} records; the client asked for at most {request.batch_records}"
            )
        if items and after is not None and items[0][0] <= after:
            raise LocalProtocolError(f"records must come after {after!r}, as asked")
        self._send(batch)

    def send_record_part(self, updates: Iterable[bytes], *, final: bool) -> None:
        """Queue RecordPart answering the outstanding RecordPartRequest: ``updates``
        continue the record from the state vector the request named; ``final`` when
        they hold the rest of it. Raises :class:`~caresync.exceptions.LocalProtocolError`,
        queueing nothing, if the part breaks the message's rules or the client's frame."""
        request = self._expect(RequestKind.PART)
        if not isinstance(request, RecordPartRequest):  # pragma: no cover - by the tables
            raise LocalProtocolError("no RecordPartRequest outstanding")
        self._send(RecordPart(request.record_id, tuple(updates), final))

    def _epoch_of(self, seq: int) -> int | None:
        """The feed epoch of ``seq`` to send (version 14 on, with a source), else None."""
        if self._feed_epoch_at is None or (self._version or 0) < FEED_EPOCHS_SINCE:
            return None
        return self._feed_epoch_at(seq)

    @property
    def sends_feed_epochs(self) -> bool:
        """True if feed positions go with their epochs (version 14 on, with a source)."""
        return self._feed_epoch_at is not None and (self._version or 0) >= FEED_EPOCHS_SINCE

    @property
    def coalesces_pulls(self) -> bool:
        """True if pull batches may merge a record's feed entries (version 10 on)."""
        return (self._version or 0) >= COALESCED_PULL_SINCE

    def send_pull_batch(
        self,
        items: Iterable[FeedItem | tuple[int, str, bytes]],
        *,
        checkpoint: int,
        head_seq: int,
        checks: Mapping[str, RecordCheck] | None = None,
        feed_entries: int | None = None,
    ) -> None:
        """Queue PullBatch answering the outstanding PullRequest.

        ``items`` in ascending seq, all after the request's ``after_seq``, at most its
        ``limit``; ``checkpoint`` is how far the batch covers the feed (at least the
        last item's seq), ``head_seq`` the feed's head. ``checks`` (version 8 on, only
        for a request that named a rulebook): what the server's index holds for some
        records, attached for the batch's records as far as the client's frame size
        allows (a record left out is one the client checks itself). ``feed_entries``
        (version 10 on, see :attr:`coalesces_pulls`): how many feed entries the items
        stand for, when an item merges several of one record.
        """
        request = self._expect(RequestKind.PULL)
        if not isinstance(request, PullRequest):  # pragma: no cover - kept by the tables
            raise LocalProtocolError("no PullRequest outstanding")
        # FeedItem(*item) of a plain (seq, record_id, update) triple in one C call (a pull
        # sends a thousand); the batch checks every item's fields when it is built.
        entries = tuple(
            item
            if type(item) is FeedItem
            else _tuple_new(FeedItem, item)
            if type(item) is tuple and len(item) == 3
            else FeedItem(*item)
            for item in items
        )
        checked, conflicts = (None, None)
        if checks is not None:
            if request.rulebook is None:
                raise LocalProtocolError("checked states for a PullRequest that named no rulebook")
            checked, conflicts = self._attach(entries, checks, request.after_seq)
        if feed_entries is not None and not self.coalesces_pulls:
            raise LocalProtocolError("merged pull entries for a client older than version 10")
        batch = PullBatch(
            entries,
            checkpoint,
            head_seq,
            checked,
            conflicts,
            feed_entries,
            self._epoch_of(checkpoint),
        )
        if len(entries) > request.limit:
            raise LocalProtocolError(
                f"{len(entries)} entries; the client asked for at most {request.limit}"
            )
        if entries and entries[0].seq <= request.after_seq:
            raise LocalProtocolError(f"entries must come after seq {request.after_seq}, as asked")
        if checkpoint < request.after_seq:
            raise LocalProtocolError(
                f"checkpoint {checkpoint} is before the request's after_seq {request.after_seq}"
            )
        if batch.more and checkpoint == request.after_seq:
            raise LocalProtocolError(
                f"a batch that says more entries follow seq {request.after_seq} covers at "
                "least one past it (the client would ask again from the same seq)"
            )
        if batch.feed_entries > max(0, checkpoint - request.after_seq):
            raise LocalProtocolError(
                f"{batch.feed_entries} feed entries cannot fit between seq "
                f"{request.after_seq} and the checkpoint {checkpoint}"
            )
        self._send(batch)

    def ack_push(self, up_to_local_seq: int | None = None) -> None:
        """Queue PushAck for the outstanding PushBatch. Call only after the commit.

        ``up_to_local_seq`` defaults to the batch's last entry.
        """
        request = self._expect(RequestKind.PUSH)
        if not isinstance(request, PushBatch):  # pragma: no cover - kept by the tables
            raise LocalProtocolError("no PushBatch outstanding")
        first, last = request.items[0].local_seq, request.items[-1].local_seq
        up_to = last if up_to_local_seq is None else up_to_local_seq
        message = PushAck(up_to)
        if not first <= up_to <= last:
            raise LocalProtocolError(f"ack up to {up_to} is outside the batch [{first}, {last}]")
        self._send(message)

    def ack_audit(self, up_to_seq: int | None = None) -> None:
        """Queue AuditAck for the outstanding AuditBatch. Call only after the commit."""
        request = self._expect(RequestKind.AUDIT)
        if not isinstance(request, AuditBatch):  # pragma: no cover - kept by the tables
            raise LocalProtocolError("no AuditBatch outstanding")
        first, last = request.entries[0].seq, request.entries[-1].seq
        up_to = last if up_to_seq is None else up_to_seq
        if not first <= up_to <= last:
            raise LocalProtocolError(f"ack up to {up_to} is outside the entries [{first}, {last}]")
        self._send(AuditAck(up_to))

    def _attach(
        self, entries: Sequence[FeedItem], checks: Mapping[str, RecordCheck], position: int
    ) -> tuple[tuple[CheckedState, ...], tuple[CopyConflict, ...]]:
        """The checks of ``entries``' records, in batch order, as far as the frame allows.

        ``position`` is how far the client had the feed before these entries: from
        version 9, a card it had by then (``RecordCheck.card_since``) goes as a reference.
        """
        budget = self._peer_max_frame_bytes - BATCH_OVERHEAD_BYTES
        budget -= sum(map(item_wire_size, map(_RECORD_ID, entries), map(_UPDATE, entries)))
        checked: list[CheckedState] = []
        rows: list[CopyConflict] = []
        # Version 9 on: what the client has held since before these entries goes as a
        # reference (the card, or the card and rows); a laptop holding it keeps it.
        refer = (self._version or 0) >= CARD_REFERENCE_SINCE
        for record_id in dict.fromkeys(map(_RECORD_ID, entries)):
            check = checks.get(record_id)
            if check is None:
                continue
            if refer and check.card_since <= position:
                state = check.state
                if check.rows_since is not None and check.rows_since <= position:
                    # The usual case: the state alone, with one reference (what
                    # check_wire_size says of it, without a RecordCheck built for it).
                    digests = check.digests
                    if digests is not None:  # check.held_reference(), without the call
                        reference = b"\x01" + digests[0][1:] + digests[1]
                    else:
                        reference = check.held_reference()
                    name, vector = state.record_id, state.state_vector
                    size = 4 * len(name) + len(vector) + len(reference) + ITEM_OVERHEAD_BYTES
                    if size > budget:
                        break  # the rest are checked by the client itself
                    budget -= size
                    # CheckedState(name, vector, reference), in one C call
                    checked.append(_tuple_new(CheckedState, (name, vector, reference)))
                    continue
                if state.card is not None:
                    check = RecordCheck(state._replace(card=check.card_reference()), check.rows)
            size = check_wire_size(check)
            if size > budget:
                break  # the rest are checked by the client itself
            budget -= size
            checked.append(check.state)
            rows.extend(check.rows)
        return tuple(checked), tuple(rows)

    def send_live_updates(
        self,
        entries: Sequence[tuple[int, str, bytes]],
        checks: Mapping[str, RecordCheck] | None = None,
    ) -> int:
        """Queue new feed entries for a subscribed client, skipping those already sent.

        Entries in ascending seq; those at or below :attr:`live_seq` are skipped (a
        backlog and a live queue may overlap). From protocol version 3 on, several
        go in one :class:`LiveBatch` frame; before, one LiveUpdate each. Returns
        the number queued. The rule of :meth:`send_live_update` applies to each.

        ``checks`` as in :meth:`send_pull_batch`, for a client whose Subscribe named
        a rulebook (:attr:`live_rulebook`; version 8 on): each frame carries those
        of its records, even a frame of one entry (always a LiveBatch then).
        """
        fresh = [entry for entry in entries if entry[0] > self._live_seq]
        if not fresh:
            return 0
        for message in self._live_messages(fresh, checks):
            self._send(message)
        self._live_seq = fresh[-1][0]
        return len(fresh)

    def live_encoding(self, checks: bool) -> tuple[int, bool, int, int]:
        """What the bytes of a live frame depend on besides its entries and checks:
        connections with the same encoding (and entries, and checks) get the same
        frames from :meth:`encode_live` (the agreed version, whether checks go,
        the client's largest frame and, when checks go from version 9 on, how far
        the client had the feed, which decides what goes as a reference)."""
        version = self._version or self._fallback_version
        position = self._live_seq if checks and version >= CARD_REFERENCE_SINCE else 0
        return (version, checks, self._peer_max_frame_bytes, position)

    def encode_live(
        self,
        entries: Sequence[tuple[int, str, bytes]],
        checks: Mapping[str, RecordCheck] | None = None,
    ) -> tuple[bytes, ...]:
        """The frames :meth:`send_live_updates` would queue for ``entries`` (every one
        after :attr:`live_seq`), encoded but not queued: nothing changes here. Hand
        them to :meth:`send_encoded_live`, on this connection or on any other whose
        :meth:`live_encoding` is the same (one encoding for many connections)."""
        if not entries or entries[0][0] <= self._live_seq:
            raise LocalProtocolError("live entries must all be after the last one sent")
        version = self._version or self._fallback_version
        return tuple(
            encode_frame(message, version=version, max_frame_bytes=self._peer_max_frame_bytes)
            for message in self._live_messages(list(entries), checks)
        )

    def send_encoded_live(self, frames: Sequence[bytes], last_seq: int) -> None:
        """Queue live frames made by :meth:`encode_live` for entries up to ``last_seq``,
        every one after :attr:`live_seq` (the caller checks that the frames were made
        for this connection's :meth:`live_encoding`: they are not decoded again)."""
        if not self.can_send_live:
            raise LocalProtocolError(f"no live frames may be sent in {self._state.name} now")
        if last_seq <= self._live_seq:
            raise LocalProtocolError(f"seq {last_seq} is not after the last one sent")
        self._outgoing.extend(frames)
        self._live_seq = last_seq

    def sent_encoded_live(self, last_seq: int) -> None:
        """Record live frames made by :meth:`encode_live`, for entries up to ``last_seq``,
        as sent: the caller wrote them to the connection itself, with nothing of this
        protocol waiting before them (:attr:`has_data_to_send` was False). What
        :meth:`send_encoded_live` then :meth:`data_to_send` would do, without queueing
        the frames to take them back (a fan-out does it for every connection)."""
        if self._outgoing:
            raise LocalProtocolError("frames wait to be sent: live frames go after them")
        if not self.can_send_live:
            raise LocalProtocolError(f"no live frames may be sent in {self._state.name} now")
        if last_seq <= self._live_seq:
            raise LocalProtocolError(f"seq {last_seq} is not after the last one sent")
        self._live_seq = last_seq

    @property
    def can_send_live(self) -> bool:
        """True if live frames may be sent now (subscribed, in a state that sends them)."""
        return self._subscribed and self._state in _LIVE_STATES

    @property
    def has_data_to_send(self) -> bool:
        """True if frames wait to be taken by :meth:`data_to_send`."""
        return bool(self._outgoing)

    def _live_messages(
        self,
        fresh: list[tuple[int, str, bytes]],
        checks: Mapping[str, RecordCheck] | None,
    ) -> list[LiveUpdate | LiveBatch]:
        """The frames' messages for ``fresh`` entries (see :meth:`send_live_updates`)."""
        if not self._subscribed:
            raise LocalProtocolError("the client has not subscribed to live updates")
        if checks is not None:
            if self._live_rulebook is None:
                raise LocalProtocolError("checked states for a Subscribe that named no rulebook")
            # Half a frame for entries, so their checks have room beside them.
            budget = (self._peer_max_frame_bytes - BATCH_OVERHEAD_BYTES) // 2
        elif (
            len(fresh) == 1 and not self.sends_feed_epochs  # a LiveUpdate carries no epoch
        ) or (self._version is None or self._version < LiveBatch.SINCE_VERSION):
            return [LiveUpdate(seq, record_id, update) for seq, record_id, update in fresh]
        else:
            # Frames within the client's maximum: an entry too large for a batch goes alone.
            budget = self._peer_max_frame_bytes - BATCH_OVERHEAD_BYTES
        messages: list[LiveUpdate | LiveBatch] = []
        frame: list[FeedItem] = []
        size = 0
        # How far the client has the feed before each frame (version 9's references).
        position = self._live_seq
        for seq, record_id, update in fresh:
            item_size = item_wire_size(record_id, update)
            if frame and size + item_size > budget:
                messages.append(self._live_message(frame, checks, position))
                position = frame[-1].seq
                frame, size = [], 0
            frame.append(FeedItem(seq, record_id, update))
            size += item_size
        messages.append(self._live_message(frame, checks, position))
        return messages

    def _live_message(
        self, items: list[FeedItem], checks: Mapping[str, RecordCheck] | None, position: int
    ) -> LiveUpdate | LiveBatch:
        epoch = self._epoch_of(items[-1].seq)
        if checks is not None:
            checked, rows = self._attach(items, checks, position)
            return LiveBatch(tuple(items), checked, rows, epoch)
        if len(items) == 1 and epoch is None:
            return LiveUpdate(*items[0])
        return LiveBatch(tuple(items), None, None, epoch)

    @property
    def can_report_hub(self) -> bool:
        """True once the agreed protocol version (7 on) carries :meth:`send_hub_report`."""
        return self._version is not None and self._version >= HubReport.SINCE_VERSION

    @property
    def reports_hub_changes(self) -> bool:
        """True once the agreed protocol version (:data:`HUB_CHANGES_SINCE` on) carries a
        hub report's ``mark`` and ``whole``: :meth:`send_hub_report` may send changes."""
        return self._version is not None and self._version >= HUB_CHANGES_SINCE

    def send_hub_report(
        self, items: Sequence[HubItem], *, mark: int | None = None, whole: bool | None = None
    ) -> None:
        """Queue the health-hub summaries as HubReport frames within the client's frame size.

        ``items`` in ascending record id; the last frame is marked ``final``
        (one empty frame when there is none). Version 7 on (:attr:`can_report_hub`).
        ``mark`` and ``whole`` (both or neither, version :data:`HUB_CHANGES_SINCE` on,
        see :attr:`reports_hub_changes`) go in every frame: the hub mark the report
        brings the client to, and whether ``items`` are the whole list or the changes
        since the client's ``hub_since``.
        """
        if not self.can_report_hub:
            raise LocalProtocolError("HubReport exists from protocol version 7")
        if mark is not None and not self.reports_hub_changes:
            raise LocalProtocolError(
                f"a hub report's mark exists from protocol version {HUB_CHANGES_SINCE}"
            )
        # Validated whole before anything is sent.
        checked = HubReport(tuple(items), True, mark, whole).items
        budget = self._peer_max_frame_bytes - BATCH_OVERHEAD_BYTES
        frame: list[HubItem] = []
        size = 0
        for item in checked:
            # UTF-8 takes at most 4 bytes a character; msgpack adds a few bytes per field.
            item_size = 4 * (len(item.record_id) + len(item.state) + len(item.reason or ""))
            item_size += ITEM_OVERHEAD_BYTES + 32
            if frame and size + item_size > budget:
                self._send(HubReport(tuple(frame), False, mark, whole))
                frame, size = [], 0
            frame.append(item)
            size += item_size
        self._send(HubReport(tuple(frame), True, mark, whole))

    def send_live_update(self, seq: int, record_id: str, update: bytes) -> None:
        """Queue LiveUpdate for a subscribed client; ``seq`` after :attr:`live_seq`.

        Send an entry live only once every entry with a lower seq that the client may
        see has been sent (live or in a pull batch): the client may then move its
        checkpoint to ``seq``.
        """
        message = LiveUpdate(seq, record_id, update)
        if not self._subscribed:
            raise LocalProtocolError("the client has not subscribed to live updates")
        if seq <= self._live_seq:
            raise LocalProtocolError(f"seq {seq} is not after the last one sent, {self._live_seq}")
        self._send(message)
        self._live_seq = seq

    def refuse(
        self,
        request: RequestKind,
        code: str,
        message: str,
        *,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> None:
        """Refuse one outstanding request with a non-fatal Error; the connection stays READY."""
        error = Error(
            code, message, False, detail or {}, in_reply_to=REQUESTS[request][0].TYPE_CODE
        )
        self._send(error)

    # ------------------------------------------------------------- receiving

    def _refuse_fatally(
        self,
        exc: SyncRefusedError | RemoteProtocolError,
        code: ErrorCode,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> None:
        self._fail(exc, Error(code, str(exc), True, detail or {}))
        raise exc

    def _on_message(self, version: int, message: Message) -> None:
        if isinstance(message, Hello):
            self._on_hello(message)
        elif isinstance(message, ProveServer):
            self._nonce = message.nonce
        elif isinstance(message, Authenticate | ResumeSession):
            self._on_credentials(message)
        elif isinstance(message, Enrol):
            if self._enrolled:
                raise RemoteProtocolError(f"Enrol from a replica enrolled as {self._replica_id!r}")
        elif type(message) in NEEDS_ENROLMENT:
            if not self._enrolled:
                self._refuse_fatally(
                    RemoteProtocolError(
                        f"{type(message).__name__} from a replica that is not enrolled"
                    ),
                    ErrorCode.NOT_ENROLLED,
                )
            if isinstance(message, Subscribe):
                if self._subscribed:
                    raise RemoteProtocolError("a second Subscribe")
                self._subscribed = True
                self._live_rulebook = message.rulebook
                self._live_seq = message.after_seq
        else:  # pragma: no cover - the transition table admits nothing else
            raise RemoteProtocolError(f"unexpected {type(message).__name__}")
        self._emit(message)

    def _on_hello(self, hello: Hello) -> None:
        common = set(hello.protocol_versions) & set(self._versions)
        if not common:
            self._refuse_fatally(
                SyncRefusedError(
                    f"no protocol version in common: the client speaks "
                    f"{_versions_text(hello.protocol_versions)}, this server speaks "
                    f"{_versions_text(self._versions)}"
                ),
                ErrorCode.UNSUPPORTED_VERSION,
                {
                    "client_versions": _versions_text(hello.protocol_versions),
                    "server_versions": _versions_text(self._versions),
                },
            )
        expected = hello.server_id_expected
        if expected is not None and expected != self._server_id:
            self._refuse_fatally(
                WrongServerError(
                    f"replica {hello.replica_id!r} is enrolled to server {expected!r}, but "
                    f"this is server {self._server_id!r}; refusing to sync with it"
                ),
                ErrorCode.WRONG_SERVER,
                {"expected": expected, "actual": self._server_id},
            )
        self._version = max(common)
        self._peer_max_frame_bytes = hello.max_frame_bytes
        self._hello = hello
        self._replica_id = hello.replica_id
        self._organisation = hello.organisation
        self._enrolled = hello.replica_id is not None
        self._queue(Welcome(self._version, self._server_id, self._max_frame_bytes))

    def _on_credentials(self, credentials: Authenticate | ResumeSession) -> None:
        hello_organisation = self._hello.organisation if self._hello else None
        if (
            isinstance(credentials, Authenticate)
            and hello_organisation is not None
            and credentials.organisation != hello_organisation
        ):
            self._refuse_fatally(
                WrongOrganisationError(
                    f"replica {self._replica_id!r} is enrolled to organisation "
                    f"{hello_organisation!r}, not {credentials.organisation!r}"
                ),
                ErrorCode.WRONG_ORGANISATION,
                {"expected": hello_organisation, "actual": credentials.organisation},
            )
        self._credentials = credentials
