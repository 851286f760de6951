"""The clinic's sync server: accounts, enrolment, change feed and live fan-out.

A thin asyncio shell: each websocket connection drives one sans-I/O
:class:`~caresync.protocol.ServerProtocol`; the :class:`~caresync.storage.Store`
keeps records, the change feed, accounts and enrolled replicas. The server is
authoritative for identity and access, never for merges: every replica computes
the same merge from the same updates.

Ordering promise of the live feed: pushes are committed and fanned out under one
lock, so every subscriber receives feed entries in ascending sequence.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl as ssl_module
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from caresync.conflicts import DEFAULT_RULEBOOK, Rulebook
from caresync.exceptions import (
    CaresyncError,
    ConnectionLostError,
    InvalidInputError,
    InvalidUpdateError,
    ProtocolError,
    RecordMismatchError,
)
from caresync.index import INDEX_RULEBOOK_KEY, ensure_index
from caresync.pool import RecordPool
from caresync.protocol import (
    BATCH_OVERHEAD_BYTES,
    ITEM_OVERHEAD_BYTES,
    Authenticate,
    CopyConflict,
    CopyRequest,
    Enrol,
    ErrorCode,
    Goodbye,
    Hello,
    OutboxReport,
    PullRequest,
    PushBatch,
    PushItem,
    RequestKind,
    ResumeSession,
    ServerProtocol,
    Subscribe,
    item_wire_size,
)
from caresync.records import Record
from caresync.storage import IncomingUpdate, ReplicaInfo, SQLiteStore, Store, own_identity
from caresync.transport import Channel, WebSocketListener, serve_websockets

__all__ = ["SyncServer", "hash_password"]

SESSION_TTL_S = 12 * 3600
_PUSHED_KEY = "pushed:"  # meta key prefix: highest local seq committed per replica
_SESSION_KEY = "session:"
_LIVE_BATCH_ENTRIES = 1000  # most queued entries taken into one live frame
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    if not isinstance(password, str) or not password:
        raise InvalidInputError("a password must be a non-empty string")
    return _hasher.hash(password)


def _row_wire_size(row: CopyConflict) -> int:
    """An upper bound on the bytes one conflict row takes in a CopyBatch frame."""
    text = len(row.record_id) + len(row.id) + len(row.kind) + len(row.subject) + len(row.severity)
    # UTF-8 takes at most 4 bytes a character; msgpack adds a few bytes per field.
    return 4 * text + len(row.payload) + ITEM_OVERHEAD_BYTES


def _verify(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(eq=False)
class _Connection:
    """One connected replica: its protocol, channel and send lock."""

    protocol: ServerProtocol
    channel: Channel
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    user: str | None = None
    organisation: str | None = None
    # Feed entries to forward, queued in commit order by whoever committed them.
    live: asyncio.Queue[list[tuple[int, str, bytes]]] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    # First-copy progress on this connection: where the last batch ended, the
    # records and bytes sent up to there, and the records counted when it began.
    copy_last: str | None = None
    copy_done: int = 0
    copy_bytes: int = 0
    copy_total: int = 0

    async def flush(self) -> None:
        for frame in self.protocol.data_to_send():
            await self.channel.send(frame)

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
            async with self.lock:
                self.protocol.send_live_updates(entries)
                await self.flush()


class SyncServer:
    """A sync server over a store. Make one with :meth:`open`; run it with :meth:`serve`."""

    def __init__(
        self,
        store: Store,
        server_id: str,
        *,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        session_ttl_s: float = SESSION_TTL_S,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        password_hasher: PasswordHasher | None = None,
    ) -> None:
        """``password_hasher`` hashes new passwords (argon2id, the library's defaults
        unless given; a simulation may pass cheaper parameters). Stored hashes are
        checked with the parameters they were made with."""
        self.store = store
        self._hasher = password_hasher if password_hasher is not None else _hasher
        self.server_id = server_id
        self.session_ttl_s = session_ttl_s
        self._now_ms = now_ms
        self.rulebook = rulebook
        self._pool = RecordPool(store, replica=server_id, rulebook=rulebook)
        # Whether the stored conflict index was computed by ``rulebook`` (read once).
        self._index_current: bool | None = None
        self._connections: set[_Connection] = set()
        self._commit_lock = asyncio.Lock()
        self._listener: WebSocketListener | None = None
        self.on_commit: list[Callable[[int], Awaitable[None] | None]] = []

    @classmethod
    async def open(cls, path: str | Path, **kwargs: Any) -> SyncServer:
        """Open (or create) a server database and take its server id from it.

        A database whose conflict index another rulebook computed is re-indexed
        first (see :mod:`caresync.index`).
        """
        store = await SQLiteStore.open(path)
        try:
            identity = await own_identity(store, "server", id_prefix="server", where=path)
            rulebook = kwargs.get("rulebook", DEFAULT_RULEBOOK)
            await ensure_index(store, rulebook, replica=identity.replica_id)
        except BaseException:
            await store.close()
            raise
        return cls(store, identity.replica_id, **kwargs)

    # ------------------------------------------------------------------ accounts

    async def add_user(self, organisation: str, username: str, password: str) -> None:
        """Create an account (password stored as an argon2id hash)."""
        if not isinstance(password, str) or not password:
            raise InvalidInputError("a password must be a non-empty string")
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        await self.store.add_user(organisation, username, password_hash)

    async def replicas(self, organisation: str | None = None) -> list[ReplicaInfo]:
        """Every enrolled replica (of ``organisation``), by id: when each was last seen,
        whether it is revoked, and what it last reported of its outbox (``pending``
        changes not yet acknowledged, the oldest made at ``oldest_pending_ms``)."""
        return await self.store.replicas(organisation)

    async def revoke(self, replica_id: str) -> None:
        """Revoke a replica: it is refused, and locks itself, at its next contact."""
        await self.store.revoke_replica(replica_id)
        for conn in list(self._connections):
            if conn.protocol.replica_id == replica_id:
                await conn.channel.close("revoked")

    # ------------------------------------------------------------------- serving

    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl: ssl_module.SSLContext | None = None
    ) -> WebSocketListener:
        """Start listening; returns the listener (its ``url`` and ``port``)."""
        self._listener = await serve_websockets(self.handle, host, port, ssl=ssl)
        return self._listener

    @property
    def url(self) -> str:
        if self._listener is None:
            raise InvalidInputError("the server is not listening; call serve() first")
        return self._listener.url

    async def close(self) -> None:
        """Stop listening, drop connections, close the store."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        for conn in list(self._connections):
            await conn.channel.close("server stopping")
        await self.store.close()

    async def __aenter__(self) -> SyncServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def handle(self, channel: Channel) -> None:
        """Serve one connection until it closes (the listener calls this)."""
        conn = _Connection(ServerProtocol(self.server_id), channel)
        self._connections.add(conn)
        try:
            while not conn.protocol.close_expected:
                try:
                    frame = await channel.recv()
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
                        await self._on_event(conn, event)
                    await conn.flush()
                    if conn.protocol.failure is not None:
                        return  # a fatal reject() by this shell; its Error was just sent
        except (ConnectionLostError, ProtocolError):
            return  # the peer went away or broke the protocol; nothing half-done stays
        finally:
            self._connections.discard(conn)
            if conn.writer is not None:
                conn.writer.cancel()
            await channel.close()

    # -------------------------------------------------------------------- events

    async def _on_event(self, conn: _Connection, event: object) -> None:
        if isinstance(event, Hello):
            await self._on_hello(conn, event)
        elif isinstance(event, (Authenticate, ResumeSession)):
            await self._on_login(conn, event)
        elif isinstance(event, Enrol):
            await self._on_enrol(conn, event)
        elif isinstance(event, CopyRequest):
            await self._on_copy(conn, event)
        elif isinstance(event, PullRequest):
            await self._on_pull(conn, event)
        elif isinstance(event, PushBatch):
            await self._on_push(conn, event)
        elif isinstance(event, Subscribe):
            await self._on_subscribe(conn, event)
        elif isinstance(event, OutboxReport):
            await self._on_outbox_report(conn, event)
        elif isinstance(event, Goodbye):
            return

    async def _on_hello(self, conn: _Connection, hello: Hello) -> None:
        if hello.replica_id is None:
            return
        info = await self.store.get_replica(hello.replica_id)
        if info is None:
            conn.protocol.reject(
                ErrorCode.NOT_ENROLLED,
                f"replica {hello.replica_id} is not enrolled to server {self.server_id}",
            )
        elif info.revoked:
            conn.protocol.reject(ErrorCode.REVOKED, f"replica {hello.replica_id} was revoked")
        elif hello.organisation is not None and hello.organisation != info.organisation:
            conn.protocol.reject(
                ErrorCode.WRONG_ORGANISATION,
                f"replica {hello.replica_id} belongs to {info.organisation}, "
                f"not {hello.organisation}",
            )
        else:
            await self.store.touch_replica(hello.replica_id, self._now_ms())

    async def _on_login(self, conn: _Connection, login: Authenticate | ResumeSession) -> None:
        now = self._now_ms()
        if isinstance(login, Authenticate):
            account = await self.store.get_user(login.organisation, login.username)
            ok = account is not None and await asyncio.to_thread(
                _verify, self._hasher, account.password_hash, login.password
            )
            if not ok:
                conn.protocol.reject(
                    ErrorCode.BAD_CREDENTIALS,
                    f"unknown user or wrong password for {login.username} in {login.organisation}",
                )
                return
            user, organisation = login.username, login.organisation
        else:
            stored = await self.store.get_meta(_SESSION_KEY + login.session_token)
            session = json.loads(stored) if stored else None
            if not session or session["expires_ms"] <= now:
                conn.protocol.reject(
                    ErrorCode.SESSION_EXPIRED, "the session expired: log in with your password"
                )
                return
            user, organisation = session["user"], session["organisation"]
        expected = conn.protocol.organisation
        if expected is not None and expected != organisation:
            conn.protocol.reject(
                ErrorCode.WRONG_ORGANISATION,
                f"this replica belongs to {expected}; {user} logged in to {organisation}",
            )
            return
        token = secrets.token_urlsafe(32)
        expires = now + int(self.session_ttl_s * 1000)
        await self.store.set_meta(
            _SESSION_KEY + token,
            json.dumps({"user": user, "organisation": organisation, "expires_ms": expires}),
        )
        conn.user, conn.organisation = user, organisation
        conn.protocol.accept_authentication(token, expires, user, organisation)

    async def _on_enrol(self, conn: _Connection, enrol: Enrol) -> None:
        organisation = conn.organisation or ""
        replica_id = f"replica-{uuid.uuid4()}"
        if enrol.replica_id is not None and await self.store.get_replica(enrol.replica_id) is None:
            replica_id = enrol.replica_id
        await self.store.enrol_replica(replica_id, organisation, enrolled_by=conn.user)
        conn.protocol.accept_enrolment(replica_id, organisation)

    async def _on_copy(self, conn: _Connection, request: CopyRequest) -> None:
        organisation = conn.organisation
        send_rows = request.rulebook == self.rulebook.fingerprint and await self._index_is_current()
        # Under the commit lock: the records, their conflict rows and the feed head
        # are read as of one moment (a push committing in between would pair a
        # record's state with rows of another state).
        async with self._commit_lock:
            checkpoint = await self.store.feed_head()
            if request.after_record_id is not None and request.after_record_id == conn.copy_last:
                done_before, bytes_before = conn.copy_done, conn.copy_bytes
            else:
                # A copy starts, or resumes on a new connection: count once for the
                # progress (the bytes sent before a resume point are not known here).
                conn.copy_total = await self.store.count_records(organisation)
                done_before, bytes_before = 0, 0
                if request.after_record_id is not None:
                    done_before = len(await self.store.record_ids(organisation))
                    done_before -= len(
                        await self.store.record_ids(organisation, after=request.after_record_id)
                    )
            # One id more than asked says whether the copy ends with this batch:
            # exact even while records are being added, unlike comparing counts.
            ids = await self.store.record_ids(
                organisation, after=request.after_record_id, limit=request.batch_records + 1
            )
            more = len(ids) > request.batch_records
            del ids[request.batch_records :]
            loaded = await self.store.load_many(ids)
            stored_rows = await self.store.conflict_rows(ids) if send_rows else {}
        records: list[tuple[str, bytes]] = []
        rows: list[CopyConflict] = []
        budget = conn.protocol.peer_max_frame_bytes - BATCH_OVERHEAD_BYTES
        size = 0
        for record_id in ids:
            stored = loaded.get(record_id)
            if stored is None:
                continue
            record_rows = [
                CopyConflict(record_id, row.id, row.kind, row.subject, row.severity, row.payload)
                for row in stored_rows.get(record_id, ())
            ]
            record_size = item_wire_size(record_id, stored)
            record_size += sum(_row_wire_size(row) for row in record_rows)
            if records and size + record_size > budget:
                more = True  # the rest goes in the next batch
                break
            records.append((record_id, stored))
            rows.extend(record_rows)
            size += record_size
        done = done_before + len(records)
        sent_bytes = bytes_before + size
        conn.protocol.send_copy_batch(
            records,
            done_records=done,
            total_records=max(conn.copy_total, done),
            done_bytes=sent_bytes,
            total_bytes=sent_bytes,  # the total is unknown without reading every record
            feed_checkpoint=checkpoint,
            final=not more or not records,
            conflicts=rows if send_rows else None,
        )
        conn.copy_last = records[-1][0] if records else request.after_record_id
        conn.copy_done, conn.copy_bytes = done, sent_bytes

    async def _index_is_current(self) -> bool:
        """True if the stored conflict index was computed by this server's rulebook."""
        if self._index_current is None:
            marked = await self.store.get_meta(INDEX_RULEBOOK_KEY)
            self._index_current = marked == self.rulebook.fingerprint
        return self._index_current

    async def _on_pull(self, conn: _Connection, request: PullRequest) -> None:
        head = await self.store.feed_head()
        # A replica is not sent back its own updates (it holds them already).
        items = await self.store.feed_since(
            request.after_seq,
            limit=request.limit,
            organisation=conn.organisation,
            exclude_origin=conn.protocol.replica_id,
        )
        if len(items) == request.limit:
            checkpoint = items[-1].seq
        else:
            checkpoint = max(head, items[-1].seq if items else request.after_seq)
        conn.protocol.send_pull_batch(
            [(i.seq, i.record_id, i.update) for i in items],
            checkpoint=max(checkpoint, request.after_seq),
            head_seq=max(head, checkpoint),
        )

    async def _on_push(self, conn: _Connection, batch: PushBatch) -> None:
        replica_id = conn.protocol.replica_id or ""
        key = _PUSHED_KEY + replica_id
        async with self._commit_lock:
            committed = int(await self.store.get_meta(key) or 0)
            fresh = [item for item in batch.items if item.local_seq > committed]
            if fresh:
                try:
                    await self._commit_push(conn, key, fresh)
                except (InvalidUpdateError, RecordMismatchError) as exc:
                    # Nothing was stored: an update that is not one, or that names
                    # another record, would fail every replica that pulled it.
                    conn.protocol.refuse(
                        RequestKind.PUSH,
                        ErrorCode.BAD_MESSAGE,
                        f"push refused, nothing stored: {exc}",
                    )
                    return
            # Acknowledge only now: the batch is committed (or was, before a resend).
            conn.protocol.ack_push(batch.items[-1].local_seq)

    async def _commit_push(self, conn: _Connection, key: str, fresh: list[PushItem]) -> None:
        """Commit pushed items with the replica's high-water mark; fan out what was new.

        Each record's conflict rows are computed once, after all its updates in
        the batch, and committed with its last one. A record that is not loaded is
        built from its stored state and its pushed updates in one pass. Raises
        InvalidUpdateError or RecordMismatchError, storing nothing, for an update
        that is not one or that belongs to another record. Called under the commit
        lock, so fan-out is queued in commit order.
        """
        pool = self._pool
        parts: dict[str, list[bytes]] = {}
        last_of: dict[str, int] = {}
        for index, item in enumerate(fresh):
            parts.setdefault(item.record_id, []).append(item.update)
            last_of[item.record_id] = index
        # Held here, not looked up again: a large batch may push them out of the pool.
        records: dict[str, Record] = {}
        try:
            unloaded = [record_id for record_id in parts if pool.peek(record_id) is None]
            stored = await self.store.load_many(unloaded) if unloaded else {}
            for record_id, updates in parts.items():
                record = pool.peek(record_id)
                if record is None:
                    before = stored.get(record_id)
                    record = (
                        pool.load_bytes(record_id, *updates)
                        if before is None
                        else pool.load_bytes(record_id, before, *updates)
                    )
                else:
                    for update in updates:
                        record.apply_update(update)
                    record.check_id()
                records[record_id] = record
            incoming = []
            for index, item in enumerate(fresh):
                rows = None
                if last_of[item.record_id] == index:
                    rows = pool.rows(records[item.record_id])
                incoming.append(
                    IncomingUpdate(item.record_id, item.update, rows, conn.organisation)
                )
            seqs = await self.store.write_remote(
                incoming,
                checkpoint=(key, str(fresh[-1].local_seq)),
                to_feed=True,
                origin=conn.protocol.replica_id,
            )
        except CaresyncError:
            for record_id in parts:
                pool.forget(record_id)
            raise
        # Updates the server held already got no feed entry (seq 0): nothing to relay.
        entries = [
            (seq, item.record_id, item.update)
            for seq, item in zip(seqs, fresh, strict=True)
            if seq > 0
        ]
        if not entries:
            return
        self._fan_out(conn, entries)
        for hook in self.on_commit:
            result = hook(entries[-1][0])
            if result is not None:
                await result

    async def _on_outbox_report(self, conn: _Connection, report: OutboxReport) -> None:
        # Kept for operators (``replicas()``): who carries unsynced work, since when.
        replica_id = conn.protocol.replica_id
        if replica_id is not None:
            await self.store.touch_replica(
                replica_id,
                self._now_ms(),
                pending=report.pending,
                oldest_pending_ms=report.oldest_pending_ms,
            )

    def _fan_out(self, source: _Connection, entries: list[tuple[int, str, bytes]]) -> None:
        for conn in self._connections:
            if conn is source or conn.writer is None or conn.organisation != source.organisation:
                continue
            conn.live.put_nowait(entries)

    async def _on_subscribe(self, conn: _Connection, request: Subscribe) -> None:
        # Start forwarding first: anything committed from now on is queued for this
        # connection; the backlog below covers what was committed before.
        conn.writer = asyncio.create_task(self._forward(conn))
        after = request.after_seq
        while True:
            items = await self.store.feed_since(
                after,
                limit=1000,
                organisation=conn.organisation,
                exclude_origin=conn.protocol.replica_id,
            )
            conn.protocol.send_live_updates([(i.seq, i.record_id, i.update) for i in items])
            if len(items) < 1000:
                return
            after = items[-1].seq

    async def _forward(self, conn: _Connection) -> None:
        try:
            await conn.forward_live()
        except (ConnectionLostError, ProtocolError):
            await conn.channel.close()  # the replica catches up by pulling when it returns
