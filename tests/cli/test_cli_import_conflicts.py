"""`caresync import` commits the changes and the conflicts they make in one transaction.

Real SQLite files; no server is needed: a laptop's database is given the
identity enrolment would have written. The export holds this laptop's own work
from before its database was restored from a backup (a laptop imports only its
own changes), as `caresync export` writes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.cli.clitools import digest, inproc
from tests.sqlite_trace import traced, write_transactions

from caresync import Record
from caresync.cli.transfer import import_file
from caresync.replica import Replica
from caresync.storage import Identity, IncomingUpdate, MemoryStore, SQLiteStore

ORG = "clinic-a"


async def enrolled_laptop(path: Path) -> None:
    """A laptop database bound to ``ORG`` (what `caresync enrol` leaves behind), where
    dr.a and dr.b have logged in (dr.b last)."""
    async with SQLiteStore.open(path) as store:
        await store.set_identity(
            Identity("laptop-new", "laptop", server_id="server-1", organisation=ORG)
        )
    async with await Replica.open(path) as replica:
        for user in ("dr.a", "dr.b"):  # as their online logins leave it
            await replica.logins.logged_in_online(user, "a password")


async def export_of(path: Path, *records: Record) -> None:
    """What the laptop that wrote ``records`` would have exported (every update unsynced)."""
    old = MemoryStore()
    for record in records:
        await old.write_local(
            record.record_id, record.update_since(), conflicts=None, organisation=ORG
        )
    assert await old.export_unsynced(path) == len(records)


async def laptop_that_changed(laptop: Path, patient: Record) -> None:
    """The laptop holds the patient (from a sync) and changes the birth date."""
    await enrolled_laptop(laptop)
    async with await Replica.open(laptop) as replica:
        await replica.store.write_remote(
            [IncomingUpdate(patient.record_id, patient.update_since(), (), ORG)]
        )
        await replica.set(patient.record_id, "birthDate", "1991-01-01", author="dr.b")
        assert await replica.store.count_conflicts() == 0


def test_an_imported_disagreement_is_listed_right_after(tmp_path: Path) -> None:
    laptop = tmp_path / "laptop.db"
    old = Record.create(replica="laptop-new")  # written here, before a restore
    asyncio.run(laptop_that_changed(laptop, old))
    old.set("birthDate", "1990-01-01", author="dr.a")  # before the restore, on this laptop
    file = tmp_path / "unsynced.jsonl"
    asyncio.run(export_of(file, old))

    imported = inproc("import --db {db} {f} --json", db=laptop, f=file).ok().json()
    assert imported["conflicts_open"] == 1
    listed = inproc("conflicts list --db {db} --json", db=laptop).ok().json()
    [conflict] = listed["conflicts"]
    assert conflict["path"] == "birthDate"
    assert sorted(c["value"] for c in conflict["candidates"]) == ["1990-01-01", "1991-01-01"]


async def test_a_new_record_with_a_conflict_has_its_rows_in_the_same_commit(
    tmp_path: Path,
) -> None:
    laptop = tmp_path / "laptop.db"
    await enrolled_laptop(laptop)
    # Made twice on this laptop before its restore, merged: the restored copy lacks it.
    a = Record.create(replica="laptop-new")
    b = Record.from_update(a.record_id, a.update_since(), replica="laptop-new")
    a.set("birthDate", "1980-01-01", author="dr.a")
    b.set("birthDate", "1981-01-01", author="dr.b")
    a.apply_update(b.update_since())
    file = tmp_path / "unsynced.jsonl"
    await export_of(file, a)

    async with await Replica.open(laptop) as replica:
        async with traced(replica.store) as statements:
            result = await import_file(replica, str(file))
        assert result["conflicts_open"] == 1
        # One write transaction holds the record, its outbox rows and its conflict rows.
        [inside] = write_transactions(statements)
        for table in ("records", "outbox", "conflicts"):
            assert any(f"INTO {table} " in s for s in inside), table
        [row] = await replica.store.conflicts()
        assert row.record_id == a.record_id


async def refused_setup(laptop: Path, file: Path, claimed: Record, actual: Record) -> None:
    """A laptop as it leaves its database, and an export whose update is filed wrongly."""
    await enrolled_laptop(laptop)
    async with await Replica.open(laptop):
        pass  # the identity checked, the index mark written
    old = MemoryStore()
    await old.write_local(
        claimed.record_id, actual.update_since(), conflicts=None, organisation=ORG
    )
    await old.export_unsynced(file)


def test_a_file_that_does_not_apply_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    laptop, file = tmp_path / "laptop.db", tmp_path / "unsynced.jsonl"
    # Updates filed under one record's id that belong to another record.
    claimed, actual = Record.create(replica="laptop-new"), Record.create(replica="laptop-new")
    asyncio.run(refused_setup(laptop, file, claimed, actual))
    before = digest(laptop)
    result = inproc("import --db {db} {f}", db=laptop, f=file)
    assert result.code != 0
    assert claimed.record_id in result.error_line()
    assert digest(laptop) == before
    status = inproc("status --db {db} --json", db=laptop).ok().json()
    assert (status["pending"], status["records"], status["conflicts_open"]) == (0, 0, 0)


async def test_a_record_loaded_before_an_import_is_read_with_what_it_imported(
    tmp_path: Path,
) -> None:
    laptop = tmp_path / "laptop.db"
    old = Record.create(replica="laptop-new")  # written here, before a restore
    await laptop_that_changed(laptop, old)
    old.set("birthDate", "1990-01-01", author="dr.a")  # before the restore, on this laptop
    file = tmp_path / "unsynced.jsonl"
    await export_of(file, old)
    async with await Replica.open(laptop) as replica:
        await replica.logins.logged_in_online("dr.b", "a password")
        assert await replica.conflicts(old.record_id) == []  # the record loaded, as it was
        assert (await import_file(replica, str(file)))["conflicts_open"] == 1
        [conflict] = await replica.conflicts(old.record_id)
        assert conflict.subject == "birthDate"
