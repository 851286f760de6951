"""One round of the hub sender over ``due`` summaries due among ``rows``: reading the whole
outbox (before: once to pick the due ones, once per attempt to find its row, once for the
next retry) against the due rows in pages and each attempt's own row, alternated in one run.

A server store (SQLite, a file) holds ``rows`` outbox rows, the first ``due`` of them
``pending`` and due, the rest ``sent`` (written straight into the table: this measures the
sender's reads, not building records). Each side's round is ``HubSender.run_once`` with the
hub in process (httpx's MockTransport, 200 to every PUT) and a snapshot that finds the
row as its side does (the summary's bytes stand in for a record's), so both sides make the
same PUTs and the same writes (an attempt, an outcome per summary); the rows are put back
as due, untimed, before each round.

It prints one JSON line (medians, min, max per side, the ratio of medians, the PUTs each
made) and writes it with ``--out``::

    python -m benchmarks.hub_sender_ab 10000 1000 3 --out benchmarks/results/hub_sender_ab.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from caresync.hub.sender import HubSender, HubSnapshot
from caresync.storage import HubSummaryRow, SQLiteStore

ORG = "clinic-a"
NOW = 1_800_000_000_000
BODY = b'{"resourceType": "Bundle"}'


def _record_id(i: int) -> str:
    return f"{i:08d}-0000-4000-8000-000000000000"


async def _fill(store: SQLiteStore, rows: int) -> None:
    """``rows`` outbox rows of ``ORG`` (their states are set by :func:`_reset`)."""

    def job(raw: Any) -> None:
        def body() -> None:
            raw.executemany(
                "INSERT INTO hub_outbox (record_id, organisation, version, state, attempts,"
                " next_attempt_ms, change) VALUES (?, ?, ?, 'sent', 0, 0, ?)",
                [(_record_id(i), ORG, i + 1, i + 1) for i in range(rows)],
            )
            raw.execute("UPDATE hub_mark SET n = ?", (rows,))

        store._write(raw, body)

    await store._run("filling the hub outbox", job)


async def _reset(store: SQLiteStore, due: int) -> None:
    """The first ``due`` rows pending and due (at various past times), the rest sent."""

    def job(raw: Any) -> None:
        def body() -> None:
            raw.execute(
                "UPDATE hub_outbox SET state = CASE WHEN record_id < ? THEN 'pending'"
                " ELSE 'sent' END, reason = NULL, attempts = 0,"
                " next_attempt_ms = CASE WHEN record_id < ? THEN ? - version % 997 ELSE 0 END",
                (_record_id(due), _record_id(due), NOW),
            )

        store._write(raw, body)

    await store._run("putting the due rows back", job)


class WholeReads(HubSender):
    """The sender's round as it was: the whole outbox read to pick the due rows, and
    again for the next retry (each attempt's snapshot reads it too: :func:`_sides`)."""

    async def run_once(self) -> int | None:
        now = self._now_ms()
        rows = await self.store.hub_summaries()
        due = sorted(
            (
                r
                for r in rows
                if (r.state == "pending" and r.next_attempt_ms <= now) or r.state == "held"
            ),
            key=lambda r: (r.next_attempt_ms, r.record_id),
        )
        for row in due:
            await self.attempt(row.record_id)
        rows = await self.store.hub_summaries()
        later = [r.next_attempt_ms for r in rows if r.state == "pending"]
        return None if not later else max(0, min(later) - self._now_ms())


def _snapshot_of(row: HubSummaryRow | None) -> HubSnapshot | None:
    return None if row is None else HubSnapshot(row.version, row.attempts, None, BODY)


def _sides(store: SQLiteStore, client: httpx.AsyncClient) -> dict[str, HubSender]:
    async def whole_snapshot(record_id: str) -> HubSnapshot | None:
        rows = await store.hub_summaries()
        return _snapshot_of(next((r for r in rows if r.record_id == record_id), None))

    async def own_snapshot(record_id: str) -> HubSnapshot | None:
        return _snapshot_of(await store.hub_summary(record_id))

    options: dict[str, Any] = {"client": client, "now_ms": lambda: NOW, "random": lambda: 0.5}
    return {
        "whole": WholeReads(store, "http://hub.invalid/fhir", whole_snapshot, **options),
        "paged": HubSender(store, "http://hub.invalid/fhir", own_snapshot, **options),
    }


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


async def measure(rows: int, due: int, pairs: int) -> dict[str, object]:
    puts = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal puts
        puts += 1
        return httpx.Response(200, stream=httpx.ByteStream(BODY))

    times: dict[str, list[float]] = {"whole": [], "paged": []}
    sent: dict[str, list[int]] = {"whole": [], "paged": []}
    with tempfile.TemporaryDirectory(prefix="hub-sender-ab-") as work:
        async with (
            SQLiteStore.open(Path(work) / "server.db") as store,
            httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client,
        ):
            await _fill(store, rows)
            senders = _sides(store, client)
            for pair in range(pairs):  # alternated; the first side changes each pair
                order = ("whole", "paged") if pair % 2 == 0 else ("paged", "whole")
                for side in order:
                    await _reset(store, due)
                    gc.collect()  # the other side's garbage is not this side's cost
                    puts = 0
                    start = time.perf_counter()
                    await senders[side].run_once()
                    times[side].append(time.perf_counter() - start)
                    sent[side].append(puts)
            for sender in senders.values():
                await sender.close()
    whole, paged = _summary(times["whole"]), _summary(times["paged"])
    return {
        "benchmark": "hub_sender_ab",
        "rows": rows,
        "due": due,
        "pairs": pairs,
        "load_average": os.getloadavg(),
        "whole": {**whole, "puts": sent["whole"], "runs_s": times["whole"]},
        "paged": {**paged, "puts": sent["paged"], "runs_s": times["paged"]},
        "ratio_median_whole_to_paged": whole["median_s"] / paged["median_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int, nargs="?", default=10_000)
    parser.add_argument("due", type=int, nargs="?", default=1_000)
    parser.add_argument("pairs", type=int, nargs="?", default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not 0 <= args.due <= args.rows or args.pairs < 1:
        parser.error("give 0 <= due <= rows, and at least one pair")
    result = asyncio.run(measure(args.rows, args.due, args.pairs))
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
