"""A hub that needs authentication: the sender's bearer token (``HubSender(token=...)``,
``caresync serve --hub-token-file``), sent with every request, only where it cannot be
read on the way; a refused token is tried again, and a renewed one is used at once.

Real parts: a server on an SQLite file, a laptop, a real HTTP hub on 127.0.0.1
(tests/hub/fhirhub.py) that answers 401 to a request without the right token.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.cli.clitools import run_main
from tests.e2e.live_helpers import enrolled, start_server
from tests.hub.fhirhub import FhirHub
from tests.hub.test_hub_outbox import Clock, marked_patient, rows

from caresync.exceptions import InvalidInputError
from caresync.hub.sender import HubSender, check_hub_token
from caresync.hub.summary import summary_id

LIMIT_S = 30.0
TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VydmVy.dG9rZW4-_~+/=="


async def test_the_token_goes_with_every_summary_and_the_hub_takes_it(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        with FhirHub(token=TOKEN) as hub:
            running = server.start_hub(hub.url, token=TOKEN)
            sent = asyncio.Event()
            running.on_outcome.append(lambda rid, state: sent.set() if state == "sent" else None)
            record_id = await marked_patient(laptop)
            await laptop.sync()
            async with asyncio.timeout(LIMIT_S):
                await sent.wait()
            assert hub.authorizations == [f"Bearer {TOKEN}"]
            assert summary_id(record_id) in hub.copies
    finally:
        await laptop.close()
        await server.close()


async def test_a_refused_token_is_tried_again_and_a_renewed_one_taken(tmp_path: Path) -> None:
    """401 is the sender's credentials, not the summary's fault: retried (other 4xx
    fail the summary); the token is asked again before each request."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    current = ["expired-token"]
    try:
        with FhirHub(token=TOKEN) as hub:
            steps = HubSender(
                server.store,
                hub.url,
                server.hub_snapshot,
                now_ms=clock,
                random=lambda: 0.5,
                token=lambda: current[0],
            )
            try:
                record_id = await marked_patient(laptop)
                await laptop.sync()
                await steps.run_once()
                state, _version, reason = (await rows(server))[record_id]
                assert state == "pending"  # to be tried again, not failed
                assert reason is not None
                assert "refused this server's credentials (401" in reason
                assert hub.copies == {}
                current[0] = TOKEN  # renewed outside the server
                clock.ms += 24 * 3600 * 1000
                await steps.run_once()
                assert (await rows(server))[record_id][0] == "sent"
                assert hub.authorizations == ["Bearer expired-token", f"Bearer {TOKEN}"]
            finally:
                await steps.close()
    finally:
        await laptop.close()
        await server.close()


async def test_a_token_never_goes_in_the_clear_nor_broken(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        with pytest.raises(InvalidInputError, match="only over https"):
            HubSender(server.store, "http://hub.example.org/fhir", server.hub_snapshot, token=TOKEN)
        for bad in ("two words", "line\nbreak", "", "x" * 9000, "é"):
            with pytest.raises(InvalidInputError):
                check_hub_token(bad)
        sender = HubSender(
            server.store, "https://hub.example.org/fhir", server.hub_snapshot, token=TOKEN
        )
        await sender.close()
    finally:
        await server.close()


def test_serve_refuses_a_token_file_it_cannot_send_safely(tmp_path: Path) -> None:
    token = tmp_path / "hub.token"
    token.write_text("two words\n")
    broken = run_main(
        "serve",
        "--db",
        tmp_path / "s.db",
        "--hub",
        "https://hub.example.org/fhir",
        "--hub-token-file",
        token,
    )
    assert broken.code != 0
    assert "bearer token" in broken.stderr
    token.write_text(TOKEN + "\n")
    clear = run_main(
        "serve",
        "--db",
        tmp_path / "s.db",
        "--hub",
        "http://hub.example.org/fhir",
        "--hub-token-file",
        token,
    )
    assert clear.code != 0
    assert "only over https" in clear.stderr
    missing = run_main("serve", "--db", tmp_path / "s.db", "--hub-token-file", token)
    assert missing.code != 0
    assert "--hub-token-file needs --hub URL" in missing.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was opened
