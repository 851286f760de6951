"""What one push of an unrelated patient costs the hub sender when ``held`` summaries wait:
every held one looked at again (before: each commit's round snapshotted every held row)
against only those the change could release (now: none), alternated in one run.

A real ``SyncServer`` (SQLite, a file) holds ``held`` patients, each with a field conflict
(two concurrent birth dates) and its summary marked and held. Each side's sender takes
the server's own snapshots (``SyncServer.hub_snapshot``: under the commit lock, the record
loaded and its conflicts listed) and is woken as a push of another record wakes it
(``wake([that record])``); its first round, untimed, has looked at every held row once.
The "every" side is the same sender told to walk every held row again at each wake, which
is what each round did before. Timed: that round, and the time it held the commit lock
(the snapshots), which every push waits behind.

It prints one JSON line (medians, min, max per side, ratios, snapshots per round) and
writes it with ``--out``::

    python -m benchmarks.hub_held_ab 300 5 --out benchmarks/results/hub_held_ab.json
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from caresync.hub.model import HUB_PATH
from caresync.hub.sender import HubSender, HubSnapshot
from caresync.server import SyncServer
from caresync.storage import HubMark, IncomingUpdate
from caresync.testing.store_data import Patient, whole

ORG = "clinic-a"
BODY = b'{"resourceType": "Bundle"}'


class EveryHeld(HubSender):
    """The sender as it was: every wake looks at every held row again."""

    def wake(self, record_ids: Iterable[str] = ()) -> None:
        super().wake(record_ids)
        self._rewalk = True


async def _held_patients(server: SyncServer, n: int) -> list[str]:
    """``n`` marked patients, each with two concurrent birth dates (a field conflict)."""
    items = []
    for _ in range(n):
        p = Patient("laptop-a")
        p.edit(HUB_PATH, True)
        other = p.copy("laptop-b")
        p.edit("birthDate", "1980-02-03")
        other.edit("birthDate", "1981-02-03", author="dr.b")
        items.append(IncomingUpdate(p.id, whole(p), None, ORG))
        items.append(IncomingUpdate(p.id, whole(other), None, ORG))
    ids = list(dict.fromkeys(item.record_id for item in items))
    await server.store.write_remote(
        items, to_feed=True, hub={rid: HubMark(True, "held: a field conflict") for rid in ids}
    )
    return ids


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


async def measure(held: int, pairs: int) -> dict[str, object]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(BODY))

    rounds: dict[str, list[float]] = {"every": [], "released": []}
    locked: dict[str, list[float]] = {"every": [], "released": []}
    snaps: dict[str, list[int]] = {"every": [], "released": []}
    with tempfile.TemporaryDirectory(prefix="hub-held-ab-") as work:
        server = await SyncServer.open(Path(work) / "server.db")
        async with (
            server,
            httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client,
        ):
            await _held_patients(server, held)
            lock_s = 0.0
            taken = 0

            async def snapshot(record_id: str) -> HubSnapshot | None:
                nonlocal lock_s, taken
                start = time.perf_counter()
                try:
                    return await server.hub_snapshot(record_id)
                finally:
                    lock_s += time.perf_counter() - start
                    taken += 1

            options: dict[str, Any] = {"client": client, "random": lambda: 0.5}
            url = "http://hub.invalid/fhir"
            senders = {
                "every": EveryHeld(server.store, url, snapshot, **options),
                "released": HubSender(server.store, url, snapshot, **options),
            }
            for sender in senders.values():
                await sender.run_once()  # a new sender's walk: every held row, once
            counts = await server.store.hub_state_counts()
            if counts["held"] != held:
                raise AssertionError(f"expected {held} held summaries, found {counts}")
            for pair in range(pairs):  # alternated; the first side changes each pair
                order = ("every", "released") if pair % 2 == 0 else ("released", "every")
                for side in order:
                    gc.collect()  # the other side's garbage is not this side's cost
                    lock_s, taken = 0.0, 0
                    senders[side].wake([f"another-patient-{pair}"])
                    start = time.perf_counter()
                    await senders[side].run_once()
                    rounds[side].append(time.perf_counter() - start)
                    locked[side].append(lock_s)
                    snaps[side].append(taken)
            for sender in senders.values():
                await sender.close()
    every, released = _summary(rounds["every"]), _summary(rounds["released"])
    return {
        "benchmark": "hub_held_ab",
        "held": held,
        "pairs": pairs,
        "load_average": os.getloadavg(),
        "every": {
            **every,
            "snapshots": snaps["every"],
            "runs_s": rounds["every"],
            "commit_lock_s": locked["every"],
        },
        "released": {
            **released,
            "snapshots": snaps["released"],
            "runs_s": rounds["released"],
            "commit_lock_s": locked["released"],
        },
        "ratio_median_every_to_released": every["median_s"] / released["median_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("held", type=int, nargs="?", default=300)
    parser.add_argument("pairs", type=int, nargs="?", default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.held < 1 or args.pairs < 1:
        parser.error("give at least one held summary and one pair")
    result = asyncio.run(measure(args.held, args.pairs))
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
