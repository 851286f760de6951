"""``caresync record sign``: a signed note's text can no longer change (issue 13, item 6)."""

from __future__ import annotations

from tests.cli.clitools import inproc, sh
from tests.cli.conftest import Clinic


def test_a_note_signed_from_the_command_line_is_frozen(clinic: Clinic) -> None:
    laptop = clinic.enrol("signing")
    record = inproc("record new --db {db} --json", db=laptop).ok().json()["record_id"]
    note = (
        inproc(
            "record add-entry --db {db} {rid} notes {fields} --json",
            db=laptop,
            rid=record,
            fields='{"text": "amoxicillin 15 mg/kg twice a day"}',
        )
        .ok()
        .json()["entry_id"]
    )
    signed = sh("record sign --db {db} {rid} {note} --json", db=laptop, rid=record, note=note).ok()
    data = signed.json()
    assert (data["record_id"], data["note_id"], data["author"]) == (record, note, "dr.a")
    changed = inproc(
        "record set --db {db} {rid} notes/{note}/text changed",
        db=laptop,
        rid=record,
        note=note,
    )
    assert changed.code == 7, changed.stderr  # a signed note cannot change
    assert "addendum" in changed.error_line()
    shown = inproc("record show --db {db} {rid} --json", db=laptop, rid=record).ok().json()
    assert shown["fields"][f"notes/{note}/text"] == "amoxicillin 15 mg/kg twice a day"
    missing = inproc("record sign --db {db} {rid} no-such-note", db=laptop, rid=record)
    assert missing.code == 3
