"""A first copy names the records it copies as new here (``absent``) from a read made
before its commit waits for the replica's write lock. A record this laptop creates
in that window under an id the copy brings (``create_record(record_id=...)``) must
not be taken for new: the copy is merged into it, the loaded record shows both, and
its stored conflict rows and person card are those of the merged record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.exceptions import StorageError
from caresync.records.persons import person_card
from caresync.replica import Replica


@pytest.mark.parametrize("loaded", [True, False], ids=["kept-loaded", "evicted"])
async def test_a_record_created_while_a_copy_batch_waits_is_merged_not_replaced(
    tmp_path: Path, loaded: bool
) -> None:
    server = await start_server(tmp_path)
    seeder = await enrolled(tmp_path, server, "seeder")
    shared = await seeder.create_record()
    await seeder.set(shared, "name", "from the server")
    await seeder.sync()
    await seeder.close()

    laptop = await Replica.open(tmp_path / "laptop.db")
    store: Any = laptop.store
    write_copy, record_ids = store.write_copy, store.record_ids

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise StorageError("disk full (injected)")

    # The enrolment logs dr.a in and stops at the copy's first commit: nothing copied.
    store.write_copy = refused
    with pytest.raises(StorageError, match="injected"):
        await laptop.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
    store.write_copy = write_copy
    assert await laptop.record_ids() == []

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

    view = await laptop.record(shared)
    assert (view.value("name"), view.value("gender")) == ("from the server", "female")
    rows = await laptop.store.conflict_rows([shared])
    cards = await laptop.store.person_card_bytes([shared])
    await laptop.close()

    reopened = await Replica.open(tmp_path / "laptop.db")
    view = await reopened.record(shared)
    assert (view.value("name"), view.value("gender")) == ("from the server", "female")
    # What the store indexes is what the merged record says.
    record = await reopened._pool.get(shared)
    assert tuple(rows.get(shared, ())) == tuple(reopened._pool.rows(record))
    card = person_card(record)
    assert cards.get(shared) == (None if card is None else card.to_bytes())
    assert await reopened.store.check() == []
    await reopened.close()
    await server.close()
