"""The server's database can be encrypted at rest too: `caresync serve --encrypt`, its
key from CARESYNC_DATABASE_KEY (or a file), and every server-side command opens it with
that key.

Real parts: `caresync serve` in a subprocess on 127.0.0.1, laptops enrolled through the
command line, SQLite (SQLCipher) files searched for a patient's name afterwards.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest
from tests.cli.clitools import ServerProcess, inproc, run_main
from tests.cli.test_cli_commands import new_record, refused

from caresync.cli.errors import ExitCode

NAME = "Thandiwe Mbeki-Servertest"


def _holding_the_name(directory: Path, stem: str) -> list[str]:
    forms = [NAME.encode(encoding) for encoding in ("utf-8", "utf-16-le", "utf-16-be")]
    return [
        file.name
        for file in sorted(directory.iterdir())
        if file.name.startswith(stem) and any(form in file.read_bytes() for form in forms)
    ]


def test_an_encrypted_server_database_reveals_no_patient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "clinic.db"
    refused(
        inproc("serve --db {db} --port 0 --encrypt", db=db), ExitCode.USAGE, "CARESYNC_DATABASE_KEY"
    )
    assert not db.exists()
    monkeypatch.setenv("CARESYNC_DATABASE_KEY", secrets.token_hex(32))
    inproc("user add --db {db} --org clinic-a --username dr.a", db=db).ok()  # made encrypted
    server = ServerProcess(db, "--encrypt")
    try:
        laptop = tmp_path / "laptop.db"
        run_main(
            "enrol", "--db", laptop, "--server", server.url, "--org", "clinic-a",
            "--username", "dr.a",
        ).ok()  # fmt: skip
        record_id = new_record(laptop)
        inproc("record set --db {db} {r} name {v}", db=laptop, r=record_id, v=NAME).ok()
        inproc("sync --db {db}", db=laptop).ok()
        # Server-side commands open it beside the running server, with the key.
        shown = inproc("record show --db {db} {r} --json", db=db, r=record_id).ok().json()
        assert shown["fields"]["name"] == NAME
        assert _holding_the_name(tmp_path, "clinic") == []  # database, -wal, -shm
        backup = tmp_path / "clinic-backup.db"
        inproc("backup --db {db} --out {f}", db=db, f=backup).ok()
    finally:
        code, err = server.stop()
        assert code == 0, err
    assert _holding_the_name(tmp_path, "clinic") == []
    for file in (db, backup):
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            sqlite3.connect(file).execute("SELECT name FROM sqlite_master").fetchall()
    assert inproc("status --db {db} --json", db=backup).ok().json()["role"] == "server"

    monkeypatch.delenv("CARESYNC_DATABASE_KEY")
    refused(inproc("status --db {db}", db=db), ExitCode.DATABASE, "key")
    monkeypatch.setenv("CARESYNC_DATABASE_KEY", secrets.token_hex(32))  # another key
    refused(inproc("status --db {db}", db=db), ExitCode.DATABASE, "key")
