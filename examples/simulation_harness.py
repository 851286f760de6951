"""A test harness driving the simulation from Python: many offline laptops, one clinic server.

Run:  python examples/simulation_harness.py [WORKDIR]

It runs a few seeded simulations at small sizes (real SQLite files and real
websockets on 127.0.0.1), watches their phases through an observer, checks
what a harness would check — every replica converged, no value lost, the
same seed gives the same outcome, conflicts are kept rather than hidden — and
exits non-zero if any check fails. With WORKDIR, the first run's databases
are kept there for inspection (e.g. ``caresync conflicts list --db ...``).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from caresync.simulation import SimulationConfig, SimulationResult, run_simulation


class PhaseLog:
    """A SimulationObserver: prints each phase once it is over, with its step count."""

    def __init__(self) -> None:
        self.current: tuple[str, int] | None = None
        self.done = 0

    def phase(self, name: str, total: int) -> None:
        self.close()
        self.current, self.done = (name, total), 0

    def advance(self, steps: int = 1) -> None:
        self.done += steps

    def close(self) -> None:
        if self.current is not None:
            name, total = self.current
            print(f"  {name}: {self.done}/{total}")
            self.current = None


def check(label: str, result: SimulationResult, failures: list[str]) -> None:
    """What a harness asserts after each run."""
    print(
        f"{label}: converged={result.converged} lost={result.lost_values} "
        f"conflicts_open={result.conflicts_open} edits={result.edits} "
        f"bytes up/down={result.bytes_up}/{result.bytes_down} in {result.duration_s:.2f}s"
    )
    if not result.converged:
        failures.append(f"{label}: replicas diverged: {result.details}")
    if result.lost_values:
        failures.append(f"{label}: {result.lost_values} values lost: {result.details}")
    if result.concurrent_groups and not result.conflicts_open + result.conflicts_resolved:
        failures.append(f"{label}: concurrent edits were made but no conflict was kept")


async def main(workdir: Path | None) -> int:
    failures: list[str] = []
    log = PhaseLog()
    base = SimulationConfig(laptops=6, patients=40, edits_per_laptop=10, conflict_rate=0.3, seed=1)

    first = await run_simulation(replace(base, workdir=workdir), observer=log)
    log.close()
    check("seed 1", first, failures)

    again = await run_simulation(base)
    check("seed 1 again", again, failures)
    same = ("edits", "values_logged", "concurrent_groups", "clinical_cases", "conflicts_open")
    if [getattr(first, k) for k in same] != [getattr(again, k) for k in same]:
        failures.append("the same seed gave a different outcome")

    busy = SimulationConfig(laptops=8, patients=10, edits_per_laptop=8, conflict_rate=0.8, seed=2)
    check("seed 2, most edits on shared fields", await run_simulation(busy), failures)

    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print("all checks passed" if not failures else f"{len(failures)} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) / "simulation" if len(sys.argv) > 1 else None
    sys.exit(asyncio.run(main(target)))
