"""Live mode with real parts: laptops that stay connected to a websocket server on 127.0.0.1.

Nothing here sleeps to wait for something: every wait is on an event (a state
change, a committed batch, an acknowledgement, a server commit), bounded by
``asyncio.timeout`` as an upper limit only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.live_helpers import (
    LIMIT_S,
    PASSWORD,
    enrolled,
    live,
    start_server,
    until,
    watch,
)

from caresync import (
    AuthenticationError,
    InvalidInputError,
    ReplicaRevokedError,
    WrongServerError,
)
from caresync.replica import Replica, ReplicaState, SyncLimits, backoff_delays
from caresync.replication.epochs import FeedPosition
from caresync.server import SyncServer

ONLINE, OFFLINE = ReplicaState.ONLINE, ReplicaState.OFFLINE


async def value(replica: Replica, record_id: str, path: str) -> object:
    if record_id not in await replica.record_ids():
        return None
    return (await replica.record(record_id)).value(path)


async def test_an_edit_on_one_live_laptop_reaches_the_other_without_polling(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    signal = watch(a, b)
    async with live(a) as run_a, live(b) as run_b, asyncio.timeout(LIMIT_S):
        await run_a.states.reach(ONLINE)
        await run_b.states.reach(ONLINE)
        rounds_b = run_b.states.seen.count(ReplicaState.SYNCHRONISING)

        record_id = await a.create_record()
        await a.set(record_id, "name", "Ann", author="dr.a")

        async def b_has_it() -> bool:
            return await value(b, record_id, "name") == "Ann"

        await until(b_has_it, signal)
        await b.set(record_id, "birthDate", "1990-01-01", author="dr.b")

        async def a_has_it() -> bool:
            return await value(a, record_id, "birthDate") == "1990-01-01"

        await until(a_has_it, signal)

        async def outboxes_empty() -> bool:
            return (await a.status()).pending == 0 == (await b.status()).pending

        await until(outboxes_empty, signal)
        # No new connection, no sync round: the edits came over the open link.
        assert run_b.states.seen.count(ReplicaState.SYNCHRONISING) == rounds_b
        assert run_a.states.seen[-1] is ONLINE is run_b.states.seen[-1]
        status = await b.status()
        assert status.state is ONLINE
        assert status.copy_age_s == 0.0
        # a's checkpoint followed the live feed to its head (b's edit was the last entry).
        checkpoint = FeedPosition.parse(await a.store.get_meta("sync.checkpoint"))
        assert checkpoint.seq == await server.store.feed_head()
        assert checkpoint.epoch is not None  # live entries carry their feed epoch
    assert a.state is OFFLINE is b.state  # stopped: both said goodbye
    for closable in (a, b, server):
        await closable.close()


async def test_a_conflict_made_offline_shows_the_same_everywhere_once_both_are_live(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    record_id = await a.create_record()
    await a.set(record_id, "birthDate", "1990-01-01", author="dr.a")
    await a.sync()
    await b.sync()
    # Both offline: the same field changed on each.
    await a.set(record_id, "birthDate", "1990-01-02", author="dr.a")
    await b.set(record_id, "birthDate", "1991-01-01", author="dr.b")
    signal = watch(a, b, server=server)

    async def settled() -> bool:
        return (
            len(await a.conflicts()) == 1
            and len(await b.conflicts()) == 1
            and (await a.status()).pending == 0
            and (await b.status()).pending == 0
        )

    async with live(a) as run_a, live(b) as run_b, asyncio.timeout(LIMIT_S):
        await until(settled, signal)
        conflicts_a, conflicts_b = await a.conflicts(), await b.conflicts()
        assert conflicts_a == conflicts_b
        assert {c.value for c in conflicts_a[0].candidates} == {"1990-01-02", "1991-01-01"}
        assert [row.id for row in await server.store.conflicts()] == [conflicts_a[0].id]

        # Resolved on one, live: the others follow without a sync round.
        await b.resolve(conflicts_b[0].id, choose=0, author="dr.b")

        async def resolved_everywhere() -> bool:
            return (
                await a.conflicts() == []
                and await server.store.count_conflicts() == 0
                and (await b.status()).pending == 0
            )

        await until(resolved_everywhere, signal)
        assert await value(a, record_id, "birthDate") == await value(b, record_id, "birthDate")
        assert run_a.states.seen.count(ONLINE) == 1 == run_b.states.seen.count(ONLINE)
    for closable in (a, b, server):
        await closable.close()


async def test_the_server_restarts_and_a_live_laptop_reconnects_and_catches_up(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    record_id = await a.create_record()
    await a.sync()
    await b.sync()
    signal = watch(a, b)
    async with live(a) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ONLINE)
        await server.close()  # the clinic server goes down under a live laptop
        await run.states.reach(OFFLINE)
        await a.set(record_id, "name", "written during the outage", author="dr.a")
        assert (await a.status()).pending == 1

        server = await SyncServer.open(tmp_path / "server.db")  # same file, same port
        server.on_commit.append(signal)
        await server.serve("127.0.0.1", port)
        await b.set(record_id, "allergy", "penicillin", author="dr.b")
        await b.sync()  # another laptop's change while the first is reconnecting

        async def caught_up() -> bool:
            return (
                a.state is ONLINE
                and (await a.status()).pending == 0
                and await value(a, record_id, "allergy") == "penicillin"
            )

        await until(caught_up, signal)
        assert run.states.seen.count(ONLINE) == 2  # it came back by itself, once
        assert ReplicaState.CONNECTING in run.states.seen[run.states.seen.index(OFFLINE) :]
        assert (await a.status()).last_error is None
    await b.sync()
    assert await value(b, record_id, "name") == "written during the outage"
    feed = await server.store.feed_since(0, limit=1000)
    updates = [item.update for item in feed]
    assert len(updates) == len(set(updates)) == 3  # the create, the outage edit, the allergy
    for closable in (a, b, server):
        await closable.close()


async def test_a_live_replica_revoked_is_told_at_once_and_locks(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    record_id = await a.create_record()
    async with live(a) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(ONLINE)
        await server.revoke(a.replica_id)  # the live link is told why and closed at once
        error = await run.outcome()
        assert isinstance(error, ReplicaRevokedError)
        # Locked straight from ONLINE: no reconnection was needed to learn it.
        assert run.states.seen[-2:] == [ReplicaState.ONLINE, ReplicaState.LOCKED]
    assert a.state is ReplicaState.LOCKED
    assert a.locked
    # Locked: work stays local and is kept; nothing reaches the server any more.
    await a.set(record_id, "name", "Ann", author="dr.a")
    with pytest.raises(ReplicaRevokedError):
        await a.sync()
    status = await a.status()
    assert status.pending == 1
    assert status.state is ReplicaState.LOCKED
    assert "revoked" in (status.last_error or "")
    await a.close()
    a = await Replica.open(tmp_path / "laptop-a.db")  # still locked after a restart
    assert a.state is ReplicaState.LOCKED
    with pytest.raises(ReplicaRevokedError):
        await a.stay_connected(stop=asyncio.Event())
    assert (await a.status()).pending == 1
    await a.close()
    await server.close()


async def test_a_replica_revoked_while_offline_locks_at_its_next_sync_keeping_its_outbox(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    record_id = await a.create_record()
    await a.set(record_id, "name", "Ann", author="dr.a")
    await server.revoke(a.replica_id)
    states: list[ReplicaState] = []
    a.on_status(states.append)
    with pytest.raises(ReplicaRevokedError, match="revoked"):
        await a.sync()
    assert states == [ReplicaState.CONNECTING, ReplicaState.LOCKED]
    assert (await a.status()).pending == 2
    assert await server.store.count_records() == 0
    await a.close()
    await server.close()


async def test_refusals_in_live_mode_are_raised_not_retried(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    other = await start_server(tmp_path, "other-server")
    a = await enrolled(tmp_path, server, "laptop-a")
    await a.create_record()
    asked: list[float] = []

    def counting_backoff() -> Iterator[float]:
        for delay in backoff_delays(0.005, maximum=0.05):
            asked.append(delay)
            yield delay

    async with asyncio.timeout(LIMIT_S):
        with pytest.raises(WrongServerError):
            await a.stay_connected(stop=asyncio.Event(), url=other.url, backoff=counting_backoff)
    assert asked == []
    assert a.state is OFFLINE
    assert (await a.status()).pending == 1
    assert await other.store.count_records() == 0

    # A session that expired: the user must log in again; retrying would not help.
    # Expired from the start; the watcher that closes expired live connections is
    # kept out of the way (it would cut the enrolment's own connection, on a slow day).
    short = await SyncServer.open(tmp_path / "short.db", session_ttl_s=0.0, security_poll_s=3600)
    await short.add_user("clinic-a", "dr.a", PASSWORD)
    await short.serve("127.0.0.1", 0)
    c = await Replica.open(tmp_path / "laptop-c.db")
    await c.enrol(short.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
    async with asyncio.timeout(LIMIT_S):
        with pytest.raises(AuthenticationError, match="session_expired"):
            await c.stay_connected(stop=asyncio.Event(), backoff=counting_backoff)
    assert asked == []
    # Logging in with the password again is what works.
    await c.sync(username="dr.a", password=PASSWORD)
    for closable in (a, c, server, other, short):
        await closable.close()


async def test_stop_is_prompt_even_while_waiting_to_reconnect(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    await server.close()  # nothing to reach

    def slow_backoff() -> Iterator[float]:
        return backoff_delays(3600.0, maximum=3600.0, jitter=0.0)

    async with asyncio.timeout(LIMIT_S):
        async with live(a, backoff=slow_backoff) as run:
            await run.states.reach(OFFLINE)  # the first attempt failed: waiting an hour
            with pytest.raises(InvalidInputError, match="live mode"):
                await a.sync()
            with pytest.raises(InvalidInputError, match="live mode"):
                await a.stay_connected(stop=asyncio.Event())
            assert "cannot connect" in ((await a.status()).last_error or "")
        # Leaving the block set stop and waited for the task; it returned cleanly.
        assert run.task.done()
        assert run.task.exception() is None
    await a.close()


def test_backoff_grows_exponentially_with_jitter_and_stays_bounded() -> None:
    rng = random.Random(4)
    delays = list(
        backoff_delays(0.5, factor=2.0, maximum=8.0, jitter=0.5, attempts=8, rand=rng.random)
    )
    assert len(delays) == 8
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    # The same seed gives the same delays: the generator is pure.
    assert delays == list(
        backoff_delays(0.5, factor=2.0, maximum=8.0, attempts=8, rand=random.Random(4).random)
    )
    # Without jitter it is plain exponential; without a bound on attempts it never ends.
    assert list(backoff_delays(1.0, maximum=5.0, jitter=0.0, attempts=5)) == [1, 2, 4, 5, 5]
    endless = backoff_delays(1.0, maximum=2.0)
    assert all(next(endless) <= 2.0 for _ in range(1000))
    for bad in ({"initial": 0.0}, {"initial": 2.0, "maximum": 1.0}, {"jitter": 1.5}):
        with pytest.raises(InvalidInputError):
            next(backoff_delays(**bad))  # type: ignore[arg-type]


async def test_an_unexpected_error_ends_live_mode_and_keeps_the_outbox(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    a = await enrolled(tmp_path, server, "laptop-a")
    b = await enrolled(tmp_path, server, "laptop-b", user="dr.b")
    record_id = await b.create_record()
    await b.sync()

    def broken_listener(record_ids: tuple[str, ...]) -> None:
        raise RuntimeError("a bug in the application's refresh")

    unsubscribe = a.on_received(broken_listener)
    async with live(a) as run, asyncio.timeout(LIMIT_S):
        error = await run.outcome()  # the round's pull brings b's record: the listener raises
        assert isinstance(error, RuntimeError)
        assert run.states.seen[-1] is OFFLINE
        assert run.states.seen.count(ReplicaState.CONNECTING) == 1  # not retried
    assert "bug" in ((await a.status()).last_error or "")
    await a.set(record_id, "name", "Ann", author="dr.a")
    assert (await a.status()).pending == 1
    unsubscribe()
    signal = watch(a)
    async with live(a), asyncio.timeout(LIMIT_S):

        async def pushed() -> bool:
            return (await a.status()).pending == 0

        await until(pushed, signal)
    await b.sync()
    assert await value(b, record_id, "name") == "Ann"
    for closable in (a, b, server):
        await closable.close()


async def test_the_server_stops_in_the_middle_of_a_live_push_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    a = await enrolled(tmp_path, server, "laptop-a", limits=SyncLimits(push_batch_items=10))
    record_id = await a.create_record()
    await a.sync()
    for i in range(25):  # three push batches, made offline
        await a.set(record_id, "visits", i, author="dr.a")
    outbox = await a.store.pending(1000)
    stopping: list[asyncio.Task[None]] = []

    def stop_after_first_batch(seq: int) -> None:
        if not stopping:  # the server goes down right after committing the first batch
            stopping.append(asyncio.create_task(server.close()))

    server.on_commit.append(stop_after_first_batch)
    signal = watch(a)
    async with live(a) as run, asyncio.timeout(LIMIT_S):
        await run.states.reach(OFFLINE)
        await stopping[0]
        assert (await a.status()).pending > 0
        server = await SyncServer.open(tmp_path / "server.db")
        assert await server.store.feed_head() < 1 + 25  # it stopped in the middle of the push
        await server.serve("127.0.0.1", port)

        async def caught_up() -> bool:
            return a.state is ONLINE and (await a.status()).pending == 0

        await until(caught_up, signal)
    feed = await server.store.feed_since(0, limit=1000)
    assert [item.update for item in feed[1:]] == [item.update for item in outbox]
    assert (await a.record(record_id)).value("visits") == 24
    await a.close()
    await server.close()
