"""A laptop enrolled after the backup a server was restored from: the restored server
does not know it (its syncs fail as not enrolled); ``Replica.enrol_again`` enrols it
again under its own id, and everything it had synced comes back to the server.

Real parts: a server on an SQLite file and 127.0.0.1, a ``caresync backup`` copy put
back with the server stopped, started again on the same address.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled
from tests.e2e.restore_helpers import back_up, port_of, put_back, serve

from caresync.exceptions import InvalidInputError, NotEnrolledError, SyncRefusedError
from caresync.replica import Replica


async def test_a_laptop_the_restored_server_forgot_enrols_again_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.db"
    saved = tmp_path / "backup.db"
    server = await serve(path)
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    port = port_of(server)
    old = await enrolled(tmp_path, server, "old", user="dr.a")
    late: Replica | None = None
    try:
        chart = await old.create_record()
        await old.set(chart, "name", "Awa Diop", author="dr.a")
        await old.sync()
        await back_up(path, saved)
        late = await enrolled(tmp_path, server, "late", user="dr.b")  # after the backup
        await late.set(chart, "birthDate", "1990-04-12", author="dr.b")
        second = await late.create_record()
        await late.set(second, "name", "Moussa Sarr", author="dr.b")
        await late.sync()
        assert (await late.status()).pending == 0
        await late.set(second, "weightKg", 70, author="dr.b")  # unsynced when it fails

        await server.close()
        await put_back(saved, path)
        server = await serve(path, port)
        with pytest.raises(NotEnrolledError):
            await late.sync()
        report = await late.enrol_again(username="dr.b", password=PASSWORD)
        assert report.server_went_back
        assert (await late.status()).pending == 0
        await late.sync()  # a second round is an ordinary one, with the new secret
        await old.sync()
        for replica in (old, late):
            assert (await replica.record(chart, audited=False)).value("birthDate") == "1990-04-12"
            record = await replica.record(second, audited=False)
            assert (record.value("name"), record.value("weightKg")) == ("Moussa Sarr", 70)
        with pytest.raises(SyncRefusedError, match="still knows replica"):
            await late.enrol_again(username="dr.b", password=PASSWORD)
        assert (await late.sync()).server_went_back is False
    finally:
        await old.close()
        if late is not None:
            await late.close()
        await server.close()


async def test_a_laptop_never_enrolled_cannot_enrol_again(tmp_path: Path) -> None:
    laptop = await Replica.open(tmp_path / "new.db")
    try:
        with pytest.raises(InvalidInputError, match="not enrolled"):
            await laptop.enrol_again(username="dr.a", password=PASSWORD)
    finally:
        await laptop.close()
