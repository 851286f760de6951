"""Syncs cut short, with real parts: a first copy and a push interrupted half-way, and TLS.

The server and laptops are real (websockets on 127.0.0.1, SQLite files); the
cuts are made at exact points by a progress callback that raises, or by a
server subclass that drops its acknowledgement after committing.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, start_server, until, watch

from caresync import ConnectionLostError, Record
from caresync.protocol import CopyRequest, PushBatch
from caresync.replica import CopyProgress, Replica, ReplicaState, SyncLimits
from caresync.server import SyncServer
from caresync.storage import IncomingUpdate

RECORDS = 2_000
COPY_BATCH = 500


class CutHere(Exception):
    """Raised by a progress callback to cut the first copy at a known point."""


class RecordingServer(SyncServer):
    """A server that notes every CopyRequest it answers, per connection."""

    copy_requests: list[tuple[object, CopyRequest]]

    async def _on_copy(self, conn: Any, request: CopyRequest) -> None:
        self.copy_requests.append((conn, request))
        await super()._on_copy(conn, request)

    def resume_points(self) -> list[list[str | None]]:
        """Each connection's requested resume points, connections in order."""
        by_conn: dict[int, list[str | None]] = {}
        for conn, request in self.copy_requests:
            by_conn.setdefault(id(conn), []).append(request.after_record_id)
        return list(by_conn.values())


class AckDroppingServer(SyncServer):
    """Commits push batches like any server, but after the n-th commit, instead of
    acknowledging, closes the connection: the ack is lost after the commit."""

    cut_after_commits: int | None = None
    commits = 0

    async def _on_push(self, conn: Any, batch: PushBatch) -> None:
        head = await self.store.feed_head()
        await super()._on_push(conn, batch)
        if await self.store.feed_head() > head:
            self.commits += 1
        if self.commits == self.cut_after_commits:
            self.cut_after_commits = None
            conn.protocol.data_to_send()  # the PushAck queued after the commit: dropped
            await conn.channel.close("cut between commit and ack")


async def seed_server(server: SyncServer, count: int) -> list[str]:
    """Store ``count`` patient records on the server in one transaction; their ids, sorted."""
    items = []
    for i in range(count):
        record = Record.create(replica="seed")
        record.set("name", f"patient {i}", author="registrar")
        items.append(IncomingUpdate(record.record_id, record.update_since(), (), "clinic-a"))
    await server.store.write_remote(items, to_feed=True)
    return sorted(item.record_id for item in items)


async def test_an_interrupted_first_copy_resumes_where_it_stopped(tmp_path: Path) -> None:
    RecordingServer.copy_requests = []
    server = await start_server(tmp_path, server_class=RecordingServer)
    assert isinstance(server, RecordingServer)
    ids = await seed_server(server, RECORDS)
    laptop = await Replica.open(
        tmp_path / "laptop.db", limits=SyncLimits(copy_batch_records=COPY_BATCH)
    )
    seen: list[CopyProgress] = []

    def cut_after_two_batches(progress: CopyProgress) -> None:
        seen.append(progress)
        if len(seen) == 2:
            raise CutHere  # the second batch is committed; the connection goes down

    with pytest.raises(CutHere):
        await laptop.enrol(
            server.url,
            username="dr.a",
            password=PASSWORD,
            organisation="clinic-a",
            progress=cut_after_two_batches,
        )
    assert [p.done_records for p in seen] == [500, 1000]
    assert all(p.total_records == RECORDS for p in seen)
    assert laptop.enrolled
    assert await laptop.record_ids() == ids[:1000]
    # The laptop asks for the next batch before committing one, so the request for
    # the third batch may have left before the cut; its answer was never taken in.
    [first_connection] = server.resume_points()
    assert first_connection[:2] == [None, ids[499]]
    assert first_connection[2:] in ([], [ids[999]])

    resumed: list[CopyProgress] = []
    report = await laptop.sync(progress=resumed.append)
    # The resumed copy asked after the last committed record, and copied only the rest.
    assert server.resume_points()[1:] == [[ids[999], ids[1499]]]
    assert [p.done_records for p in resumed] == [1500, 2000]
    assert report.copied == RECORDS - 1000
    assert await laptop.record_ids() == ids
    assert (await laptop.record(ids[-1])).value("name") is not None
    # A later sync copies nothing again: the first copy is done.
    server.copy_requests.clear()
    assert (await laptop.sync()).copied == 0
    assert server.copy_requests == []
    await laptop.close()
    await server.close()


class GrowingServer(SyncServer):
    """Stores ``added`` more records just before answering the second CopyRequest."""

    added = 300
    requests = 0

    async def _on_copy(self, conn: Any, request: CopyRequest) -> None:
        self.requests += 1
        if self.requests == 2:
            await seed_server(self, self.added)
        await super()._on_copy(conn, request)


async def test_records_added_during_a_first_copy_all_reach_the_laptop(tmp_path: Path) -> None:
    server = await start_server(tmp_path, server_class=GrowingServer)
    assert isinstance(server, GrowingServer)
    await seed_server(server, RECORDS)
    laptop = await Replica.open(
        tmp_path / "laptop.db", limits=SyncLimits(copy_batch_records=COPY_BATCH)
    )
    seen: list[CopyProgress] = []
    await laptop.enrol(
        server.url,
        username="dr.a",
        password=PASSWORD,
        organisation="clinic-a",
        progress=seen.append,
    )
    # New ids fall before and after the copy's cursor: those before it come by the
    # feed, those after it in the copy, which ends only when no record is left.
    everything = await server.store.record_ids("clinic-a")
    assert len(everything) == RECORDS + GrowingServer.added
    assert await laptop.record_ids() == everything
    assert seen[0].total_records == RECORDS  # counted when the copy began
    assert seen[-1].done_records <= seen[-1].total_records
    await laptop.close()
    await server.close()


async def test_a_push_cut_between_commit_and_ack_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, server_class=AckDroppingServer)
    assert isinstance(server, AckDroppingServer)
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(push_batch_items=10))
    record_id = await laptop.create_record()
    for i in range(24):
        await laptop.set(record_id, "visits", i, author="dr.a")
    outbox = await laptop.store.pending(1000)
    assert len(outbox) == 25  # three push batches: 10, 10, 5

    server.cut_after_commits = 2
    with pytest.raises(ConnectionLostError):
        await laptop.sync()
    # The first batch was acknowledged; the second was committed but its ack lost.
    assert (await laptop.status()).pending == 15
    assert await server.store.feed_head() == 20

    report = await laptop.sync()
    assert report.uploaded == 15  # the resent batch was acknowledged, the last one sent
    assert (await laptop.status()).pending == 0
    feed = await server.store.feed_since(0, limit=1000)
    assert await server.store.feed_head() == 25
    assert [(i.record_id, i.update) for i in feed] == [(o.record_id, o.update) for o in outbox]
    assert (await laptop.record(record_id)).value("visits") == 23
    await laptop.close()
    await server.close()


async def test_a_live_push_cut_before_its_ack_is_resent_once_reconnected(tmp_path: Path) -> None:
    server = await start_server(tmp_path, server_class=AckDroppingServer)
    assert isinstance(server, AckDroppingServer)
    laptop = await enrolled(tmp_path, server, "laptop")
    record_id = await laptop.create_record()
    await laptop.sync()
    signal = watch(laptop, server=server)
    async with live(laptop) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ReplicaState.ONLINE)
        server.cut_after_commits = server.commits + 1
        await laptop.set(record_id, "name", "Ann", author="dr.a")

        async def acknowledged_after_reconnecting() -> bool:
            return (
                run.states.seen.count(ReplicaState.ONLINE) == 2
                and (await laptop.status()).pending == 0
            )

        await until(acknowledged_after_reconnecting, signal)
    feed = await server.store.feed_since(0, limit=100)
    assert len(feed) == 2  # the record's creation, and the edit once
    await laptop.close()
    await server.close()


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a trustme certificate for 127.0.0.1; a client context trusting it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_enrol_sync_and_live_over_tls(
    tmp_path: Path, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    server = await SyncServer.open(tmp_path / "server.db")
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.serve("127.0.0.1", 0, ssl=server_ctx)
    assert server.url.startswith("wss://")
    a = await Replica.open(tmp_path / "laptop-a.db")
    b = await Replica.open(tmp_path / "laptop-b.db")
    for laptop in (a, b):
        await laptop.enrol(
            server.url, username="dr.a", password=PASSWORD, organisation="clinic-a", ssl=client_ctx
        )
    record_id = await a.create_record()
    await a.set(record_id, "name", "Ann", author="dr.a")
    # A laptop that does not trust the certificate cannot connect; its work stays.
    with pytest.raises(ConnectionLostError, match="cannot connect"):
        await a.sync(ssl=ssl.create_default_context())
    assert (await a.status()).pending == 2
    assert (await a.sync(ssl=client_ctx)).uploaded == 2

    signal = watch(b)
    async with live(b, ssl=client_ctx) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ReplicaState.ONLINE)
        await a.set(record_id, "name", "Ann Smith", author="dr.a")
        await a.sync(ssl=client_ctx)

        async def b_has_it() -> bool:
            ids = await b.record_ids()
            return record_id in ids and (await b.record(record_id)).value("name") == "Ann Smith"

        await until(b_has_it, signal)
    for closable in (a, b, server):
        await closable.close()
