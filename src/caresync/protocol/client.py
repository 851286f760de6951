"""The laptop's end of a sync connection (sans-I/O).

Theory of operation
-------------------

One :class:`ClientProtocol` per connection. The replica shell builds it with what the
replica knows about itself (its replica id, the server and organisation it is enrolled
to, or nothing for a replica not enrolled yet), calls :meth:`~ClientProtocol.send_hello`,
and pumps frames (see :mod:`caresync.protocol.base`).

The client guards the promises that are its to keep:

* **Bound to its origin.** On ``Welcome``, an enrolled replica compares the server's id
  with the one it was enrolled to. If they differ, ``receive_data`` raises
  :class:`~caresync.exceptions.WrongServerError` naming both servers, queues nothing
  (not even an error: nothing more goes to a server we do not know) and the state is
  ``FAILED``. Credentials can only be sent after a ``Welcome`` that passed that check,
  and :meth:`~ClientProtocol.authenticate` refuses another organisation than the
  replica's own (:class:`~caresync.exceptions.WrongOrganisationError`, nothing sent).
* **A server that proves who it is** (version 4 on). After Welcome the shell sends
  :meth:`~ClientProtocol.prove_server` with a fresh nonce; the server answers
  ``ServerProof``, which the shell checks (the key it pinned at enrolment, the
  signature over :func:`~caresync.protocol.identity.server_proof_payload`) and
  then calls :meth:`~ClientProtocol.confirm_server` or
  :meth:`~ClientProtocol.reject_server`. Until confirmed, no credential can be
  sent: the password, the session token and the replica's secret go only to a
  server that proved itself.
* **Replies that fit their request.** A ``CopyBatch`` holds at most the records asked
  for, all after ``after_record_id``, and the last one (``final``) counts no record
  left to send (``done_records`` is ``total_records``); a ``PullBatch`` at most
  ``limit`` entries, all after ``after_seq``, its checkpoint past ``after_seq`` when
  it says more follow; a
  ``PushAck`` acknowledges within the batch pushed; live updates arrive only after
  ``Subscribe`` and in ascending ``seq``. Anything else is a
  :class:`~caresync.exceptions.RemoteProtocolError`.

Events (:data:`ClientEvent`) are the messages the server sent, once checked:
``Welcome``, ``Authenticated``, ``Enrolled``, ``CopyBatch``, ``PullBatch``, ``PushAck``,
``LiveUpdate``, a non-fatal ``Error`` (one request refused; the connection stays) and
``Goodbye``. A ``LiveBatch`` (protocol version 3 on) is checked whole, then given
as the ``LiveUpdate`` events of its items, in order: shells handle one kind. A
``LiveBatch`` carrying checked states (version 8 on, only after a ``Subscribe`` that
named a rulebook) is given whole, as one ``LiveBatch`` event: its checks belong to
its items. A ``PullBatch`` carries them only if its request named a rulebook.

What the client does not do: store anything. After a ``CopyBatch`` the shell commits
the records and the resume point (``last_record_id``); after a ``PushAck`` it removes
the acknowledged entries from the outbox. To overlap network and disk, the shell may
send the next request before committing the batch it just received.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from caresync.audit.chain import AuditEntry
from caresync.exceptions import (
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.protocol.base import SyncProtocol
from caresync.protocol.errors import ErrorCode
from caresync.protocol.messages import (
    DEFAULT_COPY_BATCH_RECORDS,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_PULL_LIMIT,
    FEED_EPOCHS_SINCE,
    HUB_CHANGES_SINCE,
    SET_ASIDE_SINCE,
    SUPPORTED_VERSIONS,
    AuditAck,
    AuditBatch,
    Authenticate,
    Authenticated,
    CopyBatch,
    CopyRequest,
    Enrol,
    Enrolled,
    Error,
    Goodbye,
    Hello,
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
    PushItem,
    RecordPart,
    RecordPartRequest,
    ResumeSession,
    ServerProof,
    Subscribe,
    Welcome,
)
from caresync.protocol.states import CLIENT_TRANSITIONS, NEEDS_ENROLMENT, ClientState, RequestKind

_PROOF_SINCE = ProveServer.SINCE_VERSION
_CHECKS_SINCE = PullBatch.FIELDS_SINCE["checked"]

__all__ = ["ClientEvent", "ClientProtocol", "EarlyProofLost"]


class EarlyProofLost(ConnectionLostError):
    """The server chose another protocol version than the one a ProveServer sent with
    Hello was written in: it will refuse that frame, so this connection is over.
    Nothing secret was sent; connect again without sending the proof request early."""


ClientEvent = (
    Welcome
    | ServerProof
    | Authenticated
    | Enrolled
    | CopyBatch
    | RecordPart
    | PullBatch
    | PushAck
    | AuditAck
    | LiveUpdate
    | LiveBatch
    | Error
    | Goodbye
)
"""What :meth:`ClientProtocol.events_received` returns: messages from the server, checked."""


def _versions(protocol_versions: Iterable[int]) -> tuple[int, ...]:
    versions = tuple(protocol_versions)
    if not versions or any(v not in SUPPORTED_VERSIONS for v in versions):
        raise LocalProtocolError(
            f"protocol_versions must be a non-empty subset of {SUPPORTED_VERSIONS}, "
            f"got {versions!r}"
        )
    return versions


class ClientProtocol(SyncProtocol[ClientState, ClientEvent]):
    """The client end of one sync connection.

    ``replica_id``, ``server_id`` and ``organisation`` describe an enrolled replica
    (all three, checked against the server); a replica not enrolled yet gives none and
    enrols with :meth:`enrol`. ``max_frame_bytes`` is the largest frame this end
    accepts. Raises :class:`~caresync.exceptions.LocalProtocolError` for a bad
    combination.
    """

    _side = "client"
    _peer = "server"

    def __init__(
        self,
        *,
        replica_id: str | None = None,
        server_id: str | None = None,
        organisation: str | None = None,
        protocol_versions: Iterable[int] = SUPPORTED_VERSIONS,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        client_version: str | None = None,
    ) -> None:
        versions = _versions(protocol_versions)
        super().__init__(
            transitions=CLIENT_TRANSITIONS,
            initial=ClientState.START,
            closed=ClientState.CLOSED,
            failed=ClientState.FAILED,
            max_frame_bytes=max_frame_bytes,
            fallback_version=max(versions),
        )
        if organisation is not None and replica_id is None:
            raise LocalProtocolError(
                "organisation is given only with replica_id and server_id (an enrolled "
                "replica); a new replica names its organisation in authenticate()"
            )
        self._hello = Hello(versions, max_frame_bytes, replica_id, server_id, organisation)
        # Said at login (version 7 on), so a server can refuse a client too old for it.
        ResumeSession("x", None, client_version)  # its form checked now
        self._client_version = client_version
        self._replica_id = replica_id
        self._expected_server_id = server_id
        self._organisation = organisation
        self._enrolled = replica_id is not None
        self._server_id: str | None = None
        self._session: Authenticated | None = None
        self._subscribed = False
        self._live_checks = False  # Subscribe named a rulebook (version 8 on)
        self._live_seq = 0
        self._nonce: bytes | None = None
        self._proof: ServerProof | None = None
        self._server_confirmed = False
        self._early_version: int | None = None  # ProveServer sent with Hello, in this version

    # ----------------------------------------------------------------- properties

    @property
    def hello(self) -> Hello:
        """The Hello this client sends (or sent)."""
        return self._hello

    @property
    def server_id(self) -> str | None:
        """The server's id from its Welcome, once received and checked."""
        return self._server_id

    @property
    def replica_id(self) -> str | None:
        """This replica's id: given when built, or from Enrolled."""
        return self._replica_id

    @property
    def organisation(self) -> str | None:
        """The organisation this replica is enrolled to: given when built, or from Enrolled."""
        return self._organisation

    @property
    def session(self) -> Authenticated | None:
        """The server's Authenticated (session token, expiry, user), once logged in."""
        return self._session

    @property
    def nonce(self) -> bytes | None:
        """The nonce sent in ProveServer, once sent."""
        return self._nonce

    @property
    def server_proof(self) -> ServerProof | None:
        """The server's ServerProof, once received (check it, then confirm_server)."""
        return self._proof

    @property
    def server_confirmed(self) -> bool:
        """True once the shell confirmed the server's proof (version 4 on)."""
        return self._server_confirmed

    @property
    def subscribed(self) -> bool:
        """True once Subscribe was sent: live updates may arrive."""
        return self._subscribed

    @property
    def live_seq(self) -> int:
        """The highest feed seq received live (or the ``after_seq`` of Subscribe)."""
        return self._live_seq

    # ---------------------------------------------------------------- moves

    def send_hello(self) -> None:
        """Queue Hello (state START → HELLO_SENT)."""
        self._send(self._hello)

    def prove_server(self, nonce: bytes, *, version: int | None = None) -> None:
        """Queue ProveServer with a fresh random ``nonce`` (WELCOMED → PROVING; version 4 on).

        Right after Hello (HELLO_SENT → HELLO_PROVING), before Welcome: written in
        ``version``, the version the server is expected to choose (the one it chose
        last time). Should Welcome name another, receiving it raises
        :class:`EarlyProofLost` (the server refuses the frame): connect again.
        """
        message = ProveServer(nonce)
        if self._state is ClientState.HELLO_SENT:
            offered = self._hello.protocol_versions
            if version is None or version < _PROOF_SINCE or version not in offered:
                raise LocalProtocolError(
                    f"a ProveServer sent with Hello needs the version the server is expected "
                    f"to choose: one of {offered} from {_PROOF_SINCE} on, not {version!r}"
                )
            self._early_version = version
            try:
                self._send(message)
            except LocalProtocolError:
                self._early_version = None
                raise
        else:
            if version is not None and version != self._version:
                raise LocalProtocolError(
                    f"version {version} named for ProveServer after Welcome agreed {self._version}"
                )
            if self._version is not None and self._version < _PROOF_SINCE:
                raise LocalProtocolError(
                    f"the server speaks protocol version {self._version}, which has no server "
                    f"proof (version {_PROOF_SINCE} on)"
                )
            self._send(message)
        self._nonce = nonce

    def _frame_version(self) -> int:
        if self._version is None and self._early_version is not None:
            return self._early_version  # ProveServer sent with Hello
        return super()._frame_version()

    def confirm_server(self) -> None:
        """The shell checked the ServerProof: credentials may now be sent."""
        if self._state is not ClientState.PROVEN:
            raise LocalProtocolError(
                f"nothing to confirm in state {self._state.name}: a ServerProof comes first"
            )
        self._server_confirmed = True

    def reject_server(self, reason: str) -> None:
        """The ServerProof did not check out: fail with WrongServerError, sending nothing.

        Raises the error (as ``receive_data`` does for a refusal), after moving to
        ``FAILED``; nothing more goes to a server that could not prove itself.
        """
        exc = WrongServerError(reason)
        self._fail(exc, None)
        raise exc

    def _require_proven(self) -> None:
        if (
            self._version is not None
            and self._version >= _PROOF_SINCE
            and not self._server_confirmed
        ):
            raise LocalProtocolError(
                "credentials go only to a server that proved who it is: send prove_server(), "
                "check its ServerProof, then confirm_server()"
            )

    def authenticate(
        self,
        username: str,
        password: str,
        organisation: str,
        replica_secret: bytes | None = None,
    ) -> None:
        """Queue Authenticate (→ AUTHENTICATING).

        From version 4, only after :meth:`confirm_server`; an enrolled replica
        gives its ``replica_secret``. Raises
        :class:`~caresync.exceptions.WrongOrganisationError`, sending nothing, if
        the replica is enrolled to another organisation.
        """
        message = Authenticate(
            username, password, organisation, replica_secret, self._version_to_say()
        )
        if self._organisation is not None and organisation != self._organisation:
            raise WrongOrganisationError(
                f"this replica is enrolled to organisation {self._organisation!r}, "
                f"not {organisation!r}; refusing to log in there"
            )
        self._require_proven()
        self._send(message)

    def _version_to_say(self) -> str | None:
        """This client's software version, where the agreed protocol carries it."""
        if self._version is None or self._version < Authenticate.FIELDS_SINCE["client_version"]:
            return None
        return self._client_version

    def resume_session(self, session_token: str, replica_secret: bytes | None = None) -> None:
        """Queue ResumeSession with an earlier session token (→ AUTHENTICATING).

        From version 4, only after :meth:`confirm_server`, with the replica's secret.
        """
        message = ResumeSession(session_token, replica_secret, self._version_to_say())
        self._require_proven()
        self._send(message)

    def enrol(self, device_name: str = "", replica_id: str | None = None) -> None:
        """Queue Enrol (READY; a replica not enrolled yet; one at a time)."""
        message = Enrol(device_name, replica_id)
        if self._enrolled:
            raise LocalProtocolError(f"this replica is already enrolled as {self._replica_id!r}")
        self._send(message)

    def request_copy(
        self,
        after_record_id: str | None = None,
        batch_records: int = DEFAULT_COPY_BATCH_RECORDS,
        rulebook: str | None = None,
        batch_bytes: int | None = None,
    ) -> None:
        """Queue CopyRequest for the next first-copy batch (READY, enrolled, one at a time).

        ``after_record_id`` is ``None`` to start, or the ``last_record_id`` of the last
        batch committed, to resume. ``rulebook`` is the fingerprint of this replica's
        rulebook: a server with the same one may send conflict index rows with the
        records (protocol version 3 on; on an older version it is not sent).
        ``batch_bytes`` bounds the batch's bytes too (version 8 on; not sent before).
        """
        if self._version is not None and self._version < 3:
            rulebook = None
        if not self._carries_checks:
            batch_bytes = None
        self._send_sync(CopyRequest(after_record_id, batch_records, rulebook, batch_bytes))

    def request_part(self, record_id: str, state_vector: bytes) -> None:
        """Queue RecordPartRequest for the next part of ``record_id``, a record the first
        copy takes in parts (:attr:`CopyBatch.in_parts`; version 15 on), continuing
        from ``state_vector`` (what this replica holds of it)."""
        message = RecordPartRequest(record_id, state_vector)
        if self._version is not None and self._version < RecordPartRequest.SINCE_VERSION:
            raise LocalProtocolError(
                f"a record in parts needs protocol version {RecordPartRequest.SINCE_VERSION}; "
                f"this connection speaks {self._version}"
            )
        self._send_sync(message)

    def request_pull(
        self,
        after_seq: int,
        limit: int = DEFAULT_PULL_LIMIT,
        include_own: bool = False,
        rulebook: str | None = None,
        hub_since: int | None = None,
        feed_epoch: int | None = None,
    ) -> None:
        """Queue PullRequest for feed entries after the checkpoint ``after_seq``.

        ``include_own`` (version 4 on) asks for this replica's own updates too.
        ``rulebook`` is this replica's rulebook fingerprint: a server with the same
        one may send checked states and conflict rows (version 8 on; on an older
        version it is not sent). ``hub_since`` is the hub mark of the hub report this
        replica holds (0: none): the report ending the pull then carries only what
        changed since (version :data:`~caresync.protocol.messages.HUB_CHANGES_SINCE`
        on; on an older version it is not sent, and the report is the whole list).
        ``feed_epoch`` is the feed epoch the server gave with ``after_seq`` (version
        :data:`~caresync.protocol.messages.FEED_EPOCHS_SINCE` on; not sent before): a
        server that labels ``after_seq`` otherwise refuses the pull (``feed_diverged``).
        """
        if include_own and self._version is not None and self._version < _PROOF_SINCE:
            raise LocalProtocolError(
                f"include_own needs protocol version {_PROOF_SINCE}; this connection "
                f"speaks {self._version}"
            )
        if not self._carries_checks:
            rulebook = None
        if not self.reports_hub_changes:
            hub_since = None
        if not self.sends_feed_epochs:
            feed_epoch = None
        self._send_sync(
            PullRequest(
                after_seq, limit, True if include_own else None, rulebook, hub_since, feed_epoch
            )
        )

    @property
    def sends_feed_epochs(self) -> bool:
        """The agreed version (:data:`~caresync.protocol.messages.FEED_EPOCHS_SINCE` on)
        labels feed positions with the server's feed epoch."""
        return self._version is not None and self._version >= FEED_EPOCHS_SINCE

    @property
    def reports_hub_changes(self) -> bool:
        """The agreed version (:data:`~caresync.protocol.messages.HUB_CHANGES_SINCE` on)
        carries ``PullRequest.hub_since`` and a hub report of changes only."""
        return self._version is not None and self._version >= HUB_CHANGES_SINCE

    @property
    def _carries_checks(self) -> bool:
        """The agreed version (8 on) carries checked states with pulls and live entries."""
        return self._version is not None and self._version >= _CHECKS_SINCE

    def push(self, items: Iterable[PushItem | tuple[int, str, bytes]]) -> None:
        """Queue PushBatch with outbox entries in ascending ``local_seq`` (one at a time).

        Raises :class:`~caresync.exceptions.LocalProtocolError`, queueing nothing, if
        the frame would exceed the server's maximum: send fewer entries (size batches
        with :func:`~caresync.protocol.codec.item_wire_size`).
        """
        self._send_sync(PushBatch(tuple(PushItem(*item) for item in items)))

    @property
    def can_send_audit(self) -> bool:
        """True once the agreed protocol version (7 on) carries :meth:`send_audit`."""
        return self._version is not None and self._version >= AuditBatch.SINCE_VERSION

    def send_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Queue AuditBatch: entries of this replica's own audit chain, in order
        (READY, enrolled, protocol version 7 on: :attr:`can_send_audit`)."""
        self._send_sync(AuditBatch(tuple(entries)))

    @property
    def can_set_aside(self) -> bool:
        """True once the agreed protocol version (16 on) names the record a push refusal
        is about (:data:`~caresync.protocol.messages.REFUSED_RECORD_DETAIL`)."""
        return self._version is not None and self._version >= SET_ASIDE_SINCE

    @property
    def can_report_outbox(self) -> bool:
        """True once the agreed protocol version (2 on) carries :meth:`report_outbox`."""
        return self._version is not None and self._version >= OutboxReport.SINCE_VERSION

    def report_outbox(self, pending: int, oldest_pending_ms: int | None) -> None:
        """Queue OutboxReport: ``pending`` unacknowledged entries, the oldest written then.

        READY (or ``AUTHENTICATING``, after the credentials: the server reads it once it
        has answered them), enrolled, and protocol version 2 or later (see
        :attr:`can_report_outbox`); otherwise LocalProtocolError and nothing queued.
        """
        self._send_sync(OutboxReport(pending, oldest_pending_ms))

    def subscribe(self, after_seq: int, rulebook: str | None = None) -> None:
        """Queue Subscribe: the server forwards new feed entries after ``after_seq``.

        ``rulebook`` as in :meth:`request_pull` (version 8 on): live entries may
        then come with checked states, given as one ``LiveBatch`` event.
        """
        message = Subscribe(after_seq, rulebook if self._carries_checks else None)
        if self._subscribed:
            raise LocalProtocolError("already subscribed")
        self._send_sync(message)
        self._subscribed = True
        self._live_checks = message.rulebook is not None
        self._live_seq = after_seq

    def close(self, reason: str = "") -> None:
        """Say Goodbye and move to CLOSED; before Hello, just move to CLOSED."""
        if self._state is ClientState.START:
            Goodbye(reason)  # validate all the same
            self._state = ClientState.CLOSED
            return
        super().close(reason)

    def _send_sync(self, message: Message) -> None:
        if type(message) in NEEDS_ENROLMENT and not self._enrolled:
            raise LocalProtocolError(
                f"{type(message).__name__} needs an enrolled replica; enrol first"
            )
        self._send(message)

    # ------------------------------------------------------------- receiving

    def _on_message(self, version: int, message: Message) -> None:
        if isinstance(message, Welcome):
            self._on_welcome(version, message)
        elif isinstance(message, ServerProof):
            self._proof = message
        elif isinstance(message, Authenticated):
            self._on_authenticated(message)
        elif isinstance(message, Enrolled):
            self._on_enrolled(message)
        elif isinstance(message, CopyBatch):
            self._on_copy_batch(message)
        elif isinstance(message, RecordPart):
            self._on_record_part(message)
        elif isinstance(message, PullBatch):
            self._on_pull_batch(message)
        elif isinstance(message, PushAck):
            self._on_push_ack(message)
        elif isinstance(message, AuditAck):
            self._on_audit_ack(message)
        elif isinstance(message, LiveUpdate):
            self._on_live_update(message)
        elif isinstance(message, HubReport):
            pass  # version 7 on (the codec checks); the shell stores what it says
        elif isinstance(message, LiveBatch):
            updates = [LiveUpdate(*item) for item in message.items]
            for update in updates:
                self._on_live_update(update)
            if message.checked is not None:
                if not self._live_checks:
                    raise RemoteProtocolError(
                        "LiveBatch carries checked states, but Subscribe named no rulebook"
                    )
                self._emit(message)  # whole: its checks belong to its items
                return
            for update in updates:
                self._emit(update)
            return
        else:  # pragma: no cover - the transition table admits nothing else
            raise RemoteProtocolError(f"unexpected {type(message).__name__}")
        self._emit(message)

    def _on_welcome(self, version: int, welcome: Welcome) -> None:
        if welcome.protocol_version not in self._hello.protocol_versions:
            raise RemoteProtocolError(
                f"the server chose protocol version {welcome.protocol_version}, which this "
                f"client did not offer {self._hello.protocol_versions}"
            )
        if version != welcome.protocol_version:
            raise RemoteProtocolError(
                f"Welcome written in version {version} announces version {welcome.protocol_version}"
            )
        early = self._early_version
        if early is not None and welcome.protocol_version != early:
            lost = EarlyProofLost(
                f"the server chose protocol version {welcome.protocol_version}, not "
                f"{early}, in which the ProveServer sent with Hello was written; it "
                "refuses that frame: connect again"
            )
            self._fail(lost, None)  # nothing more goes on this connection
            raise lost
        expected = self._expected_server_id
        if expected is not None and welcome.server_id != expected:
            exc = WrongServerError(
                f"replica {self._replica_id!r} is enrolled to server {expected!r}, but the "
                f"server reached is {welcome.server_id!r}; refusing to sync with it"
            )
            self._fail(exc, None)  # nothing more goes to a server we do not know
            raise exc
        self._version = welcome.protocol_version
        self._server_id = welcome.server_id
        self._peer_max_frame_bytes = welcome.max_frame_bytes

    def _on_authenticated(self, session: Authenticated) -> None:
        if self._organisation is not None and session.organisation != self._organisation:
            exc = WrongOrganisationError(
                f"replica {self._replica_id!r} is enrolled to organisation "
                f"{self._organisation!r}, but the server logged it in to "
                f"{session.organisation!r}; refusing to sync"
            )
            self._fail(
                exc,
                Error(
                    ErrorCode.WRONG_ORGANISATION,
                    str(exc),
                    detail={"expected": self._organisation, "actual": session.organisation},
                ),
            )
            raise exc
        self._session = session

    def _on_enrolled(self, enrolled: Enrolled) -> None:
        if enrolled.server_id != self._server_id:
            raise RemoteProtocolError(
                f"Enrolled names server {enrolled.server_id!r}, but the Welcome came from "
                f"{self._server_id!r}"
            )
        organisation = self._session.organisation if self._session else None
        if enrolled.organisation != organisation:
            raise RemoteProtocolError(
                f"Enrolled names organisation {enrolled.organisation!r}, but the session "
                f"is in {organisation!r}"
            )
        self._replica_id = enrolled.replica_id
        self._expected_server_id = enrolled.server_id
        self._organisation = enrolled.organisation
        self._enrolled = True

    def _on_copy_batch(self, batch: CopyBatch) -> None:
        request = self._outstanding[RequestKind.COPY]
        if not isinstance(request, CopyRequest):  # pragma: no cover - kept by the tables
            raise RemoteProtocolError("CopyBatch without a CopyRequest")
        if len(batch.records) > request.batch_records:
            raise RemoteProtocolError(
                f"CopyBatch of {len(batch.records)} records; {request.batch_records} were asked for"
            )
        after = request.after_record_id
        if batch.records and after is not None and batch.records[0].record_id <= after:
            raise RemoteProtocolError(
                f"CopyBatch starts at record {batch.records[0].record_id!r}, "
                f"not after {after!r} as asked"
            )
        if not batch.records and batch.last_record_id != after:
            raise RemoteProtocolError(
                f"an empty CopyBatch must resume at {after!r}, not {batch.last_record_id!r}"
            )
        if batch.conflicts is not None and request.rulebook is None:
            raise RemoteProtocolError(
                "CopyBatch carries conflict index rows, but the request named no rulebook"
            )
        if batch.final and batch.done_records < batch.total_records:
            # The copy ends here for good (the feed is pulled from its start point on):
            # the records it counts and did not send would never reach this laptop.
            raise RemoteProtocolError(
                f"the last CopyBatch ends the copy at {batch.done_records} of the "
                f"{batch.total_records} records it counts; the copy resumes at the next sync"
            )
        if batch.in_parts is not None and after is not None and batch.in_parts <= after:
            raise RemoteProtocolError(
                f"CopyBatch names record {batch.in_parts!r} to copy in parts, not one "
                f"after {after!r} as asked"
            )

    def _on_record_part(self, part: RecordPart) -> None:
        request = self._outstanding[RequestKind.PART]
        if not isinstance(request, RecordPartRequest):  # pragma: no cover - by the tables
            raise RemoteProtocolError("RecordPart without a RecordPartRequest")
        if part.record_id != request.record_id:
            raise RemoteProtocolError(
                f"RecordPart of record {part.record_id!r}; {request.record_id!r} was asked for"
            )

    def _on_pull_batch(self, batch: PullBatch) -> None:
        request = self._outstanding[RequestKind.PULL]
        if not isinstance(request, PullRequest):  # pragma: no cover - kept by the tables
            raise RemoteProtocolError("PullBatch without a PullRequest")
        if len(batch.items) > request.limit:
            raise RemoteProtocolError(
                f"PullBatch of {len(batch.items)} entries; at most {request.limit} were asked for"
            )
        if batch.items and batch.items[0].seq <= request.after_seq:
            raise RemoteProtocolError(
                f"PullBatch starts at seq {batch.items[0].seq}, not after {request.after_seq}"
            )
        if batch.checkpoint < request.after_seq:
            raise RemoteProtocolError(
                f"PullBatch checkpoint {batch.checkpoint} is before the request's "
                f"after_seq {request.after_seq}"
            )
        if batch.more and batch.checkpoint == request.after_seq:
            # Asked again from the same seq, it would be answered again the same: a
            # pull that never ends. A batch that says more covers at least one entry.
            raise RemoteProtocolError(
                f"PullBatch says more entries follow seq {request.after_seq}, but covers "
                "no feed entry past it"
            )
        if batch.feed_entries > batch.checkpoint - request.after_seq:
            raise RemoteProtocolError(
                f"PullBatch stands for {batch.feed_entries} feed entries, more than there "
                f"are between seq {request.after_seq} and its checkpoint {batch.checkpoint}"
            )
        if batch.checked is not None and request.rulebook is None:
            raise RemoteProtocolError(
                "PullBatch carries checked states, but the request named no rulebook"
            )

    def _on_push_ack(self, ack: PushAck) -> None:
        request = self._outstanding[RequestKind.PUSH]
        if not isinstance(request, PushBatch):  # pragma: no cover - kept by the tables
            raise RemoteProtocolError("PushAck without a PushBatch")
        first, last = request.items[0].local_seq, request.items[-1].local_seq
        if not first <= ack.up_to_local_seq <= last:
            raise RemoteProtocolError(
                f"PushAck up to {ack.up_to_local_seq} is outside the batch pushed [{first}, {last}]"
            )

    def _on_audit_ack(self, ack: AuditAck) -> None:
        request = self._outstanding[RequestKind.AUDIT]
        if not isinstance(request, AuditBatch):  # pragma: no cover - kept by the tables
            raise RemoteProtocolError("AuditAck without an AuditBatch")
        first, last = request.entries[0].seq, request.entries[-1].seq
        if not first <= ack.up_to_seq <= last:
            raise RemoteProtocolError(
                f"AuditAck up to {ack.up_to_seq} is outside the entries sent [{first}, {last}]"
            )

    def _on_live_update(self, update: LiveUpdate) -> None:
        if not self._subscribed:
            raise RemoteProtocolError("a LiveUpdate before Subscribe")
        if update.seq <= self._live_seq:
            raise RemoteProtocolError(
                f"LiveUpdate seq {update.seq} is not after the last one, {self._live_seq}"
            )
        self._live_seq = update.seq
