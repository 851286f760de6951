"""A client written from docs/protocol.md alone: msgpack frames over a real websocket.

Unlike :mod:`tests.e2e.hostile`, nothing of caresync's client side checks what it
sends: each frame is ``[version, type_code, body]`` packed by hand, and each reply is
read back as plain msgpack. So it can send what ``ClientProtocol`` would refuse to,
as any third-party or hostile client might. Yjs updates are written byte by byte in
the one shape a server admits (one client's run of new map entries, each one string).
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import websockets

__all__ = ["Raw", "revision", "update"]

VERSION = 14
WAIT_S = 60.0

# Type codes (docs/protocol.md, "Messages").
HELLO, AUTHENTICATE, AUTHENTICATED, ENROL, ENROLLED = 1, 3, 5, 6, 7
PULL_REQUEST, PULL_BATCH, PUSH_BATCH, PUSH_ACK, ERROR = 18, 19, 20, 21, 126


def _varuint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | 0x80 if number else low)
        if not number:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _varuint(len(data)) + data


def update(client: int, first_clock: int, entries: Sequence[tuple[str, str, str]]) -> bytes:
    """A Yjs v1 update: one client block of map entries ``(root, key, string)``,
    written from ``first_clock`` on, each without origins, and an empty delete set."""
    out = bytearray(b"\x01" + _varuint(len(entries)) + _varuint(client) + _varuint(first_clock))
    for root, key, text in entries:
        # Item with a parent key and Any content; parent: a root type given by name;
        # one value: a string.
        out += b"\x28\x01" + _string(root) + _string(key) + b"\x01\x77" + _string(text)
    return bytes(out + b"\x00")


def revision(path: str, value: object, *, author: str, replica: str) -> str:
    """A revision's stored JSON (docs/protocol.md, "What a server stores from a push")."""
    fields = {
        "p": path,
        "v": value,
        "ps": [],
        "a": author,
        "r": replica,
        "t": time.time_ns() // 1_000_000,
        "c": 0,
    }
    return json.dumps(fields, separators=(",", ":"))


def new_key() -> str:
    return os.urandom(8).hex()


def new_client() -> int:
    return int.from_bytes(os.urandom(6), "big")


class Raw:
    """One connection, driven frame by frame."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket

    @classmethod
    async def connect(cls, url: str) -> Raw:
        """Connect and say Hello as a new laptop (no replica yet); read Welcome."""
        socket = await websockets.connect(url, max_size=64 * 1024 * 1024, compression=None)
        client = cls(socket)
        hello = {
            "protocol_versions": [VERSION],
            "max_frame_bytes": 16 * 1024 * 1024,
            "replica_id": None,
            "server_id_expected": None,
            "organisation": None,
        }
        await client.send(HELLO, hello)
        await client.recv()  # Welcome
        return client

    async def send(self, code: int, body: dict[str, Any]) -> None:
        await self.socket.send(msgpack.packb([VERSION, code, body], use_bin_type=True))

    async def recv(self) -> tuple[int, dict[str, Any]]:
        """The next frame's (type code, body)."""
        async with asyncio.timeout(WAIT_S):
            frame = await self.socket.recv()
        _version, code, body = msgpack.unpackb(frame, raw=False)
        return code, body

    async def enrol(self, username: str, password: str, organisation: str) -> str:
        """Log in with a password and enrol; the replica id given."""
        login = {
            "username": username,
            "password": password,
            "organisation": organisation,
            "replica_secret": None,
            "client_version": None,
        }
        await self.send(AUTHENTICATE, login)
        code, body = await self.recv()
        assert code == AUTHENTICATED, body
        await self.send(ENROL, {"device_name": "raw", "replica_id": None})
        code, body = await self.recv()
        assert code == ENROLLED, body
        return str(body["replica_id"])

    async def push(self, items: Iterable[tuple[int, str, bytes]]) -> tuple[int, dict[str, Any]]:
        """Push ``(local_seq, record_id, update)`` items; the PushAck or Error."""
        await self.send(PUSH_BATCH, {"items": [list(item) for item in items]})
        return await self.recv()

    async def close(self) -> None:
        await self.socket.close()
