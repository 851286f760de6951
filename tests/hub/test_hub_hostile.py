"""A hostile or broken hub cannot stop the sender, and a summary held by a finding across
linked records is sent once that finding closes. Found by review; each test reproduced the
defect before its fix.

Real parts: a server on 127.0.0.1, SQLite files, and hubs on 127.0.0.1 (raw asyncio
servers for answers no well-behaved HTTP server would give).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.hub.fhirhub import FhirHub
from tests.hub.test_hub_outbox import Clock, marked_patient, rows

from caresync.hub.model import HUB_PATH
from caresync.hub.sender import HubSender, _retry_after_ms

httpx = pytest.importorskip("httpx", reason="the hub extra is not installed")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_hub(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/fhir"


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)


def test_a_retry_after_of_other_digits_is_ignored() -> None:
    assert _retry_after_ms("2") == 2000
    assert _retry_after_ms(" 30 ") == 30_000
    assert _retry_after_ms("\xb2") is None  # "²".isdigit() is true; int() refuses it
    assert _retry_after_ms("٣") is None  # an Arabic-Indic three
    assert _retry_after_ms("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert _retry_after_ms("9" * 10) is None


async def test_one_bad_answer_does_not_stop_the_other_summaries(tmp_path: Path) -> None:
    requests: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        requests.append(1)
        writer.write(b"HTTP/1.1 503 Busy\r\nRetry-After: \xb2\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    hub, url = await _raw_hub(handler)
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    sender = HubSender(server.store, url, server.hub_snapshot, now_ms=clock, random=lambda: 0.5)
    try:
        first = await marked_patient(laptop)
        second = await marked_patient(laptop)
        await laptop.sync()
        await sender.run_once()  # no exception escapes; both are tried, both retried
        assert len(requests) == 2
        states = await rows(server)
        assert states[first][0] == states[second][0] == "pending"
        assert all("503" in (states[rid][2] or "") for rid in (first, second))
    finally:
        await sender.close()
        await laptop.close()
        await server.close()
        hub.close()


async def test_a_hub_that_drips_its_answer_is_cut_off_at_the_timeout(tmp_path: Path) -> None:
    # A hub that drips its answer keeps every single read inside a read timeout; the
    # client here has none at all, so only the bound on the whole request can end it.
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx")
        await writer.drain()
        await release.wait()  # the rest never comes while the test runs
        writer.close()

    hub, url = await _raw_hub(handler)
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    client = httpx.AsyncClient(timeout=None)
    sender = HubSender(server.store, url, server.hub_snapshot, client=client, timeout_s=1.0)
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        async with asyncio.timeout(8):  # before the fix: still in the one PUT after 8 s
            await sender.run_once()
        state, _version, reason = (await rows(server))[record_id]
        assert state == "pending"
        assert reason is not None
        assert "in time" in reason
    finally:
        release.set()
        await sender.close()
        await client.aclose()
        await laptop.close()
        await server.close()
        hub.close()


async def test_a_summary_held_by_a_linked_record_goes_once_that_record_is_fixed(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    with FhirHub() as hub:
        clock = Clock()
        sender = HubSender(
            server.store, hub.url, server.hub_snapshot, now_ms=clock, random=lambda: 0.5
        )
        # Told of every commit, as start_hub's sender is: a held summary is looked at
        # again only when something that could release it changed.
        server.notify_hub(sender)
        try:
            treated = await laptop.create_record()
            await laptop.set(treated, "name", "Awa Diop")
            await laptop.add_entry(
                treated, "medications", {"drug": "amoxicillin", "dose": "500 mg"}
            )
            await laptop.set(treated, HUB_PATH, True)
            other = await laptop.create_record()
            await laptop.set(other, "name", "Awa Diop")
            allergy = await laptop.add_entry(
                other,
                "allergies",
                {"substance": "penicillin", "status": "active", "criticality": "high"},
            )
            await laptop.link_records(treated, other)
            await laptop.sync()
            await sender.run_once()
            assert (await rows(server))[treated][0] == "held"
            assert hub.received == []
            # The finding closes by an edit of the other record: this one's row is untouched.
            await laptop.set_status(other, "allergies", allergy, "entered-in-error")
            await laptop.sync()
            assert await laptop.conflicts(treated) == []
            await sender.run_once()
            assert (await rows(server))[treated][0] == "sent"
            assert len(hub.received) == 1
        finally:
            await sender.close()
            await laptop.close()
            await server.close()
