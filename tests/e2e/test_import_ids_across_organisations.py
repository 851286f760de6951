"""A Patient from another system gets a record id of the importing organisation.

A file from outside caresync (a laboratory's, a hospital's referral) names its Patient
by that system's id (``Patient/p-42``), and caresync derives the record id from it, so
that importing the file again updates the same record. Two clinics of different
organisations on one server receive files from the same hospital: derived from the
Patient's id alone, both got the same record id, the first to sync owned it, and the
second's push was refused at every sync (holding its outbox back) — which also told the
second clinic that the other one holds that hospital's patient. Real server on
127.0.0.1, real SQLite files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.live_helpers import PASSWORD, enrolled, start_server

from caresync.fhir import import_fhir
from caresync.replica import Replica
from caresync.server import SyncServer


def _referral(family: str) -> bytes:
    """A hospital's file about its Patient ``p-42`` (no caresync identifier)."""
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "https://hospital.example/fhir/Patient/p-42",
                "resource": {
                    "resourceType": "Patient",
                    "id": "p-42",
                    "name": [{"given": ["Khady"], "family": family}],
                    "birthDate": "1984-03-09",
                },
            }
        ],
    }
    return json.dumps(bundle).encode()


async def _enrolled_in(
    tmp_path: Path, server: SyncServer, name: str, user: str, organisation: str
) -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation=organisation)
    return laptop


async def test_two_organisations_importing_one_hospitals_patient_get_records_of_their_own(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    in_b = await _enrolled_in(tmp_path, server, "b", "dr.x", "clinic-b")
    in_a = await enrolled(tmp_path, server, "a")
    try:
        [of_b] = (await import_fhir(in_b, _referral("Ndour"))).record_ids
        await in_b.sync()
        [of_a] = (await import_fhir(in_a, _referral("Ndour"))).record_ids
        assert of_a != of_b
        report = await in_a.sync()  # taken, not refused as the other clinic's record
        assert report.uploaded >= 1
        assert (await in_a.status()).pending == 0
        owners = await server.store.record_organisations([of_a, of_b])
        assert owners == {of_a: "clinic-a", of_b: "clinic-b"}
        # Importing the file again updates the same record, in each organisation.
        assert (await import_fhir(in_a, _referral("Ndour"))).record_ids == [of_a]
        assert (await import_fhir(in_b, _referral("Ndour"))).record_ids == [of_b]
    finally:
        await in_a.close()
        await in_b.close()
        await server.close()


async def test_a_record_imported_under_the_earlier_id_is_updated_there(tmp_path: Path) -> None:
    """A laptop that imported the file before this release (or before it was enrolled)
    holds the record under the id derived from the Patient's id alone: importing the
    file again updates that record, never making a second one of the same patient."""
    server = await start_server(tmp_path)
    before = await Replica.open(tmp_path / "before.db")  # not enrolled: no organisation
    try:
        [earlier] = (await import_fhir(before, _referral("Ndour"), author="dr.a")).record_ids
        await before.enrol(server.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        report = await import_fhir(before, _referral("Ndour"))
        assert report.record_ids == [earlier]
        assert await before.store.record_ids() == [earlier]  # no second record
        await before.sync()
        assert (await before.status()).pending == 0
    finally:
        await before.close()
        await server.close()
