"""A login's audit entry is synced to disk before its connection is sent anything read
from the records, on the paths a normal sync does not take: a fault after a reply was
queued, a refusal that names a record. End to end: real SQLite files, a real websocket
server on 127.0.0.1, a laptop session driven by hand (see ``raw_session``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    RawSession,
    WatchedChannel,
    enrolled,
    raw_session,
)

from caresync.audit import AuditEvent
from caresync.exceptions import CaresyncError, ConnectionLostError, StorageError
from caresync.protocol import Error, PullBatch
from caresync.server import SyncServer
from caresync.storage import SQLiteStore
from caresync.transport import Channel


class _WatchedServer(SyncServer):
    sent: list[tuple[bytes, bool]]

    async def handle(self, channel: Channel) -> None:
        assert isinstance(self.store, SQLiteStore)
        await super().handle(WatchedChannel(channel, self.store, self.sent))  # type: ignore[arg-type]


async def _server(tmp_path: Path) -> _WatchedServer:
    # The timer waits a minute: only the server's own path syncs a login here.
    server = await _WatchedServer.open(tmp_path / "server.db", login_sync_delay_s=60)
    server.sent = []
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.serve("127.0.0.1", 0)
    return server


async def _replies(raw: RawSession) -> list[object]:
    """What the server sends until the connection ends or an Error or PullBatch comes."""
    got: list[object] = []
    for frame in raw.protocol.data_to_send():
        await raw.channel.send(frame)
    for _frame in range(100):  # bounded: a pull here is one batch or one refusal
        try:
            raw.protocol.receive_data(await raw.channel.recv())
        except ConnectionLostError:
            return got
        except CaresyncError:  # a fatal Error raises in the client: it came, the end
            return [*got, "fatal"]
        events = list(raw.protocol.events_received())
        got += events
        if any(isinstance(e, Error | PullBatch) for e in events):
            return got
    return got


async def _other_edit(tmp_path: Path, server: SyncServer, note: str) -> str:
    """A record another laptop wrote and pushed; its id."""
    other = await enrolled(tmp_path, server, "other", user="dr.b")
    try:
        record_id = await other.create_record()
        await other.set(record_id, "note", note, author="dr.b")
        await other.sync()
        return record_id
    finally:
        await other.close()


def _leaked(server: _WatchedServer, record_id: str) -> list[bytes]:
    """Frames that named the record while a login entry still waited for the disk."""
    return [frame for frame, unsynced in server.sent if unsynced and record_id.encode() in frame]


async def test_a_fault_after_a_pull_was_queued_sends_no_record_before_the_login_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduced: the login's sync failed (a full disk) after a pull's batch with
    records was queued; the fault's Error went out with that batch before it."""
    server = await _server(tmp_path)
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await _other_edit(tmp_path, server, "Ada's notes")

        async def full_disk() -> None:
            raise StorageError("database or disk is full")

        async with asyncio.timeout(LIMIT_S), raw_session(server, laptop) as raw:
            # The resumed login is committed lazily before the pull is read.
            monkeypatch.setattr(store, "make_durable", full_disk)
            server.sent.clear()
            raw.protocol.request_pull(0)
            got = await _replies(raw)
        assert not any(isinstance(e, PullBatch) and e.items for e in got)
        assert server.sent  # the server did answer: with its Error alone
        assert _leaked(server, record_id) == []
    finally:
        monkeypatch.undo()
        await laptop.close()
        await server.close()


async def test_a_pull_refused_for_a_record_too_large_names_it_only_once_the_login_is_on_disk(
    tmp_path: Path,
) -> None:
    """Reproduced: a pull refused because an entry does not fit the laptop's frames
    named the record (its id, feed seq and size) before the login's sync."""
    server = await _server(tmp_path)
    store = server.store
    assert isinstance(store, SQLiteStore)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await _other_edit(tmp_path, server, "x" * 200_000)
        async with asyncio.timeout(LIMIT_S), raw_session(server, laptop, 64 * 1024) as raw:
            server.sent.clear()
            raw.protocol.request_pull(1)  # entry 2, the large edit, comes first
            got = await _replies(raw)
        [refusal] = [e for e in got if isinstance(e, Error)]
        assert refusal.code == "too_large"
        assert refusal.detail["record_id"] == record_id
        assert _leaked(server, record_id) == []
        assert not store._unsynced  # synced before the refusal went
    finally:
        await laptop.close()
        await server.close()


class _HeldLogin(_WatchedServer):
    """Holds each login's entry until ``release``; says when it holds one."""

    held: asyncio.Event
    release: asyncio.Event

    async def _audit(
        self, event: AuditEvent, *, seen: tuple[str, int] | None = None, durable: bool = True
    ) -> None:
        if event.action == "login":
            self.held.set()
            await self.release.wait()
        await super()._audit(event, seen=seen, durable=durable)


async def test_a_login_recorded_while_the_server_closes_leaves_no_timer_behind(
    tmp_path: Path,
) -> None:
    """Reproduced: close() cancelled the login timer first, then waited for the
    connections; a login they recorded meanwhile started a new timer that outlived
    the server (it woke on a closed store, or was destroyed pending)."""
    server = await _HeldLogin.open(tmp_path / "server.db", login_sync_delay_s=60)
    server.sent, server.held, server.release = [], asyncio.Event(), asyncio.Event()
    server.release.set()
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.serve("127.0.0.1", 0)
    laptop = await enrolled(tmp_path, server, "laptop")
    listener = server._listener
    assert listener is not None
    closing = asyncio.Event()
    stop_listening = listener.close

    async def close_listener() -> None:
        closing.set()  # close() is past its timers: now it waits for the connections
        await stop_listening()

    listener.close = close_listener  # type: ignore[method-assign]
    try:
        before = [e for e in await server.store.audit_entries() if e.action == "login"]
        server.held.clear()
        server.release.clear()
        async with asyncio.timeout(LIMIT_S), raw_session(server, laptop):
            await server.held.wait()  # the session's login waits to be recorded
            stopped = asyncio.create_task(server.close())
            await closing.wait()
            server.release.set()
            await stopped
        timer = server._login_syncer
        assert timer is None or timer.done()
        # Its entry was committed before the store closed, and synced by close().
        async with await SQLiteStore.open(tmp_path / "server.db", read_only=True) as store:
            logins = [e for e in await store.audit_entries() if e.action == "login"]
        assert len(logins) == len(before) + 1
        assert logins[-1].detail == laptop.identity.replica_id
    finally:
        server.release.set()
        await laptop.close()
        await server.close()
