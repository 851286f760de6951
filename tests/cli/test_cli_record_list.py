"""`caresync record list`: every record with a display name and its open conflicts, on a
laptop and on a running server; and a conflict's field named alike in Python and JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.cli.clitools import PASSWORD, files_at, inproc, sh
from tests.cli.conftest import Clinic

from caresync.cli.errors import ExitCode
from caresync.replica import Replica


def _conflicting_birth_dates(
    clinic: Clinic, tag: str, family: str = "Ba"
) -> tuple[Path, Path, str]:
    """A record whose birth date two laptops set apart. The clinic is shared by the tests:
    each names its patient apart (two alike would be a possible duplicate too)."""
    north, south = clinic.enrol(f"{tag}-north"), clinic.enrol(f"{tag}-south", username="dr.b")
    rid = inproc("record new --db {db}", db=north).ok().stdout.strip()
    name = f'{{"given": "Awa", "family": "{family}"}}'
    inproc("record set --db {db} {r} name {v}", db=north, r=rid, v=name).ok()
    for db in (north, south):
        inproc("sync --db {db}", db=db).ok()
    inproc("record set --db {db} {r} birthDate 1988-04-21", db=north, r=rid).ok()
    inproc("record set --db {db} {r} birthDate 1988-12-04", db=south, r=rid).ok()
    for db in (north, south, north):
        inproc("sync --db {db}", db=db).ok()
    return north, south, rid


def test_record_list_shows_names_and_open_conflicts_on_laptops_and_the_server(
    clinic: Clinic,
) -> None:
    north, _south, rid = _conflicting_birth_dates(clinic, "list")
    unnamed = inproc("record new --db {db}", db=north).ok().stdout.strip()

    listed = sh("record list --db {db} --json", db=north).ok().json()
    by_id = {r["record_id"]: r for r in listed["records"]}
    assert by_id[rid]["display_name"] == "Awa Ba"
    assert by_id[rid]["conflicts_open"] == 1
    [conflict] = by_id[rid]["conflicts"]
    assert conflict["path"] == conflict["subject"] == "birthDate"
    assert conflict["kind"] == "field"
    assert by_id[unnamed] == {
        "record_id": unnamed,
        "display_name": None,
        "conflicts_open": 0,
        "conflicts": [],
    }
    assert listed["count"] == len(listed["records"])
    assert listed["conflicts_open"] == sum(r["conflicts_open"] for r in listed["records"])
    assert [r["record_id"] for r in listed["records"]] == sorted(by_id)

    # The server's database, read while it runs: the same record, the same conflict id.
    on_server = inproc("record list --db {db} --json", db=clinic.db).ok().json()
    served = {r["record_id"]: r for r in on_server["records"]}
    assert served[rid]["conflicts"] == by_id[rid]["conflicts"]
    assert served[rid]["display_name"] == "Awa Ba"
    assert unnamed not in served  # not synced yet

    text = inproc("record list --db {db}", db=north).ok().stdout
    assert "Awa Ba" in text
    assert conflict["id"] in text


def test_a_name_in_conflict_shows_every_candidate(clinic: Clinic) -> None:
    north, south = clinic.enrol("name-north"), clinic.enrol("name-south", username="dr.b")
    rid = inproc("record new --db {db}", db=north).ok().stdout.strip()
    inproc("sync --db {db}", db=north).ok()
    inproc("sync --db {db}", db=south).ok()
    inproc("record set --db {db} {r} name 'Awa Ba'", db=north, r=rid).ok()
    inproc("record set --db {db} {r} name 'Awa Bah'", db=south, r=rid).ok()
    for db in (north, south):
        inproc("sync --db {db}", db=db).ok()
    listed = inproc("record list --db {db} --json", db=south).ok().json()
    [record] = [r for r in listed["records"] if r["record_id"] == rid]
    assert sorted(record["display_name"].split(" | ")) == ["Awa Ba", "Awa Bah"]


def test_conflicts_json_carries_the_python_name_of_the_field(clinic: Clinic) -> None:
    _north, south, rid = _conflicting_birth_dates(clinic, "subject", family="Sow")
    listed = inproc("conflicts list --db {db} --json", db=south).ok().json()
    [conflict] = [c for c in listed["conflicts"] if c["record_id"] == rid]
    assert conflict["path"] == "birthDate"  # the documented key scripts read, kept

    async def python_view() -> str:
        async with await Replica.open(south, password=PASSWORD) as replica:
            [found] = await replica.conflicts(rid)
            return found.subject

    assert conflict["subject"] == asyncio.run(python_view())
    shown = inproc("record show --db {db} {r} --json", db=south, r=rid).ok().json()
    assert shown["conflicts"] == [conflict]


def test_record_list_of_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = inproc("record list --db {db}", db=missing)
    assert result.code == ExitCode.NOT_FOUND
    assert files_at(missing) == []
    empty = tmp_path / "empty.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=empty).ok()
    assert inproc("record list --db {db} --json", db=empty).ok().json() == {
        "records": [],
        "count": 0,
        "conflicts_open": 0,
    }
    assert "no records" in inproc("record list --db {db}", db=empty).ok().stdout
