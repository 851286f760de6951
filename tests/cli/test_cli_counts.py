"""Counts that add up, through the command line: a server and three laptops (issue 13, item 4)."""

from __future__ import annotations

from typing import Any

from tests.cli.clitools import inproc
from tests.cli.conftest import Clinic


def _json(template: str, **values: object) -> dict[str, Any]:
    return inproc(template, **values).ok().json()


def test_three_laptops_dispensing_offline_add_up_and_below_zero_blocks(clinic: Clinic) -> None:
    laptops = [clinic.enrol(f"stock-{n}") for n in range(3)]
    first = laptops[0]
    record = _json("record new --db {db} --json", db=first)["record_id"]
    path = "stock/amoxicillin-500mg"
    written = _json("record set --db {db} {rid} {path} 2 --json", db=first, rid=record, path=path)
    assert written["total"] == 2
    for laptop in laptops:
        _json("sync --db {db} --json", db=laptop)
    # Offline: each laptop dispenses one box of the two it read.
    for n, laptop in enumerate(laptops):
        if n == 0:
            done = _json(
                "record set --db {db} {rid} {path} 1 --json",
                db=laptop,
                rid=record,
                path=path,
            )
        else:
            done = _json(
                "record adjust --db {db} {rid} {path} -1 --json",
                db=laptop,
                rid=record,
                path=path,
            )
        assert done["total"] == 1  # what this laptop sees on its own
    for laptop in (*laptops, *laptops):  # twice round: everyone has everything
        _json("sync --db {db} --json", db=laptop)
    for laptop in laptops:
        fields = _json("record show --db {db} {rid} --json", db=laptop, rid=record)["fields"]
        # Three dispensings from 2: -1, and a block until someone recounts.
        assert fields[path]["conflict"]
    listed = _json("conflicts list --db {db} --json", db=laptops[2])["conflicts"]
    [below] = [c for c in listed if c["rule"] == "count-below-zero"]
    assert below["severity"] == "block"
    assert "-1" in below["message"]
    assert (
        inproc(
            "conflicts resolve --db {db} {cid} --choose 0",
            db=laptops[2],
            cid=below["id"],
        ).code
        == 2
    )  # a count is settled by entering the counted value
    _json(
        "conflicts resolve --db {db} {cid} --value 0 --json",
        db=laptops[2],
        cid=below["id"],
    )
    for laptop in (laptops[2], laptops[0], laptops[1]):  # the recount reaches everyone
        _json("sync --db {db} --json", db=laptop)
    for laptop in laptops:
        fields = _json("record show --db {db} {rid} --json", db=laptop, rid=record)["fields"]
        assert fields[path] == 0
        assert _json("conflicts list --db {db} --json", db=laptop)["conflicts"] == []
    history = _json("record show --db {db} {rid} --history --json", db=first, rid=record)
    changes = sorted(r["value"]["delta"] for r in history["history"][path])
    assert changes == [-1, -1, -1, 1, 2]  # each dispensing kept, with its author


def test_adjust_takes_only_an_integer(clinic: Clinic) -> None:
    laptop = clinic.enrol("stock-bad")
    record = _json("record new --db {db} --json", db=laptop)["record_id"]
    for bad in ("1.5", "5_0", "ten"):
        result = inproc(
            "record adjust --db {db} {rid} stock/x {change}",
            db=laptop,
            rid=record,
            change=bad,
        )
        assert result.code == 2, bad
    plain = inproc("record adjust --db {db} {rid} name 1", db=laptop, rid=record)
    assert plain.code == 2  # not a count
