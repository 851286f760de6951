"""A laptop's session ends cleanly whatever ends it, and reads ahead only so far.

Each was reproduced before its fix: a cancellation while the link closed left the
state SYNCHRONISING, so every later sync raised; a second sync waiting for the sync
lock while the first was revoked raised a state error instead of the revocation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import caresync.replication.session
from caresync.exceptions import ReplicaRevokedError
from caresync.replica import ReplicaState
from caresync.replication.session import MAX_QUEUED_REPLIES, Session, SyncLimits
from caresync.testing.harness import Clinic
from caresync.transport import Channel, memory_pipe


async def test_a_link_that_never_closes_keeps_neither_the_next_sync_nor_close_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that ended well leaves its link's closing handshake to the background; a
    peer that never answers it delays the next connection at most CLOSING_WAIT_S, and
    the replica's close likewise (reproduced: both waited forever)."""
    monkeypatch.setattr(caresync.replication.session, "CLOSING_WAIT_S", 0.05)
    async with Clinic(tmp_path, transport="memory") as clinic:
        laptop = await clinic.laptop("a")
        link = laptop.connector
        closing, never = asyncio.Event(), asyncio.Event()
        real_connect: Callable[..., Awaitable[Channel]] = link.connect

        async def connect_with_a_slow_close(url: str, *, ssl: Any = None) -> Channel:
            channel = await real_connect(url, ssl=ssl)
            real_close = channel.close

            async def slow_close(reason: str = "") -> None:
                closing.set()
                await never.wait()  # a peer that never answers the close
                await real_close(reason)

            channel.close = slow_close  # type: ignore[method-assign]
            return channel

        link.connect = connect_with_a_slow_close  # type: ignore[method-assign]
        report = await laptop.sync()  # returns: the close goes on in the background
        assert report.uploaded == 0
        await closing.wait()
        assert not never.is_set()
        report = await laptop.sync()  # the stuck close is dropped, the sync works
        assert report.uploaded == 0
        await laptop.close()  # and closing the replica does not wait forever either
        assert not never.is_set()


async def test_syncs_waiting_behind_a_revoked_one_are_refused_as_revoked(tmp_path: Path) -> None:
    async with Clinic(tmp_path, transport="memory") as clinic:
        laptop = await clinic.laptop("a")
        await clinic.server.revoke(laptop.replica_id)
        results = await asyncio.gather(laptop.sync(), laptop.sync(), return_exceptions=True)
        assert all(isinstance(result, ReplicaRevokedError) for result in results), results
        assert laptop.state is ReplicaState.LOCKED


class _Host:
    limits = SyncLimits()


class _Chatty:
    """A protocol stand-in whose every frame is an event nobody asked for."""

    failure = None

    def __init__(self) -> None:
        self._events: list[object] = []

    def receive_data(self, frame: bytes) -> None:
        self._events.append(("unasked", frame))

    def events_received(self) -> list[object]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        return []


async def test_the_reader_stops_reading_replies_nobody_takes() -> None:
    laptop_end, server_end = memory_pipe("laptop", "server")
    session = Session(_Host(), laptop_end, _Chatty())  # type: ignore[arg-type]
    session.start_reading()
    sent = MAX_QUEUED_REPLIES + 20
    for index in range(sent):
        await server_end.send(b"%d" % index)
    # The reader takes MAX_QUEUED_REPLIES replies and then waits: the rest stay in the
    # channel (a socket's buffers, then TCP) until someone takes a reply.
    taken = 0
    for _ in range(sent):
        await session._next_reply()
        taken += 1
        assert session._replies.qsize() <= MAX_QUEUED_REPLIES
    assert taken == sent
    await session.stop_reading()
    await laptop_end.close()
