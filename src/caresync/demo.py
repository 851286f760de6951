"""The main job, small: a clinic server and offline laptops, on SQLite, over websockets.

``python -m caresync.demo`` (or ``bash scripts/demo``) starts a sync server on
127.0.0.1 with its own SQLite database, enrols a few laptops (each with its own
SQLite file and connection), registers patients, takes the laptops offline,
makes edits on each — including the clinical cases of DESIGN.md: two dates of
birth, a medication stopped on one laptop while its dose changed on another,
an allergy recorded on one while the matching drug was prescribed on another —
brings them back, syncs to quiescence, checks with an oracle that every replica
holds the same records and conflicts and that no value written was lost,
resolves the conflicts on one laptop and checks again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.conflicts import DEFAULT_RULEBOOK, Conflict, ConflictKind, Severity
from caresync.records import Record, canonical_json
from caresync.replica import Replica
from caresync.server import SyncServer

__all__ = ["DemoResult", "main", "run_demo"]

PASSWORD = "demo-password"  # the demo's own throwaway accounts


@dataclass
class DemoResult:
    """What the run found; ``ok`` when everyone converged and nothing was lost."""

    laptops: int
    patients: int
    edits: int
    converged: bool = False
    lost_values: int = 0
    conflicts_seen: int = 0
    conflicts_after_resolving: int = -1
    duration_s: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.converged and self.lost_values == 0 and self.conflicts_after_resolving == 0


async def _snapshot(replica_records: dict[str, Record]) -> dict[str, Any]:
    return {
        rid: {
            "fields": {p: sorted(h.value_key for h in s.heads) for p, s in rec.fields().items()},
            "conflicts": [c.id for c in DEFAULT_RULEBOOK.conflicts(rec)],
        }
        for rid, rec in sorted(replica_records.items())
    }


async def _load_all(store: Any, replica: str) -> dict[str, Record]:
    records = {}
    for rid in await store.record_ids():
        stored = await store.load(rid)
        records[rid] = Record.from_update(rid, stored, replica=replica)
    return records


async def run_demo(
    workdir: Path, *, laptops: int = 3, patients: int = 20, edits: int = 30, seed: int = 7
) -> DemoResult:
    """Run the scenario in ``workdir``; returns what it found."""
    rng = random.Random(seed)
    started = time.perf_counter()
    result = DemoResult(laptops=laptops, patients=patients, edits=edits)
    written: set[tuple[str, str, str]] = set()  # (record, path, value) the oracle saw written

    server = await SyncServer.open(workdir / "clinic-server.db")
    await server.add_user("clinic", "registrar", PASSWORD)
    await server.serve("127.0.0.1", 0)
    fleet: list[Replica] = []
    try:
        for i in range(laptops):
            laptop = await Replica.open(workdir / f"laptop-{i}.db")
            await laptop.enrol(
                server.url, username="registrar", password=PASSWORD, organisation="clinic"
            )
            fleet.append(laptop)

        # The registrar registers patients on laptop 0; everyone copies them.
        ids = []
        for n in range(patients):
            rid = await fleet[0].create_record()
            for path, value in (("name", f"Patient {n}"), ("birthDate", f"19{50 + n % 50}-01-01")):
                await fleet[0].set(rid, path, value, author="registrar")
                written.add((rid, path, canonical_json(value)))
            ids.append(rid)
        first = ids[0]
        med = await fleet[0].add_entry(
            first, "medications", {"drug": "metformin", "dose": "500 mg"}, author="dr.ba"
        )
        for laptop in fleet:
            await laptop.sync()

        # Offline: concurrent clinical cases, then random edits everywhere.
        north, south = fleet[0], fleet[1 % laptops]
        cases: list[tuple[Replica, str, str, Any]] = [
            (north, first, "birthDate", "1950-01-21"),
            (south, first, "birthDate", "1950-12-01"),
        ]
        for laptop, rid, path, value in cases:
            await laptop.set(rid, path, value, author=f"dr.{laptop.replica_id[-4:]}")
            written.add((rid, path, canonical_json(value)))
        await north.set_status(first, "medications", med, "stopped", author="nurse.sow")
        await south.set(first, f"medications/{med}/dose", "1000 mg", author="dr.ndiaye")
        await north.add_entry(first, "allergies", {"substance": "penicillin"}, author="nurse.sow")
        await south.add_entry(first, "medications", {"drug": "amoxicillin"}, author="dr.ndiaye")
        for _ in range(edits):
            laptop = rng.choice(fleet)
            rid = rng.choice(ids)
            path = rng.choice(["address/city", "phone", "heightCm", "summary"])
            new: Any = rng.choice(["Dakar", "Thiès", "+221 77", 170, 182, "stable"])
            await laptop.set(rid, path, new, author=f"user-{fleet.index(laptop)}")
            written.add((rid, path, canonical_json(new)))

        # Back online: sync until quiescent (two rounds reach everyone).
        for _ in range(2):
            for laptop in fleet:
                await laptop.sync()

        result.converged, result.lost_values = await _check(server, fleet, written, result)
        conflicts = await fleet[0].conflicts()
        result.conflicts_seen = len(conflicts)
        _show_conflicts(conflicts)

        # Someone resolves everything on one laptop; everyone syncs again.
        resolver = fleet[-1]
        for conflict in await resolver.conflicts():
            await _settle(resolver, conflict)
        for _ in range(2):
            for laptop in fleet:
                await laptop.sync()
        converged, lost = await _check(server, fleet, written, result)
        result.converged = result.converged and converged
        result.lost_values += lost
        result.conflicts_after_resolving = sum([len(await r.conflicts()) for r in fleet])
    finally:
        for laptop in fleet:
            await laptop.close()
        await server.close()
    result.duration_s = time.perf_counter() - started
    return result


async def _settle(replica: Replica, conflict: Conflict) -> None:
    if conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
        await replica.resolve(conflict.id, choose=0, author="dr.resolver")
    else:
        await replica.acknowledge(conflict.id, author="dr.resolver")


async def _check(
    server: SyncServer,
    fleet: list[Replica],
    written: set[tuple[str, str, str]],
    result: DemoResult,
) -> tuple[bool, int]:
    """Every replica and the server hold the same records and conflicts; nothing lost."""
    reference = await _load_all(server.store, "check")
    expected = await _snapshot(reference)
    converged = True
    for laptop in fleet:
        if await _snapshot(await _load_all(laptop.store, "check")) != expected:
            converged = False
            result.details.append(f"{laptop.replica_id} differs from the server")
    reachable = {
        (rid, rev.path, rev.value_key) for rid, rec in reference.items() for rev in rec.revisions()
    }
    lost = written - reachable
    result.details.extend(f"lost: {item}" for item in sorted(lost))
    return converged, len(lost)


def _show_conflicts(conflicts: list[Conflict]) -> None:
    console = Console()
    table = Table(title="Open conflicts after the laptops came back (same on every replica)")
    for column in ("severity", "what", "candidates"):
        table.add_column(column)
    for conflict in conflicts:
        candidates = "\n".join(
            f"[{i}] {c.value!r} by {c.author}" for i, c in enumerate(conflict.candidates)
        )
        table.add_row(conflict.severity.value, conflict.message, candidates)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when every replica converged and nothing was lost."""
    parser = argparse.ArgumentParser(prog="python -m caresync.demo", description=__doc__)
    parser.add_argument("--laptops", type=int, default=3)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="keep the databases here")
    args = parser.parse_args(argv)
    if args.laptops < 2 or args.patients < 1 or args.edits < 0:
        parser.error("need at least 2 laptops, 1 patient and 0 edits")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="caresync-demo-") as tmp:
        workdir = args.dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        console.print(
            f"[bold]caresync demo[/bold]: a clinic server and {args.laptops} laptops "
            f"on SQLite in {workdir}, over websockets on 127.0.0.1"
        )
        result = asyncio.run(
            run_demo(
                workdir,
                laptops=args.laptops,
                patients=args.patients,
                edits=args.edits,
                seed=args.seed,
            )
        )
    summary = Table(title="Outcome")
    summary.add_column("check")
    summary.add_column("result")
    summary.add_row("every replica and the server identical", str(result.converged))
    summary.add_row("values written but reachable nowhere", str(result.lost_values))
    summary.add_row("conflicts kept and shown", str(result.conflicts_seen))
    summary.add_row("conflicts left after resolving", str(result.conflicts_after_resolving))
    summary.add_row("duration", f"{result.duration_s:.2f} s")
    console.print(summary)
    for line in result.details[:20]:
        console.print(f"[red]{line}[/red]")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
