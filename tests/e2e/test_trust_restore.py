"""A laptop restored from an older copy of itself loses nothing it writes next.

Why 2 of the trust-nothing issue: a laptop restored from its own backup (or a
VM snapshot, or a copied file) numbered its new edits with numbers the server
had already committed; they were acknowledged and never stored, and it never
pulled back its own edits made after the copy. Real files throughout: the copy
is made by ``caresync backup`` (SQLite's online backup) and by a plain copy of
the closed database file.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from tests.cli.clitools import run_main
from tests.e2e.live_helpers import enrolled, start_server

from caresync.replica import Replica


async def _copy_with_backup(source: Path, target: Path) -> None:
    # The command line in this process (on a thread: it runs its own event loop).
    result = await asyncio.to_thread(run_main, "backup", "--db", source, "--out", target, "--json")
    assert result.code == 0, result.stderr


async def _copy_closed_file(source: Path, target: Path) -> None:
    await asyncio.to_thread(shutil.copyfile, source, target)


async def _restore(saved: Path, path: Path) -> Replica:
    """Put the saved copy back in place of the laptop's database (its side files too)."""
    await asyncio.to_thread(shutil.copyfile, saved, path)
    for suffix in ("-wal", "-shm"):
        await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
    return await Replica.open(path)


@pytest.mark.parametrize("how", ["backup", "file-copy"])
async def test_a_restored_laptop_keeps_what_it_writes_and_gets_its_later_edits_back(
    tmp_path: Path, how: str
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")
    path = tmp_path / "laptop.db"
    saved = tmp_path / "saved.db"
    restored: Replica | None = None
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        await laptop.sync()
        if how == "backup":
            await _copy_with_backup(path, saved)
        else:
            await laptop.close()
            await _copy_closed_file(path, saved)
            laptop = await Replica.open(path)
        # After the copy: more edits, pushed and acknowledged (the server's mark moves on).
        for dose in ("5 mg", "7.5 mg", "10 mg"):
            await laptop.set(record, "warfarin", dose, author="dr.a")
        await laptop.sync()
        await laptop.close()

        # The laptop is restored from the older copy and goes on working.
        restored = await _restore(saved, path)
        allergy = await restored.add_entry(
            record, "allergies", {"substance": "penicillin"}, author="dr.a"
        )
        report = await restored.sync()
        assert report.uploaded == 1
        assert (await restored.status()).pending == 0

        # Nothing lost: the restored copy's new entry reached the server and the others...
        await other.sync()
        seen = await other.record(record)
        assert seen.value(f"allergies/{allergy}/substance") == "penicillin"
        assert seen.value("warfarin") == "10 mg"
        # ...and the restored copy got back the edits it had made after the copy was taken.
        mine = await restored.record(record)
        assert mine.value("warfarin") == "10 mg"
        assert [r.value for r in mine.history("warfarin")] == ["5 mg", "7.5 mg", "10 mg"]

        # Later edits keep flowing, numbered after what the server committed.
        await restored.set(record, "warfarin", "2.5 mg", author="dr.a")
        assert (await restored.sync()).uploaded == 1
        await other.sync()
        assert (await other.record(record)).value("warfarin") == "2.5 mg"
        summary = await restored.store.outbox_summary()
        pushed = await server.store.get_meta(f"pushed:{restored.replica_id}")
        assert pushed is not None
        assert summary.last_seq == int(pushed)
    finally:
        if restored is not None:
            await restored.close()
        await laptop.close()
        await other.close()
        await server.close()


async def test_a_restored_laptop_that_waits_offline_renumbers_before_it_pushes(
    tmp_path: Path,
) -> None:
    """Edits made on the restored copy while offline, numbered into the server's range."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other")
    path = tmp_path / "laptop.db"
    saved = tmp_path / "saved.db"
    restored: Replica | None = None
    try:
        record = await laptop.create_record()
        await laptop.sync()
        await _copy_with_backup(path, saved)
        for n in range(5):
            await laptop.set(record, "visits", n, author="dr.a")
        await laptop.sync()
        await laptop.close()
        restored = await _restore(saved, path)
        # Offline: these take the numbers the server already committed for the original.
        for n in range(3):
            await restored.set(record, f"note{n}", f"written after the restore {n}", author="dr.a")
        before = await restored.store.outbox_summary()
        pushed = await server.store.get_meta(f"pushed:{restored.replica_id}")
        assert pushed is not None
        assert before.last_seq <= int(pushed)  # the collision this test is about
        await restored.sync()
        await other.sync()
        seen = await other.record(record)
        assert [seen.value(f"note{n}") for n in range(3)] == [
            f"written after the restore {n}" for n in range(3)
        ]
        assert seen.value("visits") == 4
    finally:
        if restored is not None:
            await restored.close()
        await laptop.close()
        await other.close()
        await server.close()
