"""What one push may make the server do, from a client that ignores caresync's own.

A push is admitted, merged and indexed on the server's event loop, under its commit
lock: while it runs, no other connection is served. Before the bound below, a
colleague's client (written from docs/protocol.md, see :mod:`tests.e2e.raw_client`)
could send one 8 MB frame of 60,000 one-revision updates and hold the whole server
for more than 20 s (every laptop, every organisation, the health check), and 10,000
updates each written as a new Yjs client took 17 s (pycrdt's cost per update grows
with a record's clients). A caresync laptop pushes 500 entries a batch; the server now
refuses a batch of more than ``MAX_PUSH_ITEMS`` before doing anything with it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.e2e.raw_client import ERROR, PUSH_ACK, PUSH_BATCH, Raw, new_client, new_key, revision
from tests.e2e.raw_client import update as yjs_update

from caresync.protocol import MAX_BATCH_ITEMS, MAX_PUSH_ITEMS
from caresync.replica import Replica
from caresync.replication.session import SyncLimits


def _edits(replica: str, count: int) -> tuple[str, list[tuple[int, str, bytes]]]:
    """A new record and ``count`` one-revision updates of it, each as a new Yjs client
    (the costliest shape for pycrdt), numbered 1..count."""
    record = str(uuid.uuid4())
    items: list[tuple[int, str, bytes]] = []
    for seq in range(1, count + 1):
        entries = [("meta", "id", record)] if seq == 1 else []
        value = revision(f"note-{seq}", seq, author="dr.b", replica=replica)
        entries.append(("revisions", new_key(), value))
        items.append((seq, record, yjs_update(new_client(), 0, entries)))
    return record, items


async def test_a_push_of_more_items_than_a_laptop_sends_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    client = await Raw.connect(server.url)
    try:
        replica = await client.enrol("dr.b", PASSWORD, "clinic-a")
        record, items = _edits(replica, MAX_PUSH_ITEMS + 1)
        head = await server.store.feed_head()
        code, body = await client.push(items)
        assert code == ERROR, body
        assert body["code"] == "too_large"
        assert not body["fatal"]
        assert body["in_reply_to"] == PUSH_BATCH
        assert str(MAX_PUSH_ITEMS) in body["message"]
        assert "nothing stored" in body["message"]
        # Nothing of it: no feed entry, no record, no replica mark.
        assert await server.store.feed_head() == head
        assert await server.store.load(record) is None
        assert await server.gate.pushed_up_to(replica) == 0
        # The session goes on, and a batch of the largest size allowed is taken whole.
        code, body = await client.push(items[:MAX_PUSH_ITEMS])
        assert code == PUSH_ACK, body
        assert body["up_to_local_seq"] == MAX_PUSH_ITEMS
        assert await server.store.feed_head() == head + MAX_PUSH_ITEMS
    finally:
        await client.close()
        await server.close()


async def test_a_laptop_told_to_push_larger_batches_still_pushes_within_the_bound(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop: Replica = await enrolled(
        tmp_path, server, "laptop", limits=SyncLimits(push_batch_items=MAX_BATCH_ITEMS)
    )
    other = await enrolled(tmp_path, server, "other")
    try:
        record = await laptop.create_record()
        for number in range(MAX_PUSH_ITEMS + 10):
            await laptop.set(record, f"note-{number}", number, author="dr.a")
        report = await laptop.sync()
        assert report.uploaded == MAX_PUSH_ITEMS + 11  # the record's creation and every edit
        assert (await laptop.status()).pending == 0
        await other.sync()
        fields = await other.fields(record)
        assert fields[f"note-{MAX_PUSH_ITEMS + 9}"].value == MAX_PUSH_ITEMS + 9
    finally:
        await laptop.close()
        await other.close()
        await server.close()
