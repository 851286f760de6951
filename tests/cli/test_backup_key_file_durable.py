"""An encrypted laptop's backup is its database and its key file (the database key,
wrapped for each password): both must survive a power cut once the backup says it is
done. A new file's name is durable only once its directory is fsynced after the link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from caresync.cli import backup


def test_the_key_file_of_a_backup_is_linked_then_its_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "laptop.db.keys"
    source.write_bytes(b"wrapped keys")
    keys = tmp_path / "copy.db.keys"
    steps: list[str] = []
    link, fsync = os.link, os.fsync

    def logged_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        link(src, dst)
        steps.append(f"link {Path(dst).name}")

    def logged_fsync(fd: int) -> None:
        fsync(fd)
        info = os.fstat(fd)
        directory = stat.S_ISDIR(info.st_mode) and info.st_ino == tmp_path.stat().st_ino
        steps.append("fsync directory" if directory else "fsync file")

    monkeypatch.setattr(os, "link", logged_link)
    monkeypatch.setattr(os, "fsync", logged_fsync)
    backup._copy_key_file(source, keys)
    assert keys.read_bytes() == b"wrapped keys"
    assert steps[steps.index("link copy.db.keys") :] == ["link copy.db.keys", "fsync directory"]
