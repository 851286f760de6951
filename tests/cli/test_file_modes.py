"""Files that hold patient data or secrets are created mode 0600, whatever the umask.

An export of unsynced work holds patients' changes; a backup of a server holds
every patient, the password hashes and live session tokens. Each is created
readable by its owner only from its first byte (never chmod-ed afterwards),
with the umask a shell usually has (022), with none (000), and with one that
would take the owner's own bits away (277).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.clitools import inproc

from caresync.replica import Replica
from caresync.storage.unsynced import (
    ExportedUpdate,
    UnsyncedExport,
    private_opener,
    read_export_file,
    write_export_file,
)

UMASKS = [0o022, 0o000, 0o277]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=UMASKS, ids=lambda u: f"umask-{u:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for the test, restored after it."""
    value: int = request.param
    saved = os.umask(value)
    try:
        yield value
    finally:
        os.umask(saved)


@pytest.fixture
def laptop(tmp_path: Path) -> Path:
    """A laptop database with one record and its unsynced changes."""
    path = tmp_path / "laptop.db"

    async def make() -> None:
        replica = await Replica.open(path, create=True)
        try:
            record_id = await replica.create_record()
            await replica.set(record_id, "birthDate", "1988-04-21", author="dr.a")
        finally:
            await replica.close()

    asyncio.run(make())
    return path


def test_the_umask_fixture_is_permissive_enough_to_matter(tmp_path: Path) -> None:
    saved = os.umask(0o022)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
        assert mode(plain) == 0o644  # what a file gets by default: others may read it
    finally:
        os.umask(saved)


def test_an_export_file_is_private(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "unsynced.export"
    export = UnsyncedExport("laptop-1", 1, (ExportedUpdate(1, "r", "clinic", 1, b"\x01"),))
    write_export_file(target, export)
    assert mode(target) == 0o600
    assert read_export_file(target) == export


def test_the_opener_never_changes_the_mode_of_a_file_it_did_not_create(
    tmp_path: Path, umask: int
) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"")
    os.chmod(existing, 0o640)
    with open(existing, "ab", opener=private_opener) as file:
        file.write(b"appended")
    assert mode(existing) == 0o640
    with open(tmp_path / "new", "xb", opener=private_opener) as file:
        file.write(b"new")
    assert mode(tmp_path / "new") == 0o600


def test_caresync_export_writes_a_private_file(tmp_path: Path, laptop: Path, umask: int) -> None:
    target = tmp_path / "unsynced.export"
    result = inproc("export --db {db} --out {out} --json", db=laptop, out=target).ok()
    assert result.json()["exported"] == 2
    assert mode(target) == 0o600


def test_caresync_backup_writes_a_private_copy(tmp_path: Path, laptop: Path, umask: int) -> None:
    server = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=server).ok()
    for source in (laptop, server):
        target = tmp_path / f"{source.stem}.backup"
        copied = inproc("backup --db {db} --out {out} --json", db=source, out=target).ok()
        assert copied.json()["verified"] is True
        assert mode(target) == 0o600
        assert sorted(p.name for p in tmp_path.glob(f"{target.name}*")) == [target.name]
        assert not list(tmp_path.glob(f".{target.name}*"))  # no temporary file left


@pytest.mark.parametrize("mask", [0o022, 0o000], ids=lambda u: f"umask-{u:03o}")
def test_databases_the_commands_create_are_private(tmp_path: Path, mask: int) -> None:
    """The store creates them (mkstemp: 0600 less the umask, so not under 277)."""
    saved = os.umask(mask)
    try:
        _check_new_server_database(tmp_path)
    finally:
        os.umask(saved)


def _check_new_server_database(tmp_path: Path) -> None:
    server = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=server).ok()
    files = sorted(tmp_path.glob("server.db*"))
    assert server in files
    for path in files:
        assert mode(path) == 0o600, path.name
