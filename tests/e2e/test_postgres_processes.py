"""Several `caresync serve` processes on one PostgreSQL database, as a clinic runs them
behind a load balancer: real subprocesses, real websockets on 127.0.0.1, laptops on
SQLite files. Two processes starting together on an empty database become one
server; a laptop enrolled through one syncs through the other; one is killed with
SIGKILL while laptops push, and every acknowledged edit is kept, the laptops carry
on through the other, and no update is lost or doubled; a guesser alternating between
two processes gets no more free failures, nor shorter locks, than against one. Needs
PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from tests.admin.admin_helpers import basic, http_get
from tests.cli.clitools import ServerProcess
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, Signal, live, until, watch
from tests.postgres import fresh_schema

from caresync.exceptions import AuthenticationError, CaresyncError
from caresync.protocol import Authenticated, ErrorCode
from caresync.records import Record
from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer
from caresync.storage.postgres import PostgresStore
from caresync.throttle import LoginThrottle, key_text

LIMIT_S = 60.0
"""Upper bound for one wait; a passing test never comes near it."""
EDITS = 12
"""Edits each pushing laptop makes, one sync each."""
KILL_AFTER = 8
"""Acknowledged pushes (of all laptops) before the first process is killed."""
USERS = ("dr.a", "dr.b", "dr.c")


@pytest.fixture
async def schema_url(postgres_database: str) -> AsyncIterator[str]:
    async with fresh_schema(postgres_database) as url:
        yield url


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    """Every server process a test starts: stopped (killed if need be) at its end."""
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.kill()


async def start(url: str, started: list[ServerProcess]) -> ServerProcess:
    process = await asyncio.to_thread(ServerProcess, url)  # type: ignore[arg-type]
    started.append(process)
    return process


def server_id_of(process: ServerProcess) -> str:
    """The server id a process says it serves as (its log's first note)."""
    process.wait_log("SIGTERM stops it")
    found = re.search(r"server (server-[0-9a-f-]+), database", process.stderr)
    assert found is not None, process.stderr
    return found.group(1)


async def test_two_processes_starting_together_on_an_empty_database_are_one_server(
    tmp_path: Path, schema_url: str, processes: list[ServerProcess]
) -> None:
    a, b = await asyncio.gather(start(schema_url, processes), start(schema_url, processes))
    assert server_id_of(a) == server_id_of(b)
    async with await SyncServer.open(schema_url) as third:  # a third opener agrees too
        assert third.server_id == server_id_of(a)
        await third.add_user("clinic-a", "dr.a", PASSWORD)
        await third.add_user("clinic-a", "boss", PASSWORD, admin=True)
    # One key as well: a laptop pins A's at enrolment, and B proves it holds it.
    laptop = await enrolled(tmp_path, a.url, "laptop", "dr.a")
    assert laptop.identity.server_id == server_id_of(b)
    await laptop.sync(url=b.url)
    await laptop.close()
    # Both show up to an administrator, and either one shows the whole clinic: the
    # laptop enrolled through A is on B's admin page.
    for process in (a, b):
        http = process.url.replace("ws://", "http://", 1)
        assert (await asyncio.to_thread(http_get, f"{http}/healthz"))[0] == 200
        status, _headers, body = await asyncio.to_thread(http_get, f"{http}/metrics")
        assert status == 200
        assert "caresync_feed_head" in body
        status, _headers, state = await asyncio.to_thread(
            http_get, f"{http}/admin/state.json", basic("boss@clinic-a")
        )
        assert status == 200, state
        assert laptop.replica_id in state
    for process in (a, b):
        code, err = await asyncio.to_thread(process.stop)
        assert code == 0, err


async def enrolled(tmp_path: Path, url: str, name: str, user: str) -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


async def stored_values(url: str, record_id: str) -> dict[str, object]:
    """The record's fields as the database holds them now."""
    async with PostgresStore.open(url) as store:
        stored = await store.load(record_id)
    assert stored is not None, record_id
    record = Record.from_update(record_id, stored, replica="test")
    return {f"n{k}": record.value(f"n{k}") for k in range(EDITS)}


async def test_one_process_killed_during_pushes_loses_nothing_and_laptops_carry_on(
    tmp_path: Path, schema_url: str, processes: list[ServerProcess]
) -> None:
    async with await SyncServer.open(schema_url) as setup:
        for user in USERS:
            await setup.add_user("clinic-a", user, PASSWORD)
    a = await start(schema_url, processes)
    b = await start(schema_url, processes)
    assert server_id_of(a) == server_id_of(b)

    # Enrolled through A; the watcher through B, live on B throughout.
    laptops = [await enrolled(tmp_path, a.url, f"laptop-{u}", u) for u in USERS]
    watcher = await enrolled(tmp_path, b.url, "watcher", "dr.a")
    records = [await laptop.create_record() for laptop in laptops]
    acked = [0] * len(laptops)  # edits acknowledged, per laptop
    through_b = [False] * len(laptops)
    progress = Signal()

    async def push_stream(i: int) -> None:
        laptop, record_id, url = laptops[i], records[i], a.url
        for n in range(EDITS):
            await laptop.set(record_id, f"n{n}", n)
            for _attempt in range(3):
                try:
                    await laptop.sync(url=url)
                except CaresyncError:
                    url, through_b[i] = b.url, True  # A is gone: carry on through B
                    continue
                acked[i] = n + 1
                progress()
                break
            else:
                raise AssertionError(f"laptop {i} could not push edit {n}")

    seen = watch(watcher)
    async with live(watcher) as run:
        await run.states.reach(ReplicaState.ONLINE)
        streams = [asyncio.create_task(push_stream(i)) for i in range(len(laptops))]
        try:
            async with asyncio.timeout(LIMIT_S):
                while sum(acked) < KILL_AFTER:
                    progress.event.clear()
                    await progress.event.wait()
            await asyncio.to_thread(a.kill)  # SIGKILL, mid-stream; reaped when it returns
            at_kill = list(acked)
            # Every edit acknowledged before the kill is in the database, as it stands.
            for i, record_id in enumerate(records):
                values = await stored_values(schema_url, record_id)
                assert all(values[f"n{k}"] == k for k in range(at_kill[i])), (i, values)
            async with asyncio.timeout(LIMIT_S):
                await asyncio.gather(*streams)
        finally:
            for stream in streams:
                stream.cancel()
        assert acked == [EDITS] * len(laptops)
        assert all(through_b)  # each laptop went on through B (A was killed mid-stream)
        wanted = {rid: {f"n{k}": k for k in range(EDITS)} for rid in records}

        async def watcher_has_all() -> bool:
            for record_id, fields in wanted.items():
                if record_id not in await watcher.record_ids():
                    return False
                view = await watcher.record(record_id, audited=False)
                if any(view.value(p) != v for p, v in fields.items()):
                    return False
            return True

        async with asyncio.timeout(LIMIT_S):
            await until(watcher_has_all, seen)  # relayed live by B, A's commits included

    for laptop in laptops:
        await laptop.sync(url=b.url)
        assert (await laptop.status()).pending == 0
        for record_id, fields in wanted.items():
            view = await laptop.record(record_id, audited=False)
            assert {p: view.value(p) for p in fields} == fields
    for record_id in records:
        assert await stored_values(schema_url, record_id) == wanted[record_id]

    # No update doubled: every feed row's update is unique, numbered without a gap.
    async with await psycopg.AsyncConnection.connect(schema_url) as conn:
        cursor = await conn.execute(
            "SELECT count(*), count(DISTINCT md5(data)), min(seq), max(seq) FROM feed"
        )
        rows, distinct, first, last = await cursor.fetchone() or (0, 0, 0, 0)
    assert rows == distinct == last - first + 1
    assert rows >= len(laptops) * (EDITS + 1)  # each record's creation and its edits

    for replica in (*laptops, watcher):
        await replica.close()
    code, err = await asyncio.to_thread(b.stop)
    assert code == 0, err


async def test_failed_logins_through_two_processes_lock_the_account_on_both(
    schema_url: str, processes: list[ServerProcess]
) -> None:
    """A guesser alternating between two `caresync serve` processes (their default
    throttle: five free failures an account, then locks of 1 s, 2 s, 4 s, ...) gets five
    free failures in all, not five per process, and the locks double across the two:
    while locked, the right password is refused as ``throttled`` through either one, and
    once the lock has passed it logs in through both."""
    async with await SyncServer.open(schema_url) as setup:
        await setup.add_user("clinic-a", "dr.a", PASSWORD)
    a, b = await asyncio.gather(start(schema_url, processes), start(schema_url, processes))
    policy = LoginThrottle()  # what `caresync serve` runs with
    key = key_text(("account", "clinic-a", "dr.a"))
    turns = itertools.cycle((a, b))
    for _ in range(policy.account_free):  # three through A, two through B
        assert await attempt(next(turns), "wrong guess") == ErrorCode.BAD_CREDENTIALS
    assert await failures_of(schema_url, key) == (policy.account_free, 0)
    # The next failure (B's third: a process of its own would let two more through)
    # locks the account for 1 s; each failure once a lock has passed doubles it.
    for over, lock_ms in enumerate((1_000, 2_000, 4_000), start=1):
        assert await attempt(next(turns), "wrong guess") == ErrorCode.BAD_CREDENTIALS
        count, lock = await failures_of(schema_url, key)
        assert (count, lock) == (policy.account_free + over, lock_ms)
        if lock_ms == 4_000:  # long enough to ask both, however slow the machine
            for process in (a, b):
                assert await attempt(process, PASSWORD) == ErrorCode.THROTTLED
            assert await failures_of(schema_url, key) == (count, lock_ms)  # not counted
        await until_passed(schema_url, key)
    for process in (a, b):
        assert await attempt(process, PASSWORD) == "ok"
    assert await failures_of(schema_url, key) is None  # the right password cleared it
    for process in (a, b):
        code, err = await asyncio.to_thread(process.stop)
        assert code == 0, err


async def attempt(process: ServerProcess, password: str) -> str:
    """One password login of dr.a through ``process``: "ok", or the refusal's code."""
    client = await Hostile.connect(process.url)
    try:
        client.protocol.authenticate("dr.a", password, "clinic-a")
        try:
            reply = await client.next_event()
        except AuthenticationError:
            assert client.protocol.peer_error is not None
            return client.protocol.peer_error.code
        assert isinstance(reply, Authenticated), reply
        return "ok"
    finally:
        await client.close()


async def failures_of(url: str, key: str) -> tuple[int, int] | None:
    """The key's failures and the length of its last lock (ms), as the database holds
    them; None when it holds none."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT failures, GREATEST(locked_until_ms - last_ms, 0) FROM login_failures"
            " WHERE key = %s",
            (key,),
        )
        row = await cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


async def until_passed(url: str, key: str) -> None:
    """Return once the key's lock, as the database holds it, has passed: a wait until a
    known instant of the wall clock the processes read (nothing to be signalled)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT locked_until_ms FROM login_failures WHERE key = %s", (key,)
        )
        row = await cursor.fetchone()
    assert row is not None
    await asyncio.sleep(max(0.0, int(row[0]) / 1000 - time.time()) + 0.01)
