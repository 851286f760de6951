"""What the outbox's and the unsent audit's reads that are brief when few
(``SQLiteCore._read_few``) may cost: a review of them (issue 18).

* A large update is not read on the event loop, not even in part. The outbox's
  ``created_ms`` column comes after its ``data``: SQLite reaches it through every
  overflow page of the update (one page read per 4 KiB), so reading a large update's
  time on the loop costs as much as reading its bytes. These tests count the bytes the
  event loop's thread reads from files (Linux's per-thread I/O account) while the
  store's page cache is cold: that count depends on the pages read, not on time.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from caresync.records.crdt import merge
from caresync.storage import OutboxSummary, SQLiteStore
from caresync.storage.sqlite.outbox import BRIEF_UPDATE_BYTES
from caresync.testing.store_data import Patient, set_laptop_identity

PROC_IO = Path(f"/proc/self/task/{threading.get_native_id()}/io")
needs_thread_io = pytest.mark.skipif(
    not PROC_IO.exists(), reason="no per-thread I/O account (Linux's /proc) here"
)
BIG_PARTS = 12  # values of 200 KiB: an update of some 2.4 MB, 600 overflow pages


def _read_here() -> int:
    """Bytes this thread (the event loop's: the test runs on it) has read from files."""
    path = f"/proc/self/task/{threading.get_native_id()}/io"
    with open(path, encoding="ascii") as account:
        for line in account:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError(f"no rchar in {path}")


def _full_summary(path: Path) -> OutboxSummary:
    """The outbox's figures by plain queries on a connection of its own (the oracle)."""
    raw = sqlite3.connect(path)
    try:
        count, low, oldest = raw.execute(
            "SELECT COUNT(*), MIN(seq), (SELECT created_ms FROM outbox ORDER BY seq LIMIT 1)"
            " FROM outbox"
        ).fetchone()
        head = raw.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return OutboxSummary(count, oldest, low, 0 if head is None else head[0])
    finally:
        raw.close()


def _big(patient: Patient) -> bytes:
    """One update of many large values (what a batch of edits makes: an attachment)."""
    parts = [patient.edit("note", f"{n}" + "x" * (200 * 1024)) for n in range(BIG_PARTS)]
    update = merge(parts, record_id=patient.id)
    assert len(update) > 8 * BRIEF_UPDATE_BYTES
    return update


async def _laptop_with(path: Path, big_at: int, small: int) -> bytes:
    """A laptop's store at ``path`` whose outbox holds ``small`` small updates and a
    large one at index ``big_at``; returns the large one. Closed: the next open starts
    with a cold page cache."""
    store = await SQLiteStore.open(path)
    try:
        await set_laptop_identity(store)
        big = b""
        for index in range(small + 1):
            patient = Patient()
            if index == big_at:
                big = _big(patient)
                await store.write_local(patient.id, big, conflicts=None)
            else:
                await store.write_local(patient.id, patient.created, conflicts=None)
        return big
    finally:
        await store.close()


@needs_thread_io
@pytest.mark.parametrize("big_at", [0, 1, 3])
async def test_a_large_update_is_not_read_on_the_loop_for_the_outbox_summary(
    tmp_path: Path, big_at: int
) -> None:
    path = tmp_path / "laptop.db"
    big = await _laptop_with(path, big_at, 3)
    async with SQLiteStore.open(path, quick_check=False) as store:  # a cold page cache
        before = _read_here()
        summary = await store.outbox_summary()
        on_loop = _read_here() - before
    assert summary == _full_summary(path)
    assert summary.pending == 4
    # A few pages of the table, not the large update's hundreds (before: all of them).
    size = len(big)
    assert on_loop < size // 8


@needs_thread_io
@pytest.mark.parametrize("big_at", [0, 1, 3])
async def test_a_large_update_is_not_read_on_the_loop_for_an_outbox_page(
    tmp_path: Path, big_at: int
) -> None:
    path = tmp_path / "laptop.db"
    big = await _laptop_with(path, big_at, 3)
    async with SQLiteStore.open(path, quick_check=False) as store:
        before = _read_here()
        page = await store.pending(1000)
        on_loop = _read_here() - before
        assert [item.update for item in page][big_at] == big
        assert len(page) == 4
        size = len(big)
        assert on_loop < size // 8
        # A page that ends before the large update is read here, whole and the same.
        if big_at:
            before = _read_here()
            assert await store.pending(big_at) == page[:big_at]
            assert _read_here() - before < size // 8
