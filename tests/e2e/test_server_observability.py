"""What an administrator sees of a running server: /healthz, /metrics and its log.

Real parts: a server on 127.0.0.1 with SQLite files, laptops syncing through it,
and plain HTTP requests (urllib) and websocket clients on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    enrolled,
    live,
    raw_session,
    start_server,
    until,
    watch,
)
from websockets.asyncio.client import connect

import caresync.server as server_module
from caresync import Record
from caresync.exceptions import AuthenticationError, StorageError
from caresync.observe import JsonLogFormatter
from caresync.protocol import PushAck
from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer

HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def fresh_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scrape reads the store (the server reuses its figures for 5 s)."""
    monkeypatch.setattr(server_module, "METRICS_MAX_AGE_S", 0.0)


def _get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a plain HTTP GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def get(server: SyncServer, path: str) -> tuple[int, str, str]:
    http_url = server.url.replace("ws://", "http://") + path
    return await asyncio.to_thread(_get, http_url)


async def metrics(server: SyncServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels)."""
    status, content_type, body = await get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def test_healthz_and_metrics_follow_what_the_laptops_do(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    assert await get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    before = await metrics(server)
    assert before["caresync_records", ()] == 0
    assert before["caresync_laptops", ()] == 0

    laptop = await enrolled(tmp_path, server, "north")
    record_id = await laptop.create_record()
    await laptop.set(record_id, "name", "Awa Ndiaye", author="dr.a")
    await laptop.sync()
    after = await metrics(server)
    assert after["caresync_records", ()] == 1
    assert after["caresync_laptops", ()] == 1
    assert after["caresync_laptops_stale", ()] == 0
    assert after["caresync_enrolments_total", ()] == 1
    assert after["caresync_logins_total", (("outcome", "ok"),)] >= 2  # enrol, then sync
    assert after["caresync_pushes_total", ()] >= 1
    assert after["caresync_pushed_updates_total", ()] >= 2
    assert after["caresync_pushed_bytes_total", ()] > 0
    assert after["caresync_copy_batches_total", ()] >= 1
    assert after["caresync_feed_head", ()] >= 2
    assert after["caresync_open_conflicts", ()] == 0
    # Any other path still ends in the websocket handshake's own answer.
    assert (await get(server, "/nothing"))[0] == 426
    await laptop.close()
    await server.close()


async def test_a_laptop_not_seen_for_a_day_is_stale(tmp_path: Path) -> None:
    now = [1_800_000_000_000]
    server = await SyncServer.open(tmp_path / "server.db", now_ms=lambda: now[0])
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.serve("127.0.0.1", 0)
    laptop = await enrolled(tmp_path, server, "quiet")
    await laptop.close()
    assert (await metrics(server))["caresync_laptops_stale", ()] == 0
    now[0] += 25 * HOUR_MS
    assert (await metrics(server))["caresync_laptops_stale", ()] == 1
    await server.close()


async def test_a_failed_login_is_logged_and_counted_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path)
    laptop = await Replica.open(tmp_path / "laptop.db")
    caplog.set_level(logging.INFO, logger="caresync.server")
    with pytest.raises(AuthenticationError):
        await laptop.enrol(
            server.url, username="dr.a", password="not the password", organisation="clinic-a"
        )
    [failed] = [
        r for r in caplog.records if getattr(r, "caresync", {}).get("event") == "login_failed"
    ]
    assert failed.levelno == logging.WARNING
    assert failed.caresync["user"] == "dr.a"  # type: ignore[attr-defined]
    assert "not the password" not in caplog.text
    # A failed login is not logged a second time as a refusal.
    events = [getattr(r, "caresync", {}).get("event") for r in caplog.records]
    assert "refusal" not in events
    counted = await metrics(server)
    assert counted["caresync_logins_total", (("outcome", "failed"),)] == 1
    line = JsonLogFormatter().format(failed)
    assert '"event": "login_failed"' in line
    assert '"user": "dr.a"' in line
    await laptop.close()
    await server.close()


async def test_a_refusal_is_logged_and_counted_by_its_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path)
    caplog.set_level(logging.DEBUG, logger="caresync.server")  # before a login: debug only
    async with connect(server.url) as websocket:
        await websocket.send(b"\x00not a frame")
        await websocket.recv()  # the Error frame that says why
    counted = await metrics(server)
    assert counted["caresync_refusals_total", (("code", "bad_message"),)] == 1
    [refusal] = [r for r in caplog.records if getattr(r, "caresync", {}).get("event") == "refusal"]
    assert refusal.caresync["code"] == "bad_message"  # type: ignore[attr-defined]
    assert refusal.caresync["fatal"] is True  # type: ignore[attr-defined]
    assert refusal.levelno == logging.DEBUG
    assert "reason" not in refusal.caresync  # type: ignore[attr-defined]  # may quote values
    await server.close()


async def test_healthz_is_503_when_the_store_fails_or_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path)

    async def failing() -> int:
        raise StorageError("disk I/O error")

    monkeypatch.setattr(server.store, "feed_head", failing)
    caplog.set_level(logging.WARNING, logger="caresync.server")
    status, _type, body = await get(server, "/healthz")
    assert (status, body) == (503, "unhealthy\n")  # the reason only in the log: no login here
    assert "disk I/O error" in caplog.text
    assert (await get(server, "/metrics"))[0] == 503

    never = asyncio.Event()

    async def hanging() -> int:
        await never.wait()
        return 0

    monkeypatch.setattr(server.store, "feed_head", hanging)
    monkeypatch.setattr(server_module, "HEALTH_TIMEOUT_S", 0.2)
    status, _type, body = await get(server, "/healthz")
    assert (status, body) == (503, "unhealthy\n")
    assert "did not answer within 0.2 s" in caplog.text
    monkeypatch.undo()
    assert (await get(server, "/healthz"))[0] == 200
    await server.close()


async def test_scrapes_in_a_row_read_the_store_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "METRICS_MAX_AGE_S", 3600.0)
    server = await start_server(tmp_path)
    reads = 0
    counting = server.store.count_records

    async def count_records(organisation: str | None = None) -> int:
        nonlocal reads
        reads += 1
        return await counting(organisation)

    monkeypatch.setattr(server.store, "count_records", count_records)
    answers = await asyncio.gather(*(get(server, "/metrics") for _ in range(5)))
    assert {status for status, _type, _body in answers} == {200}
    assert reads == 1
    await server.close()


async def test_only_get_is_answered_and_a_fault_is_a_logged_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path)
    http_url = server.url.replace("ws://", "http://")

    def delete() -> int:
        request = urllib.request.Request(f"{http_url}/metrics", method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert await asyncio.to_thread(delete) == 405

    async def broken(organisation: str | None = None) -> int:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(server.store, "count_records", broken)
    caplog.set_level(logging.ERROR, logger="caresync.server")
    assert (await get(server, "/metrics"))[:3:2] == (500, "internal error\n")
    [fault] = [r for r in caplog.records if getattr(r, "caresync", {}).get("event") == "fault"]
    assert fault.exc_info is not None  # with its traceback
    assert "a bug of ours" in caplog.text
    assert (await metrics_after_fix(server, monkeypatch))["caresync_faults_total", ()] == 1
    await server.close()


async def metrics_after_fix(
    server: SyncServer, monkeypatch: pytest.MonkeyPatch
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    monkeypatch.undo()
    monkeypatch.setattr(server_module, "METRICS_MAX_AGE_S", 0.0)
    return await metrics(server)


async def test_a_resent_push_adds_nothing_and_live_relays_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(tmp_path)
    writer = await enrolled(tmp_path, server, "writer")
    reader = await enrolled(tmp_path, server, "reader", user="dr.b")
    caplog.set_level(logging.INFO, logger="caresync.server")
    signal = watch(reader)
    try:
        async with live(reader) as run, asyncio.timeout(LIMIT_S):
            await run.states.reach(ReplicaState.ONLINE)
            patient = Record.create(replica=writer.replica_id)
            patient.set("name", "Awa Diop", author="dr.a")
            update = patient.update_since()
            async with raw_session(server, writer) as session:
                assert await session.push(1, patient.record_id, update) == PushAck(1)
                assert await session.push(1, patient.record_id, update) == PushAck(1)  # again

            async def arrived() -> bool:
                return patient.record_id in await reader.record_ids()

            await until(arrived, signal)
        counted = await metrics(server)
        assert counted["caresync_pushes_total", ()] == 2
        assert counted["caresync_pushed_updates_total", ()] == 1  # the second added nothing
        assert counted["caresync_pushed_bytes_total", ()] == len(update)
        assert counted["caresync_live_updates_total", ()] == 1
        assert counted["caresync_live_bytes_total", ()] == len(update)
        pushes = [
            r.caresync for r in caplog.records if getattr(r, "caresync", {}).get("event") == "push"
        ]  # type: ignore[attr-defined]
        assert [(p["updates"], p["resent"]) for p in pushes] == [(1, 0), (0, 1)]
    finally:
        await writer.close()
        await reader.close()
        await server.close()
