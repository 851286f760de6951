"""The review of the hub's bearer token (``HubSender(token=...)``, ``caresync serve
--hub-token-file``): a token file that is not a small regular file of UTF-8 text (a FIFO,
a device, bytes that are not UTF-8) is refused at once and never blocks the server; a
token the hub echoes in its refusal is not kept in the reason (which laptops receive);
a hub URL carrying a user name and password is refused with a token (httpx would send
them as Basic credentials in place of the token).

Real parts: a server on an SQLite file, a real HTTP hub on 127.0.0.1 (tests/hub/fhirhub.py)
for the end-to-end case; an in-process ``httpx.MockTransport`` stands for a hub whose 401
echoes the token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
from pathlib import Path

import httpx
import pytest
from tests.cli.clitools import Result, run_main
from tests.e2e.live_helpers import enrolled, start_server
from tests.hub.fhirhub import FhirHub
from tests.hub.test_hub_outbox import Clock, marked_patient, rows

from caresync.exceptions import InvalidInputError
from caresync.hub.sender import HubSender, hub_url, read_hub_token
from caresync.hub.status import laptop_summaries

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VydmVy.dG9rZW4-_~+/=="
BOUND_S = 10.0


def _release(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` go (a writer opens and closes it: end of file)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader is waiting: nothing to release
        return
    os.close(fd)


def test_a_token_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Before: ``read_text`` on a FIFO waited for a writer forever (the sender reads it in
    the server's event loop: the whole server stopped)."""
    fifo = tmp_path / "hub.token"
    os.mkfifo(fifo)
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(read_hub_token(fifo))
        except BaseException as exc:  # noqa: BLE001 - what it raised is the outcome
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(BOUND_S)
    blocked = reader.is_alive()
    _release(fifo)
    reader.join(BOUND_S)
    assert not blocked, "reading a FIFO token file blocked"
    [error] = outcome
    assert isinstance(error, InvalidInputError)
    assert "not a regular file" in str(error)


def test_serve_refuses_a_token_file_that_is_not_text_or_not_a_file(tmp_path: Path) -> None:
    """Exit 2 and the option named, before anything is opened (before: a file of bytes
    that are not UTF-8 escaped as an UnicodeDecodeError, a FIFO blocked the start)."""
    db = tmp_path / "s.db"
    binary = tmp_path / "binary.token"
    binary.write_bytes(b"\xff\xfe" + TOKEN.encode())
    fifo = tmp_path / "fifo.token"
    os.mkfifo(fifo)
    for file, said in (
        (binary, "not UTF-8"),
        (tmp_path, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (fifo, "not a regular file"),
    ):
        result: list[Result] = []

        def serve(file: Path = file, result: list[Result] = result) -> None:
            result.append(
                run_main(
                    "serve",
                    "--db",
                    db,
                    "--hub",
                    "https://hub.example.org/fhir",
                    "--hub-token-file",
                    file,
                )
            )

        runner = threading.Thread(target=serve, daemon=True)
        runner.start()
        runner.join(BOUND_S)
        blocked = runner.is_alive()
        _release(fifo)
        runner.join(BOUND_S)
        assert not blocked, f"serve blocked on {file}"
        [done] = result
        assert done.code == 2, (file, done.stderr)
        assert "--hub-token-file" in done.stderr
        assert said in done.stderr, done.stderr
        assert TOKEN not in done.stderr
    assert not db.exists()


async def test_the_sender_keeps_going_when_the_token_file_breaks_later(tmp_path: Path) -> None:
    """A token file that becomes a FIFO, bytes that are not UTF-8 or a directory while the
    server runs: each attempt is retried with why, no request goes out, and once the file
    holds a token again the summary is sent."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    token_file = tmp_path / "hub.token"
    clock = Clock()
    try:
        with FhirHub(token=TOKEN) as hub:
            steps = HubSender(
                server.store,
                hub.url,
                server.hub_snapshot,
                now_ms=clock,
                random=lambda: 0.5,
                token=functools.partial(read_hub_token, token_file),
            )
            try:
                record_id = await marked_patient(laptop)
                await laptop.sync()
                os.mkfifo(token_file)
                for breaking in ("fifo", "binary", "directory"):
                    if breaking == "binary":
                        token_file.unlink()
                        token_file.write_bytes(b"\xff" + TOKEN.encode())
                    elif breaking == "directory":
                        token_file.unlink()
                        token_file.mkdir()
                    clock.ms += 24 * 3600 * 1000
                    async with asyncio.timeout(BOUND_S):
                        await steps.run_once()
                    state, _version, reason = (await rows(server))[record_id]
                    assert state == "pending", breaking
                    assert reason is not None
                    assert "no token for the hub" in reason, reason
                assert hub.received == []
                token_file.rmdir()
                token_file.write_text(TOKEN + "\n")
                clock.ms += 24 * 3600 * 1000
                await steps.run_once()
                assert (await rows(server))[record_id][0] == "sent"
                assert hub.authorizations == [f"Bearer {TOKEN}"]
            finally:
                await steps.close()
    finally:
        await laptop.close()
        await server.close()


async def test_a_token_the_hub_echoes_is_not_kept_in_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hub whose 401 (or 400) says "invalid token <token>": the reason is stored in the
    outbox, logged, shown by `hub status` and sent to every laptop (HubReport); the token
    must not be in it."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    bad = "expired." + TOKEN

    def hub(request: httpx.Request) -> httpx.Response:
        said = request.headers["authorization"].removeprefix("Bearer ")
        status = 401 if said == bad else 400
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "security",
                    "diagnostics": f"token {said} is not valid here",
                }
            ],
        }
        # A stream, as from the network (the sender reads the answer raw).
        body = httpx.ByteStream(json.dumps(outcome).encode())
        return httpx.Response(status, stream=body)

    current = [bad]
    client = httpx.AsyncClient(transport=httpx.MockTransport(hub))
    steps = HubSender(
        server.store,
        "https://hub.example.org/fhir",
        server.hub_snapshot,
        client=client,
        now_ms=clock,
        random=lambda: 0.5,
        token=lambda: current[0],
    )
    try:
        record_id = await marked_patient(laptop)
        await laptop.sync()
        with caplog.at_level(logging.INFO, logger="caresync"):
            await steps.run_once()
            state, _version, reason = (await rows(server))[record_id]
            assert state == "pending"
            assert reason is not None
            assert "401" in reason
            assert bad not in reason, reason
            assert TOKEN not in reason, reason
            current[0] = TOKEN
            clock.ms += 24 * 3600 * 1000
            await steps.run_once()
            state, _version, reason = (await rows(server))[record_id]
            assert state == "failed"
            assert reason is not None
            assert "400" in reason
            assert TOKEN not in reason, reason
        assert TOKEN not in caplog.text
        await laptop.sync()  # the laptop's copy of the reasons
        report = await laptop_summaries(laptop)
        assert [s.record_id for s in report] == [record_id]
        assert all(TOKEN not in (s.reason or "") for s in report)
    finally:
        await steps.close()
        await client.aclose()
        await laptop.close()
        await server.close()


async def test_a_hub_url_with_a_user_and_password_is_refused_with_a_token(
    tmp_path: Path,
) -> None:
    """httpx turns ``user:pass@`` into ``Authorization: Basic ...``, replacing the bearer
    token: the hub never got the token. Refused, without echoing the password."""
    server = await start_server(tmp_path)
    try:
        with pytest.raises(InvalidInputError, match="user name or password") as refused:
            HubSender(
                server.store,
                "https://clinic:s3cret-pw@hub.example.org/fhir",
                server.hub_snapshot,
                token=TOKEN,
            )
        assert "s3cret-pw" not in str(refused.value)
    finally:
        await server.close()
    token = tmp_path / "hub.token"
    token.write_text(TOKEN)
    result = run_main(
        "serve",
        "--db",
        tmp_path / "other.db",
        "--hub",
        "https://clinic:s3cret-pw@hub.example.org/fhir",
        "--hub-token-file",
        token,
    )
    assert result.code == 2, result.stderr
    assert "user name or password" in result.stderr
    assert "s3cret-pw" not in result.stderr
    assert not (tmp_path / "other.db").exists()


async def test_a_refused_token_pauses_the_sender_not_every_summary(tmp_path: Path) -> None:
    """A 401 is the server's credentials: every other summary would get the same answer.
    Before: each due summary was sent and refused (a request, an ``export`` audit entry
    and a step of its own backoff each, at every retry: a storm at a hub with many
    patients). Now the round stops at the first refusal, the sender waits as a whole
    (doubling, capped), the summaries keep their attempt counts, and once the token is
    taken every waiting summary is sent. A token that cannot be read pauses it too, and
    writes no ``export`` entry (nothing left)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    clock = Clock()
    current: list[str | None] = ["expired-token"]

    def token() -> str:
        if current[0] is None:
            raise OSError("hub.token: No such file or directory")
        return current[0]

    async def exports() -> int:
        entries = await server.store.audit_entries(
            replica_id=server.server_id, after_seq=0, limit=10_000
        )
        return sum(1 for e in entries if e.action == "export")

    try:
        with FhirHub(token=TOKEN) as hub:
            steps = HubSender(
                server.store,
                hub.url,
                server.hub_snapshot,
                now_ms=clock,
                random=lambda: 0.5,
                token=token,
                audit_as=server.server_id,
            )
            try:
                records = [await marked_patient(laptop) for _ in range(5)]
                await laptop.sync()
                wait_ms = await steps.run_once()
                assert len(hub.received) == 1  # one refusal, not five
                assert await exports() == 1
                assert wait_ms is not None
                assert 0 < wait_ms <= 1_000
                assert {r.attempts for r in await server.store.hub_summaries()} == {0}
                # Woken before the pause ends (a commit): nothing is sent.
                clock.ms += wait_ms - 1
                assert await steps.run_once() == 1
                assert len(hub.received) == 1
                clock.ms += 1
                second = await steps.run_once()  # refused again: the pause doubles
                assert len(hub.received) == 2
                assert second is not None
                assert wait_ms < second <= 2_000
                current[0] = None  # the token file went missing: nothing leaves
                clock.ms += second
                third = await steps.run_once()
                assert len(hub.received) == 2
                assert await exports() == 2
                assert third is not None
                assert second < third
                reasons = [reason or "" for _s, _v, reason in (await rows(server)).values()]
                assert sum("no token for the hub" in reason for reason in reasons) == 1
                current[0] = TOKEN
                clock.ms += third
                await steps.run_once()
                assert {state for state, _v, _r in (await rows(server)).values()} == {"sent"}
                assert len(hub.received) == 2 + len(records)
            finally:
                await steps.close()
    finally:
        await laptop.close()
        await server.close()


async def test_a_token_for_this_machine_never_goes_through_a_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``http://`` is allowed with a token only to this machine; but httpx sends a plain
    request through ``HTTP_PROXY`` when set (common on a clinic's network): the token went
    in the clear to the proxy, and to the proxy's own loopback. Such a URL is never sent
    through an environment proxy."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    try:
        with FhirHub(token=TOKEN) as hub, FhirHub() as proxy:
            for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
            steps = HubSender(
                server.store, hub.url, server.hub_snapshot, random=lambda: 0.5, token=TOKEN
            )
            try:
                record_id = await marked_patient(laptop)
                await laptop.sync()
                await steps.run_once()
                assert proxy.authorizations == []
                assert proxy.received == []
                assert (await rows(server))[record_id][0] == "sent"
                assert hub.authorizations == [f"Bearer {TOKEN}"]
            finally:
                await steps.close()
    finally:
        await laptop.close()
        await server.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://registrar:s3cret-pw@hub.example:notaport/fhir",  # httpx refuses it
        "ftp://registrar:s3cret-pw@hub.example/fhir",  # not http(s)
        "https://registrar:s3cret-pw@hub.example/fhir?x=1",  # a query
    ],
)
def test_a_refused_hub_url_never_shows_its_password(url: str) -> None:
    """Reviewed: the refusal quoted the URL whole, a password in it included, into the
    operator's terminal and the server's log."""
    with pytest.raises(InvalidInputError) as refused:
        hub_url(url)
    assert "s3cret-pw" not in str(refused.value)
    assert "registrar" not in str(refused.value)
    assert "***@hub.example" in str(refused.value)
