"""Limits before trust, and failures that must not lose or hide anything.

Why 8 (pre-login memory, idle connections, password guessing), why 9 (live
mode stopping for good on a transient error) and why 10 (a full disk on either
side, a damaged laptop file written into) of the trust-nothing issue, each
against a real server on 127.0.0.1 and real SQLite files.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher
from tests.e2e.hostile import Hostile, closed_by_server
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, start_server

from caresync import Record
from caresync.exceptions import (
    AuthenticationError,
    ConnectionLostError,
    CorruptDatabaseError,
    StorageError,
    SyncRefusedError,
)
from caresync.protocol import ErrorCode
from caresync.replica import Replica, ReplicaState
from caresync.server import PRE_LOGIN_MAX_FRAME_BYTES, SyncServer
from caresync.throttle import LoginThrottle
from caresync.transport import connect_websocket


async def test_a_large_frame_before_login_is_refused(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        channel = await connect_websocket(server.url)
        await channel.send(b"\x00" * (PRE_LOGIN_MAX_FRAME_BYTES + 1))
        assert await closed_by_server(channel)
        # A laptop still gets in: the limit is per connection, before its login.
        laptop = await enrolled(tmp_path, server, "laptop")
        await laptop.close()
    finally:
        await server.close()


async def test_a_connection_that_does_not_log_in_in_time_is_closed(tmp_path: Path) -> None:
    store_server = await start_server(tmp_path)
    await store_server.close()
    server = await SyncServer.open(tmp_path / "server.db", login_timeout_s=0.3)
    await server.serve("127.0.0.1", 0)
    try:
        silent = await connect_websocket(server.url)  # never says Hello
        assert await closed_by_server(silent)
        # One that says Hello but never logs in is closed too.
        chatty = await Hostile.connect(server.url)
        assert await closed_by_server(chatty.channel)
    finally:
        await server.close()


async def test_too_many_connections_waiting_to_log_in_are_refused_busy(tmp_path: Path) -> None:
    first = await start_server(tmp_path)
    await first.close()
    server = await SyncServer.open(tmp_path / "server.db", max_pending_logins=2)
    await server.serve("127.0.0.1", 0)
    try:
        waiting = [await Hostile.connect(server.url) for _ in range(2)]
        third = await connect_websocket(server.url)
        assert await closed_by_server(third)
        for client in waiting:
            await client.close()
        # Once they have gone, logins are served again.
        laptop = await enrolled(tmp_path, server, "laptop")
        await laptop.close()
    finally:
        await server.close()


async def test_password_guessing_is_throttled_per_account(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    server.gate.throttle = LoginThrottle(account_free=3, first_lock_s=60.0)
    try:
        for _ in range(4):  # three free failures; the fourth locks the account
            client = await Hostile.connect(server.url)
            client.protocol.authenticate("dr.a", "wrong guess", "clinic-a")
            assert isinstance(await client.refused(), AuthenticationError)
            await client.close()
        # Locked now: even the right password is refused at once, unchecked.
        client = await Hostile.connect(server.url)
        client.protocol.authenticate("dr.a", PASSWORD, "clinic-a")
        refused = await client.refused()
        assert isinstance(refused, AuthenticationError)
        assert "too many failed logins" in str(refused)
        assert client.protocol.peer_error is not None
        assert client.protocol.peer_error.code == ErrorCode.THROTTLED
        await client.close()
        # Another account from elsewhere is not locked by it.
        other = await Hostile.connect(server.url)
        await other.login("dr.b", PASSWORD, "clinic-a")
        await other.close()
    finally:
        await server.close()


async def test_an_unknown_user_costs_a_password_check_like_a_wrong_password(
    tmp_path: Path,
) -> None:
    """Enumeration by timing: both answers come after one argon2 verification."""
    server = await start_server(tmp_path)
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append("verify")
            return super().verify(hash, password)

    server.gate.hasher = CountingHasher()
    try:
        for username in ("nobody-here", "dr.a"):
            client = await Hostile.connect(server.url)
            client.protocol.authenticate(username, "wrong guess", "clinic-a")
            refused = await client.refused()
            assert isinstance(refused, AuthenticationError)
            assert str(refused).startswith("bad_credentials: unknown user or wrong password")
            await client.close()
        assert calls == ["verify", "verify"]
    finally:
        await server.close()


class _Glitching(SyncServer):
    """Sends one malformed frame to the first live subscriber, then behaves."""

    glitched = False

    async def _on_subscribe(self, conn: object, request: object) -> None:
        await super()._on_subscribe(conn, request)  # type: ignore[arg-type]
        if not _Glitching.glitched:
            _Glitching.glitched = True
            await conn.channel.send(b"\x93\x04\x7f\x80")  # type: ignore[attr-defined]


async def test_live_mode_recovers_from_a_transient_protocol_error(tmp_path: Path) -> None:
    """Why 9: a live replica that hit a protocol error reconnects; it is not stopped."""
    server = await start_server(tmp_path, server_class=_Glitching)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        async with live(laptop) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE, times=2)  # back online after it
            assert _Glitching.glitched
            assert not run.task.done()
    finally:
        await laptop.close()
        await server.close()


async def _fill_disk(store: object) -> None:
    """What a full disk looks like to SQLite: no page may be added."""

    def job(raw: object) -> None:
        pages = raw.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[attr-defined]
        raw.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]

    await store._run("filling the disk", job)  # type: ignore[attr-defined]


async def test_a_full_server_disk_refuses_the_push_and_the_laptop_keeps_it(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record = await laptop.create_record()
        await laptop.sync()
        await _fill_disk(server.store)
        await laptop.set(record, "note", "x" * 200_000, author="dr.a")
        with pytest.raises(ConnectionLostError, match="could not store this push"):
            await laptop.sync()
        assert (await laptop.status()).pending == 1  # kept, to push when there is room
    finally:
        await laptop.close()
        await server.close()


async def test_a_full_laptop_disk_still_gets_its_work_to_the_server(tmp_path: Path) -> None:
    """Why 10: the laptop pushes before it writes anything (a new token included)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")
    try:
        record = await laptop.create_record()
        await laptop.set(record, "note", "written before the disk filled", author="dr.a")
        await other.sync()
        others_record = await other.create_record()
        await other.set(others_record, "note", "x" * 200_000, author="dr.a")
        await other.sync()  # something big to pull: it cannot fit any more
        await _fill_disk(laptop.store)
        with pytest.raises(StorageError, match="disk is full"):
            await laptop.sync(username="dr.a", password=PASSWORD)
        await other.sync()
        assert (await other.record(record)).value("note") == "written before the disk filled"
    finally:
        await laptop.close()
        await other.close()
        await server.close()


def _damage_a_page(path: Path) -> None:
    """Overwrite the root page of the records' log (a bad sector, a bad copy)."""
    with sqlite3.connect(path) as conn:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'log'")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page
    data[start : start + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


async def test_a_damaged_laptop_file_refuses_writes_and_still_exports(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    path = tmp_path / "laptop.db"
    try:
        for n in range(40):
            record = await laptop.create_record()
            await laptop.set(record, "note", f"patient {n} " + "x" * 2000, author="dr.a")
        await laptop.close()  # checkpointed: every page is in the file
        await asyncio.to_thread(_damage_a_page, path)
        before = await asyncio.to_thread(path.read_bytes)
        damaged = await Replica.open(path)
        assert damaged.store.damaged is not None  # type: ignore[attr-defined]
        with pytest.raises(CorruptDatabaseError, match="integrity check"):
            await damaged.create_record()
        with pytest.raises((CorruptDatabaseError, SyncRefusedError)):
            await damaged.sync()
        exported = await damaged.store.export_unsynced(tmp_path / "rescued.export")
        assert exported == 80  # every unsynced change, for a person to import elsewhere
        await damaged.close()
        laptop = damaged
        assert await asyncio.to_thread(path.read_bytes) == before  # nothing written into it
    finally:
        await laptop.close()
        await server.close()


async def test_bytes_a_laptop_cannot_merge_are_kept_aside_and_the_sync_finishes(
    tmp_path: Path,
) -> None:
    """Why 5: stored damaged bytes (from before the server checked) fail no sync."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    writer = await enrolled(tmp_path, server, "writer")
    try:
        good = await laptop.create_record()
        bad = await writer.create_record()
        await writer.sync()
        await laptop.sync()
        damaged = b"\x01\x01\x99\xff\xff\xff\x7f\x00garbage"
        # Stored straight into the server's feed, as a server before admission could.
        await _feed_row(server, bad, damaged)
        await writer.set(bad, "note", "written after the damage", author="dr.a")
        await writer.sync()
        await laptop.set(good, "note", "still synced", author="dr.a")
        report = await laptop.sync()
        assert report.uploaded == 1
        status = await laptop.status()
        assert status.quarantined == 1
        [kept] = await laptop.quarantined()
        assert kept.record_id == bad
        assert kept.update == damaged
        assert "not a valid" in kept.reason
        # The rest of that record still arrived; the next sync is clean.
        assert (await laptop.record(bad)).value("note") == "written after the damage"
        await laptop.sync()
        assert (await laptop.status()).quarantined == 1
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


@pytest.mark.parametrize("loaded", [True, False], ids=["record loaded", "record on disk"])
async def test_an_update_that_renames_a_record_is_kept_aside_and_the_sync_finishes(
    tmp_path: Path, loaded: bool
) -> None:
    """Anything over the wire is untrusted: a feed row (planted here, as a server before
    admission could have stored it) that makes a record another's is kept aside."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    writer = await enrolled(tmp_path, server, "writer")
    try:
        held = await writer.create_record()
        await writer.set(held, "name", "Awa Diop", author="dr.a")
        await writer.sync()
        await laptop.sync()
        if loaded:
            assert (await laptop.record(held)).value("name") == "Awa Diop"
        else:  # a fresh process: nothing of the record in memory
            await laptop.close()
            laptop = await Replica.open(tmp_path / "laptop.db")
        renamed = Record.from_update(held, await server.store.load(held) or b"", replica="evil")
        before = renamed.state_vector()
        renamed._meta["id"] = "another-record"  # no public API writes a record's id
        moved = renamed.update_since(before)
        await _feed_row(server, held, moved)
        await writer.set(held, "name", "Awa Diop Sow", author="dr.a")
        await writer.sync()
        await laptop.sync()  # finishes
        [kept] = await laptop.quarantined()
        assert kept.record_id == held
        assert kept.update == moved
        assert "another-record" in kept.reason
        assert (await laptop.record(held)).value("name") == "Awa Diop Sow"  # the rest arrived
        stored = await laptop.store.load(held)
        assert stored is not None
        Record.from_update(held, stored, replica="check")  # still its own: loading checks
        await laptop.sync()  # and the next sync is clean
        assert (await laptop.status()).quarantined == 1
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def _feed_row(server: SyncServer, record_id: str, data: bytes) -> None:
    def job(raw: sqlite3.Connection) -> None:
        [(key,)] = raw.execute("SELECT rk FROM records WHERE record_id = ?", (record_id,))
        [(head,)] = raw.execute("SELECT COALESCE(MAX(seq), 0) FROM feed")
        raw.execute(
            "INSERT INTO feed (seq, rk, organisation, origin, data) VALUES (?, ?, ?, NULL, ?)",
            (head + 1, key, "clinic-a", data),
        )

    await server.store._run("planting a damaged feed row", job)  # type: ignore[attr-defined]
