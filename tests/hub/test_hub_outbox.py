"""The health-hub outbox end to end: laptops, a server on 127.0.0.1, SQLite files, a real
HTTP hub (tests/hub/fhirhub.py) that validates what it receives.

The sender's clock and randomness are the test's: attempts are stepped with
``run_once`` (nothing sleeps), or the running sender is waited on through the
hub's requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.hub.fhirhub import FhirHub

import caresync.hub.sender
import caresync.replication.session
from caresync.conflicts import RecordView
from caresync.exceptions import InvalidFhirError
from caresync.hub.model import HUB_PATH, RETRY_MAX_MS, retry_delay_ms
from caresync.hub.sender import HubSender
from caresync.hub.status import hub_pending, laptop_summaries, server_summaries
from caresync.hub.summary import summary_bytes, summary_id
from caresync.replica import Replica
from caresync.server import SyncServer

LIMIT_S = 30.0


class Clock:
    """The sender's clock: moves only when the test moves it."""

    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def hub() -> AsyncIterator[FhirHub]:  # type: ignore[misc]
    with FhirHub() as running:
        yield running


async def rows(server: SyncServer) -> dict[str, tuple[str, int, str | None]]:
    return {r.record_id: (r.state, r.version, r.reason) for r in await server.store.hub_summaries()}


async def server_copy(server: SyncServer, record_id: str) -> bytes:
    """The summary of the record as the server holds it now."""
    return summary_bytes(RecordView(await server._pool.get(record_id)))


async def marked_patient(laptop: Replica) -> str:
    record_id = await laptop.create_record()
    await laptop.set(record_id, "name", "Awa Diop")
    await laptop.set(record_id, "birthDate", "1980-02-03")
    await laptop.add_entry(record_id, "allergies", {"substance": "penicillin", "status": "active"})
    await laptop.add_entry(record_id, "medications", {"drug": "amoxicillin", "dose": "500 mg"})
    await laptop.set(record_id, HUB_PATH, True)
    return record_id


def patient_name(body: bytes) -> str:
    name: str = json.loads(body)["entry"][1]["resource"]["name"][0]["text"]
    return name


def sender(server: SyncServer, hub: FhirHub, clock: Clock, **options: object) -> HubSender:
    """A sender the test steps by hand (not started)."""
    return HubSender(
        server.store, hub.url, server.hub_snapshot, now_ms=clock, random=lambda: 0.5, **options
    )


async def test_marked_offline_shows_pending_then_reaches_the_hub_equal_to_the_record(
    tmp_path: Path, hub: FhirHub
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        record_id = await marked_patient(laptop)  # offline: not synced yet
        [summary] = await laptop_summaries(laptop)
        assert (summary.record_id, summary.state, summary.version) == (record_id, "pending", None)
        assert hub_pending([summary]) == 1
        assert await server.store.hub_summaries() == []  # the server knows nothing yet

        running = server.start_hub(hub.url)
        sent = asyncio.Event()
        running.on_outcome.append(lambda rid, state: sent.set() if state == "sent" else None)
        await laptop.sync()  # the running sender is woken by the push's commit
        async with asyncio.timeout(LIMIT_S):
            await sent.wait()  # the outcome is committed
        [received] = hub.received
        assert received.answered == 200
        assert received.path == f"/fhir/Bundle/{summary_id(record_id)}"
        assert received.content_type == "application/fhir+json"
        assert received.problem is None
        assert (await rows(server))[record_id][0] == "sent"
        # The disclosure is in the server's own audit trail, written before the data left.
        own = await server.store.audit_entries(replica_id=server.server_id, record_id=record_id)
        assert [(e.actor, e.action) for e in own] == [("hub-sender", "export")]
        # The hub's copy is the record's summary, byte for byte, and says what the record says.
        assert hub.copies[summary_id(record_id)] == await server_copy(server, record_id)
        bundle = hub.bundle(summary_id(record_id))
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds == ["Composition", "Patient", "AllergyIntolerance", "MedicationStatement"]
        patient = bundle["entry"][1]["resource"]
        assert patient["name"][0]["text"] == "Awa Diop"
        assert patient["birthDate"] == "1980-02-03"
        assert bundle["entry"][2]["resource"]["code"]["text"] == "penicillin"
        assert bundle["entry"][3]["resource"]["dosage"][0]["text"] == "500 mg"
        # After a sync the laptop shows what the server knows.
        await laptop.sync()
        [known] = await laptop_summaries(laptop)
        assert known.state == "sent"
        assert known.version == (await rows(server))[record_id][1]
        assert known.last_attempt_ms is not None
    finally:
        await laptop.close()
        await server.close()


async def test_held_while_a_conflict_is_open_and_sent_once_it_is_resolved(
    tmp_path: Path, hub: FhirHub
) -> None:
    server = await start_server(tmp_path)
    first = await enrolled(tmp_path, server, "first")
    second = await enrolled(tmp_path, server, "second", user="dr.b")
    clock = Clock()
    steps = sender(server, hub, clock)
    try:
        record_id = await marked_patient(first)
        await first.sync()
        await second.sync()
        # Two laptops write two birth dates concurrently: a field conflict.
        await first.set(record_id, "birthDate", "1980-02-04")
        await second.set(record_id, "birthDate", "1981-02-03")
        await first.sync()
        await second.sync()
        state, _version, reason = (await rows(server))[record_id]
        assert state == "held"
        assert reason is not None
        assert "birthDate" in reason
        assert await steps.run_once() is None  # nothing due: nothing sent
        assert hub.received == []
        [shown] = server_summaries(await server.store.hub_summaries())
        assert shown.state == "held"

        await first.sync()
        [conflict] = [c for c in await first.conflicts(record_id) if c.subject == "birthDate"]
        await first.resolve(conflict.id, choose=0)
        await first.sync()
        assert (await rows(server))[record_id][0] == "pending"
        assert await steps.run_once() is None
        [received] = hub.received
        assert received.answered == 200
        assert (await rows(server))[record_id][0] == "sent"
        bundle = hub.bundle(summary_id(record_id))
        birth = bundle["entry"][1]["resource"]["birthDate"]
        assert birth == (await first.record(record_id)).value("birthDate")
    finally:
        await steps.close()
        await first.close()
        await second.close()
        await server.close()


async def test_retries_with_capped_jittered_backoff_until_it_lands(
    tmp_path: Path, hub: FhirHub
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    steps = sender(server, hub, clock, timeout_s=0.5)
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        hub.answer(503, 429, "drop", 408, "slow", 500)
        waits = []
        reasons = []
        for expected in ("503", "429", "RemoteProtocolError", "408", "in time", "500"):
            wait = await steps.run_once()
            assert wait is not None
            state, _version, reason = (await rows(server))[record_id]
            assert state == "pending"
            assert reason is not None
            assert expected in reason, reason
            reasons.append(reason)
            waits.append(wait)
            assert await steps.run_once() == wait  # not due yet: nothing sent
            clock.ms += wait
        # Doubling from 1 s (jitter 0.5 keeps three quarters of each ceiling), capped.
        assert waits == [retry_delay_ms(n, lambda: 0.5) for n in range(1, 7)]
        assert waits == [750, 1500, 3000, 6000, 12000, 24000]
        assert all(0 < w <= RETRY_MAX_MS for w in waits)
        assert retry_delay_ms(40, lambda: 0.999) <= RETRY_MAX_MS
        hub.release()
        hub.stop()  # down: connection refused
        wait = await steps.run_once()
        assert wait is not None
        assert "could not reach the hub" in (await rows(server))[record_id][2]  # type: ignore[operator]
        clock.ms += wait
        hub.start()
        assert await steps.run_once() is None  # landed: nothing more to wait for
        assert (await rows(server))[record_id][0] == "sent"
        answered = [r.answered for r in hub.received]
        assert answered[-1] == 200
        assert hub.copies[summary_id(record_id)] == await server_copy(server, record_id)
        # Acknowledged: however often the sender looks, nothing is sent again.
        count = len(hub.received)
        clock.ms += RETRY_MAX_MS
        assert await steps.run_once() is None
        assert len(hub.received) == count
    finally:
        await steps.close()
        await laptop.close()
        await server.close()


async def test_a_400_is_failed_with_the_hubs_reason_until_the_record_changes(
    tmp_path: Path, hub: FhirHub
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    steps = sender(server, hub, clock)
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        hub.answer(400)
        assert await steps.run_once() is None  # failed: not retried
        state, version, reason = (await rows(server))[record_id]
        assert state == "failed"
        assert reason is not None
        assert "answered 400" in reason
        assert "test hub refuses: 400" in reason  # the hub's own message (its diagnostics)
        clock.ms += 10 * RETRY_MAX_MS
        assert await steps.run_once() is None
        assert len(hub.received) == 1
        await laptop.sync()
        [shown] = await laptop_summaries(laptop)
        assert (shown.state, shown.version) == ("failed", version)
        assert shown.reason == reason
        assert shown.as_dict()["last_attempt"] is not None

        await laptop.set(record_id, "phone", "+221 77 000 00 00")  # the record changes again
        await laptop.sync()
        state, newer, _reason = (await rows(server))[record_id]
        assert (state, newer > version) == ("pending", True)
        assert await steps.run_once() is None
        assert (await rows(server))[record_id][0] == "sent"
        assert hub.bundle(summary_id(record_id))["entry"][1]["resource"]["telecom"][0]["value"]
    finally:
        await steps.close()
        await laptop.close()
        await server.close()


async def test_a_newer_version_supersedes_a_queued_one_and_one_in_flight(
    tmp_path: Path, hub: FhirHub
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    steps = sender(server, hub, clock)
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        first_version = (await rows(server))[record_id][1]
        # Queued: v1 failed once (503) and waits for its retry when v2 arrives.
        hub.answer(503)
        wait = await steps.run_once()
        assert wait is not None
        await laptop.set(record_id, "name", "Awa Diop Ndiaye")
        await laptop.sync()
        state, second_version, reason = (await rows(server))[record_id]
        assert (state, reason) == ("pending", None)  # a fresh version, due now
        assert second_version > first_version
        assert await steps.run_once() is None  # v2 sent at once, not after v1's backoff
        assert [r.answered for r in hub.received] == [503, 200]
        names = [patient_name(r.body) for r in hub.received]
        assert names == ["Awa Diop", "Awa Diop Ndiaye"]  # v1 never sent again

        # In flight: v3 is being sent (the hub holds it) when v4 is committed.
        hub.answer("slow")
        await laptop.set(record_id, "name", "A. D. Ndiaye")
        await laptop.sync()
        attempt = asyncio.create_task(steps.run_once())
        await asyncio.to_thread(hub.wait_arrived, 3)
        await laptop.set(record_id, "name", "Awa D. Ndiaye")
        await laptop.sync()
        hub.release()
        async with asyncio.timeout(LIMIT_S):
            assert await attempt == 0  # v4 is due at once
        state, fourth_version, _ = (await rows(server))[record_id]
        assert state == "pending"  # v3's acknowledgement does not mark v4 sent
        [row] = await server.store.hub_summaries()
        assert row.sent_version is not None
        assert row.sent_version < fourth_version
        assert await steps.run_once() is None
        assert (await rows(server))[record_id][0] == "sent"
        copy = hub.bundle(summary_id(record_id))
        assert copy["entry"][1]["resource"]["name"][0]["text"] == "Awa D. Ndiaye"
        assert hub.copies[summary_id(record_id)] == await server_copy(server, record_id)
    finally:
        await steps.close()
        await laptop.close()
        await server.close()


async def test_unmarked_patients_leave_the_outbox_and_older_laptops_still_sync(
    tmp_path: Path, hub: FhirHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    # A laptop of protocol version 6 (before HubReport) syncs with this server as before.
    monkeypatch.setattr(caresync.replication.session, "_PROTOCOL_VERSIONS", (4, 5, 6))
    older = await enrolled(tmp_path, server, "older", user="dr.b")
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        assert record_id in await rows(server)
        report = await older.sync()
        assert report.downloaded > 0
        assert await older.store.get_meta("hub.report") is None  # told nothing of the hub
        await laptop.set(record_id, HUB_PATH, False)
        assert await laptop_summaries(laptop) == []  # unmarked here: no longer listed
        await laptop.sync()
        assert await rows(server) == {}
        assert await laptop_summaries(laptop) == []
    finally:
        await older.close()
        await laptop.close()
        await server.close()


async def test_the_outbox_survives_a_restart_and_nothing_acknowledged_is_sent_again(
    tmp_path: Path, hub: FhirHub
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    try:
        await marked_patient(laptop)
        await laptop.sync()
        before = await server.store.hub_summaries()
        await server.close()  # the row was committed with the push: a new process has it
        server = await SyncServer.open(tmp_path / "server.db")
        assert await server.store.hub_summaries() == before
        steps = sender(server, hub, clock)
        assert await steps.run_once() is None
        await steps.close()
        assert [r.answered for r in hub.received] == [200]
        await server.close()
        server = await SyncServer.open(tmp_path / "server.db")
        [row] = await server.store.hub_summaries()
        assert (row.state, row.sent_version) == ("sent", row.version)
        steps = sender(server, hub, clock)
        clock.ms += RETRY_MAX_MS
        assert await steps.run_once() is None
        await steps.close()
        assert len(hub.received) == 1  # acknowledged once: never sent again
    finally:
        await laptop.close()
        await server.close()


async def test_a_summary_that_cannot_be_built_is_failed_and_the_sender_goes_on(
    tmp_path: Path, hub: FhirHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    steps = sender(server, hub, clock)
    try:
        broken = await marked_patient(laptop)
        fine = await marked_patient(laptop)
        await laptop.sync()
        real = caresync.hub.sender.summary_bytes

        def refuse_one(view: RecordView) -> bytes:
            if view.record_id == broken:
                raise InvalidFhirError("summary bundle: entry.0: a value the model refuses")
            return real(view)

        monkeypatch.setattr(caresync.hub.sender, "summary_bytes", refuse_one)
        assert await steps.run_once() is None
        state = await rows(server)
        assert state[broken][0] == "failed"
        assert "could not be built" in (state[broken][2] or "")
        assert state[fine][0] == "sent"  # the others are sent all the same
        assert [r.path for r in hub.received] == [f"/fhir/Bundle/{summary_id(fine)}"]
    finally:
        await steps.close()
        await laptop.close()
        await server.close()
