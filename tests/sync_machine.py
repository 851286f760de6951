"""A whole-sync state machine: one SyncServer, several laptops, in-memory links, real stores.

Shared by ``tests/test_sync_state_machine.py`` (small, in the suite) and
``benchmarks/bench_sync_machine.py`` (full size, opt-in).

Theory of operation
-------------------
Hypothesis drives a clinic: a :class:`~caresync.server.SyncServer` and
:data:`LAPTOPS` :class:`~caresync.replica.Replica` laptops, each reaching the server
through its own :class:`~caresync.transport.MemoryLink` wrapped in a
:class:`FaultyConnector`. The rules are the life of a clinic: **edit** (durable
when the call returns), **push** (a sync stopped by the test once the server's
acknowledgement arrived, so nothing is pulled), **pull** (a full sync), **live**
(``stay_connected`` until the laptop is in step), **cut** and **reconnect** a link,
**crash** a laptop (its objects dropped with no shutdown, at rest or in the middle of
a sync, then reopened from its files), **save** and **restore** a copy of a laptop's
files, **restart** the server, **resend** (the acknowledgement of a push is lost,
so the laptop sends the batch again) and **duplicate** (a push frame sent twice).

Every rule runs on one asyncio loop kept for the whole example (live modes go on
between rules), each call bounded by :data:`WAIT_S`. Nothing sleeps: waits are on the
replicas' and the server's events.

**What a crash means.** SQLite: the replica's tasks are cancelled wherever they are
and its connections dropped; its database file is released as a dying process's
would be (the connection closed, which rolls back an unfinished transaction: what
was committed is what the next process finds), and a new Replica opens the files.
The memory store: the :class:`KeptMemoryStore` object is the disk (each of its calls
commits whole), so a crash drops the Replica and a new one opens the same store;
a saved copy is a deep copy of it.

**The oracle** (:class:`Model`). Every edit writes a value no other edit writes.
The model knows which edits each laptop's files hold (``on_disk``), and after every
step reads the server's store: an edit seen there is **acknowledged**, and from then
on must stay there whatever happens (a restart, a crash, a restore, a lost or
duplicated frame). A sync that returns must have left every edit of that laptop's
files on the server. A restore puts back files older than some edits: those never
acknowledged are excused (they lived only on the files that were replaced); the
acknowledged ones must come back to the restored laptop from the server. At the end
every link is restored, live modes stop, and every laptop syncs until it is in step
(a bounded number of rounds): then every edit not excused is held by the server and
every laptop, and everyone holds the same records, revisions and open conflicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import shutil
import ssl as ssl_module
import tempfile
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgpack
from argon2 import PasswordHasher
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from caresync import DEFAULT_RULEBOOK, CaresyncError, ConnectionLostError
from caresync.records import Record
from caresync.replica import Replica, ReplicaState, backoff_delays
from caresync.replication.index import ensure_index
from caresync.server import SyncServer
from caresync.storage import MemoryStore, own_identity
from caresync.testing.checks import describe_differences, lag, snapshot
from caresync.transport import Channel, MemoryChannel, MemoryLink, MemoryNetwork

__all__ = ["LAPTOPS", "RECORDS", "WAIT_S", "MemorySyncMachine", "SQLiteSyncMachine"]

T = TypeVar("T")

LAPTOPS = 3
RECORDS = 2
PATHS = ("name", "note")
ORG, USER, PASSWORD = "clinic", "dr.a", "a passphrase"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
WAIT_S = 30.0
"""Upper bound of one rule (a sync, a wait for a live laptop): a passing run is far below."""
FINAL_ROUNDS = 4
"""Sync rounds of every laptop at the end before they must be in step."""
MAX_WAKEUPS = 10_000
"""Re-checks while waiting for a live laptop (each on an event): a bound, never reached."""
PUSH_BATCH, PUSH_ACK = 20, 21  # type codes (docs/protocol.md)


def quick_backoff() -> Iterator[float]:
    """Reconnection delays of milliseconds: live laptops come back at once."""
    return backoff_delays(0.001, maximum=0.01)


def frame_type(frame: bytes) -> int | None:
    """A frame's type code (``[version, type, body]``), or None if it is not one."""
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - any undecodable frame is simply not the one looked for
        return None
    if isinstance(envelope, list) and len(envelope) == 3 and isinstance(envelope[1], int):
        return envelope[1]
    return None


# ---------------------------------------------------------------------- faults


@dataclass
class Faults:
    """Faults armed on one laptop's connections; each fires once, at the next push."""

    duplicate_push: bool = False
    """The next PushBatch frame is sent twice."""
    lose_ack: bool = False
    """The next PushAck never arrives: the link drops instead (the laptop resends)."""
    stop_after_ack: bool = False
    """The link drops right after the next PushAck (a push without the pull)."""
    fired: list[str] = field(default_factory=list)

    @property
    def armed(self) -> bool:
        return self.duplicate_push or self.lose_ack or self.stop_after_ack

    def disarm(self) -> None:
        self.duplicate_push = self.lose_ack = self.stop_after_ack = False


class FaultyChannel:
    """A laptop's end of a memory channel that applies its laptop's armed faults."""

    def __init__(self, inner: MemoryChannel, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self._stopping = False

    @property
    def peer(self) -> str:
        return self.inner.peer

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def remote_host(self) -> str | None:
        return self.inner.remote_host

    @property
    def channel_binding(self) -> bytes | None:
        return self.inner.channel_binding

    def set_limits(self, *, max_frame_bytes: int, max_queued_frames: int) -> None:
        self.inner.set_limits(max_frame_bytes=max_frame_bytes, max_queued_frames=max_queued_frames)

    def _drop(self, why: str) -> ConnectionLostError:
        self.inner.cut()
        self.faults.fired.append(why)
        return ConnectionLostError(f"the test dropped the link: {why}")

    async def send(self, frame: bytes) -> None:
        if self._stopping:
            raise self._drop("stopped after the push")
        await self.inner.send(frame)
        if self.faults.duplicate_push and frame_type(frame) == PUSH_BATCH:
            self.faults.duplicate_push = False
            self.faults.fired.append("duplicated a push")
            await self.inner.send(frame)

    async def recv(self) -> bytes:
        if self._stopping:
            raise self._drop("stopped after the push")
        frame = await self.inner.recv()
        if frame_type(frame) == PUSH_ACK:
            if self.faults.lose_ack:
                self.faults.lose_ack = False
                raise self._drop("lost an acknowledgement")
            if self.faults.stop_after_ack:
                self.faults.stop_after_ack = False
                self._stopping = True
        return frame

    async def close(self, reason: str = "") -> None:
        await self.inner.close(reason)


class FaultyConnector:
    """A laptop's connector: its MemoryLink, each channel wrapped in a FaultyChannel."""

    def __init__(self, link: MemoryLink, faults: Faults) -> None:
        self.link = link
        self.faults = faults

    def check_url(self, url: object, *, insecure: bool = False) -> str:
        return self.link.check_url(url, insecure=insecure)

    async def connect(self, url: str, *, ssl: ssl_module.SSLContext | None = None) -> Channel:
        inner = await self.link.connect(url, ssl=ssl)
        return FaultyChannel(inner, self.faults)


# ---------------------------------------------------------------------- stores


class KeptMemoryStore(MemoryStore):
    """A memory store that outlives the process using it: it is that process's disk.

    Closing it (a server's or replica's close) leaves it as it is, so that the next
    process opens the same data, as a file would be found after a restart.
    """

    async def close(self) -> None:
        return None


class Backend:
    """Where the server's and the laptops' data live, and what a crash leaves of them."""

    name: ClassVar[str] = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def open_server(self) -> SyncServer:
        raise NotImplementedError

    async def open_laptop(self, name: str, connector: FaultyConnector) -> Replica:
        raise NotImplementedError

    async def release(self, replica: Replica) -> None:
        """What the end of the laptop's process does to its data (nothing graceful)."""
        raise NotImplementedError

    async def save(self, name: str, replica: Replica, copy_id: int) -> object:
        """A copy of the laptop's data now (a backup); returns a handle to restore it."""
        raise NotImplementedError

    async def restore(self, name: str, saved: object) -> None:
        """Put the saved copy back in place of the laptop's data (it is not running)."""
        raise NotImplementedError


class SQLiteBackend(Backend):
    """Each replica on its SQLite file; copies by SQLite's online backup."""

    name = "sqlite"

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.db"

    async def open_server(self) -> SyncServer:
        return await SyncServer.open(self._path("server"), password_hasher=CHEAP)

    async def open_laptop(self, name: str, connector: FaultyConnector) -> Replica:
        return await Replica.open(
            self._path(name), password_hasher=CHEAP, login_idle_s=None, connector=connector
        )

    async def release(self, replica: Replica) -> None:
        # A dying process's connection goes: its unfinished transaction is rolled back
        # and its lock released. Nothing else of Replica.close runs (there is nothing else).
        await replica.store.close()

    async def save(self, name: str, replica: Replica, copy_id: int) -> object:
        target = self.directory / f"{name}.copy{copy_id}.db"
        await replica.store.backup(target)  # type: ignore[attr-defined]
        return target

    async def restore(self, name: str, saved: object) -> None:
        assert isinstance(saved, Path)
        path = self._path(name)
        await asyncio.to_thread(shutil.copyfile, saved, path)
        for suffix in ("-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)


class MemoryBackend(Backend):
    """Each replica on a KeptMemoryStore; copies are deep copies."""

    name = "memory"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.stores: dict[str, KeptMemoryStore] = {}

    def _store(self, name: str) -> KeptMemoryStore:
        return self.stores.setdefault(name, KeptMemoryStore())

    async def open_server(self) -> SyncServer:
        store = self._store("server")
        identity = await own_identity(store, "server", id_prefix="server", where="memory")
        return SyncServer(store, identity.replica_id, password_hasher=CHEAP)

    async def open_laptop(self, name: str, connector: FaultyConnector) -> Replica:
        store = self._store(name)
        identity = await own_identity(store, "laptop", id_prefix="replica", where=name)
        await ensure_index(store, DEFAULT_RULEBOOK, replica=identity.replica_id)
        return await Replica.from_store(
            store, identity, password_hasher=CHEAP, login_idle_s=None, connector=connector
        )

    async def release(self, replica: Replica) -> None:
        return None  # the store is the disk: every call committed whole

    async def save(self, name: str, replica: Replica, copy_id: int) -> object:
        return copy.deepcopy(self._store(name))

    async def restore(self, name: str, saved: object) -> None:
        assert isinstance(saved, KeptMemoryStore)
        self.stores[name] = copy.deepcopy(saved)  # the saved copy stays restorable


# ----------------------------------------------------------------------- model


@dataclass(frozen=True)
class Edit:
    """One write: a value no other edit writes, on one laptop."""

    laptop: int
    record_id: str
    path: str
    value: str


@dataclass
class Model:
    """What the oracle knows: every edit, who holds it, what the server acknowledged."""

    edits: list[Edit] = field(default_factory=list)
    on_disk: dict[int, set[int]] = field(default_factory=dict)
    """Per laptop, the edits (by index) its current files hold as its own."""
    acked: set[int] = field(default_factory=set)
    """Edits seen on the server: they must stay there, and reach everyone."""
    excused: set[int] = field(default_factory=set)
    """Edits lost with files a restore replaced, never acknowledged: not required."""
    saved: dict[int, tuple[object, frozenset[int]]] = field(default_factory=dict)

    def required(self) -> list[int]:
        return [i for i in range(len(self.edits)) if i not in self.excused]


def holds(record: Record | None, edit: Edit) -> bool:
    """True if ``record`` holds the edit's revision (current, concurrent or past)."""
    if record is None:
        return False
    return any(rev.value == edit.value for rev in record.history(edit.path))


@dataclass
class Laptop:
    """One laptop's process: its replica, link, faults and live mode."""

    index: int
    replica: Replica
    link: MemoryLink
    faults: Faults
    live: asyncio.Task[None] | None = None
    stop: asyncio.Event | None = None


# --------------------------------------------------------------------- machine


class SyncMachine(RuleBasedStateMachine):
    """The machine; :class:`SQLiteSyncMachine` and :class:`MemorySyncMachine` pick a store."""

    backend_class: ClassVar[type[Backend]] = SQLiteBackend

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="caresync-machine-"))
        self.backend = self.backend_class(self.directory)
        self.network = MemoryNetwork()
        self.model = Model()
        self.laptops: list[Laptop] = []
        self.server: SyncServer | None = None
        self.record_ids: list[str] = []
        self.values = itertools.count()
        self.copies = itertools.count()
        self.healthy = True  # False once a step raised: the final check is then skipped
        try:
            self.run(self._start())
        except BaseException:
            self._clean_up()  # Hypothesis tears down only a machine that was built
            raise

    # ------------------------------------------------------------------ plumbing

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        """Run one step on the machine's loop, bounded; mark the machine broken if it fails."""
        self.healthy = False

        async def bounded() -> T:
            async with asyncio.timeout(WAIT_S):
                return await step

        result = self.loop.run_until_complete(bounded())
        self.healthy = True
        return result

    async def _start(self) -> None:
        self.server = await self.backend.open_server()
        await self.server.add_user(ORG, USER, PASSWORD)
        await self.server.listen(self.network.host("server"))
        for index in range(LAPTOPS):
            faults = Faults()
            link = self.network.link(f"laptop-{index}")
            replica = await self.backend.open_laptop(link.name, FaultyConnector(link, faults))
            await replica.enrol(link.url, username=USER, password=PASSWORD, organisation=ORG)
            self.laptops.append(Laptop(index, replica, link, faults))
            self.model.on_disk[index] = set()
        first = self.laptops[0].replica
        for _ in range(RECORDS):
            self.record_ids.append(await first.create_record())
        await first.sync()
        for laptop in self.laptops[1:]:
            await laptop.replica.sync()

    def _laptop(self, index: int) -> Laptop:
        return self.laptops[index % len(self.laptops)]

    async def _server_records(self) -> dict[str, Record | None]:
        assert self.server is not None
        found: dict[str, Record | None] = {}
        for record_id in self.record_ids:
            data = await self.server.store.load(record_id)
            found[record_id] = (
                None if data is None else Record.from_update(record_id, data, replica="oracle")
            )
        return found

    async def _observe(self) -> None:
        """Acknowledged edits are on the server, and stay there."""
        records = await self._server_records()
        for i, edit in enumerate(self.model.edits):
            on_server = holds(records[edit.record_id], edit)
            if i in self.model.acked:
                assert on_server, f"acknowledged edit {edit} is no longer on the server"
            elif on_server:
                self.model.acked.add(i)

    async def _until_in_step(self, laptop: Laptop) -> None:
        """Wait (on the laptop's and the server's events) until a live laptop is in step."""
        assert self.server is not None
        server = self.server
        changed = asyncio.Event()
        stops = [
            laptop.replica.on_status(lambda *_: changed.set()),
            laptop.replica.on_received(lambda *_: changed.set()),
            laptop.replica.on_acknowledged(lambda *_: changed.set()),
        ]
        server.on_commit.append(lambda *_: changed.set())
        try:
            for _ in range(MAX_WAKEUPS):
                changed.clear()  # before checking: whatever happens next wakes us
                if laptop.live is not None and laptop.live.done():
                    await laptop.live  # raises why live mode ended
                    raise AssertionError(f"laptop {laptop.index}'s live mode ended by itself")
                if (
                    laptop.replica.state is ReplicaState.ONLINE
                    and (await lag(laptop.replica, server)).settled
                ):
                    return
                await changed.wait()
            raise AssertionError(f"laptop {laptop.index} woke {MAX_WAKEUPS} times, never in step")
        finally:
            for stop in stops:
                stop()
            server.on_commit.pop()

    async def _stop_live(self, laptop: Laptop) -> None:
        task, stop = laptop.live, laptop.stop
        laptop.live = laptop.stop = None
        if task is None or stop is None:
            return
        stop.set()
        await task  # stopping is prompt; a failure of live mode is raised here

    async def _kill(self, laptop: Laptop) -> None:
        """The laptop's process ends now: tasks cancelled, connections dropped, no goodbye."""
        if laptop.live is not None:
            laptop.live.cancel()
            await asyncio.wait({laptop.live})
            laptop.live = laptop.stop = None
        laptop.link.drop()
        await self.backend.release(laptop.replica)

    async def _reopen(self, laptop: Laptop) -> None:
        connector = FaultyConnector(laptop.link, laptop.faults)
        laptop.replica = await self.backend.open_laptop(laptop.link.name, connector)

    async def _sync(self, laptop: Laptop) -> bool:
        """One sync; True if it returned. A sync that should have worked must work."""
        assert self.server is not None
        expected_to_work = laptop.link.up and not laptop.faults.armed
        try:
            await laptop.replica.sync()
        except (ConnectionLostError, CaresyncError) as exc:
            if expected_to_work and not laptop.faults.fired:
                raise AssertionError(f"laptop {laptop.index}: a clean sync failed: {exc}") from exc
            return False
        finally:
            laptop.faults.fired.clear()
        # Returned: the server acknowledged every edit of this laptop's files.
        records = await self._server_records()
        for i in self.model.on_disk[laptop.index]:
            edit = self.model.edits[i]
            assert holds(records[edit.record_id], edit), f"synced, yet {edit} is not on the server"
        assert (await laptop.replica.status()).pending == 0
        return True

    # --------------------------------------------------------------------- rules

    @rule(
        writes=st.lists(
            st.tuples(
                st.integers(0, LAPTOPS - 1), st.integers(0, RECORDS - 1), st.sampled_from(PATHS)
            ),
            min_size=1,
            max_size=4,
        )
    )
    def edit(self, writes: list[tuple[int, int, str]]) -> None:
        """A few edits, each durable when its call returns (on live laptops too)."""
        for laptop, record, path in writes:
            lap = self._laptop(laptop)
            edit = Edit(lap.index, self.record_ids[record], path, f"v{next(self.values)}")
            self.run(lap.replica.set(edit.record_id, edit.path, edit.value, author=USER))
            self.model.edits.append(edit)
            self.model.on_disk[lap.index].add(len(self.model.edits) - 1)

    @precondition(lambda self: any(lap.live is None for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def push(self, laptop: int) -> None:
        lap = self._idle(laptop)
        lap.faults.stop_after_ack = True  # the link drops once the push was acknowledged
        try:
            self.run(self._push(lap))
        finally:
            lap.faults.stop_after_ack = False

    async def _push(self, lap: Laptop) -> None:
        try:
            await lap.replica.sync()
        except (ConnectionLostError, CaresyncError):
            pass  # stopped after the push (or the link is cut): the pull did not happen
        finally:
            lap.faults.fired.clear()

    @precondition(lambda self: any(lap.live is None for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def pull(self, laptop: int) -> None:
        self.run(self._sync(self._idle(laptop)))

    @precondition(lambda self: any(lap.live is None and lap.link.up for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def go_live(self, laptop: int) -> None:
        candidates = [lap for lap in self.laptops if lap.live is None and lap.link.up]
        lap = candidates[laptop % len(candidates)]
        lap.stop = asyncio.Event()
        lap.live = self.loop.create_task(
            lap.replica.stay_connected(stop=lap.stop, backoff=quick_backoff)
        )
        self.run(self._until_in_step(lap))

    @precondition(lambda self: any(lap.live is not None for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def leave_live(self, laptop: int) -> None:
        live = [lap for lap in self.laptops if lap.live is not None]
        self.run(self._stop_live(live[laptop % len(live)]))

    @precondition(lambda self: any(lap.link.up for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def cut(self, laptop: int) -> None:
        self._laptop(laptop).link.cut()

    @precondition(lambda self: any(not lap.link.up for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def reconnect(self, laptop: int) -> None:
        down = [lap for lap in self.laptops if not lap.link.up]
        lap = down[laptop % len(down)]
        lap.link.restore()
        if lap.live is not None:
            self.run(self._until_in_step(lap))

    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def crash(self, laptop: int) -> None:
        lap = self._laptop(laptop)
        self.run(self._crash(lap))

    async def _crash(self, lap: Laptop) -> None:
        await self._kill(lap)
        await self._reopen(lap)

    @precondition(lambda self: any(lap.live is None for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1), steps=st.integers(0, 40))
    def crash_during_sync(self, laptop: int, steps: int) -> None:
        """The process dies ``steps`` turns of the event loop into a sync."""
        lap = self._idle(laptop)
        self.run(self._crash_during_sync(lap, steps))

    async def _crash_during_sync(self, lap: Laptop, steps: int) -> None:
        task = asyncio.create_task(lap.replica.sync())
        for _ in range(steps):
            if task.done():
                break
            await asyncio.sleep(0)  # one turn of the loop: no time passes
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, CaresyncError):
            await task
        lap.faults.fired.clear()
        await self._kill(lap)
        await self._reopen(lap)

    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def save_copy(self, laptop: int) -> None:
        lap = self._laptop(laptop)
        saved = self.run(self.backend.save(lap.link.name, lap.replica, next(self.copies)))
        self.model.saved[lap.index] = (saved, frozenset(self.model.on_disk[lap.index]))

    @precondition(lambda self: bool(self.model.saved))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def restore(self, laptop: int) -> None:
        saved_laptops = sorted(self.model.saved)
        lap = self.laptops[saved_laptops[laptop % len(saved_laptops)]]
        saved, held = self.model.saved[lap.index]
        self.run(self._restore(lap, saved))
        lost = self.model.on_disk[lap.index] - held
        self.model.excused |= lost - self.model.acked
        self.model.on_disk[lap.index] = set(held)

    async def _restore(self, lap: Laptop, saved: object) -> None:
        await self._kill(lap)
        await self._observe()  # what the server holds now was acknowledged, before the swap
        await self.backend.restore(lap.link.name, saved)
        await self._reopen(lap)

    @rule()
    def restart_server(self) -> None:
        self.run(self._restart_server())

    async def _restart_server(self) -> None:
        assert self.server is not None
        await self.server.close()
        self.server = await self.backend.open_server()
        await self.server.listen(self.network.host("server"))
        for lap in self.laptops:  # live laptops come back by themselves
            if lap.live is not None and lap.link.up:
                await self._until_in_step(lap)

    @precondition(lambda self: any(lap.live is None for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def duplicate(self, laptop: int) -> None:
        """A sync whose push frame reaches the server twice."""
        lap = self._idle(laptop)
        lap.faults.duplicate_push = True
        try:
            self.run(self._sync(lap))
        finally:
            lap.faults.duplicate_push = False

    @precondition(lambda self: any(lap.live is None for lap in self.laptops))
    @rule(laptop=st.integers(0, LAPTOPS - 1))
    def resend(self, laptop: int) -> None:
        """A sync whose acknowledgement is lost: the server committed, the laptop does not
        know, and sends the same batch again at its next sync (a later rule)."""
        lap = self._idle(laptop)
        lap.faults.lose_ack = True
        try:
            self.run(self._sync(lap))
        finally:
            lap.faults.lose_ack = False

    def _idle(self, index: int) -> Laptop:
        idle = [lap for lap in self.laptops if lap.live is None]
        return idle[index % len(idle)]

    # ---------------------------------------------------------------- invariants

    @invariant()
    def acknowledged_edits_stay_on_the_server(self) -> None:
        self.run(self._observe())

    # ------------------------------------------------------------------ the end

    def teardown(self) -> None:
        try:
            if self.healthy:
                self.run(self._converge_and_check())
        finally:
            self._clean_up()

    def _clean_up(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self._close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _converge_and_check(self) -> None:
        assert self.server is not None
        for lap in self.laptops:
            lap.link.restore()
            lap.faults.disarm()
            await self._stop_live(lap)
        for _ in range(FINAL_ROUNDS):
            for lap in self.laptops:
                assert await self._sync(lap), f"laptop {lap.index} could not sync at the end"
            lags = [await lag(lap.replica, self.server) for lap in self.laptops]
            if all(each.settled for each in lags):
                break
        else:
            raise AssertionError(f"not in step after {FINAL_ROUNDS} rounds: {lags}")
        await self._observe()
        await self._check_everyone_agrees()

    async def _check_everyone_agrees(self) -> None:
        assert self.server is not None
        server_records = await self._server_records()
        expected = await snapshot(self.server.store, DEFAULT_RULEBOOK, organisation=ORG)
        server_conflicts = sorted(row.id for row in await self.server.store.conflicts())
        for lap in self.laptops:
            replica = lap.replica
            for i in self.model.required():
                edit = self.model.edits[i]
                assert holds(server_records[edit.record_id], edit), f"{edit} lost on the server"
                data = await replica.store.load(edit.record_id)
                mine = (
                    None
                    if data is None
                    else Record.from_update(edit.record_id, data, replica="oracle")
                )
                assert holds(mine, edit), f"{edit} never reached laptop {lap.index}"
            differences = describe_differences(
                expected, await snapshot(replica.store, DEFAULT_RULEBOOK)
            )
            assert not differences, f"laptop {lap.index} differs: {differences}"
            conflicts = sorted(row.id for row in await replica.store.conflicts())
            assert conflicts == server_conflicts, f"laptop {lap.index}'s open conflicts differ"

    async def _close(self) -> None:
        for lap in self.laptops:
            if lap.live is not None:
                lap.live.cancel()
                await asyncio.wait({lap.live})
            with contextlib.suppress(CaresyncError):  # a store a crash released already
                await lap.replica.close()
        if self.server is not None:
            await self.server.close()
        # The server's own tasks (its session watcher) end with it; anything else left
        # on the loop belongs to a failed step: cancel it rather than leak it.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others)


class SQLiteSyncMachine(SyncMachine):
    """Server and laptops on SQLite files in a temporary directory."""

    backend_class = SQLiteBackend


class MemorySyncMachine(SyncMachine):
    """Server and laptops on memory stores that outlive their processes."""

    backend_class = MemoryBackend
