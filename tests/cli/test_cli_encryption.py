"""A laptop that can be lost: its database is encrypted at rest from enrolment on.

Real parts: a `caresync serve` process on 127.0.0.1 and SQLite (SQLCipher) files. A
known patient name is written through the command line, synced, exported and backed
up; then every file the laptop's commands wrote is searched for it, as whoever finds
the laptop would. A plain laptop (``enrol --no-encrypt``) is the control: there the same
search finds the name.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from tests.cli.clitools import PASSWORD, digest, inproc, sh
from tests.cli.conftest import Clinic
from tests.cli.test_cli_commands import new_record, refused, status

from caresync.cli.errors import ExitCode

NAME = "Zanele Okonkwo-Testname"


def _found_in(directory: Path, stem: str) -> list[str]:
    """Files of ``directory`` starting with ``stem`` that hold NAME, in any usual encoding."""
    forms = [NAME.encode(encoding) for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le")]
    forms.append(base64.b64encode(NAME.encode()).rstrip(b"="))
    forms += [base64.b64encode(b"x" * pad + NAME.encode())[4:20] for pad in (1, 2)]
    hits = []
    for file in sorted(directory.iterdir()):
        if file.name.startswith(stem) and file.is_file():
            data = file.read_bytes()
            if any(form in data for form in forms):
                hits.append(file.name)
    return hits


def _fill(clinic: Clinic, laptop: Path, stem: str) -> None:
    record_id = new_record(laptop)
    inproc("record set --db {db} {r} name {v}", db=laptop, r=record_id, v=NAME).ok()
    shown = inproc("record show --db {db} {r} --json", db=laptop, r=record_id).ok().json()
    assert shown["fields"]["name"] == NAME  # the right password reads it back
    inproc("export --db {db} --out {f}", db=laptop, f=clinic.dir / f"{stem}-unsynced.jsonl").ok()
    inproc("sync --db {db}", db=laptop).ok()
    inproc("record set --db {db} {r} weightKg 61", db=laptop, r=record_id).ok()  # WAL again
    inproc("backup --db {db} --out {f}", db=laptop, f=clinic.dir / f"{stem}-backup.db").ok()


def test_no_file_the_laptop_writes_reveals_a_patient(clinic: Clinic) -> None:
    laptop = clinic.enrol("lost", encrypted=True)
    assert status(laptop)["user"] == "dr.a"
    _fill(clinic, laptop, "lost")
    written = sorted(p.name for p in clinic.dir.iterdir() if p.name.startswith("lost"))
    assert "lost.db" in written
    assert "lost.db.keys" in written
    assert "lost-unsynced.jsonl" in written
    assert "lost-backup.db" in written
    assert "lost-backup.db.keys" in written
    assert _found_in(clinic.dir, "lost") == []

    # Plain SQLite sees no database in it, and neither does caresync without a password.
    for db in (laptop, clinic.dir / "lost-backup.db"):
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    refused(inproc("status --db {db}", db=laptop, password=None), ExitCode.USAGE, "password")
    # The backup opens with the same password.
    assert status(clinic.dir / "lost-backup.db")["replica_id"] == status(laptop)["replica_id"]

    # A wrong password reads nothing and changes nothing but the key file's count of
    # failed attempts (the copies of the key in it are as they were).
    keys = Path(f"{laptop}.keys")
    before = (digest(laptop), json.loads(keys.read_text())["users"])
    for command in ("status --db {db}", "record list --db {db}", "sync --db {db}"):
        wrong = inproc(command, db=laptop, password="not the password")
        refused(wrong, ExitCode.REFUSED, "this password does not open the database")
    assert (digest(laptop), json.loads(keys.read_text())["users"]) == before
    assert json.loads(keys.read_text())["attempts"]["failures"] == 3


def test_the_control_a_plain_laptop_reveals_the_name(clinic: Clinic) -> None:
    laptop = clinic.dir / "plain.db"
    sh(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a --no-encrypt",
        db=laptop,
        url=clinic.url,
    ).ok()
    assert not Path(f"{laptop}.keys").exists()
    _fill(clinic, laptop, "plain")
    assert "plain.db" in _found_in(clinic.dir, "plain")  # the search does find it when there


def test_another_user_gets_a_key_at_their_first_online_login(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    sh("user add --db {db} --org clinic-a --username nurse.k", db=clinic.db, password="nurse-pw-1")
    laptop = clinic.enrol("shared", encrypted=True)
    # nurse.k's password does not open it yet; a colleague's does, this once.
    refused(
        inproc("sync --db {db} --username nurse.k", db=laptop, password="nurse-pw-1"),
        ExitCode.REFUSED,
        "does not open the database",
    )
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", PASSWORD)
    login = "sync --db {db} --username nurse.k --unlock --json"
    inproc(login, db=laptop, password="nurse-pw-1").ok()
    monkeypatch.delenv("CARESYNC_UNLOCK_PASSWORD")
    # Now either password opens it; the nurse is logged in and writes as herself.
    as_nurse = inproc("status --db {db} --json", db=laptop, password="nurse-pw-1").ok().json()
    assert as_nurse["user"] == "nurse.k"
    record_id = inproc("record new --db {db} --json", db=laptop, password="nurse-pw-1").ok()
    assert record_id.json()["author"] == "nurse.k"
    # dr.a's password opens it too, but her login is not the nurse's (see
    # tests/e2e/test_encrypted_opener.py): nothing is written in the nurse's name.
    assert status(laptop)["user"] is None
    before = digest(laptop)
    refused(
        inproc("record new --db {db}", db=laptop),
        ExitCode.REFUSED,
        "dr.a's password opened this laptop, and the login kept here is nurse.k's",
    )
    assert digest(laptop) == before


def test_caresync_encrypt_converts_a_plain_laptop_in_place(clinic: Clinic) -> None:
    laptop = clinic.dir / "convert.db"
    sh(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a --no-encrypt",
        db=laptop,
        url=clinic.url,
    ).ok()
    record_id = new_record(laptop)
    inproc("record set --db {db} {r} name {v}", db=laptop, r=record_id, v=NAME).ok()
    assert "convert.db" in _found_in(clinic.dir, "convert")

    refused(inproc("encrypt --db {db}", db=laptop, password="not it"), ExitCode.REFUSED, "wrong")
    done = sh("encrypt --db {db} --json", db=laptop).ok().json()
    assert done == {"database": str(laptop), "username": "dr.a", "key_file": f"{laptop}.keys"}
    assert _found_in(clinic.dir, "convert") == []
    shown = inproc("record show --db {db} {r} --json", db=laptop, r=record_id).ok().json()
    assert shown["fields"]["name"] == NAME
    assert status(laptop)["pending"] >= 1  # its unsynced work is still there, and syncs
    inproc("sync --db {db}", db=laptop).ok()
    refused(inproc("status --db {db}", db=laptop, password=None), ExitCode.USAGE, "password")

    refused(inproc("encrypt --db {db}", db=laptop), ExitCode.DATABASE, "encrypted already")
    refused(inproc("encrypt --db {db}", db=clinic.db), ExitCode.DATABASE, "server's database")
    missing = clinic.dir / "missing.db"
    refused(inproc("encrypt --db {db}", db=missing), ExitCode.NOT_FOUND, "no database")
