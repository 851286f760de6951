"""A decision means what it says, end to end: a server and three laptops, through the CLI.

Issue 13, items 1, 2 and 5: a medication stopped on one laptop while its dose
changed on another is a block finding whose candidates are complete outcomes in
words; until someone decides, `record show` shows both fields as contested;
choosing "continue at 7.5 mg" on a third laptop makes every laptop's record say
so; two different decisions made offline stay a conflict that reads as the
decisions; an allergy recorded on one laptop blocks a brand-name prescription
made on another.
"""

from __future__ import annotations

from typing import Any

from tests.cli.clitools import inproc
from tests.cli.conftest import Clinic


def _json(template: str, **values: object) -> dict[str, Any]:
    return inproc(template, **values).ok().json()


def _sync(*laptops: object) -> None:
    for laptop in laptops:
        _json("sync --db {db} --json", db=laptop)


def _one(conflicts: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    found = [c for c in conflicts if c.get("rule") == rule or c["path"] == rule]
    assert len(found) == 1, conflicts
    return found[0]


def _medication(clinic: Clinic, name: str) -> tuple[object, object, object, str, str]:
    north, east = clinic.enrol(f"{name}-north"), clinic.enrol(f"{name}-east")
    south = clinic.enrol(f"{name}-south", username="dr.b")  # dr.b works there
    record = _json("record new --db {db} --json", db=north)["record_id"]
    med = _json(
        "record add-entry --db {db} {rid} medications {fields} --json",
        db=north,
        rid=record,
        fields='{"drug": "warfarin", "dose": "5 mg", "status": "active"}',
    )["entry_id"]
    _sync(north, south, east)
    # Offline, each does their part.
    _json(
        "record set --db {db} {rid} medications/{med}/status stopped --json",
        db=north,
        rid=record,
        med=med,
    )
    _json(
        "record set --db {db} {rid} medications/{med}/dose '7.5 mg' --json",
        db=south,
        rid=record,
        med=med,
    )
    _sync(north, south, east, north)
    return north, south, east, record, med


def test_a_decision_on_a_block_finding_is_what_every_laptop_then_says(clinic: Clinic) -> None:
    north, south, east, record, med = _medication(clinic, "decide")
    listed = _json("conflicts list --db {db} --json", db=east)["conflicts"]
    finding = _one(listed, "stopped-vs-dose-change")
    assert finding["severity"] == "block"
    assert [c["value"] for c in finding["candidates"]] == ["stopped", "continue at 7.5 mg"]
    assert [c["author"] for c in finding["candidates"]] == ["dr.a", "dr.b"]
    assert "warfarin 7.5 mg" in finding["message"] or "warfarin" in finding["message"]
    assert "medications/" not in finding["message"]  # named by content, not by id
    shown = _json("record show --db {db} {rid} --json", db=east, rid=record)["fields"]
    for name in ("status", "dose"):
        assert shown[f"medications/{med}/{name}"]["conflict"] == finding["id"]  # contested
    resolved = _json(
        "conflicts resolve --db {db} {cid} --choose 1 --json",
        db=east,
        cid=finding["id"],
    )
    assert resolved["conflicts_open"] == 0
    _sync(east, north, south)
    for laptop in (north, south, east):
        fields = _json("record show --db {db} {rid} --json", db=laptop, rid=record)["fields"]
        assert fields[f"medications/{med}/status"] == "active"
        assert fields[f"medications/{med}/dose"] == "7.5 mg"
        assert _json("conflicts list --db {db} --json", db=laptop)["conflicts"] == []
    history = _json("record show --db {db} {rid} --history --json", db=north, rid=record)
    statuses = [r["value"] for r in history["history"][f"medications/{med}/status"]]
    assert statuses == ["active", "stopped", "active"]  # the stop is kept in the history


def test_two_different_decisions_read_as_the_decisions(clinic: Clinic) -> None:
    north, south, east, record, med = _medication(clinic, "twice")
    finding = _one(
        _json("conflicts list --db {db} --json", db=north)["conflicts"], "stopped-vs-dose-change"
    )
    _json(
        "conflicts resolve --db {db} {cid} --choose 0 --json",
        db=north,
        cid=finding["id"],
    )
    _json(
        "conflicts resolve --db {db} {cid} --choose 1 --json",
        db=south,
        cid=finding["id"],
    )
    _sync(north, south, east, north)
    listed = _json("conflicts list --db {db} --json", db=east)["conflicts"]
    decisions = [c for c in listed if c["path"].startswith("_ack/")]
    assert len(decisions) == 1
    [decision] = decisions
    assert sorted(c["value"] for c in decision["candidates"]) == ["continue at 7.5 mg", "stopped"]
    assert {c["author"] for c in decision["candidates"]} == {"dr.a", "dr.b"}
    assert "decided one finding differently" in decision["message"]
    pick = [c["value"] for c in decision["candidates"]].index("stopped")
    _json(
        "conflicts resolve --db {db} {cid} --choose {n} --json",
        db=east,
        cid=decision["id"],
        n=pick,
    )
    _sync(east, north, south)
    for laptop in (north, south, east):
        fields = _json("record show --db {db} {rid} --json", db=laptop, rid=record)["fields"]
        assert fields[f"medications/{med}/status"] == "stopped"
        assert _json("conflicts list --db {db} --json", db=laptop)["conflicts"] == []


def test_an_allergy_blocks_a_brand_name_prescription_made_elsewhere(clinic: Clinic) -> None:
    north, south, east = (clinic.enrol(f"allergy-{side}") for side in ("north", "south", "east"))
    record = _json("record new --db {db} --json", db=north)["record_id"]
    _sync(north, south, east)
    _json(
        "record add-entry --db {db} {rid} allergies {fields} --json",
        db=north,
        rid=record,
        fields='{"substance": "Penicilin allergy", "criticality": "high"}',
    )
    med = _json(
        "record add-entry --db {db} {rid} medications {fields} --json",
        db=south,
        rid=record,
        fields='{"drug": "Augmentin 625 mg", "status": "active"}',
    )["entry_id"]
    _json(
        "record add-entry --db {db} {rid} allergies {fields} --json",
        db=south,
        rid=record,
        fields='{"substance": "bee stings"}',
    )
    _sync(north, south, east)
    listed = _json("conflicts list --db {db} --json", db=east)["conflicts"]
    block = _one(listed, "allergy-vs-prescription")
    assert block["severity"] == "block"
    assert [c["value"] for c in block["candidates"]] == [
        "stop Augmentin 625 mg",
        "continue Augmentin 625 mg despite the allergy",
    ]
    unchecked = _one(listed, "allergen-not-recognised")
    assert unchecked["severity"] == "info"
    assert "not checked" in unchecked["message"]
    _json(
        "conflicts resolve --db {db} {cid} --choose 0 --json",
        db=east,
        cid=block["id"],
    )
    _sync(east, north, south)
    fields = _json("record show --db {db} {rid} --json", db=south, rid=record)["fields"]
    assert fields[f"medications/{med}/status"] == "stopped"


def test_the_listing_on_screen_says_what_each_candidate_writes(clinic: Clinic) -> None:
    """A candidate's words ("stopped") are not all it writes (the dose too): the screen
    showed only the words, so a person choosing on it did not see the dose it sets."""
    _north, _south, east, record, med = _medication(clinic, "words")
    finding = _one(
        _json("conflicts list --db {db} --json", db=east)["conflicts"], "stopped-vs-dose-change"
    )
    assert finding["candidates"][0]["writes"] == {
        f"medications/{med}/status": "stopped",
        f"medications/{med}/dose": "7.5 mg",
    }
    shown = inproc("conflicts list --db {db} --record {rid}", db=east, rid=record).ok().stdout
    rows = [line for line in shown.splitlines() if line.lstrip().startswith(("0 ", "1 "))]
    assert len(rows) == 2, shown
    stopped, continued = rows
    assert "writes" in shown
    assert '"stopped"' in stopped
    for said in ('status: "stopped"', 'dose: "7.5 mg"'):
        assert said in stopped
    for said in ('status: "active"', 'dose: "7.5 mg"'):
        assert said in continued
