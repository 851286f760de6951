"""Files caresync writes, then names or renames into place, reach the disk itself: on
macOS fsync() leaves them in the drive's cache, and F_FULLFSYNC is what flushes it.

macOS is played here by giving ``fcntl`` an ``F_FULLFSYNC`` and noting which files
(by inode: a link or a rename keeps it) were flushed with it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from caresync.replica import Replica
from caresync.storage import KdfParams, SQLiteStore, key_file_for
from caresync.storage import _fsync as fsync_module
from caresync.storage.encrypt_in_place import encrypt_in_place

PASSWORD = "correct horse battery staple"
CHEAP = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
FULL = 0x7A51  # no real fcntl command: every call with it is ours


@pytest.fixture
def flushed(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The inodes of the files flushed with F_FULLFSYNC from now on."""
    inodes: set[int] = set()
    real = fcntl.fcntl

    def fake(fd: Any, cmd: int, *args: Any) -> Any:
        if cmd == FULL:
            inodes.add(os.fstat(fd).st_ino)
            return 0
        return real(fd, cmd, *args)

    monkeypatch.setattr(fcntl, "F_FULLFSYNC", FULL, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", fake)
    return inodes


def _inode(path: Path) -> int:
    return path.stat().st_ino


async def test_files_renamed_into_place_are_flushed_past_the_drive_cache(
    tmp_path: Path, flushed: set[int]
) -> None:
    # The bug: os.fsync alone. On macOS a power cut after the rename could leave a key
    # file, or a database rewritten encrypted in place, named but empty or torn: every
    # record of the laptop then unreadable.
    laptop_db = tmp_path / "laptop.db"
    laptop = await Replica.open(laptop_db, username="dr.a", password=PASSWORD, kdf=CHEAP)
    try:
        await laptop.create_record()
        await laptop.store.backup(tmp_path / "backup.db")
        assert await laptop.store.export_unsynced(tmp_path / "work.export") == 1
    finally:
        await laptop.close()
    plain_db = tmp_path / "plain.db"
    async with SQLiteStore.open(plain_db):
        pass
    encrypt_in_place(plain_db, bytes(range(32)), None)
    for made in (
        laptop_db,  # a new database, linked into place
        key_file_for(laptop_db),  # its key file
        tmp_path / "backup.db",
        tmp_path / "work.export",
        plain_db,  # now the encrypted copy, renamed over it
    ):
        assert _inode(made) in flushed, made.name


def test_a_file_system_without_full_sync_gets_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []

    def refuse(fd: Any, cmd: int, *args: Any) -> Any:
        raise OSError(45, "Operation not supported")

    monkeypatch.setattr(fcntl, "F_FULLFSYNC", FULL, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", refuse)
    monkeypatch.setattr(os, "fsync", synced.append)
    with (tmp_path / "file").open("wb") as file:
        fsync_module.sync_file(file.fileno())
        assert synced == [file.fileno()]
