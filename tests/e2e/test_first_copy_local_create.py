"""A first copy names the records it copies as new here (``absent``) from a read made
before its commit waits for the replica's write lock. A record this laptop creates
under an id the copy brings (``create_record(record_id=...)``, an import), committed
after that read, must not be taken for new: the copy is merged into it, the loaded
record shows both, and its stored conflict rows and person card are those of the
merged record."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import LIMIT_S, PASSWORD, enrolled, start_server

from caresync.exceptions import StorageError
from caresync.records.persons import person_card
from caresync.replica import Replica
from caresync.server import SyncServer


async def _copy_pending(tmp_path: Path) -> tuple[SyncServer, str, Replica]:
    """A server holding one record (a name), and a laptop enrolled (dr.a logged in)
    whose first copy has copied nothing yet."""
    server = await start_server(tmp_path)
    seeder = await enrolled(tmp_path, server, "seeder")
    shared = await seeder.create_record()
    await seeder.set(shared, "name", "from the server")
    await seeder.sync()
    await seeder.close()
    laptop = await Replica.open(tmp_path / "laptop.db")
    store: Any = laptop.store
    write_copy = store.write_copy

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise StorageError("disk full (injected)")

    store.write_copy = refused  # the enrolment stops at the copy's first commit
    with pytest.raises(StorageError, match="injected"):
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
    store.write_copy = write_copy
    assert await laptop.record_ids() == []
    return server, shared, laptop


async def _check_merged(tmp_path: Path, laptop: Replica, shared: str, gender: str | None) -> None:
    """The record holds the copy and the local write, loaded and as stored, and its
    stored rows and card are those of the merged record."""
    view = await laptop.record(shared)
    assert (view.value("name"), view.value("gender")) == ("from the server", gender)
    rows = await laptop.store.conflict_rows([shared])
    cards = await laptop.store.person_card_bytes([shared])
    await laptop.close()
    reopened = await Replica.open(tmp_path / "laptop.db")
    view = await reopened.record(shared)
    assert (view.value("name"), view.value("gender")) == ("from the server", gender)
    record = await reopened._pool.get(shared)
    assert tuple(rows.get(shared, ())) == tuple(reopened._pool.rows(record))
    card = person_card(record)
    assert cards.get(shared) == (None if card is None else card.to_bytes())
    assert await reopened.store.check() == []
    await reopened.close()


@pytest.mark.parametrize("loaded", [True, False], ids=["kept-loaded", "evicted"])
async def test_a_record_created_after_the_copy_read_is_merged_not_replaced(
    tmp_path: Path, loaded: bool
) -> None:
    server, shared, laptop = await _copy_pending(tmp_path)
    store: Any = laptop.store
    record_ids = store.record_ids

    async def then_created_here(*args: Any, **kwargs: Any) -> list[str]:
        found: list[str] = await record_ids(*args, **kwargs)
        store.record_ids = record_ids
        # After the copy read which records it holds, before its commit takes the lock.
        await laptop.create_record(record_id=shared)
        await laptop.set(shared, "gender", "female")
        if not loaded:
            laptop._pool.forget(shared)  # evicted (a pool full of other records)
        return found

    store.record_ids = then_created_here
    await laptop.sync()
    assert store.record_ids is record_ids  # the window was taken
    await _check_merged(tmp_path, laptop, shared, "female")
    await server.close()


async def test_a_record_whose_creation_held_the_lock_during_the_copy_read_is_merged(
    tmp_path: Path,
) -> None:
    server, shared, laptop = await _copy_pending(tmp_path)
    store: Any = laptop.store
    record_ids, write_local = store.record_ids, store.write_local
    entered, go = asyncio.Event(), asyncio.Event()

    async def gated(*args: Any, **kwargs: Any) -> int:
        entered.set()
        await go.wait()  # the write lock is held meanwhile
        seq: int = await write_local(*args, **kwargs)
        return seq

    async def then_committed(*args: Any, **kwargs: Any) -> list[str]:
        found: list[str] = await record_ids(*args, **kwargs)
        store.record_ids = record_ids
        go.set()  # the creation commits after the copy's read
        return found

    store.write_local = gated
    creating = asyncio.create_task(laptop.create_record(record_id=shared))
    async with asyncio.timeout(LIMIT_S):
        await entered.wait()
    store.write_local = write_local
    store.record_ids = then_committed
    async with asyncio.timeout(LIMIT_S):
        await laptop.sync()
        assert await creating == shared
    assert store.record_ids is record_ids  # the window was taken
    await _check_merged(tmp_path, laptop, shared, None)
    await server.close()
