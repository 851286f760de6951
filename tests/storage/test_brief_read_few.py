"""Reads that are brief when they find few rows: a laptop's outbox and its unsent audit.

A sync reads the outbox twice (its summary, then the page to push) and the audit
entries the server lacks; with nothing to do, each finds nothing or a few rows, and
was a hop to the connection's thread. Each is now read first as a brief read of at
most ``BRIEF_ROWS + 1`` rows, and again on the connection's thread only when there
are more. Here: the answers are the same as one full read's for every size around the
bound, a few rows are read on the event loop's thread, and many are not (SQLite steps
counted per thread, as in ``test_brief_read_bounds``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.storage.brief_steps import counted, full_summary

from caresync.audit import AuditEvent
from caresync.storage import SQLiteStore
from caresync.storage.sqlite.core import BRIEF_ROWS
from caresync.storage.sqlite.outbox import BRIEF_UPDATE_BYTES
from caresync.testing.store_data import Patient, set_laptop_identity

SIZES = [0, 1, BRIEF_ROWS - 1, BRIEF_ROWS, BRIEF_ROWS + 1, BRIEF_ROWS + 2, 3 * BRIEF_ROWS]
MANY = 400  # rows a brief read must not walk
STEPS_ON_LOOP_BOUND = 3_000  # a read of 17 rows by key: some hundreds of steps


async def _laptop(tmp_path: Path, outbox: int, audit: int) -> SQLiteStore:
    """A laptop's store with ``outbox`` local edits waiting and ``audit`` entries of its
    own chain."""
    store = await SQLiteStore.open(tmp_path / "laptop.db")
    await set_laptop_identity(store)
    for _ in range(outbox):
        patient = Patient()
        await store.write_local(patient.id, patient.created, conflicts=None)
    if audit:
        await store.append_audit([AuditEvent("dr.a", "read", f"rec-{n}") for n in range(audit)])
    return store


@pytest.mark.parametrize("size", SIZES)
async def test_the_outbox_summary_and_pages_are_those_of_a_full_read_for_every_size(
    tmp_path: Path, size: int
) -> None:
    store = await _laptop(tmp_path, size, 0)
    try:
        summary = await store.outbox_summary()
        assert summary == full_summary(tmp_path / "laptop.db")
        assert summary.pending == size
        everything = await store.pending(10_000)
        assert [item.seq for item in everything] == list(range(1, size + 1))
        for limit in (1, BRIEF_ROWS, BRIEF_ROWS + 1, 1000):
            for after in (0, 1, BRIEF_ROWS):
                page = await store.pending(limit, after_seq=after)
                assert page == [item for item in everything if item.seq > after][:limit]
        if size:
            # Acknowledged up to the middle: the summary follows (the oldest moves on).
            await store.acknowledge(size // 2)
            assert await store.outbox_summary() == full_summary(tmp_path / "laptop.db")
    finally:
        await store.close()


@pytest.mark.parametrize("size", SIZES)
async def test_the_unsent_audit_entries_are_those_of_a_full_read_for_every_size(
    tmp_path: Path, size: int
) -> None:
    store = await _laptop(tmp_path, 0, size)
    try:
        replica_id = "laptop-7"  # set_laptop_identity's
        whole = await store.audit_entries()
        assert len(whole) == size
        for after in (0, 1, size // 2, size):
            for limit in (None, BRIEF_ROWS + 1, 1000):
                found = await store.audit_entries(
                    replica_id=replica_id, after_seq=after, limit=limit
                )
                wanted = [e for e in whole if e.seq > after]
                assert found == (wanted if limit is None else wanted[:limit])
    finally:
        await store.close()


async def test_a_sync_with_nothing_to_send_reads_its_outbox_and_audit_on_the_loop(
    tmp_path: Path,
) -> None:
    store = await _laptop(tmp_path, 2, 3)
    try:
        with counted(store) as steps:
            assert (await store.outbox_summary()).pending == 2
            assert len(await store.pending(1000)) == 2
            assert len(await store.audit_entries(replica_id="laptop-7", limit=1000)) == 3
        assert steps.elsewhere == 0  # no hop to the connection's thread
        assert 0 < steps.on_loop < STEPS_ON_LOOP_BOUND
    finally:
        await store.close()


async def test_a_large_outbox_and_audit_are_read_on_the_connections_thread(
    tmp_path: Path,
) -> None:
    store = await _laptop(tmp_path, MANY, MANY)
    try:
        with counted(store) as steps:
            assert (await store.outbox_summary()).pending == MANY
            assert len(await store.pending(1000)) == MANY
            assert len(await store.audit_entries(replica_id="laptop-7", limit=1000)) == MANY
        # The loop read no more than the first rows of each; the thread read them all.
        assert steps.on_loop < STEPS_ON_LOOP_BOUND
        assert steps.elsewhere > 3 * MANY
    finally:
        await store.close()


async def test_a_large_update_in_the_outbox_is_read_on_the_connections_thread(
    tmp_path: Path,
) -> None:
    """A few updates, one of them larger than a brief read takes (an attachment made
    offline): the page goes to the connection's thread, whole and the same."""
    store = await _laptop(tmp_path, 2, 0)
    try:
        patient = Patient()
        big = patient.edit("note", "x" * (2 * BRIEF_UPDATE_BYTES))
        assert len(big) > BRIEF_UPDATE_BYTES
        await store.write_local(patient.id, patient.created, conflicts=None)
        await store.write_local(patient.id, big, conflicts=None)
        with counted(store) as steps:
            page = await store.pending(1000)
        assert [item.update for item in page][-1] == big
        assert len(page) == 4
        assert steps.elsewhere > 0  # read again, whole, on the connection's thread
        with counted(store) as steps:
            small = await store.pending(2)  # the first two are small: read here
        assert small == page[:2]
        assert steps.elsewhere == 0
    finally:
        await store.close()


async def test_nothing_set_aside_is_asked_without_a_hop(tmp_path: Path) -> None:
    """Every sync's first push takes back what was set aside, and later pushes list it:
    with nothing set aside (almost always), both are brief reads, no hop (read once
    more: each was a hop of a sync with nothing to do)."""
    store = await _laptop(tmp_path, 2, 0)
    try:
        with counted(store) as steps:
            assert await store.take_back_set_aside() == 0
            assert await store.set_aside_records() == []
        assert steps.elsewhere == 0  # no hop to the connection's thread
        assert 0 < steps.on_loop < STEPS_ON_LOOP_BOUND
        # Something set aside: read (and moved) on the connection's thread, as before.
        [item, _second] = await store.pending(10)
        assert await store.set_aside(item.record_id, "refused") == 1
        with counted(store) as steps:
            [held] = await store.set_aside_records()
            assert held.record_id == item.record_id
            assert await store.take_back_set_aside() == 1
        assert steps.elsewhere > 0
        # Queued again, still listed until the server takes it.
        assert [r.entries for r in await store.set_aside_records()] == [1]
    finally:
        await store.close()
