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
from caresync.fhir import import_fhir, plan_import
from caresync.replica import Replica
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


async def test_two_sources_patient_1_never_merges_two_people(tmp_path: Path) -> None:
    """Two files whose Patients share an id but are different people: the second import
    is refused whole, and the first record keeps its person."""
    pytest.importorskip("fhir.resources")

    def patient_file(url: str, name: str, born: str) -> bytes:
        resource = {"resourceType": "Patient", "id": "1", "name": [{"text": name}]}
        resource["birthDate"] = born
        bundle = {"resourceType": "Bundle", "type": "collection"}
        bundle["entry"] = [{"fullUrl": url, "resource": resource}]
        return json.dumps(bundle).encode()

    first = patient_file("https://hospital-a.example/fhir/Patient/1", "Awa Ba", "1950-01-01")
    second = patient_file("https://lab-b.example/fhir/Patient/1", "Moussa Diop", "2019-05-05")
    async with await Replica.open(tmp_path / "laptop.db") as laptop:
        [record_id] = (await import_fhir(laptop, first, author="dr.a")).record_ids
        pending = (await laptop.status()).pending
        with pytest.raises(InvalidFhirError, match="another person"):
            await import_fhir(laptop, second, author="dr.a")
        assert (await laptop.status()).pending == pending
        view = await laptop.record(record_id)
        assert (view.value("name"), view.value("birthDate")) == ("Awa Ba", "1950-01-01")
        # The same person again (an update from the same source) is taken.
        again = patient_file("https://hospital-a.example/fhir/Patient/1", "Awa Ba", "1950-01-01")
        assert (await import_fhir(laptop, again, author="dr.a")).record_ids == [record_id]
