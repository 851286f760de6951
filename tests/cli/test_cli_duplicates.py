"""The same person registered twice, end to end: a server and three laptops, through the CLI.

Issue 13, item 3: two laptops register the same patient offline; after syncing,
every laptop and the server list one possible-duplicate finding on both records,
with the same id, naming both. Linking them on a third laptop is a decision that
reaches everyone: the finding goes, `record show` lists the linked chart with its
allergies and medications, and an allergy recorded on one chart blocks a
prescription made on the other. Unlinking brings the finding back; deciding
"different people" ends it for good. Nothing is ever merged.
"""

from __future__ import annotations

from typing import Any

from tests.cli.clitools import inproc
from tests.cli.conftest import Clinic

from caresync.cli.errors import ExitCode


def _json(template: str, **values: object) -> dict[str, Any]:
    return inproc(template, **values).ok().json()


def _sync(*laptops: object) -> None:
    for laptop in laptops:
        _json("sync --db {db} --json", db=laptop)


def _conflicts(db: object, rule: str, *records: str) -> list[dict[str, Any]]:
    """The open conflicts of ``rule`` on these records (the clinic is shared by the tests)."""
    listed = _json("conflicts list --db {db} --json", db=db)["conflicts"]
    return [c for c in listed if c.get("rule") == rule and c["record_id"] in records]


def _register(laptop: object, name: str, birth: str) -> str:
    record = _json("record new --db {db} --json", db=laptop)["record_id"]
    for path, value in (("name", name), ("birthDate", birth), ("sex", "female")):
        _json(
            "record set --db {db} {rid} {path} {value} --json",
            db=laptop,
            rid=record,
            path=path,
            value=value,
        )
    return record


def _duplicate(clinic: Clinic, tag: str, birth: str) -> tuple[object, object, object, str, str]:
    north, south, east = (clinic.enrol(f"{tag}-{side}") for side in ("north", "south", "east"))
    first = _register(north, "Awa Ndiaye", birth)
    second = _register(south, "Awa N'Diaye", birth)  # offline, on another laptop
    _sync(north, south, east, north)
    return north, south, east, first, second


def test_a_patient_registered_twice_is_found_alike_everywhere(clinic: Clinic) -> None:
    north, south, east, first, second = _duplicate(clinic, "found", "1990-04-12")
    found = _conflicts(east, "possible-duplicate", first, second)
    assert sorted(c["record_id"] for c in found) == sorted([first, second])
    assert len({c["id"] for c in found}) == 1  # one finding, on both records
    finding = found[0]
    assert finding["severity"] == "flag"
    other = second if finding["record_id"] == first else first
    assert other in finding["message"]
    assert "same birth date" in finding["message"]
    assert [c["value"] for c in finding["candidates"]] == [
        f"the same person: link with record {other}",
        "different people",
    ]
    for laptop in (north, south, clinic.db):  # the same id on every replica and the server
        assert {c["id"] for c in _conflicts(laptop, "possible-duplicate", first, second)} == {
            finding["id"]
        }
    # Nothing was merged: two records, each with its own name.
    for record, name in ((first, "Awa Ndiaye"), (second, "Awa N'Diaye")):
        shown = _json("record show --db {db} {rid} --json", db=east, rid=record)
        assert shown["fields"]["name"] == name
        assert shown["linked"] == []


def test_linked_records_are_one_chart_for_the_allergy_check(clinic: Clinic) -> None:
    north, south, east, first, second = _duplicate(clinic, "linked", "1984-02-29")
    linked = _json("record link --db {db} {a} {b} --json", db=east, a=first, b=second)
    assert linked["linked_records"] == [second]
    _sync(east, north, south)
    for laptop in (north, south, east, clinic.db):
        assert _conflicts(laptop, "possible-duplicate", first, second) == [], laptop
    # The allergy on one chart, the prescription on the other, on two laptops offline.
    _json(
        "record add-entry --db {db} {rid} allergies {fields} --json",
        db=north,
        rid=first,
        fields='{"substance": "penicillin", "criticality": "high"}',
    )
    med = _json(
        "record add-entry --db {db} {rid} medications {fields} --json",
        db=south,
        rid=second,
        fields='{"drug": "Augmentin 625 mg", "status": "active"}',
    )["entry_id"]
    _sync(north, south, east, north)
    blocks = _conflicts(east, "allergy-vs-prescription", first, second)
    assert [b["record_id"] for b in blocks] == [second]
    block = blocks[0]
    assert block["severity"] == "block"
    assert first in block["message"]  # says the allergy is on the linked chart
    shown = _json("record show --db {db} {rid} --json", db=east, rid=second)
    assert [r["record_id"] for r in shown["linked"]] == [first]
    [allergy] = shown["linked"][0]["allergies"]
    assert allergy["substance"] == "penicillin"
    assert shown["fields"][f"medications/{med}/status"]["conflict"] == block["id"]  # contested
    assert {b["id"] for b in _conflicts(north, "allergy-vs-prescription", first, second)} == {
        block["id"]
    }
    _json(
        "conflicts resolve --db {db} {cid} --choose 0 --json",
        db=east,
        cid=block["id"],
    )
    _sync(east, north, south)
    fields = _json("record show --db {db} {rid} --json", db=south, rid=second)["fields"]
    assert fields[f"medications/{med}/status"] == "stopped"
    assert _conflicts(south, "allergy-vs-prescription", first, second) == []


def test_unlink_brings_the_finding_back_and_different_people_ends_it(clinic: Clinic) -> None:
    north, south, east, first, second = _duplicate(clinic, "unlink", "1977-11-03")
    _json("record link --db {db} {a} {b} --json", db=north, a=first, b=second)
    undone = _json("record unlink --db {db} {a} {b} --json", db=north, a=second, b=first)
    assert undone["linked_records"] == []
    _sync(north, south, east)
    [finding, _same] = _conflicts(east, "possible-duplicate", first, second)
    before = _json("status --db {db} --json", db=east)["conflicts_open"]
    resolved = _json(
        "conflicts resolve --db {db} {cid} --choose 1 --json",
        db=east,
        cid=finding["id"],
    )
    assert resolved["conflicts_open"] == before - 2  # the finding was on both records
    _sync(east, north, south)
    for laptop in (north, south, east, clinic.db):
        assert _conflicts(laptop, "possible-duplicate", first, second) == []


def test_linking_is_refused_with_a_message(clinic: Clinic) -> None:
    laptop = clinic.enrol("refuse-links")
    record = _json("record new --db {db} --json", db=laptop)["record_id"]
    itself = inproc("record link --db {db} {a} {a}", db=laptop, a=record)
    assert itself.code == ExitCode.USAGE
    assert "cannot be linked to itself" in itself.stderr
    unknown = inproc("record link --db {db} {a} nope", db=laptop, a=record)
    assert unknown.code == ExitCode.NOT_FOUND
    assert "nope" in unknown.stderr
    apart = inproc("record unlink --db {db} {a} {b}", db=laptop, a=record, b=record)
    assert apart.code == ExitCode.USAGE
    assert "Traceback" not in itself.stderr + unknown.stderr + apart.stderr


def test_a_linked_charts_contested_medication_is_shown_as_contested(clinic: Clinic) -> None:
    """`record show` of the allergy's chart lists the linked chart's medications; one a
    `block` finding involves is its conflict and candidates there too, never a settled
    value (it showed "status": "active" while the finding asked whether it stands)."""
    north, south, east, first, second = _duplicate(clinic, "shown", "1979-11-03")
    _json("record link --db {db} {a} {b} --json", db=east, a=first, b=second)
    _sync(east, north, south)
    _json(
        "record add-entry --db {db} {rid} allergies {fields} --json",
        db=north,
        rid=first,
        fields='{"substance": "penicillin", "criticality": "high"}',
    )
    med = _json(
        "record add-entry --db {db} {rid} medications {fields} --json",
        db=south,
        rid=second,
        fields='{"drug": "Augmentin 625 mg", "status": "active"}',
    )["entry_id"]
    _sync(north, south, east, north)
    [block] = _conflicts(east, "allergy-vs-prescription", first, second)
    for db in (east, clinic.db):  # a laptop's database, and the server's
        shown = _json("record show --db {db} {rid} --json", db=db, rid=first)
        [chart] = shown["linked"]
        [medication] = chart["medications"]
        assert medication["entry_id"] == med
        assert medication["drug"]["conflict"] == block["id"]
        assert medication["status"]["conflict"] == block["id"]  # not "active"
        assert [c["value"] for c in medication["status"]["candidates"]] == [
            "stop Augmentin 625 mg",
            "continue Augmentin 625 mg despite the allergy",
        ]
    rendered = inproc("record show --db {db} {rid}", db=east, rid=first).ok().stdout
    assert f"CONFLICT {block['id']}" in rendered
