"""A push the server must not store is refused whole, and the session goes on.

An update that is not one, or that names another record than the one it is
pushed for, would make every replica that pulls it fail to merge it, again at
every sync. The server refuses such a batch with a non-fatal ``bad_message``
Error naming the record, stores none of it, and serves the next request.
Real parts: a server on 127.0.0.1, laptops with SQLite files, and a raw
protocol client for the pushes a correct laptop never makes.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.live_helpers import enrolled, raw_session, start_server

from caresync import Record
from caresync.protocol import Error, ErrorCode, PushAck, PushBatch


def assert_refused(reply: object, *words: str) -> None:
    assert isinstance(reply, Error), reply
    assert reply.code == ErrorCode.BAD_MESSAGE
    assert not reply.fatal
    assert reply.in_reply_to == PushBatch.TYPE_CODE
    for word in words:
        assert word in reply.message


async def test_pushes_that_would_fail_every_puller_are_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader")
    broken = await enrolled(tmp_path, server, "broken")  # its session pushes by hand
    try:
        held = await writer.create_record()
        await writer.set(held, "name", "Awa Diop", author="dr.a")
        await writer.sync()  # the server holds the record (and has it loaded)
        head = await server.store.feed_head()

        elsewhere = Record.create(replica="elsewhere")
        elsewhere.set("name", "Someone Else", author="dr.x")
        pushed_for = Record.create(replica="elsewhere").record_id
        renamed = Record.from_update(held, await server.store.load(held) or b"", replica="evil")
        before = renamed.state_vector()
        # What a broken client might send: no public API writes a record's id.
        renamed._meta["id"] = "another-record"
        async with raw_session(server, broken) as session:
            # A new record's update pushed under another id.
            reply = await session.push(1_000, pushed_for, elsewhere.update_since())
            assert_refused(reply, pushed_for, elsewhere.record_id, "nothing stored")
            # An update that renames a record the server holds: admission sees it
            # overwrite meta/id before any document is touched.
            reply = await session.push(1_001, held, renamed.update_since(before))
            assert_refused(reply, held, "overwrites an existing map entry")
            # Bytes that are no update at all.
            reply = await session.push(1_002, pushed_for, b"\x01\x02 not an update")
            assert_refused(reply, pushed_for)
            # The session goes on: a good push is acknowledged.
            good = Record.create(replica=broken.replica_id)
            good.set("name", "Fatou Sow", author="dr.a")
            assert await session.push(1_003, good.record_id, good.update_since()) == PushAck(1_003)

        assert await server.store.feed_head() == head + 1
        assert await server.store.load(pushed_for) is None
        # Every other replica still syncs, and sees the held record as it was.
        report = await reader.sync()
        assert report.downloaded >= 1
        assert (await reader.record(held)).value("name") == "Awa Diop"
        # The server's loaded record was not left renamed: a new push merges into it.
        await writer.set(held, "name", "Awa Diop Sow", author="dr.a")
        await writer.sync()
        await reader.sync()
        assert (await reader.record(held)).value("name") == "Awa Diop Sow"
        assert good.record_id in await reader.record_ids()
    finally:
        await writer.close()
        await reader.close()
        await broken.close()
        await server.close()


async def test_a_refused_batch_stores_none_of_its_good_items(tmp_path: Path) -> None:
    count = 3
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    try:
        head = await server.store.feed_head()
        goods = []
        for i in range(count):
            record = Record.create(replica=writer.replica_id)
            record.set("name", f"patient {i}", author="dr.a")
            goods.append(record)
        async with raw_session(server, writer) as session:
            items = [(10 + i, r.record_id, r.update_since()) for i, r in enumerate(goods)]
            items.append((10 + count, goods[0].record_id, b"\x00 broken"))
            session.protocol.push(items)
            [reply] = await session.round_trip()
            assert_refused(reply, goods[0].record_id)
        assert await server.store.feed_head() == head
        for record in goods:
            assert await server.store.load(record.record_id) is None
    finally:
        await writer.close()
        await server.close()
