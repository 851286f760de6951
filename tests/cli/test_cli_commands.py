"""Every laptop and admin command through a real `caresync` subprocess, against a real server.

One `caresync serve` process (module fixture) with its own SQLite file; each
laptop is its own SQLite file, enrolled and synced by the CLI over websockets
on 127.0.0.1. Bad input must give a one-line error, the documented exit code,
and leave every database as it was. Each command runs at least once as a real
subprocess (`sh`); further cases of the same command run in this process
(`inproc`), where a subprocess would only add start-up time.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import PASSWORD, ServerProcess, digest, files_at, inproc, sh
from tests.cli.conftest import Clinic

from caresync.replica import Replica

SYNC_KEYS = {"uploaded", "downloaded", "conflicts_open"}
STATUS_KEYS = {
    "replica_id",
    "server_id",
    "org",
    "pending",
    "oldest_pending_age_s",
    "last_sync",
    "conflicts_open",
    "records",
}


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status(db: Path) -> dict[str, Any]:
    return inproc("status --db {db} --json", db=db).ok().json()


def new_record(db: Path) -> str:
    record_id = inproc("record new --db {db} --json", db=db).ok().json()["record_id"]
    assert isinstance(record_id, str)
    return record_id


def refused(result: Any, code: int, *fragments: str) -> None:
    """The command failed with ``code`` and one error line holding every fragment."""
    assert result.code == code, result.stderr
    line = result.error_line()
    for fragment in fragments:
        assert fragment in line


# ---------------------------------------------------------------- enrol, sync


def test_enrol_copies_what_the_server_has_and_sync_reports_counts(clinic: Clinic) -> None:
    north = clinic.dir / "north.db"
    first = sh(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a --json",
        db=north,
        url=clinic.url,
    ).ok()
    assert first.stderr == ""  # no progress bar with --json
    enrolled = first.json()
    assert enrolled.keys() >= SYNC_KEYS
    assert enrolled["org"] == "clinic-a"
    assert enrolled["server_url"] == clinic.url
    assert enrolled["server_id"].startswith("server-")

    made = sh("record new --db {db} --json", db=north).ok().json()
    record_id = made["record_id"]
    sh("record set --db {db} {r} birthDate 1988-04-21", db=north, r=record_id).ok()
    assert status(north)["pending"] == 2  # created, then written: both committed, unsynced
    pushed = sh("sync --db {db} --json", db=north).ok().json()
    assert pushed.keys() >= SYNC_KEYS
    assert pushed["uploaded"] == 2
    assert pushed["conflicts_open"] == 0
    assert status(north)["pending"] == 0

    # A second laptop's first copy brings the record, with a progress bar (no --json).
    south = clinic.dir / "south.db"
    copy = sh(
        "enrol --db {db} --server {url} --org clinic-a --username dr.b", db=south, url=clinic.url
    ).ok()
    assert "first copy" in copy.stderr
    assert "enrolled to" in copy.stdout
    shown = sh("record show --db {db} {r} --json", db=south, r=record_id).ok().json()
    assert shown["fields"] == {"birthDate": "1988-04-21"}
    assert shown["conflicts"] == []


def test_enrol_refusals_create_nothing(clinic: Clinic) -> None:
    target = clinic.dir / "refused.db"
    enrol = "enrol --db {db} --server {url} --org {org} --username dr.a"
    bad_password = sh(enrol, db=target, url=clinic.url, org="clinic-a", password="not it")
    refused(bad_password, 5, "wrong password")
    assert files_at(target) == []
    unreachable = f"ws://127.0.0.1:{closed_port()}"
    cases = [
        ({"url": unreachable, "org": "clinic-a"}, 6, "cannot connect"),
        ({"url": clinic.url, "org": "clinic-b"}, 5, "dr.a"),  # no such user there
        ({"url": "http://127.0.0.1:1", "org": "clinic-a"}, 2, "ws://"),
        ({"url": clinic.url, "org": ""}, 2, "organisation"),
    ]
    for values, code, fragment in cases:
        refused(inproc(enrol, db=target, **values), code, fragment)
        assert files_at(target) == [], values


def test_no_password_and_no_terminal_is_a_clear_error(clinic: Clinic) -> None:
    target = clinic.dir / "nopassword.db"
    result = sh(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a",
        db=target,
        url=clinic.url,
        password=None,
    )
    refused(result, 2, "CARESYNC_PASSWORD")
    assert files_at(target) == []
    server = clinic.dir / "nopassword-server.db"
    result = inproc("user add --db {db} --org o --username u", db=server, password=None)
    refused(result, 2, "CARESYNC_PASSWORD")
    assert files_at(server) == []
    assert inproc("user add --db {db} --org o --username u", db=server, password="").code == 2


def test_enrolling_twice_is_refused_and_changes_nothing(clinic: Clinic) -> None:
    laptop = clinic.enrol("twice")
    before = digest(laptop)
    again = inproc(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a", db=laptop, url=clinic.url
    )
    refused(again, 2, "already enrolled")
    assert digest(laptop) == before


def test_sync_refuses_another_server_before_anything_moves(clinic: Clinic) -> None:
    laptop = clinic.enrol("loyal")
    new_record(laptop)
    other = ServerProcess(clinic.dir / "other-server.db")
    try:
        result = sh("sync --db {db} --server {url} --json", db=laptop, url=other.url)
    finally:
        code, _ = other.stop()
    assert code == 0
    mine = status(laptop)
    refused(result, 5, mine["server_id"])  # names the server it is enrolled to
    assert result.json()["error"]["code"] == 5  # under --json, the error as JSON too
    assert mine["pending"] == 1  # the edit waits for its own server
    # The enrolled server, named explicitly, is accepted.
    synced = inproc("sync --db {db} --server {url} --json", db=laptop, url=clinic.url)
    assert synced.ok().json()["uploaded"] == 1


def test_sync_failures_keep_the_outbox(clinic: Clinic) -> None:
    laptop = clinic.enrol("keeper", encrypted=True)
    new_record(laptop)
    unreachable = f"ws://127.0.0.1:{closed_port()}"
    refused(inproc("sync --db {db} --server {u}", db=laptop, u=unreachable), 6, "cannot connect")
    # The encrypted laptop itself refuses a wrong password, before anything is sent.
    bad_login = inproc("sync --db {db} --username dr.a", db=laptop, password="not it")
    refused(bad_login, 5, "this password does not open the database")
    assert status(laptop)["pending"] == 1
    good_login = inproc("sync --db {db} --username dr.a --json", db=laptop).ok().json()
    assert good_login["uploaded"] == 1


def test_sync_of_a_laptop_never_enrolled(clinic: Clinic) -> None:
    laptop = clinic.dir / "fresh.db"

    async def make() -> None:
        await (await Replica.open(laptop)).close()

    asyncio.run(make())
    refused(inproc("sync --db {db} --server {url}", db=laptop, url=clinic.url), 5, "not enrolled")


# ---------------------------------------------------------------- status


def test_status_of_a_laptop_and_of_the_running_server(clinic: Clinic) -> None:
    laptop = clinic.enrol("status")
    new_record(laptop)
    mine = sh("status --db {db} --json", db=laptop).ok().json()
    assert mine.keys() >= STATUS_KEYS
    assert mine["role"] == "laptop"
    assert mine["org"] == "clinic-a"
    assert mine["pending"] == 1
    assert isinstance(mine["oldest_pending_age_s"], float)
    assert mine["oldest_pending_age_s"] >= 0
    datetime.fromisoformat(mine["last_sync"])  # ISO 8601

    # Read while `caresync serve` holds the file for writing.
    server = sh("status --db {db} --json", db=clinic.db).ok().json()
    assert server.keys() >= STATUS_KEYS
    assert server["role"] == "server"
    assert server["server_id"] == mine["server_id"]
    assert server["pending"] == 0
    assert server["last_sync"] is None
    assert server["replicas"] >= 1

    human = inproc("status --db {db}", db=laptop).ok()
    assert "pending" in human.stdout
    assert "{" not in human.stdout


# ---------------------------------------------------------------- conflicts


def test_conflict_resolved_with_a_new_value_and_refused_choices(clinic: Clinic) -> None:
    a, b = clinic.enrol("left"), clinic.enrol("right", username="dr.b")
    record_id = new_record(a)
    inproc("sync --db {db}", db=a).ok()
    inproc("sync --db {db}", db=b).ok()
    inproc("record set --db {db} {r} weightKg 71.5", db=a, r=record_id).ok()
    inproc("record set --db {db} {r} weightKg 75", db=b, r=record_id).ok()
    for laptop in (a, b, a):
        inproc("sync --db {db}", db=laptop).ok()

    listed = sh("conflicts list --db {db} --record {r} --json", db=a, r=record_id).ok().json()
    assert listed["count"] == 1
    conflict = listed["conflicts"][0]
    assert {c["value"] for c in conflict["candidates"]} == {71.5, 75}  # numbers, not text
    human = inproc("conflicts list --db {db}", db=a).ok().stdout
    assert conflict["id"] in human
    assert "71.5" in human

    before = digest(a)
    resolve = "conflicts resolve --db {db} {c} --choose {n}"
    cid = conflict["id"]
    refused(sh(resolve, db=a, c=cid, n=2), 2, "out of range")
    refused(inproc(resolve, db=a, c=cid, n=-1), 2, "negative")
    refused(inproc(resolve, db=a, c=cid, n="one"), 2, "whole number")
    refused(inproc(resolve, db=a, c="c-nope", n=0), 3, "c-nope")
    both = inproc("conflicts resolve --db {db} {c} --choose 0 --value 1", db=a, c=cid)
    refused(both, 2, "not allowed with")
    refused(inproc("conflicts resolve --db {db} {c}", db=a, c=cid), 2, "--choose")
    assert digest(a) == before

    done = sh("conflicts resolve --db {db} {c} --value 73 --json", db=a, c=cid).ok()
    resolved = done.json()
    assert resolved["value"] == 73
    assert resolved["conflicts_open"] == 0
    for laptop in (a, b):
        inproc("sync --db {db}", db=laptop).ok()
    for db in (a, b, clinic.db):
        shown = inproc("record show --db {db} {r} --json", db=db, r=record_id).ok().json()
        assert shown["fields"]["weightKg"] == 73
        assert shown["conflicts"] == []
    history = inproc("record show --db {db} {r} --history --json", db=b, r=record_id).ok().json()
    values = [r["value"] for r in history["history"]["weightKg"]]
    assert sorted(values[:2]) == [71.5, 75]  # nothing lost: both sides are in the history
    assert values[2:] == [73]


def test_a_safety_rule_finding_is_acknowledged(clinic: Clinic) -> None:
    a, b = clinic.enrol("ward-1"), clinic.enrol("ward-2", username="dr.b")
    record_id = new_record(a)
    add = "record add-entry --db {db} {r} allergies {fields}"
    inproc(add, db=a, r=record_id, fields='{"substance": "penicillin"}').ok()
    inproc("sync --db {db}", db=a).ok()
    inproc("sync --db {db}", db=b).ok()
    sh(add, db=b, r=record_id, fields='{"substance": "Penicillin", "criticality": "high"}').ok()
    inproc("sync --db {db}", db=b).ok()
    listed = inproc("conflicts list --db {db} --record {r} --json", db=b, r=record_id).ok().json()
    rules = [c for c in listed["conflicts"] if c["path"] == "duplicate-allergy"]
    assert len(rules) == 1, listed
    finding = rules[0]
    assert finding["kind"] == "rule"
    assert finding["severity"] == "flag"
    assert {c["value"] for c in finding["candidates"]} == {"penicillin", "Penicillin"}
    done = sh("conflicts acknowledge --db {db} {c} --json", db=b, c=finding["id"])
    assert done.ok().json()["conflict_id"] == finding["id"]
    after = inproc("conflicts list --db {db} --json", db=b).ok().json()
    assert finding["id"] not in {c["id"] for c in after["conflicts"]}


# ---------------------------------------------------------------- records


def test_record_values_paths_and_refusals(clinic: Clinic) -> None:
    laptop = clinic.enrol("records")
    record_id = new_record(laptop)
    values: dict[str, tuple[str, object]] = {
        "a/number": ("42", 42),
        "a/quoted": ('"42"', "42"),
        "a/text": ("42 mg twice daily", "42 mg twice daily"),
        "a/object": ('{"code": "J45", "system": "icd10"}', {"code": "J45", "system": "icd10"}),
        "a/flag": ("true", True),
        "a/nan": ("NaN", "NaN"),
        "a/huge": ("1e999", "1e999"),
    }
    write = "record set --db {db} {r} {path} {value} --json"
    for path, (raw, _) in values.items():
        written = inproc(write, db=laptop, r=record_id, path=path, value=raw).ok().json()
        assert written["path"] == path
    entry = (
        inproc(
            "record add-entry --db {db} {r} allergies {fields} --json",
            db=laptop,
            r=record_id,
            fields='{"substance": "latex"}',
        )
        .ok()
        .json()["entry_id"]
    )
    criticality = f"allergies/{entry}/criticality"
    inproc(write, db=laptop, r=record_id, path=criticality, value="high").ok()
    fields = inproc("record show --db {db} {r} --json", db=laptop, r=record_id).ok().json()
    for path, (_, expected) in values.items():
        assert fields["fields"][path] == expected, path
    assert fields["fields"][criticality] == "high"
    assert fields["fields"][f"allergies/{entry}/substance"] == "latex"

    before = digest(laptop)
    set_ = "record set --db {db} {r} {path} 1 --author {who}"
    cases = [
        (
            sh(set_, db=laptop, r="no-such-record", path="birthDate", who="dr.a"),
            3,
            "no-such-record",
        ),
        (inproc(set_, db=laptop, r=record_id, path="a//b", who="dr.a"), 2, "a//b"),
        (inproc(set_, db=laptop, r=record_id, path="birthDate", who=" "), 2, "author"),
        (inproc(set_, db=laptop, r=record_id, path="allergies/nope/x", who="dr.a"), 3, "nope"),
        (inproc(set_, db=laptop, r=record_id, path="_x", who="dr.a"), 2, "reserved"),
        (
            inproc("record set --db {db} {r} big 9007199254740993", db=laptop, r=record_id),
            2,
            "2**53",
        ),
        (
            inproc("record add-entry --db {db} {r} allergies [1]", db=laptop, r=record_id),
            2,
            "JSON object",
        ),
        (
            inproc("record add-entry --db {db} {r} pets", db=laptop, r=record_id),
            2,
            "pets",
        ),
        (sh("record show --db {db} no-such-record", db=laptop), 3, "no-such-record"),
    ]
    for result, code, fragment in cases:
        refused(result, code, fragment)
    assert digest(laptop) == before


def test_the_running_servers_database_takes_account_changes_only(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused(inproc("record new --db {db}", db=clinic.db), 4, "in use")
    # Accounts change beside the running server, and it honours them at once.
    sh("user add --db {db} --org clinic-a --username dr.z", db=clinic.db).ok()
    laptop = clinic.enrol("laptop-of-dr-z", username="dr.z", encrypted=True)
    status = sh("status --db {db} --json", db=laptop).ok().json()
    sh(
        "user passwd --db {db} --org clinic-a --username dr.z", db=clinic.db, password="new-pw-9"
    ).ok()
    refused(
        sh("sync --db {db} --username dr.z", db=laptop), 5, "password"
    )  # the old password still opens the laptop, but no longer logs in
    # The new password does not open the laptop yet: the old one does, this once.
    refused(
        inproc("sync --db {db} --username dr.z", db=laptop, password="new-pw-9"),
        5,
        "does not open the database",
    )
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", PASSWORD)
    inproc("sync --db {db} --username dr.z --unlock", db=laptop, password="new-pw-9").ok()
    monkeypatch.delenv("CARESYNC_UNLOCK_PASSWORD")
    # From now on the new password opens it, and the old one no longer does.
    inproc("status --db {db}", db=laptop, password="new-pw-9").ok()
    refused(inproc("status --db {db}", db=laptop), 5, "does not open the database")
    sh("replica revoke --db {db} {r}", db=clinic.db, r=status["replica_id"]).ok()
    refused(sh("sync --db {db}", db=laptop, password="new-pw-9"), 5, "revoked")
    refused(inproc("replica revoke --db {db} replica-x", db=clinic.db), 3, "replica-x")


# ---------------------------------------------------------------- export, import


def test_export_and_import_unsynced_changes(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = clinic.enrol("old-laptop", encrypted=True)
    new = clinic.enrol("new-laptop", encrypted=True)
    record_id = new_record(old)
    inproc("sync --db {db}", db=old).ok()
    yesterday = clinic.dir / "old-laptop-yesterday.db"  # a backup, before today's work
    inproc("backup --db {db} --out {f}", db=old, f=yesterday).ok()
    inproc("record set --db {db} {r} birthDate 1990-01-01", db=old, r=record_id).ok()
    file = clinic.dir / "unsynced.jsonl"
    exported = sh("export --db {db} --out {f} --json", db=old, f=file).ok().json()
    assert exported["exported"] == 1
    kept = file.read_bytes()
    refused(inproc("export --db {db} --out {f}", db=old, f=file), 4, str(file))
    assert file.read_bytes() == kept  # never overwritten

    # The export is encrypted with the old laptop's key: another laptop reads it only
    # with that laptop's key file and the password of one of its users.
    assert b"1990-01-01" not in kept
    refused(inproc("import --db {db} {f}", db=new, f=file), 4, "written by another database")
    keys = f"{old}.keys"
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", "not it")
    refused(
        inproc("import --db {db} {f} --key-file {k}", db=new, f=file, k=keys),
        5,
        "does not open the database",
    )
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", PASSWORD)
    foreign = clinic.enrol("foreign", username="dr.c", org="clinic-b")
    before = digest(foreign)
    refused(
        inproc("import --db {db} {f} --key-file {k}", db=foreign, f=file, k=keys),
        5,
        "clinic-a",
        "clinic-b",
    )
    assert digest(foreign) == before
    # Another laptop of the organisation reads it, but cannot push another laptop's
    # changes (the server would refuse them for good): refused whole, nothing stored.
    before = digest(new)
    refused(
        inproc("import --db {db} {f} --key-file {k}", db=new, f=file, k=keys),
        2,
        "written on laptop",
    )
    assert digest(new) == before

    # The old laptop's disk dies: yesterday's backup comes back, and today's export
    # puts today's work back in its outbox.
    inproc("login --db {db} --username dr.a", db=yesterday).ok()  # the clinician logs in
    damaged = clinic.dir / "damaged.jsonl"
    damaged.write_bytes(kept[:-20])
    before = digest(yesterday)
    refused(inproc("import --db {db} {f}", db=yesterday, f=damaged), 4)
    assert digest(yesterday) == before
    imported = inproc("import --db {db} {f} --json", db=yesterday, f=file).ok().json()
    assert imported["imported"] == 1
    assert imported["pending"] == 1
    assert inproc("sync --db {db} --json", db=yesterday).ok().json()["uploaded"] == 1
    shown = inproc("record show --db {db} {r} --json", db=clinic.db, r=record_id).ok().json()
    assert shown["fields"]["birthDate"] == "1990-01-01"


# ---------------------------------------------------------------- replicas


def test_replicas_lists_laptops_and_flags_stale_ones(clinic: Clinic) -> None:
    laptop = clinic.enrol("watched")
    me = status(laptop)["replica_id"]
    new_record(laptop)
    inproc("sync --db {db}", db=laptop).ok()  # enrolment alone is not "seen"
    fresh = sh("replicas --db {db} --org clinic-a --json", db=clinic.db)
    assert fresh.code == 0, fresh.stderr
    listed = fresh.json()
    rows = {row["replica_id"]: row for row in listed["replicas"]}
    assert rows[me]["org"] == "clinic-a"
    assert not rows[me]["stale"]
    assert rows[me]["last_seen"] is not None
    assert rows[me]["pending"] == 0  # what the laptop reported of its outbox after its push
    assert rows[me]["oldest_pending"] is None
    assert listed["stale"] == 0
    assert all(row["org"] == "clinic-a" for row in rows.values())

    # With a threshold of a few milliseconds every laptop is stale: exit 1, for monitoring.
    strict = inproc("replicas --db {db} --stale-hours 0.000001 --json", db=clinic.db)
    assert strict.code == 1
    data = strict.json()
    # (a revoked laptop is never stale: it is out of service)
    assert data["stale"] == sum(1 for row in data["replicas"] if not row["revoked"])
    assert data["stale"] >= 1
    assert "not seen" in {r for row in data["replicas"] for r in row["reasons"]}
    human = inproc("replicas --db {db} --stale-hours 0.000001", db=clinic.db)
    assert human.code == 1
    assert "STALE" in human.stdout


# ---------------------------------------------------------------- backup


def test_backup_of_the_running_servers_database(clinic: Clinic) -> None:
    laptop = clinic.enrol("backed-up")
    record_id = new_record(laptop)
    inproc("sync --db {db}", db=laptop).ok()
    copy = clinic.dir / "backups" / "server-copy.db"
    copy.parent.mkdir()
    made = sh("backup --db {db} --out {out} --json", db=clinic.db, out=copy).ok().json()
    assert made["verified"] is True
    assert made["role"] == "server"
    live = status(clinic.db)
    assert made["replica_id"] == live["server_id"]
    assert made["records"] >= 1
    assert files_at(copy) == [copy.name]  # one self-contained file, no -wal beside it
    kept = digest(copy)
    refused(inproc("backup --db {db} --out {out}", db=clinic.db, out=copy), 4, "exists")
    assert digest(copy) == kept
    # The copy is a database the server can be restored from.
    shown = inproc("record show --db {db} {r} --json", db=copy, r=record_id).ok().json()
    assert shown["record_id"] == record_id
    restored = inproc("user add --db {db} --org clinic-a --username dr.r --json", db=copy)
    assert restored.ok().json()["server_id"] == live["server_id"]
