"""A sync with nothing to do, end to end: what each side waits for.

The server sends ``Authenticated`` before it records the login (its audit entry and
the replica's last contact, one commit), but handles no request of the connection
until it is committed; a laptop's sync does not wait for the websocket closing handshake,
and ``Replica.close`` waits for it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.live_helpers import LIMIT_S, PASSWORD, RawSession, raw_session, start_server

from caresync.audit import AuditEvent
from caresync.protocol import OutboxReport, PullBatch, PullRequest, PushAck, PushBatch
from caresync.replica import Replica
from caresync.server import PRE_LOGIN_MAX_FRAME_BYTES, SyncServer
from caresync.transport import Channel, WebSocketConnector


class HeldLoginServer(SyncServer):
    """Records each login only once ``release`` is set; logs what it handled, in order."""

    release: asyncio.Event
    log: list[str]

    async def _audit(self, event: AuditEvent, *, seen: tuple[str, int] | None = None) -> None:
        if event.action == "login":
            await self.release.wait()
        await super()._audit(event, seen=seen)
        if event.action == "login":
            self.log.append("login recorded")

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
        # Nothing was handled before the login was on record; the large frame was taken.
        assert server.log == ["login recorded", "push", "pull"]
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
