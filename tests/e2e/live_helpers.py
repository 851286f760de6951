"""Helpers for end-to-end tests with real parts: waiting on events, never on the clock.

Every wait here is driven by an event the code under test fires (a status
change, a committed batch from the server, an acknowledgement, a server
commit); callers bound each wait with ``asyncio.timeout`` as an upper limit only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caresync.protocol import ClientProtocol, ServerProof, Welcome, decode_frame
from caresync.replica import Replica, ReplicaState, backoff_delays
from caresync.server import SyncServer
from caresync.storage import SQLiteStore
from caresync.transport import Channel, WebSocketConnector, connect_websocket

PASSWORD = "correct horse battery staple"
LIMIT_S = 20.0
"""Upper bound for one wait; a passing test never comes near it."""


def fast_backoff() -> Iterator[float]:
    """Reconnection delays for tests: a few milliseconds, capped at 50 ms."""
    return backoff_delays(0.005, maximum=0.05)


async def start_server(
    tmp_path: Path, name: str = "server", *, server_class: type[SyncServer] = SyncServer
) -> SyncServer:
    """A server on 127.0.0.1 (a free port) with users in two organisations."""
    server = await server_class.open(tmp_path / f"{name}.db")
    await server.add_user("clinic-a", "dr.a", PASSWORD)
    await server.add_user("clinic-a", "dr.b", PASSWORD)
    await server.add_user("clinic-b", "dr.x", PASSWORD)
    await server.serve("127.0.0.1", 0)
    return server


async def enrolled(
    tmp_path: Path, server: SyncServer, name: str, user: str = "dr.a", **open_kwargs: Any
) -> Replica:
    """A laptop database in ``tmp_path`` enrolled to ``server`` in clinic-a."""
    laptop = await Replica.open(tmp_path / f"{name}.db", **open_kwargs)
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


class Signal:
    """An asyncio.Event that many sources may set; :func:`until` re-checks on each."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    def __call__(self, *args: object) -> None:
        self.count += 1
        self.event.set()


def watch(*replicas: Replica, server: SyncServer | None = None) -> Signal:
    """A signal set whenever anything observable happens to these replicas or the server."""
    signal = Signal()
    for replica in replicas:
        replica.on_status(signal)
        replica.on_received(signal)
        replica.on_acknowledged(signal)
    if server is not None:
        server.on_commit.append(signal)
    return signal


async def until(check: Callable[[], Awaitable[bool]], signal: Signal) -> None:
    """Wait until ``check()`` is true, re-checking only when ``signal`` fires."""
    while True:
        signal.event.clear()  # cleared before checking: nothing fired meanwhile is lost
        if await check():
            return
        await signal.event.wait()


@dataclass
class States:
    """Every state a replica went through, in order, and a way to wait for one."""

    replica: Replica
    seen: list[ReplicaState] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.replica.on_status(self._on_state)

    def _on_state(self, state: ReplicaState) -> None:
        self.seen.append(state)
        self.changed.set()

    async def reach(self, state: ReplicaState, times: int = 1) -> None:
        """Wait until ``state`` was entered ``times`` times in all."""
        while self.seen.count(state) < times:
            self.changed.clear()
            await self.changed.wait()


@dataclass
class LiveRun:
    """A replica in live mode, run by :func:`live`."""

    replica: Replica
    stop: asyncio.Event
    task: asyncio.Task[None]
    states: States
    checked: bool = False

    async def outcome(self) -> BaseException | None:
        """Wait for stay_connected to end by itself; what it raised (None if it returned)."""
        await asyncio.wait({self.task})
        self.checked = True
        return self.task.exception()


@asynccontextmanager
async def live(replica: Replica, **kwargs: Any) -> AsyncIterator[LiveRun]:
    """Run ``replica.stay_connected`` for the block; stop it (promptly) on the way out.

    An error the live task raised that the test did not look at fails the test.
    """
    stop = asyncio.Event()
    states = States(replica)
    kwargs.setdefault("backoff", fast_backoff)
    task = asyncio.create_task(replica.stay_connected(stop=stop, **kwargs))
    run = LiveRun(replica, stop, task, states)
    try:
        yield run
    finally:
        stop.set()
        async with asyncio.timeout(5):  # stopping is prompt: far below this
            await asyncio.wait({task})
        error = None if task.cancelled() else task.exception()
        if error is not None and not run.checked:
            raise error


class RawSession:
    """A laptop's session driven by hand: push what a correct laptop never would."""

    def __init__(self, protocol: ClientProtocol, channel: Channel) -> None:
        self.protocol = protocol
        self.channel = channel

    async def round_trip(self) -> list[object]:
        for frame in self.protocol.data_to_send():
            await self.channel.send(frame)
        self.protocol.receive_data(await self.channel.recv())
        return list(self.protocol.events_received())

    async def push(self, seq: int, record_id: str, update: bytes) -> object:
        self.protocol.push([(seq, record_id, update)])
        [reply] = await self.round_trip()
        return reply


@asynccontextmanager
async def raw_session(
    server: SyncServer, laptop: Replica, max_frame_bytes: int | None = None
) -> AsyncIterator[RawSession]:
    """A second session of ``laptop``'s replica, logged in with its stored session token
    (with frames of at most ``max_frame_bytes`` if given)."""
    token = await laptop.store.get_meta("session.token")
    assert token is not None
    identity = laptop.identity
    protocol = ClientProtocol(
        replica_id=identity.replica_id,
        server_id=identity.server_id,
        organisation=identity.organisation,
        **({} if max_frame_bytes is None else {"max_frame_bytes": max_frame_bytes}),
    )
    channel = await connect_websocket(server.url)
    session = RawSession(protocol, channel)
    try:
        protocol.send_hello()
        assert any(isinstance(e, Welcome) for e in await session.round_trip())
        protocol.prove_server(os.urandom(32))
        [proof] = await session.round_trip()
        assert isinstance(proof, ServerProof)
        assert proof.server_key == laptop._pinned_key  # the server the laptop pinned
        protocol.confirm_server()
        protocol.resume_session(token, laptop._secret)
        await session.round_trip()
        yield session
    finally:
        await channel.close()


class WatchedChannel:
    """A server's channel that keeps each frame it sends with whether a login entry of
    its SQLite store was still waiting for the disk then (``store._unsynced``)."""

    def __init__(self, inner: Channel, store: SQLiteStore, sent: list[tuple[bytes, bool]]) -> None:
        self._inner = inner
        self._store = store
        self._sent = sent

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def send(self, frame: bytes) -> None:
        self._sent.append((frame, self._store._unsynced))
        await self._inner.send(frame)


class Traced:
    """A channel that logs each frame it carries, in order: ("send" | "recv", message
    type); ``activity`` is set at each."""

    def __init__(self, inner: Channel, log: list[tuple[str, str]], activity: asyncio.Event) -> None:
        self._inner = inner
        self._log = log
        self._activity = activity

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    @property
    def closed(self) -> bool:
        return self._inner.closed

    async def send(self, frame: bytes) -> None:
        self._log.append(("send", type(decode_frame(frame)[1]).__name__))
        self._activity.set()
        await self._inner.send(frame)

    async def recv(self) -> bytes:
        frame = await self._inner.recv()
        self._log.append(("recv", type(decode_frame(frame)[1]).__name__))
        self._activity.set()  # the reader takes it in before it next yields
        return frame


class TracingConnector(WebSocketConnector):
    """The default connector; each connection's frames logged in ``logs``."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[list[tuple[str, str]]] = []
        self.activity = asyncio.Event()

    async def connect(self, url: str, *, ssl: object = None) -> Channel:  # type: ignore[override]
        channel = await super().connect(url, ssl=ssl)  # type: ignore[arg-type]
        self.logs.append([])
        self.activity.set()
        return Traced(channel, self.logs[-1], self.activity)  # type: ignore[return-value]

    async def until(self, entry: tuple[str, str], connection: int) -> None:
        """Return once connection number ``connection`` (0: the first made) has logged
        ``entry``, e.g. ``("send", "PullRequest")``."""
        while len(self.logs) <= connection or entry not in self.logs[connection]:
            self.activity.clear()
            await self.activity.wait()
