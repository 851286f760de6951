"""A review of the hub summaries as a clinician and a hub operator meet them, against a
real HTTP hub on 127.0.0.1 (tests/hub/fhirhub.py).

The sender is stepped by hand (``run_once``) with the test's clock; nothing sleeps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.hub.fhirhub import FhirHub
from tests.hub.test_hub_outbox import Clock, rows, sender, server_copy

from caresync.hub.model import HUB_PATH
from caresync.hub.summary import summary_id


@pytest.fixture
def hub() -> AsyncIterator[FhirHub]:  # type: ignore[misc]
    with FhirHub() as running:
        yield running


def _section_items(bundle: dict[str, object], title: str) -> list[str]:
    """The lines of a section's narrative (what a hub's viewer shows a clinician)."""
    composition = bundle["entry"][0]["resource"]  # type: ignore[index]
    [section] = [s for s in composition["section"] if s["title"] == title]
    return [
        re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>.*?</li>", section["text"]["div"])
    ]


async def test_the_narrative_says_what_is_stopped_refuted_resolved_and_critical(
    tmp_path: Path, hub: FhirHub
) -> None:
    """The sections' narrative is what a hub's viewer shows: a stopped drug, a refuted
    allergy or a resolved problem must not read as current, and a high criticality
    must be there."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    steps = sender(server, hub, Clock())
    try:
        record_id = await laptop.create_record()
        await laptop.set(record_id, "name", "Awa Diop")
        await laptop.add_entry(
            record_id,
            "allergies",
            {"substance": "penicillin", "status": "active", "criticality": "high",
             "reaction": "anaphylaxis"},
        )  # fmt: skip
        await laptop.add_entry(record_id, "allergies", {"substance": "latex", "status": "refuted"})
        await laptop.add_entry(
            record_id, "medications", {"drug": "warfarin", "dose": "5 mg", "status": "stopped"}
        )
        await laptop.add_entry(
            record_id, "medications", {"drug": "metformin", "dose": "500 mg", "status": "active"}
        )
        await laptop.add_entry(record_id, "problems", {"code": "pneumonia", "status": "resolved"})
        await laptop.set(record_id, HUB_PATH, True)
        await laptop.sync()
        assert await steps.run_once() is None
        assert (await rows(server))[record_id][0] == "sent"
        assert hub.copies[summary_id(record_id)] == await server_copy(server, record_id)
        bundle = hub.bundle(summary_id(record_id))

        allergies = _section_items(bundle, "Allergies and Intolerances")
        [penicillin] = [a for a in allergies if a.startswith("penicillin")]
        assert "active" in penicillin
        assert "criticality high" in penicillin
        assert "anaphylaxis" in penicillin
        [latex] = [a for a in allergies if a.startswith("latex")]
        assert "refuted" in latex

        medications = _section_items(bundle, "Medication Summary")
        [warfarin] = [m for m in medications if m.startswith("warfarin")]
        assert "stopped" in warfarin
        assert "5 mg" in warfarin
        [metformin] = [m for m in medications if m.startswith("metformin")]
        assert "active" in metformin
        assert "stopped" not in metformin

        [pneumonia] = _section_items(bundle, "Problem List")
        assert "resolved" in pneumonia
    finally:
        await steps.close()
        await laptop.close()
        await server.close()
