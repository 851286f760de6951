"""An import that writes thousands of entries into one record (a patient's lab history
from another system) reaches the server: the laptop keeps it as several updates, each
within what a server admits in one, instead of one it refuses at every push.

Real parts: a server on 127.0.0.1 and SQLite files.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.live_helpers import enrolled, start_server

from caresync.fhir import import_fhir
from caresync.records import Record

LABS = 2_500  # five entries each with the entry itself: past the 10,000 a server admits


def _lab_history() -> bytes:
    entries: list[dict[str, object]] = [
        {"resource": {"resourceType": "Patient", "id": "p1", "name": [{"text": "Awa Diop"}]}}
    ]
    for n in range(LABS):
        observation = {
            "resourceType": "Observation",
            "id": f"glucose-{n}",
            "status": "final",
            "code": {"text": "glucose"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-01-01T10:00:00Z",
            "valueQuantity": {"value": n, "unit": "mmol/L"},
        }
        entries.append({"resource": observation})
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()


async def test_a_lab_history_imported_in_one_go_reaches_the_server(tmp_path: Path) -> None:
    # The bug: the import was one update of 12,502 entries; the server refused it at every
    # push ("the limit is 10000"), and every change after it waited in the outbox for good.
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        [chart] = (await import_fhir(laptop, _lab_history())).record_ids
        later = await laptop.create_record()
        await laptop.set(later, "name", "Moussa Ba")
        await laptop.sync()
        assert (await laptop.status()).pending == 0
        stored = await server.store.load(chart)
        assert stored is not None
        on_server = Record.from_update(chart, stored, replica="reader")
        assert len(on_server.entry_ids("observations")) == LABS
        assert on_server.value("name") == "Awa Diop"
        assert await server.store.load(later) is not None
        # The laptop holds the record whole too.
        here = await laptop.record(chart)
        assert len(here.entry_ids("observations")) == LABS
    finally:
        await laptop.close()
        await server.close()
