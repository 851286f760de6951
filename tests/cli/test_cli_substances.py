"""`--substances FILE` (or CARESYNC_SUBSTANCES): the allergy check with a local table.

Issue 13, item 2: a clinic that knows a drug the bundled table does not gives its
own table, in the bundled table's format, to every command; the same laptop
database then reads an allergy to it as a block on a prescription of it, where
the bundled table reports the allergen as not checked. A file that is not a
table is refused with a message naming what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import inproc
from tests.cli.conftest import Clinic

from caresync.conflicts import DEFAULT_SUBSTANCES

LOCAL_TABLE = {
    "format": "caresync-substances/1",
    "title": "a clinic's local additions",
    "classes": [
        {
            "id": "zetamabs",
            "label": "zetamab antibodies",
            "terms": ["zetamab allergy"],
            "members": {"zetamab": ["Zetafix"]},
        }
    ],
}


def _json(template: str, **values: object) -> dict[str, Any]:
    return inproc(template, **values).ok().json()


def _rules(db: object, *extra: str) -> set[str]:
    listed = _json("conflicts list --db {db} --json " + " ".join(extra), db=db)["conflicts"]
    return {c["rule"] for c in listed}


def _chart(clinic: Clinic, name: str, table: Path) -> object:
    laptop = clinic.enrol(name)
    record = _json("record new --db {db} --json", db=laptop)["record_id"]
    for section, fields in (
        ("allergies", '{"substance": "Zetamab allergy", "criticality": "high"}'),
        ("medications", '{"drug": "Zetafix 20 mg", "status": "active"}'),
    ):
        _json(
            "record add-entry --db {db} {rid} {section} {fields} --json",
            db=laptop,
            rid=record,
            section=section,
            fields=fields,
        )
    return laptop


def test_a_local_table_makes_its_drugs_checked(clinic: Clinic, tmp_path: Path) -> None:
    assert not DEFAULT_SUBSTANCES.recognises("zetamab")  # the bundled table does not know it
    table = tmp_path / "local.json"
    table.write_text(json.dumps(LOCAL_TABLE))
    laptop = _chart(clinic, "local-table", table)
    # The bundled table: nothing to block on, and the allergy is said to be unchecked.
    bundled = _rules(laptop)
    assert "allergen-not-recognised" in bundled
    assert "allergy-vs-prescription" not in bundled
    # The local table: the same database, re-read, blocks the prescription.
    local = _rules(laptop, f"--substances {table}")
    assert "allergy-vs-prescription" in local
    assert "allergen-not-recognised" not in local


def test_the_environment_names_the_table(
    clinic: Clinic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = tmp_path / "local.json"
    table.write_text(json.dumps(LOCAL_TABLE))
    laptop = _chart(clinic, "env-table", table)
    monkeypatch.setenv("CARESYNC_SUBSTANCES", str(table))
    assert "allergy-vs-prescription" in _rules(laptop)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not JSON"),
        ('{"format": "other/1"}', "'format' must be"),
        ('{"format": "caresync-substances/1", "classes": [1]}', "a class must be an object"),
    ],
)
def test_a_file_that_is_not_a_table_is_refused(
    clinic: Clinic, tmp_path: Path, content: str, expected: str
) -> None:
    laptop = clinic.enrol(f"bad-table-{len(content)}")
    table = tmp_path / "bad.json"
    table.write_text(content)
    result = inproc("conflicts list --db {db} --substances {t}", db=laptop, t=table)
    assert result.code == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_table_is_refused(clinic: Clinic, tmp_path: Path) -> None:
    laptop = clinic.enrol("missing-table")
    result = inproc(
        "conflicts list --db {db} --substances {t}", db=laptop, t=tmp_path / "absent.json"
    )
    assert result.code == 2
    assert "cannot read the substance table" in result.stderr
