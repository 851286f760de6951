"""A first copy that a server says is done before it sent what it counted.

A laptop's first copy ends at the batch the server marks final; after it, the
laptop only pulls the feed from where the copy began, so a record the copy left
out reaches it only when someone changes it. A server (buggy, or restored
mid-copy) that marked a batch final while its own counts said records were left
(``done_records`` below ``total_records``) ended the copy for good, the laptop
missing those records without a word. Such a batch is refused: the copy resumes
at the next sync. Real parts: a server on 127.0.0.1 whose protocol is made to
lie, and SQLite files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.exceptions import RemoteProtocolError
from caresync.protocol import ServerProtocol
from caresync.replica import Replica, SyncLimits
from caresync.replication import meta


async def test_a_final_copy_batch_that_counts_records_left_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await Replica.open(tmp_path / "laptop.db", limits=SyncLimits(copy_batch_records=2))
    send = ServerProtocol.send_copy_batch
    batches = 0

    def ends_early(self: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:  # the second batch of five records, two a batch, says it is the last
            kwargs["final"] = True
        send(self, *args, **kwargs)

    try:
        for _ in range(5):
            await writer.create_record()
        await writer.sync()
        monkeypatch.setattr(ServerProtocol, "send_copy_batch", ends_early)
        with pytest.raises(RemoteProtocolError, match="4 of the 5 records"):
            await laptop.enrol(
                server.url, username="dr.b", password=PASSWORD, organisation="clinic-a"
            )
        assert await laptop.store.get_meta(meta.COPY_DONE_MS) is None  # not done
        assert len(await laptop.store.record_ids()) <= 2  # the first batch, if committed
        monkeypatch.undo()
        await laptop.sync()  # resumes the copy
        assert set(await laptop.record_ids()) == set(await writer.record_ids())
    finally:
        await laptop.close()
        await writer.close()
        await server.close()
