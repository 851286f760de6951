"""The first copy is pipelined (issue 18): a batch is taken in while the previous one
commits, and committed only after it. A commit that fails stops the copy there: no
later batch is committed, and the copy resumes after the last whole batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import PASSWORD, start_server

from caresync import Record
from caresync.exceptions import StorageError
from caresync.replica import CopyProgress, Replica, SyncLimits
from caresync.replication import meta
from caresync.storage import IncomingUpdate

RECORDS = 2_000
BATCH = 500


async def test_a_failed_commit_stops_the_copy_and_it_resumes_losing_nothing(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    items = []
    for i in range(RECORDS):
        record = Record.create(replica="seed")
        record.set("name", f"patient {i}", author="registrar")
        items.append(IncomingUpdate(record.record_id, record.update_since(), (), "clinic-a"))
    await server.store.write_remote(items, to_feed=True)
    ids = sorted(item.record_id for item in items)
    laptop = await Replica.open(tmp_path / "laptop.db", limits=SyncLimits(copy_batch_records=BATCH))
    store: Any = laptop.store
    write_copy = store.write_copy  # how a copied batch is committed
    calls: list[int] = []

    async def failing_third(batch: Any, **kwargs: Any) -> None:
        calls.append(len(batch.record_ids))
        if len(calls) == 3:
            raise StorageError("disk full (injected)")
        await write_copy(batch, **kwargs)

    store.write_copy = failing_third
    seen: list[CopyProgress] = []
    with pytest.raises(StorageError, match="injected"):
        await laptop.enrol(
            server.url,
            username="dr.a",
            password=PASSWORD,
            organisation="clinic-a",
            progress=seen.append,
        )
    # Batches 1 and 2 committed and reported; the third failed; the fourth (received
    # and taken in while the third committed) was never written.
    assert calls == [BATCH, BATCH, BATCH]
    assert [p.done_records for p in seen] == [500, 1000]
    assert await laptop.record_ids() == ids[:1000]
    assert await laptop.store.get_meta(meta.COPY_RESUME) == ids[999]
    assert await laptop.store.get_meta(meta.COPY_DONE_MS) is None

    store.write_copy = write_copy
    resumed: list[CopyProgress] = []
    report = await laptop.sync(progress=resumed.append)
    assert report.copied == RECORDS - 1000
    assert [p.done_records for p in resumed] == [1500, 2000]
    assert await laptop.record_ids() == ids
    assert (await laptop.record(ids[1000])).value("name") is not None
    await laptop.close()
    await server.close()
