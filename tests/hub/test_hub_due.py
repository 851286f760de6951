"""The hub sender and the counters read what they need, not the whole outbox.

``run_once`` reads the due summaries in pages of an index and each attempt reads its
own row: with n due among m rows it reads 2n rows, where it read m * (n + 1) before
(the whole outbox, then the whole outbox again per attempt). The queries search the
index ``hub_outbox_due`` (SQLite's plans, PostgreSQL's), and the metrics, the admin
page and ``caresync status`` count through it.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from tests.e2e.live_helpers import enrolled, start_server
from tests.hub.test_hub_outbox import Clock, marked_patient
from tests.postgres import fresh_schema
from tests.sqlite_trace import traced

import caresync.hub.sender
from caresync.admin.state import hub_counts
from caresync.hub.sender import HubSender, HubSnapshot
from caresync.hub.summary import summary_id
from caresync.storage import (
    HubMark,
    HubOutcome,
    HubSummaryRow,
    IncomingUpdate,
    ServerStore,
    SQLiteStore,
)
from caresync.storage.postgres import PostgresStore
from caresync.storage.postgres import hub as pg_hub
from caresync.testing.store_data import Patient, whole

NOW = 1_800_000_000_000
URL = "http://hub.invalid/fhir"


class Counting:
    """A store whose hub reads are counted (rows returned, per method); the rest as is."""

    def __init__(self, inner: ServerStore) -> None:
        self.inner = inner
        self.rows: dict[str, int] = {"hub_summaries": 0, "hub_due": 0, "hub_summary": 0}
        self.calls: dict[str, int] = dict.fromkeys(self.rows, 0)
        self.held_pages = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self, name: str, rows: int) -> None:
        self.calls[name] += 1
        self.rows[name] += rows

    async def hub_summaries(self, organisation: str | None = None) -> list[HubSummaryRow]:
        found = await self.inner.hub_summaries(organisation)
        self._count("hub_summaries", len(found))
        return found

    async def hub_due(
        self,
        now_ms: int,
        limit: int,
        *,
        after: tuple[int, str] | None = None,
        held: bool = True,
    ) -> list[HubSummaryRow]:
        found = await self.inner.hub_due(now_ms, limit, after=after, held=held)
        self._count("hub_due", len(found))
        self.held_pages += held  # a page of the walk of every held row (a new sender's)
        return found

    async def hub_summary(self, record_id: str) -> HubSummaryRow | None:
        found = await self.inner.hub_summary(record_id)
        self._count("hub_summary", found is not None)
        return found


class Hub:
    """An HTTP hub in process (httpx's MockTransport): takes every PUT, notes its path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._answer))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        # A stream, as a hub's answer comes (the sender reads it raw, bounded).
        return httpx.Response(200, stream=httpx.ByteStream(b'{"resourceType": "Bundle"}'))


def sender_for(store: Counting, hub: Hub, clock: Clock) -> HubSender:
    """A sender stepped by hand; its snapshot reads the record's own row, as the
    server's does (the summary's bytes stand in for a record's)."""

    async def snapshot(record_id: str) -> HubSnapshot | None:
        row = await store.hub_summary(record_id)
        if row is None:
            return None
        return HubSnapshot(row.version, row.attempts, None, b'{"resourceType": "Bundle"}')

    return HubSender(
        cast(ServerStore, store), URL, snapshot, client=hub.client, now_ms=clock, random=lambda: 0.5
    )


async def fill(store: ServerStore, due: int, sent: int, later: int, seed: int = 7) -> None:
    """``due`` summaries due at NOW (pending at various past times, a fifth held),
    ``sent`` acknowledged ones and ``later`` pending ones due after NOW."""
    rng = random.Random(seed)
    patients = [Patient("laptop-b") for _ in range(due + sent + later)]
    await store.write_remote(
        [IncomingUpdate(p.id, whole(p), None, "org-1") for p in patients],
        to_feed=True,
        hub={p.id: HubMark(True) for p in patients},
    )
    rows = {row.record_id: row for row in await store.hub_summaries()}
    for n, p in enumerate(patients):
        version = rows[p.id].version
        if n < due:
            if n % 5 == 0:
                outcome = HubOutcome("held", "an open conflict", 0, 0)
            else:
                outcome = HubOutcome("pending", "retrying", 1, NOW - rng.randrange(0, 10**6))
        elif n < due + sent:
            outcome = HubOutcome("sent", None, 0, 0, acknowledged=True)
        else:
            outcome = HubOutcome("pending", "retrying", 1, NOW + 1000 + rng.randrange(0, 10**6))
        assert await store.record_hub_outcome(p.id, version, outcome)


def due_order(rows: Sequence[HubSummaryRow], now: int) -> list[str]:
    """What the sender attempted before it read pages: the whole outbox, filtered, sorted."""
    due = [
        r for r in rows if (r.state == "pending" and r.next_attempt_ms <= now) or r.state == "held"
    ]
    return [r.record_id for r in sorted(due, key=lambda r: (r.next_attempt_ms, r.record_id))]


async def test_run_once_reads_each_due_row_twice_not_the_outbox_per_attempt(
    tmp_path: Path,
) -> None:
    """300 due among 1,000 rows: each due one is read once from the due pages and once
    by its attempt's snapshot; the others never (the whole outbox per attempt read
    300,000 rows); each is sent once, in the order the whole outbox sorted gives."""
    async with SQLiteStore.open(tmp_path / "server.db") as inner:
        await fill(inner, due=300, sent=500, later=200)
        expected = due_order(await inner.hub_summaries(), NOW)
        assert len(expected) == 300
        store, hub, clock = Counting(inner), Hub(), Clock()
        clock.ms = NOW
        sender = sender_for(store, hub, clock)
        try:
            wait = await sender.run_once()
        finally:
            await sender.close()
            await hub.client.aclose()
        assert hub.paths == [f"/fhir/Bundle/{summary_id(r)}" for r in expected]
        assert store.rows == {"hub_summaries": 0, "hub_due": 300, "hub_summary": 300}
        assert store.calls["hub_due"] == 2  # 300 in pages of 256
        # The next retry is the earliest of the 200 later ones.
        later = [r.next_attempt_ms for r in await inner.hub_summaries() if r.state == "pending"]
        assert len(later) == 200
        assert wait == min(later) - NOW
        assert (await inner.hub_state_counts())["sent"] == 800


@pytest.mark.parametrize("page", [1, 3, 7])
async def test_run_once_pages_through_the_due_rows_and_a_bounded_round_says_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    """Small pages give the same attempts in the same order; a round stops after its
    last page (0: more are due now) and the next round goes on with the rest. A new
    sender's walk of every held row and the due pending rows are bounded apart (at most
    4 pages each a round: a due retry never waits behind held rows), so a round attempts
    at most 8 pages."""
    monkeypatch.setattr(caresync.hub.sender, "DUE_PAGE", page)
    monkeypatch.setattr(caresync.hub.sender, "DUE_PAGES", 4)
    async with SQLiteStore.open(tmp_path / "server.db") as inner:
        await fill(inner, due=20, sent=5, later=3, seed=page)
        expected = due_order(await inner.hub_summaries(), NOW)
        store, hub, clock = Counting(inner), Hub(), Clock()
        clock.ms = NOW
        sender = sender_for(store, hub, clock)
        waits = []
        try:
            for _ in range(30):  # bounded: 20 due, at least one a round
                waits.append(await sender.run_once())
                if waits[-1] != 0:
                    break
        finally:
            await sender.close()
            await hub.client.aclose()
        assert hub.paths == [f"/fhir/Bundle/{summary_id(r)}" for r in expected]
        fewest = -(-20 // (8 * page))  # a round attempts at most 8 pages
        most = -(-20 // (4 * page)) + 1  # and at least 4 (+1: a full last round)
        assert fewest <= len(waits) <= most
        assert waits[:-1] == [0] * (len(waits) - 1)
        assert waits[-1] is not None
        assert waits[-1] > 0
        assert store.rows["hub_summaries"] == 0
        assert store.rows["hub_due"] == 20


async def test_the_server_sender_and_its_figures_never_read_the_whole_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own snapshot (under its commit lock), its metrics' figures and its
    admin page's counts: not one whole read of the outbox."""
    whole_reads: list[str | None] = []
    listing = SQLiteStore.hub_summaries

    async def watched(self: SQLiteStore, organisation: str | None = None) -> list[HubSummaryRow]:
        whole_reads.append(organisation)
        return await listing(self, organisation)

    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    hub, clock = Hub(), Clock()
    try:
        patients = [await marked_patient(laptop) for _ in range(3)]
        await laptop.sync()
        monkeypatch.setattr(SQLiteStore, "hub_summaries", watched)
        sender = HubSender(
            server.store,
            URL,
            server.hub_snapshot,
            client=hub.client,
            now_ms=clock,
            random=lambda: 0.5,
        )
        assert await sender.run_once() is None
        assert sorted(hub.paths) == sorted(f"/fhir/Bundle/{summary_id(p)}" for p in patients)
        figures = await server._store_figures()
        assert figures.hub_pending == 0
        assert dict(await hub_counts(server.store)) == {
            "pending": 0,
            "held": 0,
            "failed": 0,
            "sent": 3,
        }
        assert whole_reads == []
    finally:
        await hub.client.aclose()
        await laptop.close()
        await server.close()


# ------------------------------------------------------------------- index use


async def test_the_hub_reads_search_the_state_index_and_never_sort(tmp_path: Path) -> None:
    """The statements the store runs for each call, explained by SQLite: the due rows are
    two ranges of hub_outbox_due merged in its order; the next retry one search of it;
    the counts a scan of it alone (no row read); one row by its key."""
    async with SQLiteStore.open(tmp_path / "server.db") as store:
        await fill(store, due=30, sent=30, later=10)
        async with traced(store) as statements:
            await store.hub_due(NOW, 10, after=(5, "a"))
            await store.hub_next_attempt_ms()
            await store.hub_state_counts()
            await store.hub_state_counts("org-1")
            await store.hub_summary("r-1")
        reads = [s for s in statements if "hub_outbox" in s]
        assert len(reads) == 5

        def explain(raw: sqlite3.Connection) -> list[str]:
            return [
                " | ".join(
                    str(row[-1])
                    for row in raw.execute(f"EXPLAIN QUERY PLAN {s}", (0,) * s.count("?"))
                )
                for s in reads
            ]

        due, earliest, counts, counts_of, one = await store._run("explaining", explain)
    assert "MERGE (UNION ALL)" in due
    assert due.count("SEARCH hub_outbox USING INDEX hub_outbox_due (state=? AND") == 2
    assert "COVERING INDEX hub_outbox_due (state=?)" in earliest
    assert counts == "SCAN hub_outbox USING COVERING INDEX hub_outbox_due"
    assert "INDEX hub_outbox_by_change (organisation=?)" in counts_of
    assert one == "SEARCH hub_outbox USING PRIMARY KEY (record_id=?)"
    plans = [due, earliest, counts, counts_of, one]
    assert not any("TEMP B-TREE" in plan for plan in plans[:3] + plans[4:])


async def test_postgresql_searches_the_state_index_for_the_due_rows(
    postgres_database: str,
) -> None:
    """With 20,000 rows, nearly all sent, PostgreSQL's plan for the due rows and the next
    retry reads the index hub_outbox_due, never the whole table."""
    async with fresh_schema(postgres_database) as url:
        async with PostgresStore.open(url):
            pass  # the schema, made
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO hub_outbox (record_id, organisation, version, state, attempts,"
                " next_attempt_ms, change) SELECT 'r-' || lpad(n::text, 6, '0'), 'org-1', n,"
                " CASE WHEN n % 1000 = 0 THEN 'pending' ELSE 'sent' END, 0, n, n"
                " FROM generate_series(1, 20000) AS n"
            )
            conn.execute("VACUUM ANALYZE hub_outbox")

            def plan(sql: str, args: tuple[object, ...]) -> str:
                return "\n".join(str(r[0]) for r in conn.execute(f"EXPLAIN {sql}", args))

            due = plan(pg_hub._DUE, (NOW, -1, "", 10, -1, "", 10, 10))
            earliest = plan(pg_hub._NEXT_ATTEMPT, ())
        assert "hub_outbox_due" in due
        assert "Seq Scan" not in due
        assert "hub_outbox_due" in earliest
        assert "Seq Scan" not in earliest
        async with PostgresStore.open(url) as store:
            assert len(await store.hub_due(NOW, 100)) == 20
            assert await store.hub_next_attempt_ms() == 1000
