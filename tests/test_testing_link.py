"""The cuttable loopback link of caresync.testing, against a plain TCP echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from caresync import InvalidInputError
from caresync.testing import Link

LIMIT_S = 10.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def test_bytes_pass_unchanged_both_ways(echo_port: int) -> None:
    link = await Link.open("127.0.0.1", echo_port)
    try:
        payload = bytes(range(256)) * 2000  # larger than one relay chunk
        async with asyncio.timeout(LIMIT_S):
            assert await roundtrip(link.port, payload) == payload
        assert link.url == f"ws://127.0.0.1:{link.port}"
    finally:
        await link.close()


async def test_a_cut_drops_open_connections_and_refuses_new_ones_until_restored(
    echo_port: int,
) -> None:
    link = await Link.open("127.0.0.1", echo_port)
    try:
        async with asyncio.timeout(LIMIT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert link.connections == 1

            link.cut()
            assert not link.up
            assert link.connections == 0
            assert await reader.read() == b""  # the open connection ended at once
            writer.close()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await roundtrip(link.port, b"anyone?")  # accepted, then dropped at once

            link.restore()
            assert await roundtrip(link.port, b"back") == b"back"
    finally:
        await link.close()


async def test_retarget_sends_new_connections_elsewhere(echo_port: int) -> None:
    gone = await asyncio.start_server(_echo, "127.0.0.1", 0)
    gone_port = gone.sockets[0].getsockname()[1]
    gone.close()
    await gone.wait_closed()  # a server that stopped: nothing listens on its port now
    link = await Link.open("127.0.0.1", gone_port)
    try:
        async with asyncio.timeout(LIMIT_S):
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await roundtrip(link.port, b"x")  # the server is down: dropped
            link.retarget("127.0.0.1", echo_port)
            assert await roundtrip(link.port, b"there") == b"there"
    finally:
        await link.close()
    with pytest.raises(InvalidInputError, match="closed"):
        link.restore()
