"""A laptop's write-ahead log is copied into its database file after a sync, not in it.

SQLite's automatic checkpoint runs inside the commit that makes the log long enough;
for a sync of 1,000 records of 100,000 (about 1,200 pages of log) that was every
sync's commit. A laptop raises the threshold (``LAPTOP_CHECKPOINT_PAGES``) and
checkpoints once a sync that wrote something has returned. Each commit is still
synced to the log before it returns (what durability rests on).
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.sqlite_trace import traced, write_transactions

from caresync.exceptions import InvalidInputError
from caresync.replica import LAPTOP_CHECKPOINT_PAGES
from caresync.storage import IncomingUpdate, SQLiteStore
from caresync.storage.sqlite.core import DEFAULT_CHECKPOINT_PAGES


async def _pragma(store: SQLiteStore, name: str) -> object:
    """A pragma's value on the store's own connection (read on its thread)."""
    return await store._run(
        "reading a pragma", lambda raw: raw.execute(f"PRAGMA {name}").fetchone()[0]
    )


def _checkpoints(statements: list[str]) -> list[str]:
    return [s for s in statements if "wal_checkpoint" in s.lower()]


async def test_a_sync_that_wrote_is_checkpointed_after_it_returns(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")
    try:
        assert isinstance(laptop.store, SQLiteStore)
        assert await _pragma(laptop.store, "wal_autocheckpoint") == LAPTOP_CHECKPOINT_PAGES
        record_id = await other.create_record()
        await other.set(record_id, "birthDate", "1990-01-01", author="dr.a")
        await other.sync()
        if laptop._checkpointing is not None:
            await laptop._checkpointing  # the enrolment's
        async with traced(laptop.store) as statements:
            report = await laptop.sync()
            assert report.downloaded == 2  # the record created, then edited
            during = list(statements)
            task = laptop._checkpointing
            assert task is not None
            await task
        # The pull committed (durably, in the log) without a checkpoint in the sync...
        assert write_transactions(during)
        assert _checkpoints(during) == []
        # ...which came once the sync had returned, after its last commit.
        [checkpoint] = _checkpoints(statements)
        assert statements.index(checkpoint) >= len(during)
        assert await laptop.store.load(record_id) is not None

        # A sync with nothing to do writes nothing, so it checkpoints nothing either.
        async with traced(laptop.store) as statements:
            report = await laptop.sync()
            assert (report.uploaded, report.downloaded) == (0, 0)
            assert laptop._checkpointing is task
        assert _checkpoints(statements) == []
    finally:
        await laptop.close()
        await other.close()
        await server.close()


async def test_a_checkpoint_copies_the_log_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore.open(path, checkpoint_pages=100_000) as store:
        assert await _pragma(store, "wal_autocheckpoint") == 100_000
        await store.write_remote([IncomingUpdate("r-1", _an_update("r-1"), ())])

        def file_alone_holds_it() -> bool:
            """The database file copied without its log: does it hold the record?"""
            copy = tmp_path / "copy.db"
            shutil.copyfile(path, copy)
            with closing(sqlite3.connect(copy)) as conn:
                return bool(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

        assert not file_alone_holds_it()  # committed in the log only
        await store.checkpoint()
        assert file_alone_holds_it()
    async with SQLiteStore.open(path) as store:
        assert await _pragma(store, "wal_autocheckpoint") == DEFAULT_CHECKPOINT_PAGES
        assert await store.load("r-1") is not None


@pytest.mark.parametrize("pages", [0, -1, 1_000_001, 2.5, "1000", True])
async def test_a_bad_checkpoint_threshold_is_refused_before_opening(
    tmp_path: Path, pages: object
) -> None:
    with pytest.raises(InvalidInputError, match="checkpoint_pages"):
        await SQLiteStore.open(tmp_path / "store.db", checkpoint_pages=pages)  # type: ignore[arg-type]
    assert not (tmp_path / "store.db").exists()


def _an_update(record_id: str) -> bytes:
    from caresync import Record

    record = Record.create(replica="test", record_id=record_id)
    record.set("name", "Awa Ndiaye", author="dr.a")
    return record.update_since()
