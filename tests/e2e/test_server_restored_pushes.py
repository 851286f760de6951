"""A laptop whose pushes the restored server lost, though its checkpoint is inside the
restored feed (it pushed after the backup and never pulled past it): the server's mark
of its pushes, said at every login, is below what it had acknowledged.

Real parts: a server on an SQLite file and 127.0.0.1, a ``caresync backup`` copy put
back with the server stopped, started again on the same address.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled
from tests.e2e.restore_helpers import back_up, port_of, put_back, serve

from caresync.replica import Replica


async def _birth_date(replica: Replica, record_id: str) -> object:
    return (await replica.record(record_id, audited=False)).value("birthDate")


@pytest.mark.parametrize("pull", [True, False])
async def test_pushes_acknowledged_after_the_backup_are_sent_again(
    tmp_path: Path, pull: bool
) -> None:
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    port = port_of(server)
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    try:
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        await a.sync()
        await back_up(path, saved)
        await a.set(chart, "birthDate", "1990-04-12", author="dr.a")
        assert (await a.sync(pull=False)).uploaded == 1  # acknowledged; nothing pulled
        assert (await a.status()).pending == 0

        await server.close()
        await put_back(saved, path)
        server = await serve(path, port)
        report = await a.sync(pull=pull)
        assert report.server_went_back
        # The next edit continues the record's client: the server holds what it follows.
        await a.set(chart, "birthDate", "1990-04-13", author="dr.a")
        await a.sync()
        assert (await a.status()).pending == 0
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.a")
        try:
            record = await fresh.record(chart, audited=False)
            assert [rev.value for rev in record.history("birthDate")] == [
                "1990-04-12",
                "1990-04-13",
            ]
        finally:
            await fresh.close()
        again = await a.sync()
        assert (again.server_went_back, again.uploaded) == (False, 0)
    finally:
        await a.close()
        await server.close()


async def test_a_laptop_that_never_read_the_feed_past_its_start_is_put_right_too(
    tmp_path: Path,
) -> None:
    """Its checkpoint is 0 (an empty server at enrolment, only pushes since): the login's
    mark tells, and sending again is no refused pull from the start."""
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    port = port_of(server)
    a = await enrolled(tmp_path, server, "a", user="dr.a")
    try:
        await back_up(path, saved)
        chart = await a.create_record()
        await a.set(chart, "name", "Awa Diop", author="dr.a")
        assert (await a.sync(pull=False)).uploaded == 2
        assert await a.store.get_meta("sync.checkpoint") in ("0", "0:0")

        await server.close()
        await put_back(saved, path)
        server = await serve(path, port)
        assert await server.store.feed_head() == 0
        assert (await a.sync()).server_went_back
        assert await server.store.feed_head() >= 1
        fresh = await enrolled(tmp_path, server, "fresh", user="dr.a")
        try:
            assert (await fresh.record(chart, audited=False)).value("name") == "Awa Diop"
        finally:
            await fresh.close()
    finally:
        await a.close()
        await server.close()
