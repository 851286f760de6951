"""What a laptop takes from an authenticated server's checks, the server untrusted.

Real parts: a server on 127.0.0.1 and SQLite files. The server's store is written
past its admission (as a server before admission, or a hostile one, could have
stored it), so that the check it sends fits what the laptop's record becomes:
the laptop must still refuse, or keep aside, what it would have refused or kept
aside without the check.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.live_helpers import enrolled, start_server

from caresync import Record
from caresync.replica import Replica
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
