"""The embedding API for a laptop: open, edit, read, conflicts, resolve, sync, status.

Every edit is committed to the local database (with its outbox entry and the
record's conflict index rows) before the call returns. Sync is a thin shell
around the sans-I/O :class:`~caresync.protocol.ClientProtocol`: it pushes the
outbox (entries leave it only when the server acknowledged its commit) and
pulls the change feed from the last checkpoint, committing each batch with its
checkpoint.
"""

from __future__ import annotations

import asyncio
import enum
import ssl as ssl_module
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pycrdt import merge_updates

from caresync.conflicts import DEFAULT_RULEBOOK, Conflict, RecordView, Rulebook
from caresync.exceptions import (
    AuthenticationError,
    CaresyncError,
    ConnectionLostError,
    InvalidInputError,
    NotEnrolledError,
    RemoteProtocolError,
    ReplicaRevokedError,
    StorageError,
    UnknownConflictError,
)
from caresync.pool import RecordPool
from caresync.protocol import (
    Authenticated,
    ClientProtocol,
    CopyBatch,
    Enrolled,
    Error,
    Goodbye,
    PullBatch,
    PushAck,
    Welcome,
    error_for,
)
from caresync.records import JSONValue, Record, Revision
from caresync.storage import Identity, IncomingUpdate, SQLiteStore, Store
from caresync.transport import Channel, connect_websocket

__all__ = ["CopyProgress", "Replica", "ReplicaState", "ReplicaStatus", "SyncReport"]

T = TypeVar("T")
_UNSET: Any = object()
_hasher = PasswordHasher()

# Meta keys of a laptop's store.
_CHECKPOINT = "sync.checkpoint"  # how far the server's change feed was read
_COPY_RESUME = "copy.resume"  # last record id committed by the first copy
_COPY_CHECKPOINT = "copy.checkpoint"  # feed head when the first copy started
_COPY_DONE_MS = "copy.done_ms"
_LAST_SYNC_MS = "sync.last_ms"
_SESSION = "session.token"
_SESSION_USER = "session.user"
_OFFLINE_LOGIN = "login.offline:"  # + username: argon2id hash of the password

PUSH_BATCH_ITEMS = 500
PUSH_BATCH_BYTES = 4 * 1024 * 1024
PULL_LIMIT = 1000
COPY_BATCH_RECORDS = 500


class ReplicaState(enum.StrEnum):
    """Where a replica stands with its server."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    SYNCHRONISING = "synchronising"
    ONLINE = "online"
    LOCKED = "locked"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A snapshot of the replica's sync status."""

    state: ReplicaState
    replica_id: str
    server_id: str | None
    organisation: str | None
    pending: int
    """Local changes the server has not acknowledged."""
    oldest_pending_age_s: float | None
    last_sync: datetime | None
    copy_age_s: float | None
    """Seconds since the local copy was last brought up to date (None before the first copy)."""
    conflicts_open: int
    records: int


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """Progress of the first copy, reported after each committed batch."""

    done_records: int
    total_records: int
    done_bytes: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync round moved."""

    uploaded: int
    downloaded: int
    conflicts_open: int
    copied: int = 0


ProgressCallback = Callable[[CopyProgress], None]
StatusListener = Callable[[ReplicaState], None]


class Replica:
    """A laptop's replica. Open with :meth:`open`; use as ``async with``."""

    def __init__(self, store: Store, identity: Identity, *, rulebook: Rulebook) -> None:
        self.store = store
        self.identity = identity
        self.rulebook = rulebook
        self._pool = RecordPool(store, replica=identity.replica_id, rulebook=rulebook)
        self._state = ReplicaState.OFFLINE
        self._listeners: list[StatusListener] = []
        self._sync_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
    ) -> Replica:
        """Open a laptop database (created unless ``create=False``)."""
        store = await SQLiteStore.open(path, create=create)
        try:
            identity = await store.get_identity()
            if identity is None:
                identity = Identity(replica_id=f"replica-{uuid.uuid4()}", role="laptop")
                await store.set_identity(identity)
            elif identity.role != "laptop":
                raise StorageError(f"{path} is a server's database, not a laptop's")
        except BaseException:
            await store.close()
            raise
        return cls(store, identity, rulebook=rulebook)

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Replica:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def replica_id(self) -> str:
        return self.identity.replica_id

    @property
    def enrolled(self) -> bool:
        return self.identity.server_id is not None

    # ---------------------------------------------------------------- editing

    async def create_record(self, *, record_id: str | None = None) -> str:
        """A new patient record, committed; returns its id."""
        async with self._write_lock:
            record = self._pool.create(record_id)
            try:
                await self.store.write_local(
                    record.record_id,
                    record.update_since(),
                    conflicts=(),
                    organisation=self.identity.organisation,
                )
            except BaseException:
                self._pool.forget(record.record_id)
                raise
            return record.record_id

    async def set(self, record_id: str, path: str, value: JSONValue, *, author: str) -> Revision:
        """Write a field (committed before this returns)."""
        return await self._edit(record_id, lambda r: r.set(path, value, author=author))

    async def add_entry(
        self,
        record_id: str,
        collection: str,
        fields: dict[str, JSONValue] | None = None,
        *,
        author: str,
    ) -> str:
        """Add a collection entry; returns its id."""
        return await self._edit(record_id, lambda r: r.add_entry(collection, fields, author=author))

    async def set_status(
        self, record_id: str, collection: str, entry_id: str, status: str, *, author: str
    ) -> Revision:
        """Change an entry's status (``stopped``, ``entered-in-error``, ...)."""
        return await self._edit(
            record_id, lambda r: r.set_status(collection, entry_id, status, author=author)
        )

    async def sign_note(self, record_id: str, entry_id: str, *, author: str) -> Revision:
        return await self._edit(record_id, lambda r: r.sign_note(entry_id, author=author))

    async def add_addendum(self, record_id: str, entry_id: str, text: str, *, author: str) -> str:
        return await self._edit(record_id, lambda r: r.add_addendum(entry_id, text, author=author))

    async def _edit(self, record_id: str, mutate: Callable[[Record], T]) -> T:
        async with self._write_lock:
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
            update = captured[0] if len(captured) == 1 else merge_updates(*captured)
            try:
                await self.store.write_local(
                    record_id,
                    update,
                    conflicts=self._pool.rows(record),
                    organisation=self.identity.organisation,
                )
            except BaseException:
                self._pool.forget(record_id)
                raise
            return result

    # ---------------------------------------------------------------- reading

    async def record(self, record_id: str) -> RecordView:
        """A read-only view of a record (UnknownRecordError if there is none)."""
        return RecordView(await self._pool.get(record_id))

    async def fields(self, record_id: str) -> dict[str, Any]:
        """Every field's state, as ``path -> FieldState``."""
        return (await self._pool.get(record_id)).fields()

    async def record_ids(self) -> list[str]:
        return await self.store.record_ids()

    async def conflicts(self, record_id: str | None = None) -> list[Conflict]:
        """Open conflicts of one record, or of all (read from the index, not a scan)."""
        if record_id is not None:
            return self.rulebook.conflicts(await self._pool.get(record_id))
        ids = dict.fromkeys(row.record_id for row in await self.store.conflicts())
        result: list[Conflict] = []
        for rid in ids:
            result.extend(self.rulebook.conflicts(await self._pool.get(rid)))
        return result

    async def find_conflict(self, conflict_id: str) -> Conflict:
        for row in await self.store.conflicts():
            if row.id == conflict_id:
                return self.rulebook.conflict(await self._pool.get(row.record_id), conflict_id)
        raise UnknownConflictError(f"no open conflict {conflict_id} in this database")

    async def resolve(
        self,
        conflict_id: str,
        *,
        author: str,
        choose: int | None = None,
        value: JSONValue | object = _UNSET,
    ) -> Revision:
        """Resolve a conflict by choosing candidate ``choose`` or entering ``value``."""
        conflict = await self.find_conflict(conflict_id)
        kwargs: dict[str, Any] = {"choose": choose}
        if value is not _UNSET:
            kwargs["value"] = value
        return await self._edit(
            conflict.record_id,
            lambda r: self.rulebook.resolve(r, conflict_id, author=author, **kwargs),
        )

    async def acknowledge(self, conflict_id: str, *, author: str) -> Revision:
        """Acknowledge a flag or info finding."""
        conflict = await self.find_conflict(conflict_id)
        return await self._edit(
            conflict.record_id,
            lambda r: self.rulebook.acknowledge(r, conflict_id, author=author),
        )

    # ----------------------------------------------------------------- status

    @property
    def state(self) -> ReplicaState:
        return self._state

    def on_status(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(state)`` on every state change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _set_state(self, state: ReplicaState) -> None:
        if state is not self._state:
            self._state = state
            for listener in list(self._listeners):
                listener(state)

    async def status(self) -> ReplicaStatus:
        now = time.time()
        oldest = await self.store.oldest_pending_ms()
        last_ms = await self.store.get_meta(_LAST_SYNC_MS)
        last = datetime.fromtimestamp(int(last_ms) / 1000, tz=UTC) if last_ms else None
        return ReplicaStatus(
            state=self._state,
            replica_id=self.replica_id,
            server_id=self.identity.server_id,
            organisation=self.identity.organisation,
            pending=await self.store.pending_count(),
            oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest / 1000),
            last_sync=last,
            copy_age_s=None if last is None else max(0.0, now - int(last_ms or 0) / 1000),
            conflicts_open=await self.store.count_conflicts(),
            records=await self.store.count_records(),
        )

    async def login_offline(self, username: str, password: str) -> None:
        """Check a password offline; only users who logged in online here before can."""
        stored = await self.store.get_meta(_OFFLINE_LOGIN + username)
        if stored is None:
            raise AuthenticationError(
                f"{username} has never logged in online on this laptop; connect to log in"
            )
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            raise AuthenticationError(f"wrong password for {username}") from None

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
    ) -> SyncReport:
        """Bind this laptop to the server at ``url`` and one organisation; make the first copy."""
        if self.enrolled:
            raise InvalidInputError(
                f"this laptop is already enrolled to server {self.identity.server_id}"
            )
        async with self._sync_lock, _Session.connect(self, url, ssl) as session:
            await session.login(username, password, organisation)
            session.protocol.enrol(device_name, self.replica_id)
            enrolled = await session.expect(Enrolled)
            if enrolled.replica_id != self.replica_id:
                raise RemoteProtocolError(
                    f"the server assigned replica id {enrolled.replica_id}; "
                    f"this laptop is {self.replica_id}"
                )
            self.identity = Identity(
                replica_id=self.replica_id,
                role="laptop",
                server_id=enrolled.server_id,
                server_url=url,
                organisation=enrolled.organisation,
            )
            await self.store.set_identity(self.identity)
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
    ) -> SyncReport:
        """One round with the enrolled server: finish the first copy, push, pull.

        ``url`` may point elsewhere only if it is the same server (its id is
        checked before anything moves). Logs in with ``username``/``password``,
        or else with the session from the last online login.
        """
        if not self.enrolled:
            raise NotEnrolledError("this laptop is not enrolled to a server; enrol it first")
        target = url or self.identity.server_url or ""
        async with self._sync_lock, _Session.connect(self, target, ssl) as session:
            if password is not None:
                org = organisation or self.identity.organisation or ""
                await session.login(username or "", password, org)
            else:
                await session.resume()
            return await session.synchronise(progress)


class _Session:
    """One connection to the server, driving a ClientProtocol for a replica."""

    def __init__(self, replica: Replica, channel: Channel, protocol: ClientProtocol) -> None:
        self.replica = replica
        self.channel = channel
        self.protocol = protocol
        self._events: list[object] = []

    @classmethod
    def connect(
        cls, replica: Replica, url: str, ssl: ssl_module.SSLContext | None
    ) -> _SessionContext:
        return _SessionContext(replica, url, ssl)

    async def flush(self) -> None:
        for frame in self.protocol.data_to_send():
            await self.channel.send(frame)

    async def next_event(self) -> object:
        while not self._events:
            await self.flush()
            frame = await self.channel.recv()
            try:
                self.protocol.receive_data(frame)
            except CaresyncError:
                await self.flush()  # tell the server why, then give up
                raise
            self._events.extend(self.protocol.events_received())
        return self._events.pop(0)

    async def expect(self, kind: type[T]) -> T:
        while True:
            event = await self.next_event()
            if isinstance(event, kind):
                return event
            if isinstance(event, Error):
                raise error_for(event.code, event.message)
            if isinstance(event, Goodbye):
                raise ConnectionLostError(f"the server closed the session: {event.reason}")

    async def login(self, username: str, password: str, organisation: str) -> None:
        self.protocol.authenticate(username, password, organisation)
        session = await self.expect(Authenticated)
        await self._remember(session)
        password_hash = await asyncio.to_thread(_hasher.hash, password)
        await self.replica.store.set_meta(_OFFLINE_LOGIN + username, password_hash)

    async def resume(self) -> None:
        token = await self.replica.store.get_meta(_SESSION)
        if not token:
            raise AuthenticationError("no session on this laptop: log in with a password")
        self.protocol.resume_session(token)
        await self._remember(await self.expect(Authenticated))

    async def _remember(self, session: Authenticated) -> None:
        await self.replica.store.set_meta(_SESSION, session.session_token)
        await self.replica.store.set_meta(_SESSION_USER, session.user)

    async def synchronise(self, progress: ProgressCallback | None) -> SyncReport:
        replica = self.replica
        replica._set_state(ReplicaState.SYNCHRONISING)
        copied = await self.first_copy(progress)
        uploaded = await self.push()
        downloaded = await self.pull()
        await replica.store.set_meta(_LAST_SYNC_MS, str(time.time_ns() // 1_000_000))
        return SyncReport(
            uploaded=uploaded,
            downloaded=downloaded + copied,
            conflicts_open=await replica.store.count_conflicts(),
            copied=copied,
        )

    async def first_copy(self, progress: ProgressCallback | None) -> int:
        store = self.replica.store
        if await store.get_meta(_COPY_DONE_MS) is not None:
            return 0
        resume = await store.get_meta(_COPY_RESUME) or None
        copied = 0
        while True:
            self.protocol.request_copy(resume, COPY_BATCH_RECORDS)
            batch = await self.expect(CopyBatch)
            if await store.get_meta(_COPY_CHECKPOINT) is None:
                await store.set_meta(_COPY_CHECKPOINT, str(batch.feed_checkpoint))
            if batch.records:
                items = [await self._incoming(rec.record_id, rec.update) for rec in batch.records]
                await store.write_remote(
                    items, checkpoint=(_COPY_RESUME, batch.last_record_id or "")
                )
                copied += len(items)
            resume = batch.last_record_id
            if progress is not None:
                progress(
                    CopyProgress(
                        batch.done_records, batch.total_records, batch.done_bytes, batch.total_bytes
                    )
                )
            if batch.final:
                break
        start = await store.get_meta(_COPY_CHECKPOINT) or "0"
        if await store.get_meta(_CHECKPOINT) is None:
            await store.set_meta(_CHECKPOINT, start)
        await store.set_meta(_COPY_DONE_MS, str(time.time_ns() // 1_000_000))
        return copied

    async def _incoming(self, record_id: str, update: bytes) -> IncomingUpdate:
        pool = self.replica._pool
        record = await pool.get_or_empty(record_id)
        record.apply_update(update)
        return IncomingUpdate(
            record_id, update, pool.rows(record), self.replica.identity.organisation
        )

    async def push(self) -> int:
        store = self.replica.store
        uploaded = 0
        after = 0
        while True:
            pending = await store.pending(PUSH_BATCH_ITEMS, after_seq=after)
            if not pending:
                return uploaded
            batch: list[tuple[int, str, bytes]] = []
            size = 0
            for item in pending:
                if batch and size + len(item.update) > PUSH_BATCH_BYTES:
                    break
                batch.append((item.seq, item.record_id, item.update))
                size += len(item.update)
            self.protocol.push(batch)
            ack = await self.expect(PushAck)
            # Leave the outbox only what the server says it committed.
            uploaded += await store.acknowledge(ack.up_to_local_seq)
            after = ack.up_to_local_seq

    async def pull(self) -> int:
        store = self.replica.store
        checkpoint = int(await store.get_meta(_CHECKPOINT) or 0)
        downloaded = 0
        while True:
            self.protocol.request_pull(checkpoint, PULL_LIMIT)
            batch = await self.expect(PullBatch)
            items = [await self._incoming(i.record_id, i.update) for i in batch.items]
            if items or batch.checkpoint != checkpoint:
                await store.write_remote(items, checkpoint=(_CHECKPOINT, str(batch.checkpoint)))
            downloaded += len(items)
            checkpoint = batch.checkpoint
            if not batch.more:
                return downloaded


class _SessionContext:
    """``async with _Session.connect(...)``: connect, hello, and always clean up."""

    def __init__(self, replica: Replica, url: str, ssl: ssl_module.SSLContext | None) -> None:
        self.replica, self.url, self.ssl = replica, url, ssl
        self.session: _Session | None = None

    async def __aenter__(self) -> _Session:
        replica = self.replica
        replica._set_state(ReplicaState.CONNECTING)
        try:
            channel = await connect_websocket(self.url, ssl=self.ssl)
        except BaseException:
            replica._set_state(ReplicaState.OFFLINE)
            raise
        identity = replica.identity
        protocol = ClientProtocol(
            replica_id=identity.replica_id if identity.server_id else None,
            server_id=identity.server_id,
            organisation=identity.organisation,
        )
        self.session = _Session(replica, channel, protocol)
        try:
            protocol.send_hello()
            await self.session.expect(Welcome)
        except BaseException:
            await self._finish(failed=True)
            raise
        return self.session

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self._finish(failed=exc is not None)

    async def _finish(self, *, failed: bool) -> None:
        session = self.session
        if session is None:
            return
        if not failed and session.protocol.failure is None:
            try:
                session.protocol.close("sync done")
                await session.flush()
            except CaresyncError:
                failed = True
        await session.channel.close()
        error = session.protocol.failure
        if isinstance(error, ReplicaRevokedError):
            self.replica._set_state(ReplicaState.LOCKED)
        else:
            self.replica._set_state(ReplicaState.OFFLINE)
