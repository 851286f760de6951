"""What a laptop takes in from its server is committed without waiting for the disk.

The server holds every update it sends, so a power cut that loses a laptop's last
pulled, copied or live batches (with their checkpoint, in the same transaction) loses
nothing: the next pull fetches them again. Such batches are committed under
``synchronous = NORMAL`` (in WAL mode: no sync at the commit), and the laptop makes
them durable at once, in one synced commit: before a sync or an enrolment returns, and
in live mode within ``SyncLimits.live_durable_delay_s``. What a person writes, and
what a server acknowledges, is still synced at its commit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    Signal,
    enrolled,
    live,
    start_server,
    until,
    watch,
)
from tests.sqlite_trace import traced, write_transactions

from caresync.exceptions import InvalidInputError
from caresync.replica import Replica, ReplicaState, SyncLimits
from caresync.server import SyncServer
from caresync.storage import SQLiteStore

NORMAL, FULL = "PRAGMA SYNCHRONOUS = NORMAL", "PRAGMA SYNCHRONOUS = FULL"


def _said(statements: list[str]) -> list[str]:
    return [" ".join(s.split()).upper() for s in statements]


def _lazy_commits(statements: list[str]) -> int:
    """Write transactions committed between a NORMAL and the FULL that follows it."""
    lazy, count = False, 0
    for word in _said(statements):
        if word == NORMAL:
            lazy = True
        elif word == FULL:
            lazy = False
        elif word == "COMMIT" and lazy:
            count += 1
    return count


def _store(replica: Replica) -> SQLiteStore:
    store = replica.store
    assert isinstance(store, SQLiteStore)
    return store


async def _writer_and_reader(tmp_path: Path, delay: float) -> tuple[SyncServer, Replica, Replica]:
    """A server, a laptop that writes, and one that reads with ``live_durable_delay_s``."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    limits = SyncLimits(live_durable_delay_s=delay)
    return server, writer, await enrolled(tmp_path, server, "reader", user="dr.b", limits=limits)


async def _an_edit_arrives(writer: Replica, reader: Replica, signal: Signal) -> None:
    """The writer edits a new record and syncs; returns once the reader has it."""
    record_id = await writer.create_record()
    await writer.set(record_id, "name", "Awa Ndiaye", author="dr.a")
    await writer.sync()

    async def reader_has_it() -> bool:
        return record_id in await reader.record_ids()

    await until(reader_has_it, signal)


async def _nothing_waits(store: SQLiteStore) -> bool:
    """True when make_durable finds no lazy commit waiting (it then writes nothing)."""
    async with traced(store) as statements:
        await store.make_durable()
    return write_transactions(statements) == []


async def test_a_pulls_batches_but_its_last_commit_lazily_and_the_sync_returns_with_all_on_disk(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(
        tmp_path, server, "reader", user="dr.b", limits=SyncLimits(pull_limit=1)
    )
    ids = [await writer.create_record() for _ in range(3)]
    async with traced(_store(writer)) as edits:
        for record_id in ids:
            await writer.set(record_id, "birthDate", "1990-01-01", author="dr.a")
    assert _lazy_commits(edits) == 0  # a person's edit: synced at its commit, as ever
    await writer.sync()
    async with traced(_store(reader)) as statements:
        report = await reader.sync()
    assert report.downloaded >= 3
    for record_id in ids:
        assert (await reader.record(record_id)).value("birthDate") == "1990-01-01"
    # Three batches or more, one entry each: all but the last lazily (each with its
    # checkpoint), the last synced, and with it every batch before it.
    pulled = [t for t in write_transactions(statements) if any("sync.checkpoint" in s for s in t)]
    assert len(pulled) >= 3
    assert _lazy_commits(statements) == len(pulled) - 1
    assert await _nothing_waits(_store(reader))
    for closable in (writer, reader, server):
        await closable.close()


async def test_a_first_copy_commits_its_batches_lazily_and_enrol_returns_with_them_on_disk(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    ids = [await writer.create_record() for _ in range(5)]
    for record_id in ids:
        await writer.set(record_id, "name", f"Patient {record_id[:4]}", author="dr.a")
    await writer.sync()
    laptop = await Replica.open(
        tmp_path / "laptop.db", limits=SyncLimits(copy_batch_records=2)
    )  # three batches
    async with traced(_store(laptop)) as statements:
        await laptop.enrol(server.url, username="dr.b", password=PASSWORD, organisation="clinic-a")
    assert _lazy_commits(statements) == 2  # of three batches: the last was synced
    assert await _nothing_waits(_store(laptop))
    assert sorted(await laptop.store.record_ids()) == sorted(ids)
    for closable in (writer, laptop, server):
        await closable.close()


async def test_live_updates_are_made_durable_after_each_batch_with_no_delay(
    tmp_path: Path,
) -> None:
    server, writer, reader = await _writer_and_reader(tmp_path, 0)
    store = _store(reader)
    synced = asyncio.Event()
    real = store.make_durable

    async def noted() -> None:
        await real()
        synced.set()

    store.make_durable = noted  # type: ignore[method-assign]
    signal = watch(writer, reader)
    async with live(reader) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ReplicaState.ONLINE)
        synced.clear()
        await _an_edit_arrives(writer, reader, signal)
        await synced.wait()  # the batch's own sync, not the delay's
        assert await _nothing_waits(store)
    for closable in (writer, reader, server):
        await closable.close()


async def test_leaving_live_mode_makes_its_batches_durable_without_waiting_for_the_delay(
    tmp_path: Path,
) -> None:
    # A delay far longer than the test: only the end of live mode can have synced.
    server, writer, reader = await _writer_and_reader(tmp_path, 60)
    store = _store(reader)
    signal = watch(writer, reader)
    async with live(reader) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ReplicaState.ONLINE)
        async with traced(store) as statements:
            await _an_edit_arrives(writer, reader, signal)
        assert _lazy_commits(statements) >= 1
    assert reader.state is ReplicaState.OFFLINE
    assert await _nothing_waits(store)  # the end of live mode synced it
    for closable in (writer, reader, server):
        await closable.close()


@pytest.mark.parametrize("delay", [-1, 61, True, "1", float("nan")])
def test_the_live_delay_is_checked(delay: object) -> None:
    with pytest.raises(InvalidInputError, match="live_durable_delay_s"):
        SyncLimits(live_durable_delay_s=delay)  # type: ignore[arg-type]


async def test_a_store_without_the_lazy_option_commits_every_intake_durably(
    tmp_path: Path,
) -> None:
    """A third party's laptop store written before ``durable=``: taken in as before."""

    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    record_id = await writer.create_record()
    await writer.set(record_id, "name", "Awa Ndiaye", author="dr.a")
    await writer.sync()
    laptop = await enrolled(tmp_path, server, "older", user="dr.b")
    older = _store(laptop)
    real = older.write_remote

    async def write_remote(items, **options):  # type: ignore[no-untyped-def]
        assert "durable" not in options
        return await real(items, **options)

    older.write_remote = write_remote  # type: ignore[method-assign]
    async with traced(older) as statements:
        await writer.set(record_id, "phone", "+221 77 000 00 00", author="dr.a")
        await writer.sync()
        await laptop.sync()
    assert _lazy_commits(statements) == 0
    assert (await laptop.record(record_id)).value("phone") == "+221 77 000 00 00"
    for closable in (writer, laptop, server):
        await closable.close()


async def test_live_updates_are_made_durable_by_the_delay_while_live_mode_runs(
    tmp_path: Path,
) -> None:
    """The default path (a delay above 0): the delayed sync itself, not the end of live
    mode, makes the batches durable. Without the delayed sync this waits in vain."""
    server, writer, reader = await _writer_and_reader(tmp_path, 0.01)
    store = _store(reader)
    synced = asyncio.Event()
    real = store.make_durable

    async def noted() -> None:
        async with traced(store) as statements:
            await real()
        if write_transactions(statements):  # a sync that had lazy commits to make durable
            synced.set()

    store.make_durable = noted  # type: ignore[method-assign]
    signal = watch(writer, reader)
    async with live(reader) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ReplicaState.ONLINE)
        synced.clear()
        await _an_edit_arrives(writer, reader, signal)
        # A sync with a lazy commit to make durable (no trace around this: the delayed
        # sync's own trace would replace it).
        await synced.wait()  # made durable by the delayed sync...
        assert reader.state is ReplicaState.ONLINE  # ...while live mode still runs
        assert await _nothing_waits(store)
    for closable in (writer, reader, server):
        await closable.close()
