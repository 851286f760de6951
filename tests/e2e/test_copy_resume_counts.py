"""A first copy resumed at a point of the client's choosing counts its progress without
holding every push: the count reads every record id of the organisation.

Real parts: a server on 127.0.0.1 (an SQLite file) and a hand-driven client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.protocol import CopyBatch


async def test_a_resumed_copy_counts_its_progress_outside_the_commit_lock(
    tmp_path: Path,
) -> None:
    """Reproduced (a hostile client's review): each CopyRequest resuming at a new point
    counted the organisation's records twice under the commit lock, so a client sending
    them one after another held every laptop's push for as long as each count took."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    client = None
    try:
        ids = sorted([await writer.create_record() for _ in range(5)])
        await writer.sync()
        held_while_counting: list[bool] = []
        real = server.store.record_ids

        async def watched(*args: Any, **kwargs: Any) -> list[str]:
            held_while_counting.append(server._commit_lock.locked())
            return await real(*args, **kwargs)

        server.store.record_ids = watched  # type: ignore[method-assign]
        client = await Hostile.connect(server.url)
        await client.login("dr.b", PASSWORD, "clinic-a")
        await client.enrol("resumes anywhere")
        client.protocol.request_copy(ids[1], 10)
        batch = await client.next_event()
        assert isinstance(batch, CopyBatch)
        assert [r.record_id for r in batch.records] == ids[2:]
        assert batch.done_records == batch.total_records == 5  # the progress is right
        assert held_while_counting == [False, False]  # counted, and not under the lock
    finally:
        if client is not None:
            await client.close()
        await writer.close()
        await server.close()
