"""Review tests of the login's mark check (``sync.acked`` against
``Authenticated.pushed_up_to``) and of ``Replica.enrol_again``: no false "server went
back" in ordinary life (a laptop restored from an older copy of itself, a push whose
acknowledgement was lost, a laptop upgraded from before ``sync.acked``), and what
enrolling again does to a server that still knows the laptop, or revoked it.

Real parts: servers on SQLite files and 127.0.0.1, laptops on SQLite files, copies by
``caresync backup`` or file copies.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.enrol_helpers import Restores
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, start_server, until, watch
from tests.e2e.restore_helpers import back_up, port_of, put_back

from caresync import ConnectionLostError
from caresync.exceptions import (
    AuthenticationError,
    CaresyncError,
    InvalidInputError,
    ReplicaRevokedError,
    StorageError,
    SyncRefusedError,
)
from caresync.protocol import PushBatch
from caresync.replica import Replica, ReplicaState, SyncLimits
from caresync.server import SyncServer


class AckDroppingServer(SyncServer):
    """Commits a push, then (once armed) closes the connection instead of acknowledging."""

    cut_next_push = False

    async def _on_push(self, conn: Any, batch: PushBatch) -> None:
        await super()._on_push(conn, batch)
        if self.cut_next_push:
            self.cut_next_push = False
            conn.protocol.data_to_send()  # the PushAck queued after the commit: dropped
            await conn.channel.close("cut between commit and ack")


async def test_a_laptop_restored_from_an_older_copy_of_itself_is_no_server_gone_back(
    tmp_path: Path,
) -> None:
    """Its copy held edits the newer laptop pushed since (renumbered at the login, sent
    again, held by the server already): no sync of it says the server went back."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    path, saved = tmp_path / "laptop.db", tmp_path / "saved.db"
    restored: Replica | None = None
    try:
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        for dose in ("5 mg", "7.5 mg"):
            await laptop.set(chart, "warfarin", dose, author="dr.a")
        await back_up(path, saved)  # the copy holds two edits waiting
        await laptop.sync()
        await laptop.set(chart, "warfarin", "10 mg", author="dr.a")
        await laptop.sync()
        await laptop.close()
        await put_back(saved, path)
        restored = await Replica.open(path)
        reports = [await restored.sync() for _ in range(3)]
        assert [report.server_went_back for report in reports] == [False, False, False]
        assert (await restored.status()).pending == 0
        await restored.set(chart, "warfarin", "2.5 mg", author="dr.a")
        assert (await restored.sync(pull=False)).server_went_back is False
        assert (await restored.sync()).server_went_back is False
    finally:
        if restored is not None:
            await restored.close()
        else:
            await laptop.close()
        await server.close()


async def test_a_push_whose_acknowledgement_was_lost_is_no_server_gone_back(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, server_class=AckDroppingServer)
    assert isinstance(server, AckDroppingServer)
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(push_batch_items=2))
    try:
        chart = await laptop.create_record()
        await laptop.sync()
        for visit in range(5):
            await laptop.set(chart, "visits", visit, author="dr.a")
        server.cut_next_push = True
        with pytest.raises(ConnectionLostError):
            await laptop.sync(pull=False)
        reports = [await laptop.sync() for _ in range(3)]
        assert [report.server_went_back for report in reports] == [False, False, False]
        assert (await laptop.status()).pending == 0
    finally:
        await laptop.close()
        await server.close()


async def test_a_laptop_upgraded_from_before_the_mark_is_no_server_gone_back(
    tmp_path: Path,
) -> None:
    """A laptop database without ``sync.acked`` (written before it existed)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        await laptop.close()
        with sqlite3.connect(tmp_path / "laptop.db") as raw:
            assert raw.execute("DELETE FROM meta WHERE key = 'sync.acked'").rowcount == 1
        laptop = await Replica.open(tmp_path / "laptop.db")
        await laptop.set(chart, "name", "Awa N. Diop", author="dr.a")
        assert (await laptop.sync()).server_went_back is False
        assert (await laptop.sync()).server_went_back is False
    finally:
        await laptop.close()
        await server.close()


async def test_enrolling_again_with_a_server_that_knows_the_laptop_enrols_nothing(
    tmp_path: Path,
) -> None:
    """Refused before any enrolment: the server is left no replica nobody holds."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        before = {info.replica_id for info in await server.replicas()}
        with pytest.raises(SyncRefusedError, match="still knows replica"):
            await laptop.enrol_again(username="dr.a", password=PASSWORD)
        assert {info.replica_id for info in await server.replicas()} == before
        assert (await laptop.sync()).server_went_back is False
    finally:
        await laptop.close()
        await server.close()


async def test_a_revoked_laptop_cannot_enrol_again(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        before = {info.replica_id for info in await server.replicas()}
        await server.revoke(laptop.replica_id)
        with pytest.raises(ReplicaRevokedError):
            await laptop.enrol_again(username="dr.a", password=PASSWORD)
        assert {info.replica_id for info in await server.replicas()} == before
    finally:
        await laptop.close()
        await server.close()


async def _restored_server_forgetting_a_late_laptop(
    tmp_path: Path,
) -> tuple[AckDroppingServer, Replica, Replica, str]:
    """A server restored from a backup older than ``late``'s enrolment (its syncs and
    edits after that backup): the server, the laptop enrolled before, ``late``, a record."""
    path, saved = tmp_path / "server.db", tmp_path / "backup.db"
    server = await start_server(tmp_path, server_class=AckDroppingServer)
    port = port_of(server)
    old = await enrolled(tmp_path, server, "old")
    chart = await old.create_record()
    await old.set(chart, "name", "Awa Diop", author="dr.a")
    await old.sync()
    await back_up(path, saved)
    late = await enrolled(tmp_path, server, "late", user="dr.b")
    await late.set(chart, "birthDate", "1990-04-12", author="dr.b")
    for visit in range(6):
        await late.set(chart, "visits", visit, author="dr.b")
    await late.sync()
    await server.close()
    await put_back(saved, path)
    restored = await AckDroppingServer.open(path)
    await restored.serve("127.0.0.1", port)
    return restored, old, late, chart


async def test_enrolling_again_cut_short_is_finished_by_the_next_sync(tmp_path: Path) -> None:
    """The connection drops after the server committed the first batch sent again (its
    acknowledgement lost): the next sync finishes, nothing is lost, the audit chain is
    whole on the server."""
    server, old, late, chart = await _restored_server_forgetting_a_late_laptop(tmp_path)
    try:
        secret_before = await late.store.get_meta("replica.secret")
        late.limits = SyncLimits(push_batch_items=1)
        server.cut_next_push = True
        with pytest.raises(ConnectionLostError):
            await late.enrol_again(username="dr.b", password=PASSWORD)
        assert await late.store.get_meta("replica.secret") != secret_before
        report = await late.sync()
        assert report.uploaded > 0
        assert (await late.status()).pending == 0
        assert (await late.sync()).server_went_back is False
        await old.sync()
        assert (await old.record(chart, audited=False)).value("visits") == 5
        mine = await late.store.audit_entries(replica_id=late.replica_id, after_seq=0, limit=10_000)
        held = await server.store.audit_entries(
            replica_id=late.replica_id, after_seq=0, limit=10_000
        )
        assert [(e.seq, e.hash) for e in held] == [(e.seq, e.hash) for e in mine]
    finally:
        await old.close()
        await late.close()
        await server.close()


async def test_enrolling_again_with_another_server_at_the_address_stores_nothing(
    tmp_path: Path,
) -> None:
    """A server that is not the pinned one (a new database at the laptop's address)."""
    server = await start_server(tmp_path)
    port = port_of(server)
    laptop = await enrolled(tmp_path, server, "laptop")
    other: SyncServer | None = None
    try:
        await server.close()
        other = await SyncServer.open(tmp_path / "other.db")
        await other.add_user("clinic-a", "dr.a", PASSWORD)
        await other.serve("127.0.0.1", port)
        secret = await laptop.store.get_meta("replica.secret")
        with pytest.raises(CaresyncError):
            await laptop.enrol_again(username="dr.a", password=PASSWORD)
        assert await laptop.store.get_meta("replica.secret") == secret
        assert await other.replicas() == []
    finally:
        await laptop.close()
        if other is not None:
            await other.close()


async def test_a_queue_again_whose_mark_was_not_written_is_recovered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between queue_again and writing sync.acked: the next sync finds the mark
    short again and queues everything again; then all is sent and the next is quiet."""
    path, saved = tmp_path / "server.db", tmp_path / "backup.db"
    server = await start_server(tmp_path)
    port = port_of(server)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        await back_up(path, saved)
        await laptop.set(chart, "birthDate", "1990-04-12", author="dr.a")
        await laptop.sync(pull=False)
        await server.close()
        await put_back(saved, path)
        server = await SyncServer.open(path)
        await server.serve("127.0.0.1", port)

        store = laptop.store
        set_meta = store.set_meta

        async def crash_on_the_mark(key: str, value: str) -> None:
            if key == "sync.acked":
                raise StorageError("the power went")
            await set_meta(key, value)

        monkeypatch.setattr(store, "set_meta", crash_on_the_mark)
        with pytest.raises(StorageError):
            await laptop.sync()
        monkeypatch.setattr(store, "set_meta", set_meta)
        assert (await laptop.sync()).server_went_back
        assert (await laptop.status()).pending == 0
        assert (await laptop.sync()).server_went_back is False
        fresh = await enrolled(tmp_path, server, "fresh")
        try:
            assert (await fresh.record(chart, audited=False)).value("birthDate") == "1990-04-12"
        finally:
            await fresh.close()
    finally:
        await laptop.close()
        await server.close()


async def test_enrolling_again_whose_answer_was_lost_can_be_done_again(tmp_path: Path) -> None:
    """The server enrolled the laptop again and the link was cut before its answer: it
    holds a secret the laptop never got. Before, enrol_again was then refused (the server
    knew the id) and every sync failed with bad_credentials: no way back. Now the same
    account asks again and the server gives that never-used id a new secret."""
    restores = Restores(tmp_path)
    late = await restores.start(tmp_path)
    try:
        server = await restores.put_back(restores.old)  # forgets the laptop
        known = [info.replica_id for info in await server.replicas()]
        assert late.replica_id not in known
        server.cut_next_enrol = True
        with pytest.raises(ConnectionLostError):
            await late.enrol_again(username="dr.a", password=PASSWORD)
        report = await late.enrol_again(username="dr.a", password=PASSWORD)
        assert report.server_went_back
        assert (await late.status()).pending == 0
        assert (await late.sync()).server_went_back is False
        # The one id, given again: no second one enrolled on the way.
        assert sorted(info.replica_id for info in await server.replicas()) == sorted(
            [*known, late.replica_id]
        )
    finally:
        await late.close()
        await restores.close()


async def test_enrolling_again_sends_the_audit_chain_whole_without_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server forgot the laptop, and all of its audit chain: the chain goes from its
    start, not after the entry the forgotten server last acknowledged (which the server
    refused as a broken chain, logged as a bad message, before it went again whole)."""
    server, old, late, _chart = await _restored_server_forgetting_a_late_laptop(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="caresync.server"):
            await late.enrol_again(username="dr.b", password=PASSWORD)
        assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == []
        mine = await late.store.audit_entries(replica_id=late.replica_id, after_seq=0, limit=10_000)
        held = await server.store.audit_entries(
            replica_id=late.replica_id, after_seq=0, limit=10_000
        )
        assert [(e.seq, e.hash) for e in held] == [(e.seq, e.hash) for e in mine]
    finally:
        await old.close()
        await late.close()
        await server.close()


async def test_a_crash_after_enrolling_again_before_the_resend_is_put_right_by_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new secret is kept, then the laptop fails before it queued anything again:
    a password sync (the session died with the old server) finds the server's mark of
    its pushes (0) below what it had acknowledged, and sends everything again."""
    server, old, late, chart = await _restored_server_forgetting_a_late_laptop(tmp_path)
    try:
        store = late.store
        queue_again = store.queue_again

        async def crash(*args: Any, **kwargs: Any) -> int:
            raise StorageError("the power went")

        monkeypatch.setattr(store, "queue_again", crash)
        with pytest.raises(StorageError):
            await late.enrol_again(username="dr.b", password=PASSWORD)
        monkeypatch.setattr(store, "queue_again", queue_again)
        with pytest.raises(SyncRefusedError, match="still knows"):
            await late.enrol_again(username="dr.b", password=PASSWORD)
        with pytest.raises(AuthenticationError):
            await late.sync()  # the session was the forgetful server's: a password sync
        report = await late.sync(username="dr.b", password=PASSWORD)
        assert report.server_went_back
        assert (await late.status()).pending == 0
        await old.sync()
        record = await old.record(chart, audited=False)
        assert (record.value("birthDate"), record.value("visits")) == ("1990-04-12", 5)
    finally:
        await old.close()
        await late.close()
        await server.close()


async def test_live_mode_after_enrolling_again_pushes_and_is_quiet(tmp_path: Path) -> None:
    server, old, late, chart = await _restored_server_forgetting_a_late_laptop(tmp_path)
    try:
        await late.enrol_again(username="dr.b", password=PASSWORD)
        signal = watch(late, server=server)
        async with live(late) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE)
            with pytest.raises(InvalidInputError, match="live mode"):
                await late.enrol_again(username="dr.b", password=PASSWORD)
            await late.set(chart, "weightKg", 71, author="dr.b")

            async def acknowledged() -> bool:
                return (await late.status()).pending == 0

            await until(acknowledged, signal)
        assert (await late.sync()).server_went_back is False
        await old.sync()
        assert (await old.record(chart, audited=False)).value("weightKg") == 71
    finally:
        await old.close()
        await late.close()
        await server.close()
