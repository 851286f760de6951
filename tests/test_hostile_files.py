"""Files an attacker (or a damaged disk) hands caresync are refused with a typed error,
never a crash: FHIR Bundles that trip the model library, addenda that append to
addenda, and key files or exports nested deep enough to exhaust the JSON parser.

Each case was found by an attacker's review of this code and reproduced first.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from caresync.exceptions import ExportFileError, InvalidFhirError, KeyFileError
from caresync.fhir import plan_import
from caresync.storage import KeyRing
from caresync.storage.unsynced import read_export_file


def _bundle(*resources: object) -> bytes:
    entries = [{"resource": resource} for resource in resources]
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


def _note(note_id: str, appends_to: str | None = None) -> dict[str, object]:
    note: dict[str, object] = {
        "resourceType": "DocumentReference",
        "id": note_id,
        "status": "current",
        "subject": {"reference": "Patient/p"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(f"text {note_id}".encode()).decode(),
                }
            }
        ],
    }
    if appends_to is not None:
        note["relatesTo"] = [
            {"code": "appends", "target": {"reference": f"DocumentReference/{appends_to}"}}
        ]
    return note


PATIENT = {"resourceType": "Patient", "id": "p"}


@pytest.mark.parametrize(
    "data",
    [
        _bundle({"resourceType": "Nope"}),
        _bundle({"resourceType": 7}),
        _bundle(PATIENT, _note("n"), _note("b", "n"), _note("a", "b")),  # addendum of addendum
        _bundle(PATIENT, _note("a", "a")),  # appends to itself
    ],
    ids=["unknown-type", "type-not-text", "addendum-of-addendum", "appends-to-itself"],
)
def test_a_hostile_fhir_file_is_refused_with_a_typed_error(data: bytes) -> None:
    pytest.importorskip("fhir.resources")
    with pytest.raises(InvalidFhirError):
        plan_import(data)


def test_a_key_file_nested_too_deep_is_a_key_file_error(tmp_path: Path) -> None:
    keys = tmp_path / "laptop.db.keys"
    keys.write_text("[" * 200_000)
    with pytest.raises(KeyFileError, match="not JSON"):
        KeyRing.load(keys)


def test_an_export_nested_too_deep_is_an_export_file_error(tmp_path: Path) -> None:
    export = tmp_path / "unsynced.jsonl"
    export.write_text("[" * 200_000 + "\n")
    with pytest.raises(ExportFileError):
        read_export_file(export)
