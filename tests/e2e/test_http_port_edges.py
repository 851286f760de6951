"""Plain HTTP on the sync port, from anyone, byte by byte: what a request that needs no
login tells about the server, and what odd requests do to it.

A real server on 127.0.0.1; requests written on raw sockets (urllib cannot send the odd
ones), each read until the server closes the connection (bounded in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.e2e.live_helpers import LIMIT_S

from caresync.server import SyncServer
from caresync.transport import HttpAnswer, HttpRequest


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[SyncServer]:
    running = await SyncServer.open(tmp_path / "server.db")
    await running.serve("127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def spied(tmp_path: Path) -> AsyncIterator[tuple[SyncServer, asyncio.Queue[str]]]:
    """A server, and the paths of the requests it has answered (or left to the
    handshake), each put once its handler returned: what websockets does next with the
    answer runs before this test's task does again (no await until it sends it)."""
    running = await SyncServer.open(tmp_path / "server.db")
    answered: asyncio.Queue[str] = asyncio.Queue()
    answer_http = running.answer_http

    async def spy(method: str, path: str, request: HttpRequest | None = None) -> HttpAnswer | None:
        try:
            return await answer_http(method, path, request)
        finally:
            answered.put_nowait(path)

    running.answer_http = spy  # type: ignore[method-assign]
    await running.serve("127.0.0.1", 0)
    try:
        yield running, answered
    finally:
        await running.close()


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` in one write and read what comes back until the server closes the
    connection (a reset counts as closed), at most :data:`LIMIT_S`."""
    received = b""
    deadline = time.monotonic() + LIMIT_S
    with socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S) as sock:
        sock.sendall(data)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"the server kept the connection open past {LIMIT_S} s")
    return received


async def exchange(server: SyncServer, data: bytes) -> bytes:
    port = int(server.url.rsplit(":", 1)[1])
    return await asyncio.to_thread(_exchange, port, data)


def _headers(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in head)}


async def test_no_answer_names_the_software_or_its_versions(server: SyncServer) -> None:
    """Reproduced: every answer, /healthz's too, said ``Server: Python/3.11
    websockets/17.4`` to anyone: which releases to look up known flaws of."""
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /admin/admin.css HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /sync HTTP/1.1\r\nHost: x\r\n\r\n",  # websockets' own 426
    ):
        answer = await exchange(server, request)
        assert answer.startswith(b"HTTP/1.1 "), (request, answer)
        headers = _headers(answer)
        assert "server" not in headers, (request, headers)
        assert b"websockets/" not in answer, (request, answer)
        assert b"Python/" not in answer, (request, answer)


async def test_bytes_after_a_request_end_the_connection_quietly(
    spied: tuple[SyncServer, asyncio.Queue[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Reproduced: a request followed, in the same packet, by bytes that are not a
    websocket frame (an empty line, which RFC 9112 lets a client send; a pipelined second
    request) made websockets end the connection, then fail an assertion sending the
    answer: an ``unexpected internal error`` with its traceback at ERROR level in the
    server's log, for each such request from anyone (no login needed), whenever the
    client had not closed first (a remote one never has: the answer is quicker)."""
    server, answered = spied
    port = int(server.url.rsplit(":", 1)[1])
    caplog.set_level(logging.DEBUG)
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
        b"GET /sync HTTP/1.1\r\nHost: x\r\n\r\n\r\n",  # left to the handshake: its 426
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            # The connection ends (no answer can follow the end websockets already sent)...
            try:
                answer = await asyncio.wait_for(reader.read(), LIMIT_S)
            except ConnectionResetError:
                answer = b""
            assert not answer or answer.startswith(b"HTTP/1.1 "), (request, answer)
            # ... and the client stays until the server is done with its request.
            path = request.split(b" ", 2)[1].decode()
            assert await asyncio.wait_for(answered.get(), LIMIT_S) == path
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    # The server goes on answering.
    assert (await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 200 OK"
    )
