"""Pulls and live entries take the server's conflict rows when both run the same rulebook.

Real parts: a server on 127.0.0.1 and SQLite files. A laptop whose rulebook has
the server's fingerprint stores a pulled or live record that no local edit of its
own holds with the server's rows, its rules never running (protocol version 8);
a record it has loaded is built and checked as before. Older laptops and older
servers (version 7) sync as before, and a server's check that does not parse
stops the pull with nothing stored.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, live, start_server, until, watch
from tests.e2e.test_first_copy_index import RECORDS, rows_by_record, seed

import caresync.replication.session
import caresync.server
from caresync import Record
from caresync.conflicts import Conflict, Rulebook
from caresync.exceptions import RemoteProtocolError
from caresync.protocol import ServerProtocol
from caresync.replica import CopyProgress, Replica, ReplicaState, SyncLimits
from caresync.replication import meta
from caresync.replication.epochs import FeedPosition


class Counted(Rulebook):
    """The built-in rules (the server's fingerprint), counting how often they run here."""

    runs = 0

    def conflicts(self, record: Record, *, linked: Sequence[Record] = ()) -> list[Conflict]:
        Counted.runs += 1
        return super().conflicts(record, linked=linked)


async def edit_and_sync(laptop: Replica, record_ids: Sequence[str], value: str) -> None:
    for record_id in record_ids:
        await laptop.set(record_id, "birthDate", value)
    await laptop.sync()


async def test_a_pull_stores_the_servers_rows_without_building(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await seed(server)  # some records with two birth dates: open conflicts
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())
        await edit_and_sync(writer, ids[:10], "1970-01-01")  # resolves the conflicts
        Counted.runs = 0
        report = await reader.sync()
        assert report.downloaded == 10
        assert Counted.runs == 0  # no record built, no rule run
        assert await rows_by_record(reader) == await rows_by_record(server)

        # A record loaded here (edited on this laptop) is built and checked as before.
        await reader.set(ids[11], "birthDate", "1999-09-09")
        await writer.set(ids[11], "birthDate", "1888-08-08")  # concurrent: a conflict
        await writer.set(ids[12], "birthDate", "1777-07-07")
        await writer.sync()
        Counted.runs = 0
        await reader.sync()
        assert Counted.runs == 1  # the loaded one only
        expected = await rows_by_record(server)
        assert ids[11] in expected
        assert await rows_by_record(reader) == expected
        await writer.sync()  # both laptops now hold the same: they list the same conflicts
        listed = sorted((c.record_id, c.id) for c in await reader.conflicts())
        assert listed == sorted((c.record_id, c.id) for c in await writer.conflicts())
        assert ids[11] in {record_id for record_id, _id in listed}
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_live_entries_store_the_servers_rows_without_building(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())
        signal = watch(reader)
        async with live(reader) as run:
            async with asyncio.timeout(LIMIT_S):
                await run.states.reach(ReplicaState.ONLINE)  # subscribed: what comes is live
            Counted.runs = 0
            await edit_and_sync(writer, ids[:5], "1960-06-06")
            expected = await rows_by_record(server)

            async def caught_up() -> bool:
                head = await server.store.feed_head()
                return FeedPosition.parse(await reader.store.get_meta(meta.CHECKPOINT)).seq == head

            async with asyncio.timeout(LIMIT_S):
                await until(caught_up, signal)
            assert Counted.runs == 0
        assert await rows_by_record(reader) == expected
        for record_id in ids[:5]:
            view = await reader.record(record_id)
            assert view.value("birthDate") == "1960-06-06"
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_version_7_laptop_builds_and_checks_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", (4, 5, 6, 7))
    older = await enrolled(tmp_path, server, "older", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())
        await edit_and_sync(writer, ids[:4], "1950-05-05")
        Counted.runs = 0
        assert (await older.sync()).downloaded == 4
        assert Counted.runs == 4  # each pulled record built and checked
        assert await rows_by_record(older) == await rows_by_record(server)
    finally:
        await older.close()
        await writer.close()
        await server.close()


async def test_a_version_7_server_is_synced_with_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = functools.partial(ServerProtocol, protocol_versions=(1, 2, 3, 4, 5, 6, 7))
    monkeypatch.setattr(caresync.server, "ServerProtocol", older)
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b", rulebook=Counted())
    try:
        ids = sorted(await writer.record_ids())
        await edit_and_sync(writer, ids[:4], "1940-04-04")
        Counted.runs = 0
        assert (await reader.sync()).downloaded == 4
        assert Counted.runs == 4
        assert await rows_by_record(reader) == await rows_by_record(server)
        assert len(await reader.record_ids()) == RECORDS
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_check_that_does_not_parse_stops_the_pull_with_nothing_stored(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b")
    try:
        ids = sorted(await writer.record_ids())
        await edit_and_sync(writer, ids[:3], "1930-03-03")
        checkpoint = await reader.store.get_meta(meta.CHECKPOINT)
        before = await reader.store.load_many(ids[:3])

        async def garbage(record_ids: Sequence[str]) -> dict[str, tuple[bytes, bool]]:
            return dict.fromkeys(record_ids, (b"\xff\xff", False))

        server.store.state_vectors = garbage  # type: ignore[method-assign]
        with pytest.raises(RemoteProtocolError, match="bad state vector"):
            await reader.sync()
        assert await reader.store.get_meta(meta.CHECKPOINT) == checkpoint
        assert await reader.store.load_many(ids[:3]) == before
    finally:
        await reader.close()
        await writer.close()
        await server.close()


async def test_a_first_copy_comes_in_batches_sized_by_bytes(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    await seed(server)
    stored = await server.store.load_many(await server.store.record_ids())
    budget = 4 * max(len(data) for data in stored.values())
    limits = SyncLimits(copy_batch_records=1000, copy_batch_bytes=budget)
    laptop = await Replica.open(tmp_path / "sized.db", limits=limits)
    seen: list[CopyProgress] = []
    whole = await Replica.open(tmp_path / "whole.db")  # the default budget: one batch
    seen_whole: list[CopyProgress] = []
    try:
        for replica, progress in ((laptop, seen), (whole, seen_whole)):
            await replica.enrol(
                server.url,
                username="dr.a",
                password=PASSWORD,
                organisation="clinic-a",
                progress=progress.append,
            )
            assert len(await replica.record_ids()) == RECORDS
        start = [CopyProgress(0, 0, 0, 0), *seen]
        assert all(b.done_bytes - a.done_bytes <= budget for a, b in zip(start, seen, strict=False))
        assert len(seen) > 3  # by bytes: a few records a batch, not a thousand
        assert len(seen_whole) == 1
        assert await rows_by_record(laptop) == await rows_by_record(server)
    finally:
        await whole.close()
        await laptop.close()
        await server.close()
