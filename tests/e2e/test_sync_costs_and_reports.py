"""End to end, real parts: outbox reports for operators, relaying only what is new,
and a pull that skips what the laptop pushed itself and merges per record."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.live_helpers import PASSWORD, enrolled, raw_session, start_server
from tests.sqlite_trace import traced, write_transactions

from caresync.protocol import OutboxReport as Report
from caresync.protocol import PushAck
from caresync.replica import Replica
from caresync.replication import meta
from caresync.server import SyncServer
from caresync.storage import SQLiteStore


class RecordingServer(SyncServer):
    """A server that also keeps every OutboxReport it received, in order."""

    reports: list[tuple[str, int, int | None]]

    async def _on_outbox_report(self, conn: object, report: Report) -> None:  # type: ignore[override]
        self.reports.append(
            (conn.protocol.replica_id or "", report.pending, report.oldest_pending_ms)  # type: ignore[attr-defined]
        )
        await super()._on_outbox_report(conn, report)  # type: ignore[arg-type]


async def test_a_laptop_reports_its_outbox_and_operators_see_it(tmp_path: Path) -> None:
    server = await start_server(tmp_path, server_class=RecordingServer)
    assert isinstance(server, RecordingServer)
    server.reports = []
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        [info] = await server.replicas()
        assert (info.replica_id, info.pending, info.oldest_pending_ms) == (
            laptop.replica_id,
            0,
            None,
        )
        server.reports.clear()
        # Offline work: two edits wait in the outbox.
        record_id = await laptop.create_record()
        await laptop.set(record_id, "birthDate", "1990-01-01", author="dr.a")
        oldest = await laptop.store.oldest_pending_ms()
        assert oldest is not None
        await laptop.sync()
        # Reported when the session started (2 waiting), then after the push (none left).
        assert server.reports == [(laptop.replica_id, 2, oldest), (laptop.replica_id, 0, None)]
        [info] = await server.replicas("clinic-a")
        assert (info.pending, info.oldest_pending_ms) == (0, None)
        assert info.last_seen_ms is not None
        assert await server.replicas("clinic-b") == []
    finally:
        await laptop.close()
        await server.close()


async def test_a_sync_that_changes_nothing_in_the_outbox_reports_it_once(tmp_path: Path) -> None:
    server = await start_server(tmp_path, server_class=RecordingServer)
    assert isinstance(server, RecordingServer)
    server.reports = []
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        server.reports.clear()
        await laptop.sync()
        # Nothing waited and nothing was pushed: the report after the push would say
        # what the first said, so it is not sent (nor committed again by the server).
        assert server.reports == [(laptop.replica_id, 0, None)]
    finally:
        await laptop.close()
        await server.close()


async def test_a_sync_with_nothing_to_do_commits_only_the_login_on_the_server(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        await laptop.sync()
        assert isinstance(server.store, SQLiteStore)
        async with traced(server.store) as statements:
            await laptop.sync()
        # The login's audit entry, with when the replica was last seen in the same
        # commit; its outbox report says what the server holds already (nothing
        # waits), so is not committed again.
        writes = write_transactions(statements)
        assert len(writes) == 1, writes
        assert any("last_seen_ms" in statement for statement in writes[0])
        assert any("audit_trail" in statement for statement in writes[0])
        assert not any("pending" in statement for write in writes for statement in write)
        [info] = await server.replicas()
        assert (info.pending, info.oldest_pending_ms) == (0, None)
        # An outbox that changed is committed as before.
        record_id = await laptop.create_record()
        async with traced(server.store) as statements:
            await laptop.sync()
        assert any(
            "pending" in statement
            for write in write_transactions(statements)
            for statement in write
        )
        [info] = await server.replicas()
        assert (info.pending, info.oldest_pending_ms) == (0, None)
        assert await server.store.has_record(record_id)
    finally:
        await laptop.close()
        await server.close()


async def test_a_push_of_updates_the_server_holds_relays_and_reports_nothing(
    tmp_path: Path,
) -> None:
    """A batch that adds nothing gets no feed entry, no fan-out, no on_commit(0)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    committed: list[int] = []
    server.on_commit.append(committed.append)
    try:
        record_id = await laptop.create_record()
        [pending] = await laptop.store.pending(10)
        await laptop.sync()
        assert len(committed) == 1
        assert committed[0] > 0
        head = await server.store.feed_head()

        # The same bytes again under a new local sequence number, as a replica
        # restored from an export would send them.
        async with raw_session(server, laptop) as session:
            ack = await session.push(pending.seq + 100, record_id, pending.update)
            assert ack == PushAck(pending.seq + 100)
        assert committed == committed[:1]  # no hook call, in particular none with seq 0
        assert await server.store.feed_head() == head
    finally:
        await laptop.close()
        await server.close()


async def test_pulling_many_updates_of_one_record_and_our_own_converges(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "a")
    b = await enrolled(tmp_path, server, "b", user="dr.b")
    try:
        record_id = await a.create_record()
        for day in range(1, 21):  # 21 updates of one record in the feed
            await a.set(record_id, "birthDate", f"1990-01-{day:02d}", author="dr.a")
        await a.sync()
        assert (await b.sync()).downloaded == 21
        assert (await b.record(record_id)).value("birthDate") == "1990-01-20"
        # Offline on both: more on A, one concurrent value on B.
        for day in range(21, 26):
            await a.set(record_id, "birthDate", f"1990-01-{day:02d}", author="dr.a")
        await b.set(record_id, "birthDate", "1991-01-01", author="dr.b")
        await a.sync()
        report = await b.sync()  # A's 5 in one batch; its own update is not sent back
        assert (report.uploaded, report.downloaded) == (1, 5)
        await a.sync()
        for laptop in (a, b):
            view = await laptop.record(record_id)
            assert {r.value for r in view.history("birthDate")} >= {"1990-01-25", "1991-01-01"}
        conflicts_a, conflicts_b = await a.conflicts(), await b.conflicts()
        assert len(conflicts_a) == 1
        assert conflicts_a == conflicts_b
        assert await a.store.count_conflicts() == await b.store.count_conflicts() == 1
        # A fresh laptop's first copy holds the same record and the same conflict.
        c = await Replica.open(tmp_path / "c.db")
        try:
            await c.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
            assert await c.conflicts() == conflicts_a
            assert (await c.fields(record_id)) == (await a.fields(record_id))
        finally:
            await c.close()
    finally:
        await a.close()
        await b.close()
        await server.close()


async def test_a_sync_with_nothing_to_do_commits_nothing(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await laptop.create_record()
        await laptop.set(record_id, "birthDate", "1990-01-01", author="dr.a")
        await laptop.sync()
        before = await laptop.status()
        assert before.last_sync is not None
        assert isinstance(laptop.store, SQLiteStore)
        async with traced(laptop.store) as statements:
            report = await laptop.sync()
        assert (report.uploaded, report.downloaded) == (0, 0)
        # Nothing changed: no write transaction, so no fsync (the versions the server
        # named, its hub report and the time of the last sync were all kept already).
        assert write_transactions(statements) == []
        after = await laptop.status()
        assert after.last_sync is not None
        assert after.last_sync >= before.last_sync  # the fresh time, kept in memory
        # A stored time older than the bound is renewed (one commit): here, as a laptop
        # restarted finds it (a running replica keeps in memory what it stored).
        await laptop.store.set_meta(meta.LAST_SYNC_MS, "1000")
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")
        async with traced(laptop.store) as statements:
            await laptop.sync()
        stored = await laptop.store.get_meta(meta.LAST_SYNC_MS)
        assert stored is not None
        assert int(stored) > 1000
        assert len(write_transactions(statements)) == 1
    finally:
        await laptop.close()
        await server.close()
