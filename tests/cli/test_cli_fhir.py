"""``caresync fhir export`` and ``fhir import`` end to end, on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import cli, digest, files_at, run_main

from caresync.cli.errors import ExitCode
from caresync.fhir import chart_of, require_models
from caresync.records import Record
from caresync.replica import Replica
from caresync.storage import IncomingUpdate


def make_laptop(path: Path) -> str:
    """A laptop database (not enrolled) holding one chart; returns the record's id."""

    async def go() -> str:
        async with await Replica.open(path, create=True) as replica:
            rid = await replica.create_record()
            await replica.set(rid, "name", "Awa Ba", author="dr.a")
            await replica.set(rid, "birthDate", "1990-04-12", author="dr.a")
            await replica.add_entry(
                rid, "allergies", {"substance": "latex", "status": "active"}, author="dr.a"
            )
            await replica.add_entry(
                rid, "medications", {"drug": "metformin", "dose": "500 mg"}, author="dr.a"
            )
            await replica.add_entry(rid, "problems", {"code": "E11"}, author="dr.a")
            visit = await replica.add_entry(
                rid, "encounters", {"type": "home visit", "status": "finished"}, author="dr.a"
            )
            await replica.add_entry(
                rid,
                "observations",
                {"code": "weight", "value": 61.5, "unit": "kg", "encounter": visit},
                author="dr.a",
            )
            note = await replica.add_entry(rid, "notes", {"text": "Doing well."}, author="dr.a")
            await replica.sign_note(rid, note, author="dr.a")
            await replica.add_addendum(rid, note, "Called back: fine.", author="dr.b")
            return rid

    return asyncio.run(go())


def empty_laptop(path: Path) -> None:
    async def go() -> None:
        await (await Replica.open(path, create=True)).close()

    asyncio.run(go())


def content(path: Path, record_id: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with await Replica.open(path, create=False) as replica:
            return chart_of(await replica.record(record_id)).content()

    return asyncio.run(go())


def record_ids(path: Path) -> list[str]:
    async def go() -> list[str]:
        async with await Replica.open(path, create=False) as replica:
            return await replica.record_ids()

    return asyncio.run(go())


@pytest.fixture
def laptop(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "laptop.db"
    return path, make_laptop(path)


def test_export_then_import_gives_back_the_same_chart(
    tmp_path: Path, laptop: tuple[Path, str]
) -> None:
    db, rid = laptop
    out = tmp_path / "chart.json"
    done = run_main("fhir", "export", "--db", db, rid, "--out", out, "--json").ok().json()
    assert done["record_id"] == rid
    assert done["resources"] >= 9
    assert (out.stat().st_mode & 0o777) == 0o600  # patient data: its owner only
    bundle = json.loads(out.read_bytes())
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    # The same record gives the same bytes, in a file or on standard output.
    again = tmp_path / "again.json"
    run_main("fhir", "export", "--db", db, rid, "--out", again).ok()
    assert again.read_bytes() == out.read_bytes()
    assert run_main("fhir", "export", "--db", db, rid).ok().stdout.encode() == out.read_bytes()
    shown = run_main("fhir", "export", "--db", db, rid, "--json").ok().json()
    assert shown["bundle"] == bundle

    other = tmp_path / "other.db"
    empty_laptop(other)
    imported = (
        run_main("fhir", "import", "--db", other, out, "--author", "dr.c", "--json").ok().json()
    )
    assert imported["records"] == [rid]
    assert imported["created"] == [rid]
    assert imported["author"] == "dr.c"
    assert imported["ignored"] == {"Provenance": bundle_count(bundle, "Provenance")}
    assert content(other, rid) == content(db, rid)
    # Importing it again finds everything there already.
    before = digest(other)
    again_done = (
        run_main("fhir", "import", "--db", other, out, "--author", "dr.c", "--json").ok().json()
    )
    assert again_done["unchanged"] == [rid]
    assert again_done["fields_written"] == 0
    assert digest(other) == before


def bundle_count(bundle: dict[str, Any], kind: str) -> int:
    return sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


def test_import_updates_a_record_with_revisions_by_the_importer(
    tmp_path: Path, laptop: tuple[Path, str]
) -> None:
    db, rid = laptop
    out = tmp_path / "chart.json"
    run_main("fhir", "export", "--db", db, rid, "--out", out).ok()
    bundle = json.loads(out.read_bytes())
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["birthDate"] = "1990-04-21"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(bundle))
    done = run_main("fhir", "import", "--db", db, changed, "--author", "dr.c", "--json").ok()
    assert done.json()["updated"] == [rid]
    assert done.json()["fields_written"] == 1
    shown = run_main("record", "show", "--db", db, rid, "--history", "--json").ok().json()
    assert shown["fields"]["birthDate"] == "1990-04-21"
    last = shown["history"]["birthDate"][-1]
    assert (last["value"], last["author"]) == ("1990-04-21", "dr.c")


def test_ndjson_creates_several_records(tmp_path: Path, laptop: tuple[Path, str]) -> None:
    db, rid = laptop
    lines = [
        json.dumps({"resourceType": "Patient", "id": "p1", "name": [{"text": "Moussa"}]}),
        json.dumps(
            {
                "resourceType": "Condition",
                "id": "c1",
                "subject": {"reference": "Patient/p1"},
                "code": {"text": "malaria"},
            }
        ),
        json.dumps({"resourceType": "Patient", "id": "p2", "birthDate": "2001"}),
    ]
    file = tmp_path / "bulk.ndjson"
    file.write_text("\n".join(lines) + "\n")
    done = run_main("fhir", "import", "--db", db, file, "--author", "dr.c", "--json").ok().json()
    assert len(done["records"]) == 2
    assert sorted(done["created"]) == sorted(done["records"])
    assert set(record_ids(db)) == {rid, *done["records"]}
    # The same file again: the same records, updated in place (nothing new).
    again = run_main("fhir", "import", "--db", db, file, "--author", "dr.c", "--json").ok().json()
    assert again["records"] == done["records"]
    assert again["unchanged"] == done["records"]


HOSTILE = {
    "not JSON": b'{"resourceType": "Bundle",',
    "not UTF-8": b"\xff\xfe\x00",
    "an invalid resource after good ones": None,  # built from a real export below
    "a resource of another patient": None,
    "a reserved field": None,
    "deeply nested": b"[" * 200_000,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_stores_nothing(tmp_path: Path, laptop: tuple[Path, str], case: str) -> None:
    db, rid = laptop
    out = tmp_path / "chart.json"
    run_main("fhir", "export", "--db", db, rid, "--out", out).ok()
    bundle = json.loads(out.read_bytes())
    bundle["entry"][0]["resource"]["name"] = [{"text": "Someone Else"}]  # a change to store
    data = HOSTILE[case]
    if case == "an invalid resource after good ones":
        bundle["entry"].append(
            {"resource": {"resourceType": "Observation", "status": "final", "valueQuantity": 5}}
        )
    elif case == "a resource of another patient":
        bundle["entry"].append(
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "x",
                    "subject": {"reference": "Patient/nobody"},
                }
            }
        )
    elif case == "a reserved field":
        bundle["entry"][0]["resource"].setdefault("extension", []).append(
            {
                "url": "https://caresync.example.org/fhir/StructureDefinition/field",
                "extension": [
                    {"url": "name", "valueString": "_ack/finding"},
                    {"url": "value", "valueString": '"acknowledged"'},
                ],
            }
        )
    file = tmp_path / "hostile.json"
    file.write_bytes(data if data is not None else json.dumps(bundle).encode())
    before, beside = digest(db), files_at(db)
    result = run_main("fhir", "import", "--db", db, file, "--author", "dr.c", "--json")
    assert result.code == ExitCode.USAGE, result.stderr
    assert result.json()["error"]["kind"] == "usage"
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert digest(db) == before
    assert files_at(db) == beside
    assert content(db, rid)["fields"]["name"] == json.dumps("Awa Ba")


def test_a_value_for_a_field_in_conflict_is_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    db = tmp_path / "laptop.db"

    async def conflicted() -> str:
        # Another laptop's copy changes birthDate while this one does: a conflict here.
        async with await Replica.open(db, create=True) as replica:
            rid = await replica.create_record()
            await replica.set(rid, "name", "Awa", author="dr.a")
            stored = await replica.store.load(rid)
            assert stored is not None
            other = Record.from_update(rid, stored, replica="laptop-other")
            other.set("birthDate", "1990-02-01", author="dr.b")
            await replica.set(rid, "birthDate", "1990-01-02", author="dr.a")
            await replica.store.write_remote([IncomingUpdate(rid, other.update_since(), None)])
        return rid

    rid = asyncio.run(conflicted())
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [{"system": "https://caresync.example.org/fhir/record-id", "value": rid}],
        "birthDate": "1991-01-01",
        "name": [{"text": "Awa Ba"}],
    }
    file = tmp_path / "patient.json"
    file.write_text(json.dumps(patient))
    before = digest(db)
    result = run_main("fhir", "import", "--db", db, file, "--author", "dr.c")
    assert result.code == ExitCode.CONFLICT
    assert "birthDate is in conflict" in result.error_line()
    assert digest(db) == before


def test_export_of_an_unknown_record_and_over_an_existing_file(
    tmp_path: Path, laptop: tuple[Path, str]
) -> None:
    db, rid = laptop
    assert run_main("fhir", "export", "--db", db, "no-such-record").code == ExitCode.NOT_FOUND
    taken = tmp_path / "taken.json"
    taken.write_text("keep me")
    result = run_main("fhir", "export", "--db", db, rid, "--out", taken)
    assert result.code == ExitCode.USAGE
    assert "never overwrites" in result.error_line()
    assert taken.read_text() == "keep me"


def test_without_the_extra_the_command_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_models.cache_clear()
    monkeypatch.setitem(sys.modules, "fhir.resources.R4B", None)
    db = tmp_path / "never-made.db"
    try:
        for argv in (
            ["fhir", "export", "--db", db, "r-1"],
            ["fhir", "import", "--db", db, tmp_path / "x.json", "--author", "dr.a"],
        ):
            result = run_main(*argv, "--json")
            assert result.code == ExitCode.USAGE
            assert 'pip install "caresync[fhir]"' in result.json()["error"]["message"]
    finally:
        require_models.cache_clear()
    assert not files_at(db)


def test_the_command_runs_as_a_program(tmp_path: Path, laptop: tuple[Path, str]) -> None:
    db, rid = laptop
    out = tmp_path / "chart.json"
    cli("fhir", "export", "--db", db, rid, "--out", out).ok()
    other = tmp_path / "other.db"
    empty_laptop(other)
    done = cli("fhir", "import", "--db", other, out, "--author", "dr.c", "--json").ok().json()
    assert done["records"] == [rid]
    assert content(other, rid) == content(db, rid)
