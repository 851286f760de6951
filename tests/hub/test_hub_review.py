"""A review of the hub summaries as a clinician and a hub operator meet them, against a
real HTTP hub on 127.0.0.1 (tests/hub/fhirhub.py).

The sender is stepped by hand (``run_once``) with the test's clock; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.hub.fhirhub import FhirHub
from tests.hub.test_hub_outbox import (
    LIMIT_S,
    Clock,
    marked_patient,
    patient_name,
    rows,
    sender,
    server_copy,
)
from tests.postgres import fresh_schema

from caresync.hub.model import HUB_PATH, RETRY_BASE_MS
from caresync.hub.summary import summary_id
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage import MemoryStore, SQLiteStore
from caresync.storage.postgres import PostgresStore


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


async def test_two_processes_never_leave_an_older_summary_on_the_hub(
    tmp_path: Path, hub: FhirHub, postgres_database: str
) -> None:
    """Two servers on one PostgreSQL database, as two ``caresync serve --hub`` processes,
    each with its sender. A's PUT of version 1 is slow; meanwhile version 2 is committed
    and B's sender is due to send it. Were B to send it then, the hub would take version
    2 and then A's late version 1: an older summary over a newer one, while the outbox
    says the newer one was sent. One summary is in flight at a time across processes:
    B leaves it to A, which sends version 2 once version 1 is answered."""
    async with fresh_schema(postgres_database) as url:
        async with await SyncServer.open(url) as first:
            await first.add_user("clinic-a", "dr.a", PASSWORD)
        a = await SyncServer.open(url)
        await a.serve("127.0.0.1", 0)
        b = await SyncServer.open(url)
        laptop = await Replica.open(tmp_path / "laptop.db")
        await laptop.enrol(a.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        clock = Clock()
        send_a, send_b = sender(a, hub, clock), sender(b, hub, clock)
        try:
            record_id = await marked_patient(laptop)
            await laptop.sync()
            hub.answer("slow")
            in_flight = asyncio.create_task(send_a.run_once())
            await asyncio.to_thread(hub.wait_arrived, 1)  # A's version 1 is at the hub
            await laptop.set(record_id, "name", "Awa Diop Ndiaye")
            await laptop.sync()
            async with asyncio.timeout(LIMIT_S):
                wait = await send_b.run_once()  # version 2 is due: B's round
            assert hub.received == []  # B sent nothing while A's request is in flight
            assert wait == RETRY_BASE_MS  # and comes back in a while, not in a busy loop
            hub.release()
            async with asyncio.timeout(LIMIT_S):
                await in_flight
                for _round in range(5):  # each round sends at most one version here
                    if await send_a.run_once() is None and await send_b.run_once() is None:
                        break
            assert (await rows(a))[record_id][0] == "sent"
            assert hub.copies[summary_id(record_id)] == await server_copy(a, record_id)
            assert patient_name(hub.copies[summary_id(record_id)]) == "Awa Diop Ndiaye"
        finally:
            await send_a.close()
            await send_b.close()
            await laptop.close()
            await a.close()
            await b.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
async def test_one_claim_on_sending_a_summary_and_a_closed_store_lets_go(
    kind: str, tmp_path: Path, postgres_database: str
) -> None:
    """``hub_sending`` is one holder's at a time, in a process and (PostgreSQL) across
    processes; a process that goes (its store closed, as by a crash) lets go."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "memory":
            first = second = MemoryStore()
        elif kind == "sqlite":
            first = second = await SQLiteStore.open(tmp_path / "server.db")
        else:
            url = await stack.enter_async_context(fresh_schema(postgres_database))
            first = await PostgresStore.open(url)
            second = await PostgresStore.open(url)
            stack.push_async_callback(second.close)
        try:
            async with first.hub_sending("r1") as mine:
                assert mine
                async with first.hub_sending("r1") as again, second.hub_sending("r1") as other:
                    assert not again
                    assert not other
                async with second.hub_sending("r2") as elsewhere:
                    assert elsewhere  # another record is another claim
                if kind == "postgres":
                    await first.close()  # its store closed: its claims go with it, at once
                    async with second.hub_sending("r1") as taken:
                        assert taken
            async with second.hub_sending("r1") as after:
                assert after
        finally:
            await first.close()
