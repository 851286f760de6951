"""A held summary is looked at again only when something that could release it changed.

The server tells its sender every record committed (``SyncServer.on_feed``); a held
row is snapshotted again only when its own record or one it waits on (linked, paired)
changed. A push elsewhere costs no snapshot and no read of any held row; a new sender
walks every held row once, across bounded rounds, and a due retry never waits behind
that walk. Counted here: the snapshots taken (each under the server's commit lock) and
the outbox reads (``Counting``, as tests/hub/test_hub_due.py counts them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from tests.e2e.live_helpers import PASSWORD, enrolled, start_server
from tests.hub.fhirhub import FhirHub
from tests.hub.test_hub_due import NOW, URL, Counting, Hub
from tests.hub.test_hub_outbox import Clock, rows
from tests.postgres import fresh_schema

import caresync.hub.sender
from caresync.hub.model import HUB_PATH, RETRY_BASE_MS
from caresync.hub.sender import HubSender, HubSnapshot
from caresync.hub.summary import summary_id
from caresync.replica import Replica
from caresync.server import SyncServer
from caresync.storage import (
    FeedItem,
    HubMark,
    HubOutcome,
    IncomingUpdate,
    MemoryStore,
    SQLiteStore,
)
from caresync.storage.base import ServerStore
from caresync.testing.store_data import Patient, whole

BODY = b'{"resourceType": "Bundle"}'
LIMIT_S = 30.0
"""Upper bound for one wait; a passing test never comes near it."""


class Snapshots:
    """The sender's snapshot taker: ``held`` maps a record to the records it waits on
    (held while it is there); every snapshot taken is noted in ``taken``."""

    def __init__(self, store: ServerStore) -> None:
        self.store = store
        self.held: dict[str, tuple[str, ...]] = {}
        self.taken: list[str] = []

    async def __call__(self, record_id: str) -> HubSnapshot | None:
        self.taken.append(record_id)
        row = await self.store.hub_summary(record_id)
        if row is None:
            return None
        if record_id in self.held:
            return HubSnapshot(
                row.version, row.attempts, "an open conflict", None, neighbours=self.held[record_id]
            )
        return HubSnapshot(row.version, row.attempts, None, BODY)


async def _marked(store: ServerStore, n: int) -> list[str]:
    patients = [Patient("laptop-b") for _ in range(n)]
    await store.write_remote(
        [IncomingUpdate(p.id, whole(p), None, "org-1") for p in patients],
        to_feed=True,
        hub={p.id: HubMark(True) for p in patients},
    )
    return [p.id for p in patients]


async def _hold(store: ServerStore, record_ids: Sequence[str]) -> None:
    versions = {r.record_id: r.version for r in await store.hub_summaries()}
    for record_id in record_ids:
        outcome = HubOutcome("held", "an open conflict", 0, 0)
        assert await store.record_hub_outcome(record_id, versions[record_id], outcome)


@asynccontextmanager
async def _store(kind: str, tmp_path: Path) -> AsyncIterator[ServerStore]:
    if kind == "memory":
        yield MemoryStore()
    else:
        async with SQLiteStore.open(tmp_path / "server.db") as store:
            yield store


def _sender(store: Counting, snapshots: Snapshots, hub: Hub) -> HubSender:
    clock = Clock()
    clock.ms = NOW
    return HubSender(
        cast(ServerStore, store),
        URL,
        snapshots,
        client=hub.client,
        now_ms=clock,
        random=lambda: 0.5,
    )


def _reset(store: Counting, snapshots: Snapshots) -> None:
    snapshots.taken.clear()
    store.rows = dict.fromkeys(store.rows, 0)
    store.calls = dict.fromkeys(store.calls, 0)
    store.held_pages = 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_unrelated_push_takes_no_snapshot_and_reads_no_held_row(
    kind: str, tmp_path: Path
) -> None:
    """40 held rows, each waiting on a record of its own: after the first round looked
    at each once, a change of a record none waits on (or a wake with no record) costs no
    snapshot and no row read; a change of one's neighbour snapshots that one alone, and
    sends it once the change released it."""
    async with _store(kind, tmp_path) as inner:
        held = await _marked(inner, 40)
        await _hold(inner, held)
        store, hub = Counting(inner), Hub()
        snapshots = Snapshots(inner)
        snapshots.held = {rid: (f"neighbour-{n}",) for n, rid in enumerate(held)}
        sender = _sender(store, snapshots, hub)
        try:
            assert await sender.run_once() is None
            assert sorted(snapshots.taken) == sorted(held)  # each once
            assert sender.waiting == 40

            for wake in (["someone-else"], []):
                _reset(store, snapshots)
                sender.wake(wake)
                assert await sender.run_once() is None
                assert snapshots.taken == []
                assert store.held_pages == 0  # no page of held rows read
                assert store.calls["hub_summary"] == 0
                assert store.rows["hub_due"] == 0  # the pending page: empty

            _reset(store, snapshots)
            sender.wake(["neighbour-7", "someone-else"])
            assert await sender.run_once() is None
            assert snapshots.taken == [held[7]]  # still held: nothing sent
            assert hub.paths == []

            del snapshots.held[held[7]]  # the neighbour's change closes the finding
            _reset(store, snapshots)
            sender.wake(["neighbour-7"])
            assert await sender.run_once() is None
            assert snapshots.taken == [held[7]]
            assert hub.paths == [f"/fhir/Bundle/{summary_id(held[7])}"]
            sent = await inner.hub_summary(held[7])
            assert sent is not None
            assert sent.state == "sent"
            assert sender.waiting == 39

            _reset(store, snapshots)
            sender.wake(["neighbour-7"])  # nothing waits on it any more
            assert await sender.run_once() is None
            assert snapshots.taken == []
            assert (await inner.hub_state_counts())["held"] == 39
        finally:
            await sender.close()
            await hub.client.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_new_sender_looks_at_every_held_row_once(kind: str, tmp_path: Path) -> None:
    """A restart (perhaps with another rulebook) looks at every held row again, once: the
    new sender's first round snapshots each, its later rounds none unless woken for it."""
    async with _store(kind, tmp_path) as inner:
        held = await _marked(inner, 12)
        await _hold(inner, held)
        hub = Hub()
        try:
            for _restart in range(2):
                store, snapshots = Counting(inner), Snapshots(inner)
                snapshots.held = dict.fromkeys(held, ())
                sender = _sender(store, snapshots, hub)
                try:
                    assert await sender.run_once() is None
                    assert sorted(snapshots.taken) == sorted(held)
                    assert store.held_pages == 1
                    _reset(store, snapshots)
                    sender.wake(["someone-else"])
                    assert await sender.run_once() is None
                    assert snapshots.taken == []
                    assert store.held_pages == 0
                    sender.wake([held[3]])  # its own record changed (a push rewrote it)
                    assert await sender.run_once() is None
                    assert snapshots.taken == [held[3]]
                finally:
                    await sender.close()
            assert hub.paths == []
        finally:
            await hub.client.aclose()


async def test_held_rows_filling_a_bounded_round_do_not_starve_a_due_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding, adapted to the walk of held rows: more held rows than a round's
    pages used to fill every round from the first key, and a due retry behind them waited
    forever. Now the first round sends the retry, the walk goes on from where it stopped,
    and every held row is looked at once."""
    monkeypatch.setattr(caresync.hub.sender, "DUE_PAGE", 2)
    monkeypatch.setattr(caresync.hub.sender, "DUE_PAGES", 2)
    async with SQLiteStore.open(tmp_path / "server.db") as inner:
        *held, retry = await _marked(inner, 7)
        await _hold(inner, held)  # 6 held: more than one round's 2 pages of 2
        row = await inner.hub_summary(retry)
        assert row is not None
        # A retry due since a second ago (next_attempt_ms > 0: after every held row).
        outcome = HubOutcome("pending", "retrying", 1, NOW - 1000)
        assert await inner.record_hub_outcome(retry, row.version, outcome)
        store, hub, snapshots = Counting(inner), Hub(), Snapshots(inner)
        snapshots.held = dict.fromkeys(held, ())
        sender = _sender(store, snapshots, hub)
        try:
            assert await sender.run_once() == 0  # bounded: the walk goes on
            assert hub.paths == [f"/fhir/Bundle/{summary_id(retry)}"]
            sent = await inner.hub_summary(retry)
            assert sent is not None
            assert sent.state == "sent", "a due retry behind a round's worth of held rows"
            assert len(snapshots.taken) == 5  # 4 held, then the retry
            waits = [await sender.run_once() for _ in range(3)]
            assert waits == [None, None, None]
        finally:
            await sender.close()
            await hub.client.aclose()
        assert sorted(snapshots.taken) == sorted([*held, retry])  # each once
        assert sender.waiting == 6


async def _treated_and_linked(laptop: Replica, names: Sequence[str]) -> tuple[str, list[str], str]:
    """A marked record taking amoxicillin, linked in a chain to records named ``names``;
    the last holds a high-criticality penicillin allergy (a block across the links):
    (the treated record, the chain, the allergy's entry id)."""
    treated = await laptop.create_record()
    await laptop.set(treated, "name", "Awa Diop")
    await laptop.add_entry(treated, "medications", {"drug": "amoxicillin", "dose": "500 mg"})
    await laptop.set(treated, HUB_PATH, True)
    chain = [treated]
    for name in names:
        other = await laptop.create_record()
        await laptop.set(other, "name", name)
        await laptop.link_records(chain[-1], other)
        chain.append(other)
    allergy = await laptop.add_entry(
        chain[-1],
        "allergies",
        {"substance": "penicillin", "status": "active", "criticality": "high"},
    )
    return treated, chain[1:], allergy


async def test_a_summary_held_by_a_linked_record_goes_after_its_edit_and_no_sooner(
    tmp_path: Path,
) -> None:
    """The real server and a FHIR hub on 127.0.0.1: a summary held by an allergy on a
    linked chart is not snapshotted again for a push of an unrelated patient, and goes
    after the edit of the linked chart that closes the finding (its own row untouched)."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    taken: list[str] = []

    async def snapshot(record_id: str) -> HubSnapshot | None:
        taken.append(record_id)
        return await server.hub_snapshot(record_id)

    with FhirHub() as hub:
        sender = HubSender(server.store, hub.url, snapshot, now_ms=Clock(), random=lambda: 0.5)
        server.notify_hub(sender)
        try:
            treated, (other,), allergy = await _treated_and_linked(laptop, ["Awa Diop"])
            await laptop.sync()
            await sender.run_once()
            assert (await rows(server))[treated][0] == "held"
            assert taken == [treated]

            taken.clear()
            stranger = await laptop.create_record()
            await laptop.set(stranger, "name", "Binta Sow")
            await laptop.sync()
            await sender.run_once()
            assert taken == []  # the push of another patient: no snapshot at all

            await laptop.set_status(other, "allergies", allergy, "entered-in-error")
            await laptop.sync()
            await sender.run_once()
            assert taken == [treated]  # the linked chart changed: looked at again
            assert (await rows(server))[treated][0] == "sent"
            assert len(hub.received) == 1
        finally:
            await sender.close()
            await laptop.close()
            await server.close()


async def test_an_unlink_of_two_other_charts_releases_a_summary_held_through_them(
    tmp_path: Path,
) -> None:
    """Charts linked in a chain (treated - middle - allergic): the finding on the treated
    record comes through the middle one. Unlinking the middle and the allergic chart is a
    decision written to those two alone; the sender looks at the treated one again (it
    waits on every chart it is linked to) and sends it."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    taken: list[str] = []

    async def snapshot(record_id: str) -> HubSnapshot | None:
        taken.append(record_id)
        return await server.hub_snapshot(record_id)

    with FhirHub() as hub:
        sender = HubSender(server.store, hub.url, snapshot, now_ms=Clock(), random=lambda: 0.5)
        server.notify_hub(sender)
        try:
            treated, (middle, allergic), _allergy = await _treated_and_linked(
                laptop, ["Coumba Ndiaye", "Fatou Fall"]
            )
            await laptop.sync()
            await sender.run_once()
            assert (await rows(server))[treated][0] == "held"
            version = (await rows(server))[treated][1]
            taken.clear()
            await laptop.unlink_records(middle, allergic)
            await laptop.sync()
            assert await laptop.conflicts(treated) == []
            await sender.run_once()
            assert taken == [treated]
            state, sent_version, _reason = (await rows(server))[treated]
            assert (state, sent_version) == ("sent", version)  # its own row untouched
            assert len(hub.received) == 1
        finally:
            await sender.close()
            await laptop.close()
            await server.close()


async def test_a_push_through_another_process_releases_a_summary_held_here(
    tmp_path: Path, postgres_database: str
) -> None:
    """Two servers on one PostgreSQL database, as two ``caresync serve`` processes: the
    sender runs in B, laptops push through A. B follows the feed (on_feed), so A's push of
    a stranger costs B's sender no snapshot, and A's push of the linked chart's edit makes
    it look at the held summary again and send it."""
    async with fresh_schema(postgres_database) as url:
        async with await SyncServer.open(url) as first:
            await first.add_user("clinic-a", "dr.a", PASSWORD)
        a = await SyncServer.open(url)
        await a.serve("127.0.0.1", 0)
        b = await SyncServer.open(url)
        await b.serve("127.0.0.1", 0)
        laptop = await Replica.open(tmp_path / "laptop.db")
        await laptop.enrol(a.url, username="dr.a", password=PASSWORD, organisation="clinic-a")
        taken: list[str] = []
        relayed: dict[str, asyncio.Event] = {}

        def note(items: Sequence[FeedItem]) -> None:
            for item in items:
                relayed.setdefault(item.record_id, asyncio.Event()).set()

        async def relayed_to_b(record_id: str) -> None:
            async with asyncio.timeout(LIMIT_S):
                await relayed.setdefault(record_id, asyncio.Event()).wait()

        async def snapshot(record_id: str) -> HubSnapshot | None:
            taken.append(record_id)
            return await b.hub_snapshot(record_id)

        with FhirHub() as hub:
            sender = HubSender(b.store, hub.url, snapshot, now_ms=Clock(), random=lambda: 0.5)
            b.notify_hub(sender)
            b.on_feed.append(note)
            try:
                treated, (other,), allergy = await _treated_and_linked(laptop, ["Awa Diop"])
                await laptop.sync()
                await sender.run_once()
                assert (await rows(b))[treated][0] == "held"
                assert taken == [treated]

                taken.clear()
                relayed.clear()
                stranger = await laptop.create_record()
                await laptop.set(stranger, "name", "Binta Sow")
                await laptop.sync()
                await relayed_to_b(stranger)  # B has followed A's commit
                await sender.run_once()
                assert taken == []

                await laptop.set_status(other, "allergies", allergy, "entered-in-error")
                await laptop.sync()
                await relayed_to_b(other)
                await sender.run_once()
                assert taken == [treated]
                assert (await rows(b))[treated][0] == "sent"
                assert len(hub.received) == 1
            finally:
                await sender.close()
                await laptop.close()
                await a.close()
                await b.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_held_row_another_sender_was_attempting_is_looked_at_again(
    kind: str, tmp_path: Path
) -> None:
    """Review finding: a new sender whose walk of the held rows met one that another
    sender was attempting just then (its claim, ``hub_sending``, taken) left it, and never
    looked at it again: the walk had passed it, and a change of what it waits on woke
    nothing, as this sender had never learned what that was. Were the other sender gone
    (its process stopped), the summary stayed held for good though its finding was
    closed. Now a row left to another sender is looked at again in the next round."""
    async with _store(kind, tmp_path) as inner:
        (held,) = await _marked(inner, 1)
        await _hold(inner, [held])
        store, hub, snapshots = Counting(inner), Hub(), Snapshots(inner)
        snapshots.held = {held: ("neighbour",)}
        sender = _sender(store, snapshots, hub)
        try:
            async with inner.hub_sending(held) as elsewhere:  # another sender's attempt
                assert elsewhere
                assert await sender.run_once() == RETRY_BASE_MS  # left to it: a while
                assert snapshots.taken == []
            # The other sender is gone; the next round (a second later) looks at it.
            assert await sender.run_once() is None
            assert snapshots.taken == [held]
            assert sender.waiting == 1
            del snapshots.held[held]  # the neighbour's change closes the finding
            sender.wake(["neighbour"])
            assert await sender.run_once() is None
            assert hub.paths == [f"/fhir/Bundle/{summary_id(held)}"]
            sent = await inner.hub_summary(held)
            assert sent is not None
            assert sent.state == "sent"
        finally:
            await sender.close()
            await hub.client.aclose()
