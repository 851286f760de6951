"""What a laptop takes from an authenticated server's checks, the server untrusted.

Real parts: a server on 127.0.0.1 and SQLite files. The server's store is written
past its admission (as a server before admission, or a hostile one, could have
stored it), so that the check it sends fits what the laptop's record becomes:
the laptop must still refuse, or keep aside, what it would have refused or kept
aside without the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import LIMIT_S, enrolled, start_server

from caresync import Record
from caresync.exceptions import RemoteProtocolError
from caresync.protocol import PullBatch, ServerProtocol
from caresync.protocol.states import RequestKind
from caresync.replica import Replica, SyncLimits
from caresync.replication import meta
from caresync.storage import IncomingUpdate


async def test_a_checked_update_that_renames_a_record_is_kept_aside(tmp_path: Path) -> None:
    """A check fits the state after an update that makes the record another's: the
    record is still built, and the update kept aside (stored with the check, every
    later read of the record failed with RecordMismatchError)."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await enrolled(tmp_path, server, "laptop", user="dr.b")
    try:
        held = await writer.create_record()
        await writer.set(held, "name", "Awa Diop")
        await writer.sync()
        await laptop.sync()
        await laptop.close()
        laptop = await Replica.open(tmp_path / "laptop.db")  # nothing of it in memory
        renamed = Record.from_update(held, await server.store.load(held) or b"", replica="evil")
        before = renamed.state_vector()
        renamed._meta["id"] = "another-record"  # no public API writes a record's id
        moved = renamed.update_since(before)
        # Into the record and the feed, past admission: the server's check of the
        # record now describes the state with the renaming update.
        await server.store.write_remote(
            [IncomingUpdate(held, moved, None, "clinic-a")], to_feed=True
        )
        await laptop.sync()
        [kept] = await laptop.quarantined()
        assert kept.record_id == held
        assert kept.update == moved
        assert "another-record" in kept.reason
        assert (await laptop.record(held)).value("name") == "Awa Diop"  # still readable
        stored = await laptop.store.load(held)
        assert stored is not None
        Record.from_update(held, stored, replica="check")  # still its own
    finally:
        await laptop.close()
        await writer.close()
        await server.close()


async def test_a_pull_that_says_more_but_covers_nothing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers every pull with no entry, its checkpoint where the request
    started and more to come: the laptop asked again for ever (the sync never ended).
    Every honest batch that says more covers at least one feed entry."""
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    laptop = await enrolled(
        tmp_path, server, "laptop", user="dr.b", limits=SyncLimits(pull_limit=1)
    )
    batches = 0

    def stalling(
        self: ServerProtocol, items: Iterable[Any], *, checkpoint: int, head_seq: int, **_: Any
    ) -> None:
        # Past the server's own checks, as a hostile server would be.
        nonlocal batches
        batches += 1
        after = self.outstanding[RequestKind.PULL].after_seq  # type: ignore[attr-defined]
        self._send(PullBatch((), after, max(head_seq, after + 1)))

    try:
        for _ in range(3):
            await writer.create_record()
        await writer.sync()
        checkpoint = await laptop.store.get_meta(meta.CHECKPOINT)
        monkeypatch.setattr(ServerProtocol, "send_pull_batch", stalling)
        async with asyncio.timeout(LIMIT_S):
            with pytest.raises(RemoteProtocolError, match="covers no feed entry"):
                await laptop.sync()
        assert batches <= 2  # the one refused, and perhaps the one asked for ahead
        assert await laptop.store.get_meta(meta.CHECKPOINT) == checkpoint
    finally:
        await laptop.close()
        await writer.close()
        await server.close()
