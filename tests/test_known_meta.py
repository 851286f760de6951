"""KnownMeta: the notes a laptop's syncs keep are read from the store once, not at
every sync; what another writer changes meanwhile costs at most one needless write."""

from __future__ import annotations

import pytest

from caresync.exceptions import StorageError
from caresync.replication import meta
from caresync.storage import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts meta reads and can fail its next meta write."""

    reads = 0
    fail_next_write = False

    async def get_meta(self, key: str) -> str | None:
        self.reads += 1
        return await super().get_meta(key)

    async def set_meta(self, key: str, value: str) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            raise StorageError("disk full")
        await super().set_meta(key, value)


async def test_a_value_found_or_written_is_not_read_again() -> None:
    store = CountingStore()
    known = meta.KnownMeta(store)
    assert await known.get_meta(meta.COPY_DONE_MS) is None
    assert await known.get_meta(meta.COPY_DONE_MS) is None
    assert store.reads == 2  # absent: read each time (another process may finish a copy)
    await store.set_meta(meta.COPY_DONE_MS, "5")
    assert await known.get_meta(meta.COPY_DONE_MS) == "5"
    assert await known.get_meta(meta.COPY_DONE_MS) == "5"
    assert store.reads == 3
    assert await meta.write_if_changed(known, meta.CLIENT_NEWEST, "2.0.0")
    assert not await meta.write_if_changed(known, meta.CLIENT_NEWEST, "2.0.0")
    assert await store.get_meta(meta.CLIENT_NEWEST) == "2.0.0"
    assert store.reads == 5  # write_if_changed's first read, then this one: no more


async def test_another_writer_costs_at_most_one_needless_write() -> None:
    store = CountingStore()
    known = meta.KnownMeta(store)
    await known.set_meta(meta.HUB_REPORT, "[]")
    await store.set_meta(meta.HUB_REPORT, '[["r", "sent"]]')  # a second process
    # Kept as this process wrote it: writing what it said again is skipped; anything
    # new is written, and the store then holds it.
    assert not await meta.write_if_changed(known, meta.HUB_REPORT, "[]")
    assert await meta.write_if_changed(known, meta.HUB_REPORT, '[["r", "failed"]]')
    assert await store.get_meta(meta.HUB_REPORT) == '[["r", "failed"]]'


async def test_a_failed_write_is_not_remembered() -> None:
    store = CountingStore()
    known = meta.KnownMeta(store)
    await known.set_meta(meta.LAST_SYNC_MS, "1000")
    store.fail_next_write = True
    with pytest.raises(StorageError):
        await known.set_meta(meta.LAST_SYNC_MS, "2000")
    assert await known.get_meta(meta.LAST_SYNC_MS) == "1000"  # read again: the truth


async def test_only_notes_are_kept() -> None:
    known = meta.KnownMeta(MemoryStore())
    for key in (meta.CHECKPOINT, meta.SESSION_USER, meta.PULL_OWN, meta.COPY_RESUME):
        with pytest.raises(ValueError, match="not a key"):
            await known.get_meta(key)
        with pytest.raises(ValueError, match="not a key"):
            await known.set_meta(key, "1")
