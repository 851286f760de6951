"""Where a simulation's bytes and CPU go: one run, with a tally of every frame the server sends.

``python -m benchmarks.sim_tally LAPTOPS [PATIENTS] [--transport memory]``: runs
``caresync.simulation`` in this process with the server's counting channel
wrapped so that every frame sent down is decoded and its parts measured (update
entries, state vectors, cards and references, conflict rows split into their
payloads and the rest, first-copy records, cards and rows). Prints one JSON
object: the run's result, the tally, and the CPU seconds of this process (server,
oracle) and of its workers (laptops). The tally's decoding costs the runner's
CPU; compare its wall time only with other tallied runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import weakref
from collections import Counter
from typing import Any

import msgpack

from caresync.simulation import SimulationConfig, run_simulation, wire

TALLY: Counter[str] = Counter()
SEEN: dict[str, set[tuple[str, str, int]]] = {}
"""Per replica: the conflict rows it was sent, to count rows sent again."""


def _size(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def tally(frame: bytes, replica: str = "") -> None:
    """Add one frame's parts to TALLY."""
    try:
        _version, code, body = msgpack.unpackb(frame, raw=False)
    except Exception:  # noqa: BLE001 - a measuring tool: count what it cannot read
        TALLY["undecoded"] += len(frame)
        return
    TALLY[f"frames_{code}"] += 1
    TALLY[f"bytes_{code}"] += len(frame)
    if code in (19, 25):
        TALLY["pull_items"] += _size(body.get("items"))
        TALLY["pull_entries_n"] += len(body.get("items") or ())
        checked = body.get("checked") or ()
        TALLY["checked_n"] += len(checked)
        for _rid, sv, card in checked:
            TALLY["checked_sv"] += len(sv)
            if card is None:
                continue
            if card[:1] == b"\x01":
                TALLY["checked_held_ref"] += len(card)
            elif card[:1] == b"\x00":
                TALLY["checked_card_ref"] += len(card)
            else:
                TALLY["checked_card_full"] += len(card)
        TALLY["checked_total"] += _size(body.get("checked"))
        rows = body.get("conflicts") or ()
        TALLY["rows_n"] += len(rows)
        TALLY["rows_total"] += _size(body.get("conflicts"))
        seen = SEEN.setdefault(replica, set())
        for row in rows:
            TALLY["rows_payload"] += len(row[5])
            key = (row[0], row[1], hash(row[5]))
            if key in seen:
                TALLY["rows_sent_again_n"] += 1
                TALLY["rows_sent_again_payload"] += len(row[5])
            seen.add(key)
        TALLY["rows_records"] += len({row[0] for row in rows})
    elif code == 17:
        TALLY["copy_records"] += _size(body.get("records"))
        TALLY["copy_rows"] += _size(body.get("conflicts"))
        TALLY["copy_persons"] += _size(body.get("persons"))


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    laptops = int(args[0])
    patients = int(args[1]) if len(args) > 1 else 1000
    transport = "memory" if "--transport" in sys.argv and "memory" in sys.argv else "websocket"
    original = wire.CountingChannel.send
    original_recv = wire.CountingChannel.recv
    replicas: weakref.WeakKeyDictionary[wire.CountingChannel, str] = weakref.WeakKeyDictionary()

    async def send(self: wire.CountingChannel, frame: bytes) -> None:
        tally(frame, replicas.get(self, ""))
        await original(self, frame)

    async def recv(self: wire.CountingChannel) -> bytes:
        frame = await original_recv(self)
        if self not in replicas:  # the Hello names the replica (once enrolled)
            try:
                body = msgpack.unpackb(frame, raw=False)[2]
                replicas[self] = str(body.get("replica_id") or id(self))
            except Exception:  # noqa: BLE001 - a measuring tool
                replicas[self] = str(id(self))
        return frame

    wire.CountingChannel.send = send  # type: ignore[method-assign]
    wire.CountingChannel.recv = recv  # type: ignore[method-assign]
    config = SimulationConfig(
        laptops=laptops,
        patients=patients,
        seed=0,
        transport=transport,  # type: ignore[arg-type]
        **({"workers": 0} if transport == "memory" else {}),
    )
    load = os.getloadavg()[0]
    result = asyncio.run(run_simulation(config)).as_dict()
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.pop("details", None)
    result.pop("conflict_examples", None)
    print(
        json.dumps(
            {
                "result": result,
                "tally": dict(TALLY),
                "cpu_runner_s": round(own.ru_utime + own.ru_stime, 1),
                "cpu_workers_s": round(kids.ru_utime + kids.ru_stime, 1),
                "load_before": load,
                "load_after": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
