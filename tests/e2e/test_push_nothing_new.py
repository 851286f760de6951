"""An update that adds nothing takes no record and no feed entry on the server.

Reproduced with a client written from docs/protocol.md (:mod:`tests.e2e.raw_client`):
an enrolled colleague pushed the empty Yjs update (``00 00``) under record ids the
server did not hold. Each was acknowledged and stored: a record with no id and no
revision, owned by the organisation, a feed entry that every laptop of it pulled and
listed as a record, and, holding no revision, none of it checked for authorship. A
thousand such records went in one push. caresync writes a record's id in its first
update and never queues an empty one, so the server now refuses it (non-fatal
``bad_message``, nothing of the batch stored).

And an update the server held already took a new feed entry whenever the batch held
another update of the same record that was new: a laptop resending a batch after a lost
acknowledgement, with one more edit of a record, stored its earlier edits again, and a
client could append the same 16 MB to the feed at every push, relayed live to every
laptop. Each update of a record is now stored only if it adds to what the record and the
batch's earlier updates hold.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.e2e.raw_client import ERROR, PUSH_ACK, Raw, new_client, new_key, revision
from tests.e2e.raw_client import update as yjs_update

from caresync.records import Record

EMPTY = b"\x00\x00"


async def test_an_empty_update_of_a_record_the_server_lacks_is_refused_and_stored_nowhere(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    client = await Raw.connect(server.url)
    try:
        chart = await laptop.create_record()
        await laptop.set(chart, "weight", 70, author="dr.a")
        await laptop.sync()
        replica = await client.enrol("dr.b", PASSWORD, "clinic-a")
        head = await server.store.feed_head()
        phantoms = [str(uuid.uuid4()) for _ in range(3)]
        named = str(uuid.uuid4())
        created = yjs_update(new_client(), 0, [("meta", "id", named)])
        batch = [(1, named, created)] + [
            (seq, phantom, EMPTY) for seq, phantom in enumerate(phantoms, start=2)
        ]
        code, body = await client.push(batch)
        assert code == ERROR, body
        assert body["code"] == "bad_message"
        assert not body["fatal"]
        assert phantoms[0] in body["message"]
        assert "nothing stored" in body["message"]
        # Nothing of the batch, not even its good record.
        assert await server.store.feed_head() == head
        for record_id in (named, *phantoms):
            assert await server.store.load(record_id) is None
        assert await server.gate.pushed_up_to(replica) == 0
        await laptop.sync()
        assert (await laptop.status()).records == 1
        # The session goes on; the empty update of a record the server holds changes
        # nothing and is acknowledged as before (a resent batch may hold one).
        code, body = await client.push([(1, named, created), (2, named, EMPTY)])
        assert code == PUSH_ACK, body
        edit = revision("weight", 71, author="dr.b", replica=replica)
        code, body = await client.push([(3, chart, EMPTY)])
        assert code == PUSH_ACK, body
        code, body = await client.push(
            [(4, chart, yjs_update(new_client(), 0, [("revisions", new_key(), edit)]))]
        )
        assert code == PUSH_ACK, body
        assert await server.store.feed_head() == head + 2  # the creation and the edit
        await laptop.sync()
        assert (await laptop.status()).records == 2
    finally:
        await client.close()
        await laptop.close()
        await server.close()


async def test_an_update_held_already_takes_no_feed_entry_beside_a_new_one(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    client = await Raw.connect(server.url)
    try:
        replica = await client.enrol("dr.b", PASSWORD, "clinic-a")
        record, writer = str(uuid.uuid4()), new_client()
        first = yjs_update(
            writer,
            0,
            [
                ("meta", "id", record),
                ("revisions", new_key(), revision("weight", 70, author="dr.b", replica=replica)),
            ],
        )
        second = yjs_update(
            writer,
            2,
            [("revisions", new_key(), revision("weight", 71, author="dr.b", replica=replica))],
        )
        head = await server.store.feed_head()
        code, body = await client.push([(1, record, first), (2, record, first), (3, record, EMPTY)])
        assert code == PUSH_ACK, body
        assert await server.store.feed_head() == head + 1
        # Resent beside a new edit (and twice): only the edit is new.
        code, body = await client.push(
            [(1, record, first), (2, record, second), (3, record, second)]
        )
        assert code == PUSH_ACK, body
        assert body["up_to_local_seq"] == 3
        feed = await server.store.feed_since(head, limit=10)
        assert [item.update for item in feed] == [first, second]
        # What the server holds is whole.
        stored = await server.store.load(record)
        assert stored is not None
        rebuilt = Record.from_update(record, stored, replica="check")
        assert sorted(rev.value for rev in rebuilt.history("weight")) == [70, 71]
    finally:
        await client.close()
        await server.close()
