"""A sync with nothing to do, end to end: what each side waits for.

The server sends ``Authenticated`` before it records the login (its audit entry and
the replica's last contact, one commit), but handles no request of the connection
until it is committed; a laptop's sync does not wait for the websocket closing handshake,
and ``Replica.close`` waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    RawSession,
    Signal,
    WatchedChannel,
    enrolled,
    raw_session,
    start_server,
    until,
)
from tests.sqlite_trace import traced, write_transactions
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import Side, State

from caresync.audit import AuditEvent
from caresync.exceptions import InvalidInputError, StorageError
from caresync.protocol import (
    CopyBatch,
    HubReport,
    LiveBatch,
    LiveUpdate,
    OutboxReport,
    PullBatch,
    PullRequest,
    PushAck,
    PushBatch,
)
from caresync.protocol.codec import decode_frame
from caresync.replica import Replica
from caresync.server import PRE_LOGIN_MAX_FRAME_BYTES, SyncServer
from caresync.storage import SQLiteStore
from caresync.transport import Channel, WebSocketChannel, WebSocketConnector


class HeldLoginServer(SyncServer):
    """Records each login only once ``release`` is set; logs what it handled, in order."""

    release: asyncio.Event
    log: list[str]

    async def _audit(
        self, event: AuditEvent, *, seen: tuple[str, int] | None = None, durable: bool = True
    ) -> None:
        if event.action == "login":
            await self.release.wait()
        await super()._audit(event, seen=seen, durable=durable)
        if event.action == "login":
            self.log.append("login recorded")

    async def _login_on_record(self, conn: object) -> None:  # type: ignore[override]
        await super()._login_on_record(conn)  # type: ignore[arg-type]
        self.log.append("login synced")

    async def _on_push(self, conn: object, batch: PushBatch) -> None:  # type: ignore[override]
        self.log.append("push")
        await super()._on_push(conn, batch)  # type: ignore[arg-type]

    async def _on_pull(self, conn: object, request: PullRequest) -> None:  # type: ignore[override]
        self.log.append("pull")
        await super()._on_pull(conn, request)  # type: ignore[arg-type]


async def test_authenticated_comes_before_the_login_is_recorded_and_nothing_is_served_before(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, server_class=HeldLoginServer)
    assert isinstance(server, HeldLoginServer)
    server.release, server.log = asyncio.Event(), []
    server.release.set()  # the enrolment's login goes through
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        # An edit larger than a frame allowed before a login: sent at once after it.
        record_id = await laptop.create_record()
        await laptop.set(record_id, "note", "x" * (PRE_LOGIN_MAX_FRAME_BYTES + 1), author="dr.a")
        entries = [(e.seq, e.record_id, e.update) for e in await laptop.store.pending(10)]
        assert max(len(update) for _seq, _rid, update in entries) > PRE_LOGIN_MAX_FRAME_BYTES
        server.release.clear()
        server.log.clear()
        async with asyncio.timeout(LIMIT_S):
            # Logged in (Authenticated received) while the server holds the login's record.
            async with raw_session(server, laptop) as raw:
                assert server.log == []
                raw.protocol.push(entries)
                raw.protocol.request_pull(0)
                for frame in raw.protocol.data_to_send():
                    await raw.channel.send(frame)
                server.release.set()
                kinds: set[type] = set()
                while not {PushAck, PullBatch} <= kinds:
                    raw.protocol.receive_data(await raw.channel.recv())
                    kinds.update(type(event) for event in raw.protocol.events_received())
        # Nothing was handled before the login was on record (and, for a push, on disk);
        # the large frame was taken.
        assert server.log == ["login recorded", "login synced", "push", "pull"]
        assert await server.store.has_record(record_id)
    finally:
        server.release.set()
        await laptop.close()
        await server.close()


async def test_a_refused_login_gets_no_authenticated_and_nothing_recorded_as_login(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, server_class=HeldLoginServer)
    assert isinstance(server, HeldLoginServer)
    server.release, server.log = asyncio.Event(), []
    server.release.set()
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        server.log.clear()
        try:
            await laptop.sync(username="dr.a", password="not the password")
        except Exception as exc:  # noqa: BLE001 - the type is asserted below
            refused = exc
        else:  # pragma: no cover - the assertion below says what went wrong
            refused = None
        assert type(refused).__name__ == "AuthenticationError"
        assert server.log == []
    finally:
        await laptop.close()
        await server.close()


class HeldClose:
    """A channel whose closing waits until ``release`` is set (a slow closing handshake)."""

    def __init__(self, inner: Channel, release: asyncio.Event) -> None:
        self._inner = inner
        self._release = release

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    @property
    def closed(self) -> bool:
        return self._inner.closed

    async def close(self, reason: str = "") -> None:
        await self._release.wait()
        await self._inner.close(reason)


class HeldConnector(WebSocketConnector):
    """The default connector; each channel's closing is held until its ``releases`` is
    set (those of the first ``free`` channels are set from the start)."""

    def __init__(self, free: int) -> None:
        super().__init__()
        self.free = free
        self.releases: list[asyncio.Event] = []
        self.channels: list[Channel] = []

    async def connect(self, url: str, *, ssl: object = None) -> Channel:  # type: ignore[override]
        channel = await super().connect(url, ssl=ssl)  # type: ignore[arg-type]
        release = asyncio.Event()
        if len(self.releases) < self.free:
            release.set()
        self.releases.append(release)
        held = HeldClose(channel, release)
        self.channels.append(held)  # type: ignore[arg-type]
        return held  # type: ignore[return-value]


class WatchedSet(set[asyncio.Task[None]]):
    """The replica's closing links; ``waited`` is set when someone waits for them."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    def __len__(self) -> int:  # what a waiter looks at first (a set's copy does not iterate)
        if super().__len__():
            self.waited.set()
        return super().__len__()


async def test_a_sync_leaves_its_closing_handshake_to_the_background_and_close_waits_for_it(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    connector = HeldConnector(free=1)  # the enrolment's link closes freely
    laptop = await Replica.open(tmp_path / "laptop.db", connector=connector)
    closer: asyncio.Task[None] | None = None
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        watched = laptop._closing = WatchedSet()
        async with asyncio.timeout(LIMIT_S):
            report = await laptop.sync()  # returns while its link's closing is held
            assert (report.uploaded, report.downloaded) == (0, 0)
            first = connector.channels[-1]
            assert not first.closed
            # The next sync waits for that link to close before it connects.
            second = asyncio.create_task(laptop.sync())
            await watched.waited.wait()
            assert len(connector.channels) == 2  # not connected yet
            watched.waited.clear()
            connector.releases[1].set()
            await second
            assert first.closed
            assert not connector.channels[2].closed  # the second sync's, held
            # Replica.close waits for it.
            closer = asyncio.create_task(laptop.close())
            await watched.waited.wait()
            assert not closer.done()
            connector.releases[2].set()
            await closer
            assert connector.channels[2].closed
    finally:
        for release in connector.releases:
            release.set()
        if closer is None:
            await laptop.close()
        await server.close()


class ReportingServer(SyncServer):
    """Sets ``handled`` after each outbox report it has handled (written or not)."""

    handled: asyncio.Event

    async def _on_outbox_report(self, conn: object, report: OutboxReport) -> None:  # type: ignore[override]
        await super()._on_outbox_report(conn, report)  # type: ignore[arg-type]
        self.handled.set()


async def test_a_report_equal_to_what_a_login_read_is_written_if_another_connection_changed_it(
    tmp_path: Path,
) -> None:
    """Two connections of one replica (a late one, or two server processes): each
    report is compared with what is stored when it arrives, not with what the
    connection's login read (a review of the no-op change found that skip)."""
    server = await start_server(tmp_path, server_class=ReportingServer)
    assert isinstance(server, ReportingServer)
    server.handled = asyncio.Event()
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        async with asyncio.timeout(LIMIT_S):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
            await laptop.sync()
            [info] = await server.replicas()
            assert (info.pending, info.oldest_pending_ms) == (0, None)

            async def report(session: RawSession, pending: int, oldest: int | None) -> None:
                server.handled.clear()
                session.protocol.report_outbox(pending, oldest)
                for frame in session.protocol.data_to_send():
                    await session.channel.send(frame)
                await server.handled.wait()

            async with raw_session(server, laptop) as first, raw_session(server, laptop) as second:
                await report(second, 5, 1_000)
                [info] = await server.replicas()
                assert (info.pending, info.oldest_pending_ms) == (5, 1_000)
                await report(first, 0, None)  # what its login read, not what is stored now
                [info] = await server.replicas()
                assert (info.pending, info.oldest_pending_ms) == (0, None)
    finally:
        await laptop.close()
        await server.close()


def _carried(sent: list[tuple[bytes, bool]]) -> list[tuple[str, bool]]:
    """Each frame sent, as its message's kind ("... with records" when it carried any),
    with whether a login entry was still waiting for the disk then."""
    kinds = []
    for frame, unsynced in sent:
        _version, message = decode_frame(frame, max_frame_bytes=1 << 30)
        carried = (
            len(message.items)
            if isinstance(message, PullBatch | HubReport | LiveBatch)
            else len(message.records)
            if isinstance(message, CopyBatch)
            else int(isinstance(message, LiveUpdate))
        )
        kinds.append((type(message).__name__ + (" with records" if carried else ""), unsynced))
    return kinds


class WatchedServer(SyncServer):
    """Counts the syncs of its logins' entries; watches every frame it sends."""

    sent: list[tuple[bytes, bool]]
    synced: Signal

    async def handle(self, channel: Channel) -> None:
        assert isinstance(self.store, SQLiteStore)
        await super().handle(WatchedChannel(channel, self.store, self.sent))  # type: ignore[arg-type]

    async def _sync_logins(self) -> None:
        await super()._sync_logins()
        self.synced()


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def _watched_server(tmp_path: Path, delay_s: float) -> WatchedServer:
    server = await WatchedServer.open(tmp_path / "server.db", login_sync_delay_s=delay_s)
    server.sent, server.synced = [], Signal()
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.serve("127.0.0.1", 0)
    return server


async def test_a_sync_with_nothing_to_do_waits_for_no_disk_and_records_go_out_only_synced(
    tmp_path: Path,
) -> None:
    server = await _watched_server(tmp_path, delay_s=60)  # the timer stays out of it
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptop = await Replica.open(tmp_path / "laptop.db")
    other = await Replica.open(tmp_path / "other.db")
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        await other.enrol(server.url, username="dr.b", password=PASSWORD, organisation="clinic-a")
        async with asyncio.timeout(LIMIT_S):
            await laptop.sync()
            server.sent.clear()
            report = await laptop.sync()  # nothing to do
        assert (report.uploaded, report.downloaded) == (0, 0)
        # Its login is committed (every reader sees it) but waits for the disk: nothing
        # it was sent carried a record.
        logins = [e for e in await store.audit_entries() if e.action == "login"]
        assert logins[-1].detail == laptop.identity.replica_id
        assert store._unsynced
        assert server.sent
        assert all("with records" not in kind for kind, _ in _carried(server.sent))
        # Another laptop's edit: the next pull sends it, only once the login is synced.
        record_id = await other.create_record()
        await other.set(record_id, "name/given", "Ada", author="dr.b")
        async with asyncio.timeout(LIMIT_S):
            await other.sync()
            server.sent.clear()
            report = await laptop.sync()
        assert report.downloaded > 0
        carrying = [unsynced for kind, unsynced in _carried(server.sent) if "with records" in kind]
        assert carrying
        assert not any(carrying)
        assert server.synced.count == 0  # the pull synced it, not the timer
    finally:
        await laptop.close()
        await other.close()
        await server.close()


async def test_the_logins_of_a_moment_wait_for_one_sync_together(tmp_path: Path) -> None:
    server = await _watched_server(tmp_path, delay_s=60)
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptops = [await Replica.open(tmp_path / f"laptop-{n}.db") for n in range(3)]
    try:
        for laptop in laptops:
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
        assert not store._unsynced  # an enrolment waits for its login's sync
        timer = server._login_syncer
        assert timer is not None
        async with asyncio.timeout(LIMIT_S), traced(store) as statements:
            await asyncio.gather(*(laptop.sync() for laptop in laptops))
        writes = write_transactions(statements)
        assert len(writes) == 3  # one commit a login, none of them synced yet
        assert all(any("audit_trail" in statement for statement in w) for w in writes)
        assert store._unsynced
        assert server._login_syncer is timer  # one timer for them all
        assert not timer.done()
    finally:
        for laptop in laptops:
            await laptop.close()
        await server.close()


async def test_the_timer_syncs_the_logins_within_the_delay(tmp_path: Path) -> None:
    server = await _watched_server(tmp_path, delay_s=0.05)
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        async with asyncio.timeout(LIMIT_S):
            await until(_true_when(lambda: server.synced.count > 0), server.synced)
            synced = server.synced.count
            await laptop.sync()
            assert server._login_syncer is not None
            await until(_true_when(lambda: server.synced.count > synced), server.synced)
        assert not store._unsynced
        logins = [e for e in await store.audit_entries() if e.action == "login"]
        assert logins[-1].detail == laptop.identity.replica_id
    finally:
        await laptop.close()
        await server.close()


async def test_with_no_delay_each_login_is_synced_before_its_next_request(
    tmp_path: Path,
) -> None:
    server = await _watched_server(tmp_path, delay_s=0)
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        async with asyncio.timeout(LIMIT_S), traced(store) as statements:
            await laptop.sync()
        assert not any("SYNCHRONOUS = NORMAL" in " ".join(s.split()).upper() for s in statements)
        assert not store._unsynced
    finally:
        await laptop.close()
        await server.close()


@pytest.mark.parametrize("bad", [-1, 61, True, "1", float("nan")])
async def test_a_login_sync_delay_out_of_range_is_refused_and_the_database_let_go(
    tmp_path: Path, bad: object
) -> None:
    with pytest.raises(InvalidInputError, match="login_sync_delay_s"):
        await SyncServer.open(tmp_path / "server.db", login_sync_delay_s=bad)  # type: ignore[arg-type]
    # The store it had opened is closed again: the database opens for the next server
    # (it waited for the writer lock for ever before).
    async with asyncio.timeout(LIMIT_S):
        server = await SyncServer.open(tmp_path / "server.db")
    await server.close()


async def test_the_timer_tries_again_when_the_disk_fails_to_sync(tmp_path: Path) -> None:
    server = await _watched_server(tmp_path, delay_s=0.05)
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptop = await Replica.open(tmp_path / "laptop.db")
    tries = Signal()
    real = store.make_durable

    async def failing_once() -> None:
        tries()
        if tries.count == 1:
            raise StorageError("disk I/O error (a test's)")
        await real()

    try:
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        async with asyncio.timeout(LIMIT_S):
            await until(_true_when(lambda: server.synced.count > 0), server.synced)
            synced = server.synced.count  # the enrolment's timer is done
            store.make_durable = failing_once  # type: ignore[method-assign]
            await laptop.sync()  # nothing to do: its login waits for the timer
            await until(_true_when(lambda: server.synced.count > synced), server.synced)
        assert tries.count == 2  # failed once, then synced: no login is left waiting
        assert not store._unsynced
    finally:
        store.make_durable = real  # type: ignore[method-assign]
        await laptop.close()
        await server.close()


class StoreOfBefore:
    """A server store written before ``make_durable`` existed: the SQLite store with
    that method (and ``append_audit``'s ``durable``) hidden."""

    def __init__(self, inner: SQLiteStore) -> None:
        self._inner = inner
        self.lazy_asked = 0

    def __getattr__(self, name: str) -> object:
        if name == "make_durable":
            raise AttributeError(name)
        return getattr(self._inner, name)

    async def append_audit(self, events: object, **options: object) -> object:
        if "durable" in options:  # not a word this store knows
            self.lazy_asked += 1
            raise TypeError("append_audit() got an unexpected keyword argument 'durable'")
        return await self._inner.append_audit(events, **options)  # type: ignore[arg-type]


async def test_a_store_without_make_durable_has_each_login_synced_as_before(
    tmp_path: Path,
) -> None:
    opened = await SyncServer.open(tmp_path / "server.db")
    inner = opened.store
    assert isinstance(inner, SQLiteStore)
    store = StoreOfBefore(inner)
    key = await opened.gate.server_key()
    server = SyncServer(store, opened.server_id, server_key=key)  # type: ignore[arg-type]
    assert server.login_sync_delay_s == 0
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.serve("127.0.0.1", 0)
    laptop = await Replica.open(tmp_path / "laptop.db")
    try:
        async with asyncio.timeout(LIMIT_S):
            await laptop.enrol(
                server.url, username="dr.a", password=PASSWORD, organisation="clinic-a"
            )
            report = await laptop.sync()
        assert (report.uploaded, report.downloaded) == (0, 0)
        assert store.lazy_asked == 0
        assert not inner._unsynced
        logins = [e for e in await inner.audit_entries() if e.action == "login"]
        assert logins[-1].detail == laptop.identity.replica_id
    finally:
        await laptop.close()
        await server.close()


class _Calls:
    """Counts the calls of some methods of one object (wrapped on the instance)."""

    def __init__(self, target: object, *names: str) -> None:
        self.count = dict.fromkeys(names, 0)
        for name in names:
            method = getattr(target, name)

            async def counted(*args: object, _name: str = name, _m: Any = method, **kw: Any) -> Any:
                self.count[_name] += 1
                return await _m(*args, **kw)

            setattr(target, name, counted)


async def test_a_sync_with_nothing_to_do_reads_no_feed_entries_no_hub_list_and_syncs_nothing(
    tmp_path: Path,
) -> None:
    """The laptop at the feed's head: the server reads no entries; no hub ever queued a
    summary (mark 0): no list to read; the laptop took nothing in: no disk sync asked.
    Then another laptop's edit: each is read (and synced) again, as it must be."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other", user="dr.b")
    try:
        async with asyncio.timeout(LIMIT_S):
            await laptop.sync()
            served = _Calls(server.store, "feed_head", "feed_since", "hub_summaries")
            synced = _Calls(laptop.store, "make_durable")
            report = await laptop.sync()  # nothing to do
        assert (report.uploaded, report.downloaded) == (0, 0)
        assert served.count == {"feed_head": 1, "feed_since": 0, "hub_summaries": 0}
        assert synced.count == {"make_durable": 0}
        record_id = await other.create_record()
        await other.set(record_id, "name/given", "Ada", author="dr.b")
        async with asyncio.timeout(LIMIT_S):
            await other.sync()
            report = await laptop.sync()
        assert report.downloaded > 0
        [head] = (await laptop.fields(record_id))["name/given"].heads
        assert head.value == "Ada"
        assert served.count["feed_since"] >= 1
        assert served.count["hub_summaries"] == 0  # still no summary ever queued
    finally:
        await laptop.close()
        await other.close()
        await server.close()


class WriteLoggingConnector(WebSocketConnector):
    """The default connector; the messages of each write of the laptop's last connection
    to its socket, grouped by write (parsed as the server's websockets parses them)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[str]] = []

    async def connect(self, url: str, *, ssl: Any = None) -> WebSocketChannel:
        channel = await super().connect(url, ssl=ssl)
        transport = channel._connection.transport
        write = transport.write
        parser = WebSocketProtocol(Side.SERVER, state=State.OPEN, max_size=None)
        self.writes = writes = []

        def logged(data: bytes | bytearray | memoryview) -> None:
            parser.receive_data(bytes(data))
            frames = [e for e in parser.events_received() if isinstance(e, Frame)]
            writes.append(
                [
                    type(decode_frame(f.data)[1]).__name__ if f.opcode is Opcode.BINARY else "close"
                    for f in frames
                ]
            )
            write(data)

        transport.write = logged  # type: ignore[method-assign]
        return channel


async def test_a_sync_with_nothing_to_do_writes_what_goes_together_at_once(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    connector = WriteLoggingConnector()
    laptop = await enrolled(tmp_path, server, "laptop", connector=connector)
    try:
        await laptop.sync()
        report = await laptop.sync()
        assert (report.uploaded, report.downloaded) == (0, 0)
        await laptop.close()  # the closing handshake, finished in the background
        # The proof request with Hello, the outbox's report with the pull asked ahead,
        # the link's close with Goodbye: one write each (they were a write a frame), the
        # login on its own (it travels while the laptop reads what to ask).
        assert connector.writes == [
            ["Hello", "ProveServer"],
            ["ResumeSession"],
            ["PullRequest", "OutboxReport"],
            ["Goodbye", "close"],
        ]
    finally:
        await laptop.close()
        await server.close()
