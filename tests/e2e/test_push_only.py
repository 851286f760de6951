"""``Replica.sync(pull=False)``: what waits reaches the server, nothing is taken in.

Real parts: a SyncServer on an SQLite file on 127.0.0.1 and laptops on their own SQLite
files (the ``clinic`` fixtures of caresync.testing).
"""

from __future__ import annotations

from caresync.testing import Clinic


async def test_a_push_alone_sends_the_outbox_and_takes_nothing_in(clinic: Clinic) -> None:
    north = await clinic.laptop("north")
    south = await clinic.laptop("south")
    record_id = await south.create_record()
    await south.set(record_id, "name", "Awa Ndiaye", author="dr.test")
    await south.sync()  # the server holds south's record
    before = (await north.status()).last_sync

    await north.set(
        await north.create_record(), "name", "Moussa Sarr", author="dr.test"
    )  # north's own work waits in its outbox
    report = await north.sync(pull=False)

    assert (report.uploaded, report.downloaded, report.copied) == (2, 0, 0)
    assert (await north.status()).pending == 0  # acknowledged: the server committed it
    assert record_id not in await north.record_ids()  # south's record was not pulled
    assert (await north.status()).last_sync == before  # a push is not a sync
    await south.sync()
    assert len(await south.record_ids()) == 2  # north's record reached the server

    report = await north.sync()  # an ordinary sync then pulls
    assert report.downloaded > 0
    assert record_id in await north.record_ids()
    await clinic.assert_converged()
