"""A server restored from an older backup loses nothing it acknowledged, and no laptop
skips what it writes next.

Real parts throughout: a server on an SQLite file and 127.0.0.1, its backup made by
``caresync backup`` while it serves, the restore done as docs/operations.md says (the
server stopped, the file and its side files replaced, the server started again on the
same address). After the backup, laptops sync edits the server acknowledges and read
the feed past the backup's end; after the restore, another laptop's new edits take the
feed numbers again. Before feed epochs, those laptops skipped the new entries and never
sent again what the restored server had forgotten.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.live_helpers import PASSWORD, enrolled
from tests.e2e.restore_helpers import back_up, port_of, put_back, serve, values

from caresync.protocol import Error, HubReport, PullRequest
from caresync.replication.epochs import FeedPosition


async def test_a_restored_server_gets_back_what_it_acknowledged_and_no_laptop_skips_an_entry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.add_user("clinic-a", "dr.c", PASSWORD)
    port = port_of(server)
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    b = await enrolled(tmp_path, server, "b", user="dr.b")
    c = await enrolled(tmp_path, server, "c", user="dr.c")
    try:
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await b.sync()
        await c.sync()
        await back_up(path, saved)

        # Acknowledged after the backup: a's birth date and a new chart, b's note on it.
        await a.set(chart, "birthDate", "1990-04-12", author="dr.a")
        second = await a.create_record()
        await a.set(second, "name", "Moussa Sarr", author="dr.a")
        assert (await a.sync()).uploaded == 3
        await b.sync()
        await b.set(second, "note", "seen at the clinic", author="dr.b")
        assert (await b.sync()).uploaded == 1
        b_read = FeedPosition.parse(await b.store.get_meta("sync.checkpoint"))
        assert b_read.epoch is not None
        assert (await a.status()).pending == (await b.status()).pending == 0

        await server.close()
        await put_back(saved, path)
        server = await serve(path, port)
        head = await server.store.feed_head()
        assert head < b_read.seq  # the restored feed ends before what b read

        # c writes first: its entries take the numbers b has read past.
        for kg in (68, 69, 70, 71):
            await c.set(chart, "weightKg", kg, author="dr.c")
        report = await c.sync()
        assert report.server_went_back is False  # c read nothing past the backup
        # b's checkpoint is inside the restored feed again: only its epoch tells.
        assert await server.store.feed_head() >= b_read.seq

        report = await b.sync()
        assert report.server_went_back is True
        assert await values(b, chart, "weightKg") == {"weightKg": 71}  # not skipped
        report = await a.sync()
        assert report.server_went_back is True
        for replica in (a, b, c):
            await replica.sync()
        for replica in (a, b, c):
            assert await values(replica, chart, "name", "birthDate", "weightKg") == {
                "name": "Awa Diop",
                "birthDate": "1990-04-12",
                "weightKg": 71,
            }
            assert await values(replica, second, "name", "note") == {
                "name": "Moussa Sarr",
                "note": "seen at the clinic",
            }
            assert (await replica.status()).pending == 0
        # The server holds every acknowledged value again: a new laptop's first copy has it.
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.a")
        try:
            assert await values(fresh, second, "name", "note") == {
                "name": "Moussa Sarr",
                "note": "seen at the clinic",
            }
            assert await values(fresh, chart, "birthDate") == {"birthDate": "1990-04-12"}
        finally:
            await fresh.close()
        # Once recovered, a sync is an ordinary one again.
        for replica in (a, b, c):
            report = await replica.sync()
            assert report.server_went_back is False
            assert (report.uploaded, report.downloaded) == (0, 0)
    finally:
        for replica in (a, b, c):
            await replica.close()
        await server.close()


async def test_a_pull_past_the_feeds_end_or_of_another_epoch_is_refused(tmp_path: Path) -> None:
    """The server's side alone, over a raw protocol session: a position it never gave
    out, or one it labels with another epoch, is refused as ``feed_diverged``."""
    from tests.e2e.live_helpers import raw_session

    server = await serve(tmp_path / "server.db")
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        position = FeedPosition.parse(await laptop.store.get_meta("sync.checkpoint"))
        assert position.seq == await server.store.feed_head()
        async with raw_session(server, laptop) as session:
            for ask, refused in [
                (PullRequest(position.seq, feed_epoch=position.epoch), False),
                (PullRequest(position.seq + 1, feed_epoch=position.epoch), True),
                (PullRequest(position.seq + 1), True),  # no epoch: past the end is enough
                (PullRequest(position.seq, feed_epoch=(position.epoch or 0) + 1), True),
                (PullRequest(0, feed_epoch=12345), False),  # from the start: nothing to check
            ]:
                session.protocol.request_pull(ask.after_seq, feed_epoch=ask.feed_epoch)
                replies = await session.round_trip()
                # A pull answered ends with its hub report (a frame of its own).
                while not isinstance(replies[-1], (Error, HubReport)) and len(replies) < 5:
                    replies += await session.round_trip()
                codes = [getattr(reply, "code", None) for reply in replies]
                assert ("feed_diverged" in codes) is refused, (ask, replies)
    finally:
        await laptop.close()
        await server.close()
