"""`caresync audit` through the command line: reads and writes made with the CLI are in
the trail, the trail of a laptop and of the server verify after a sync, and an export
whose entry was changed, removed or moved fails verification naming that entry.

Real parts: a `caresync serve` process on 127.0.0.1 and SQLite files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.clitools import inproc, sh
from tests.cli.conftest import Clinic
from tests.cli.test_cli_commands import new_record, refused

from caresync.cli.errors import ExitCode


def _entries(db: Path, *extra: str) -> list[dict[str, object]]:
    data = inproc("audit list --db {db} --json " + " ".join(extra), db=db).ok().json()
    entries = data["entries"]
    assert isinstance(entries, list)
    assert data["count"] == len(entries)
    return entries


@pytest.fixture(scope="module")
def exported(clinic: Clinic, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A laptop that wrote, read and synced; its trail exported; the record's id."""
    laptop = clinic.enrol("audited")
    record_id = new_record(laptop)
    inproc("record set --db {db} {r} birthDate 1990-01-01", db=laptop, r=record_id).ok()
    inproc("record show --db {db} {r} --json", db=laptop, r=record_id).ok()
    inproc("sync --db {db} --json", db=laptop).ok()
    out = tmp_path_factory.mktemp("audit") / "trail.ndjson"
    inproc("audit export --db {db} --out {out} --json", db=laptop, out=out).ok()
    return out, record_id


def test_cli_reads_and_writes_are_in_the_trail_and_reach_the_server(
    clinic: Clinic, exported: tuple[Path, str]
) -> None:
    _file, record_id = exported
    laptop = clinic.laptops["audited"]
    mine = _entries(laptop, "--record", record_id)
    assert {(e["actor"], e["action"]) for e in mine} >= {("dr.a", "write"), ("dr.a", "read")}
    assert all(e["record_id"] == record_id for e in mine)
    for entry in mine:  # who, what, when, where; never what the record says
        # The value itself (a bare "1990" may be part of a hash or an id by chance).
        assert "1990-01-01" not in json.dumps(entry)

    verified = inproc("audit verify --db {db} --json", db=laptop).ok().json()
    assert verified["ok"] is True
    assert verified["first_bad"] is None
    on_server = sh("audit verify --db {db} --json", db=clinic.db).ok().json()
    assert on_server["ok"] is True
    heads = {(h["replica_id"], h["line"]): h for h in on_server["heads"]}
    [own_head] = verified["heads"]
    synced = heads[(own_head["replica_id"], 0)]
    # The server holds the laptop's chain up to its sync (the reads after it come next time).
    laptop_entries = _entries(laptop)
    at_sync = {e["seq"]: e["hash"] for e in laptop_entries}
    assert at_sync[synced["seq"]] == synced["hash"]

    # The server's own reads are in its own chain, as the system account that ran them.
    sh("record show --db {db} {r} --json", db=clinic.db, r=record_id).ok()
    server_reads = [
        e
        for e in _entries(clinic.db, "--record", record_id)
        if e["replica_id"] != own_head["replica_id"]
    ]
    assert server_reads
    assert all(str(e["actor"]).startswith("os:") for e in server_reads)


def test_an_untouched_export_verifies(exported: tuple[Path, str]) -> None:
    file, _record_id = exported
    result = inproc("audit verify --file {f} --json", f=file).ok().json()
    assert result["ok"] is True
    assert result["entries"] == len(file.read_text().splitlines())


def _tampered(file: Path, tmp_path: Path, change: str) -> Path:
    lines = file.read_text().splitlines(keepends=True)
    if change == "changed":
        event = json.loads(lines[2])
        event["agent"][0]["who"]["identifier"]["value"] = "dr.b"
        lines[2] = json.dumps(event) + "\n"
    elif change == "removed":
        del lines[2]
    else:  # reordered
        lines[2], lines[3] = lines[3], lines[2]
    target = tmp_path / f"{change}.ndjson"
    target.write_text("".join(lines))
    return target


@pytest.mark.parametrize("change", ["changed", "removed", "reordered"])
def test_a_tampered_export_fails_naming_the_first_bad_entry(
    exported: tuple[Path, str], tmp_path: Path, change: str
) -> None:
    file, _record_id = exported
    bad = _tampered(file, tmp_path, change)
    result = inproc("audit verify --file {f} --json", f=bad)
    assert result.code == ExitCode.CHECK_FAILED
    verdict = result.json()
    assert verdict["ok"] is False
    first_bad = verdict["first_bad"]
    assert first_bad["file_line"] == 3  # the third line is the first that breaks
    expected_seq = {"changed": 3, "removed": 4, "reordered": 4}[change]
    assert first_bad["seq"] == expected_seq
    text = inproc("audit verify --file {f}", f=bad)
    assert text.code == ExitCode.CHECK_FAILED
    assert f"entry {expected_seq}" in text.stdout


def test_a_file_that_is_no_trail_and_an_existing_output_are_refused(
    clinic: Clinic, exported: tuple[Path, str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.ndjson"
    junk.write_text('{"resourceType": "Patient"}\n')
    result = inproc("audit verify --file {f} --json", f=junk)
    assert result.code == ExitCode.CHECK_FAILED
    assert "line 1" in result.json()["first_bad"]["reason"]
    file, _record_id = exported
    laptop = clinic.laptops["audited"]
    refused(
        inproc("audit export --db {db} --out {out}", db=laptop, out=file),
        ExitCode.USAGE,
        "never overwrites",
    )


def test_a_listing_is_one_entry_and_not_one_read_per_record(clinic: Clinic) -> None:
    laptop = clinic.enrol("lister")
    for _ in range(3):
        new_record(laptop)
    before = _entries(laptop)
    listed = inproc("record list --db {db} --json", db=laptop).ok().json()
    added = _entries(laptop)[len(before) :]
    assert [(e["action"], e["detail"]) for e in added] == [
        ("list", "conflicts"),
        ("list", f"records: {listed['count']}"),
    ]


@pytest.mark.parametrize(
    "forge",
    ["outcome", "second agent", "second patient", "type"],
)
def test_fields_no_hash_covers_cannot_be_added_or_changed(
    exported: tuple[Path, str], tmp_path: Path, forge: str
) -> None:
    file, _record_id = exported
    lines = file.read_text().splitlines(keepends=True)
    event = json.loads(lines[1])
    if forge == "outcome":
        event["outcome"] = "8"
    elif forge == "second agent":
        event["agent"].append({"who": {"identifier": {"value": "dr.framed"}}, "requestor": False})
    elif forge == "second patient":
        event.setdefault("entity", []).append({"what": {"identifier": {"value": "other"}}})
    else:
        event["type"]["code"] = "110106"
    lines[1] = json.dumps(event) + "\n"
    bad = tmp_path / "forged.ndjson"
    bad.write_text("".join(lines))
    result = inproc("audit verify --file {f} --json", f=bad)
    assert result.code == ExitCode.CHECK_FAILED
    first_bad = result.json()["first_bad"]
    assert first_bad["file_line"] == 2
    assert "changed after the export" in first_bad["reason"]
