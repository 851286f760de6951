"""Two SyncServers in this process on one PostgreSQL database, each with its own store
(its own connections, record pool and live connections), as two `caresync serve`
processes would be: one server to laptops, relaying each other's commits live, in
order, once each; a lost notification recovered by the poll; a revocation through one
ending a session on the other; the pool kept current. Real websockets on 127.0.0.1.
Needs PostgreSQL (tests/postgres.py). tests/e2e/test_postgres_processes.py runs the
same clinic with real processes and kills one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.e2e.hostile import Hostile
from tests.e2e.live_helpers import PASSWORD, live, until, watch
from tests.postgres import fresh_schema

import caresync.replication.follow
from caresync import Record
from caresync.exceptions import ReplicaRevokedError
from caresync.hub.model import HUB_PATH
from caresync.protocol import LiveBatch, LiveUpdate
from caresync.replica import Replica, ReplicaState
from caresync.server import SyncServer
from caresync.storage import FeedItem, HubMark, IncomingUpdate
from caresync.storage.postgres.shared import LISTENER_NAME

LIMIT_S = 30.0


@pytest.fixture
async def clinic_url(postgres_database: str) -> AsyncIterator[str]:
    """A schema of this test's own, with accounts in clinic-a."""
    async with fresh_schema(postgres_database) as url:
        async with await SyncServer.open(url) as first:
            for user in ("dr.a", "dr.b", "dr.c"):
                await first.add_user("clinic-a", user, PASSWORD)
        yield url


async def open_server(url: str, **options: object) -> SyncServer:
    server = await SyncServer.open(url, **options)  # type: ignore[arg-type]
    await server.serve("127.0.0.1", 0)
    return server


def record_relays(server: SyncServer) -> list[int]:
    """Every feed seq the server relays to its live connections, in order."""
    relayed: list[int] = []
    relay = server._follower.relay

    def recording(items: Sequence[FeedItem]) -> None:
        relayed.extend(item.seq for item in items)
        relay(items)

    server._follower.relay = recording
    return relayed


async def never_woken(timeout_s: float) -> bool:
    """A feed signal that never comes (and a poll too slow to matter): only what a push
    itself reads of the feed can keep the server current."""
    await asyncio.Event().wait()
    return False


async def enrolled(tmp_path: Path, server: SyncServer, name: str, user: str) -> Replica:
    laptop = await Replica.open(tmp_path / f"{name}.db")
    await laptop.enrol(server.url, username=user, password=PASSWORD, organisation="clinic-a")
    return laptop


async def has_values(laptop: Replica, wanted: dict[str, dict[str, int]]) -> bool:
    held = set(await laptop.record_ids())
    for record_id, fields in wanted.items():
        if record_id not in held:
            return False
        view = await laptop.record(record_id, audited=False)
        if any(view.value(path) != value for path, value in fields.items()):
            return False
    return True


async def test_two_servers_on_one_database_are_one_server_and_relay_each_others_commits(
    tmp_path: Path, clinic_url: str
) -> None:
    a = await open_server(clinic_url)
    b = await open_server(clinic_url)
    try:
        assert a.server_id == b.server_id
        assert await a.server_key_fingerprint() == await b.server_key_fingerprint()
        relayed_b = record_relays(b)
        # Enrolled through A, syncs through B (the same server: the pinned key proves it).
        writer = await enrolled(tmp_path, a, "writer", "dr.a")
        reader = await enrolled(tmp_path, b, "reader", "dr.b")
        record_id = await writer.create_record()
        await writer.set(record_id, "weightKg", 0)
        assert (await writer.sync(url=b.url)).uploaded >= 1
        await reader.sync()
        assert (await reader.record(record_id)).value("weightKg") == 0

        signal = watch(reader)
        async with live(reader) as run:
            await run.states.reach(ReplicaState.ONLINE)
            wanted: dict[str, dict[str, int]] = {record_id: {}}
            for i in range(1, 6):  # each push committed through A, relayed by B
                await writer.set(record_id, f"n{i}", i)
                wanted[record_id][f"n{i}"] = i
                await writer.sync(url=a.url)
            async with asyncio.timeout(LIMIT_S):
                await until(lambda: has_values(reader, wanted), signal)
        # B relayed each entry A committed once, in feed order.
        head = await b.store.feed_head()
        assert relayed_b == sorted(set(relayed_b))
        assert relayed_b[-5:] == list(range(head - 4, head + 1))
        await writer.close()
        await reader.close()
    finally:
        await a.close()
        await b.close()


async def test_a_lost_notification_is_recovered_by_the_poll(
    tmp_path: Path, clinic_url: str, postgres_database: str
) -> None:
    """B's listening connection is dropped and it is never told again: its poll still
    relays what A commits to a live laptop on B."""
    a = await open_server(clinic_url)
    b = await open_server(clinic_url, feed_poll_s=0.2)
    woken: list[bool] = []
    try:
        writer = await enrolled(tmp_path, a, "writer", "dr.a")
        reader = await enrolled(tmp_path, b, "reader", "dr.b")
        record_id = await writer.create_record()
        await writer.sync()
        await reader.sync()

        deafened = asyncio.Event()

        async def deaf(timeout_s: float) -> bool:
            deafened.set()
            await asyncio.sleep(timeout_s)  # the poll interval itself, not a wait for a result
            woken.append(False)
            return False

        # From now on B's store is never woken; and every listening connection of the
        # database goes (a notification sent now reaches nobody; A's reconnects).
        b.store.wait_for_feed = deaf  # type: ignore[method-assign]
        async with await psycopg.AsyncConnection.connect(postgres_database) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (LISTENER_NAME,),
            )
        signal = watch(reader)
        async with live(reader) as run:
            await run.states.reach(ReplicaState.ONLINE)
            # B has handled the reader's Subscribe once it acknowledges a push sent after
            # it (a connection's frames are handled in order); else a write could reach
            # the reader in the Subscribe's backlog, read before any poll (seen once).
            await reader.set(record_id, "heightCm", 180)

            async def acknowledged() -> bool:
                return (await reader.status()).pending == 0

            async with asyncio.timeout(LIMIT_S):
                await until(acknowledged, signal)
                # B's follower waits only deafly from now on (its wait under way when it
                # was deafened was a real one, which may have read the feed after it).
                await deafened.wait()
            await writer.set(record_id, "weightKg", 71)
            await writer.sync()
            async with asyncio.timeout(LIMIT_S):
                await until(lambda: has_values(reader, {record_id: {"weightKg": 71}}), signal)
        assert woken  # B was never notified: the poll read the feed
        await writer.close()
        await reader.close()
    finally:
        await a.close()
        await b.close()


async def test_a_push_through_one_server_merges_into_what_another_committed(
    tmp_path: Path, clinic_url: str
) -> None:
    """B has the record loaded; A commits to it; B's next push on it must start from A's
    commit, not from B's stale copy: the conflict index the server stores agrees with a
    laptop's, and with a server opened afresh."""
    a = await open_server(clinic_url)
    b = await open_server(clinic_url, feed_poll_s=3600)
    b.store.wait_for_feed = never_woken  # type: ignore[method-assign]
    try:
        one = await enrolled(tmp_path, a, "one", "dr.a")
        two = await enrolled(tmp_path, b, "two", "dr.b")
        record_id = await one.create_record()
        await one.set(record_id, "birthDate", "1990-01-01")
        await one.sync(url=b.url)  # B loads the record into its pool
        await two.sync()
        await one.set(record_id, "birthDate", "1990-01-02")
        await two.set(record_id, "birthDate", "1991-01-01")
        await one.sync(url=a.url)  # A commits: B's loaded copy is now behind
        await two.sync(url=b.url)  # B merges two's edit: must include one's
        await one.sync(url=a.url)
        stored = await b.store.conflicts(record_id)
        assert len(stored) == 1
        assert len(await one.conflicts()) == len(await two.conflicts()) == 1
        async with await SyncServer.open(clinic_url) as fresh:
            record = await fresh._pool.get(record_id)
            assert len(fresh._pool.rows(record)) == 1
            assert [r.id for r in fresh._pool.rows(record)] == [c.id for c in stored]
        await one.close()
        await two.close()
    finally:
        await a.close()
        await b.close()


async def test_a_revocation_through_one_server_ends_a_live_session_on_the_other(
    tmp_path: Path, clinic_url: str
) -> None:
    a = await open_server(clinic_url, security_poll_s=0.1)
    b = await open_server(clinic_url, security_poll_s=0.1)
    try:
        laptop = await enrolled(tmp_path, b, "laptop", "dr.c")
        async with live(laptop) as run:
            await run.states.reach(ReplicaState.ONLINE)
            await a.revoke(laptop.identity.replica_id)
            async with asyncio.timeout(LIMIT_S):
                outcome = await run.outcome()
        assert isinstance(outcome, ReplicaRevokedError)
        await laptop.close()
    finally:
        await a.close()
        await b.close()


async def test_two_pushes_claiming_one_yjs_client_for_two_replicas_one_wins(
    clinic_url: str,
) -> None:
    """Through two stores at once, two claims of one Yjs client in one record: exactly
    one is kept, the other batch is refused whole and stores nothing."""
    from caresync.exceptions import RefusedUpdateError
    from caresync.storage import IncomingUpdate
    from caresync.storage.postgres import PostgresStore
    from caresync.testing.store_data import Patient

    async with PostgresStore.open(clinic_url) as one, PostgresStore.open(clinic_url) as two:
        patient = Patient("laptop-p")
        await one.write_remote(
            [IncomingUpdate(patient.id, patient.created, None, "clinic-a")], to_feed=True
        )
        edits = {"laptop-p": patient.edit("birthDate"), "laptop-q": patient.edit("gender")}
        head = await one.feed_head()

        async def claim(store: PostgresStore, replica: str) -> object:
            item = IncomingUpdate(patient.id, edits[replica], None, "clinic-a")
            try:
                async with store.exclusive_commits():
                    return await store.write_remote(
                        [item],
                        to_feed=True,
                        origin=replica,
                        claim_clients={(patient.id, 4242): replica},
                    )
            except RefusedUpdateError as exc:
                return exc

        outcomes = await asyncio.gather(claim(one, "laptop-p"), claim(two, "laptop-q"))
        refused = [o for o in outcomes if isinstance(o, RefusedUpdateError)]
        assert len(refused) == 1
        owner = (await one.client_owners([(patient.id, 4242)]))[(patient.id, 4242)]
        assert await one.feed_head() == head + 1
        [kept] = await one.feed_since(head, limit=5)
        assert kept.origin == owner


async def test_two_processes_creating_one_record_for_two_organisations_one_wins(
    clinic_url: str,
) -> None:
    from caresync.exceptions import InvalidInputError
    from caresync.storage import IncomingUpdate
    from caresync.storage.postgres import PostgresStore
    from caresync.testing.store_data import Patient

    async with PostgresStore.open(clinic_url) as one, PostgresStore.open(clinic_url) as two:
        p = Patient("laptop-p")
        head = await one.feed_head()

        async def write(store: PostgresStore, organisation: str) -> object:
            item = IncomingUpdate(p.id, p.created, None, organisation)
            try:
                return await store.write_remote([item], to_feed=True, origin=organisation)
            except InvalidInputError as exc:
                return exc

        outcomes = await asyncio.gather(write(one, "clinic-a"), write(two, "clinic-b"))
        assert sum(isinstance(o, InvalidInputError) for o in outcomes) == 1
        assert await one.feed_head() == head + 1
        organisations = await one.record_organisations([p.id])
        [kept] = await one.feed_since(head, limit=5)
        assert organisations[p.id] == kept.origin  # the winner's, whole


async def test_two_stores_taking_the_first_identity_and_key_at_once_agree(
    postgres_database: str,
) -> None:
    """The first run's identity and server key are insert-if-absent: two processes
    starting together on an empty database end with one of each."""
    from caresync.gate import ensure_server_key
    from caresync.storage import own_identity
    from caresync.storage.postgres import PostgresStore

    async with (
        fresh_schema(postgres_database) as url,
        PostgresStore.open(url) as one,
        PostgresStore.open(url) as two,
    ):
        ids = await asyncio.gather(
            own_identity(one, "server", id_prefix="server", where=url),
            own_identity(two, "server", id_prefix="server", where=url),
        )
        assert ids[0] == ids[1]
        keys = await asyncio.gather(ensure_server_key(one), ensure_server_key(two))
        assert keys[0].fingerprint == keys[1].fingerprint
        assert (await ensure_server_key(one)).fingerprint == keys[0].fingerprint


async def test_a_commit_inside_the_section_refuses_if_another_process_got_in(
    clinic_url: str,
) -> None:
    """Were the lock lost (its connection broken), a write inside the section must not
    commit on what was read before another process's commit: it refuses, storing nothing."""
    from caresync.exceptions import StorageError
    from caresync.storage.postgres import PostgresStore
    from caresync.testing.store_data import Patient
    from caresync.testing.store_suite import remote

    async with PostgresStore.open(clinic_url) as one, PostgresStore.open(clinic_url) as two:
        p, q = Patient("laptop-p"), Patient("laptop-q")
        async with one.exclusive_commits():
            head = await one.feed_head()
            # Another process writes without the lock (as if ours had been lost).
            await two.write_remote([remote(q, q.created, "clinic-a")], to_feed=True)
            with pytest.raises(StorageError, match="another process committed"):
                await one.write_remote([remote(p, p.created, "clinic-a")], to_feed=True)
        assert await one.feed_head() == head + 1
        assert await one.load(p.id) is None
        async with one.exclusive_commits():  # a fresh section sees the new head: commits
            assert await one.write_remote([remote(p, p.created, "clinic-a")], to_feed=True) == [
                head + 2
            ]


async def test_a_wait_for_the_commit_lock_cancelled_leaves_it_free(clinic_url: str) -> None:
    from caresync.storage.postgres import PostgresStore

    async with PostgresStore.open(clinic_url) as one, PostgresStore.open(clinic_url) as two:
        entered = asyncio.Event()

        async def take(store: PostgresStore) -> None:
            async with store.exclusive_commits():
                entered.set()

        async with one.exclusive_commits():
            waiting = asyncio.create_task(take(two))
            # Until PostgreSQL shows it waiting for the lock. PostgreSQL signals no lock
            # wait, so each check is a round trip to it (no fixed sleep), bounded in
            # count and time.
            async with (
                await psycopg.AsyncConnection.connect(clinic_url) as admin,
                asyncio.timeout(LIMIT_S),
            ):
                for _ in range(100_000):
                    cursor = await admin.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                    row = await cursor.fetchone()
                    if row is not None and row[0]:
                        break
                else:
                    raise AssertionError("the second store never waited for the lock")
            waiting.cancel()
            await asyncio.wait({waiting})
            assert not entered.is_set()
        async with asyncio.timeout(LIMIT_S):  # neither store holds it now
            await take(two)
            async with one.exclusive_commits():
                pass


async def test_a_hub_snapshot_reads_the_record_as_committed_however_far_behind(
    clinic_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B has a record loaded and has followed nothing since: more feed entries came from
    another process than one catch-up reads (pages of one entry here, so 100 pages are
    100 entries), the record's change last. B's hub snapshot, under its commit lock,
    must read the record as committed, not its loaded copy from before."""
    monkeypatch.setattr(caresync.replication.follow, "FEED_PAGE", 1)
    patient = Record.create(replica="laptop-x")
    patient.set(HUB_PATH, True, author="dr.a")
    patient.set("name", "Awa Ba", author="dr.a")
    seen = patient.state_vector()
    rid = patient.record_id
    b = await SyncServer.open(clinic_url)  # not serving: it follows the feed only when asked
    try:
        async with await SyncServer.open(clinic_url) as other:  # another process's store
            marked = {rid: HubMark(True)}
            item = IncomingUpdate(rid, patient.update_since(), (), "clinic-a")
            await other.store.write_remote([item], to_feed=True, hub=marked)
            first = await b.hub_snapshot(rid)  # B loads the record
            assert first is not None
            assert first.body is not None
            assert b"Awa Ba" in first.body
            others = [Record.create(replica="laptop-x") for _ in range(100)]
            items = [IncomingUpdate(r.record_id, r.update_since(), (), "clinic-a") for r in others]
            await other.store.write_remote(items, to_feed=True)
            patient.set("name", "Awa Diop", author="dr.a")
            item = IncomingUpdate(rid, patient.update_since(seen), (), "clinic-a")
            await other.store.write_remote([item], to_feed=True, hub=marked)
        snapshot = await b.hub_snapshot(rid)
        assert snapshot is not None
        assert snapshot.body is not None
        assert b"Awa Diop" in snapshot.body
    finally:
        await b.close()


@pytest.mark.parametrize("held", ["before its writer starts", "before its backlog is read"])
async def test_an_entry_another_process_commits_while_a_laptop_subscribes_arrives_once(
    tmp_path: Path, clinic_url: str, held: str
) -> None:
    """A laptop subscribes on B while A commits: B's follower relays A's entry while
    the Subscribe is held (before the connection's writer starts: the relay passes the
    connection by, and the backlog brings the entry; or after it, before the backlog is
    read: the entry is queued, the backlog brings it, and the writer skips it). The
    laptop gets it once, then the next entry, in order (a duplicate or a gap would fail
    its seq check or this test). The reader subscribes without checks, so the backlog
    is read without the commit lock, where the follower can relay meanwhile."""
    a = await open_server(clinic_url)
    b = await open_server(clinic_url)
    relayed = asyncio.Event()
    relayed_seqs = record_relays(b)
    relay = b._follower.relay

    def noted(items: Sequence[FeedItem]) -> None:
        relay(items)
        relayed.set()

    b._follower.relay = noted
    reader = await Hostile.connect(b.url)
    try:
        writer = await enrolled(tmp_path, a, "writer", "dr.a")
        record_id = await writer.create_record()
        await writer.sync()
        await reader.login("dr.b", PASSWORD, "clinic-a")
        await reader.enrol("reader")

        subscribing, go_on = asyncio.Event(), asyncio.Event()
        armed = False
        sends_checks, feed_since = b._sends_checks, b.store.feed_since

        async def held_checks(*args: Any, **kwargs: Any) -> bool:
            if held == "before its writer starts":
                subscribing.set()
                await go_on.wait()
            return await sends_checks(*args, **kwargs)

        async def held_feed(*args: Any, **kwargs: Any) -> list[FeedItem]:
            nonlocal armed
            if armed and held == "before its backlog is read":
                armed = False
                subscribing.set()
                await go_on.wait()
            return await feed_since(*args, **kwargs)

        original_subscribe = b._on_subscribe

        async def on_subscribe(*args: Any, **kwargs: Any) -> None:
            nonlocal armed
            armed = True
            await original_subscribe(*args, **kwargs)

        b._sends_checks = held_checks  # type: ignore[method-assign]
        b.store.feed_since = held_feed  # type: ignore[method-assign]
        b._on_subscribe = on_subscribe  # type: ignore[method-assign]

        reader.protocol.subscribe(await b.store.feed_head())
        for frame in reader.protocol.data_to_send():
            await reader.channel.send(frame)
        async with asyncio.timeout(LIMIT_S):
            await subscribing.wait()
            relayed.clear()
            await writer.set(record_id, "weightKg", 70)
            await writer.sync(url=a.url)
            first = await a.store.feed_head()
            while first not in relayed_seqs:  # B's follower relays it, Subscribe held
                relayed.clear()
                await relayed.wait()
            go_on.set()
            await writer.set(record_id, "weightKg", 71)
            await writer.sync(url=a.url)
            second = await a.store.feed_head()
            got: list[int] = []
            while len(got) < 2:
                event = await reader.next_event()
                if isinstance(event, LiveUpdate):
                    got.append(event.seq)
                elif isinstance(event, LiveBatch):
                    got.extend(item.seq for item in event.items)
        assert got == [first, second]
        await writer.close()
    finally:
        await reader.close()
        await a.close()
        await b.close()
