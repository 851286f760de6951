"""The whole-sync state machine at full size: many runs, long ones, on both stores.

The suite runs it small (``tests/test_sync_state_machine.py``); this runs the same
machine (``tests/sync_machine.py``) with many more examples and steps, for each store,
and reports how many ran and how long they took. A failure is raised with Hypothesis's
shortest reproduction, like any failing test. Opt-in: minutes, not seconds.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from tests.sync_machine import LAPTOPS, RECORDS, MemorySyncMachine, SQLiteSyncMachine

from benchmarks.common import parse_args, write_results

FULL = {"memory": (300, 60), "sqlite": (60, 50)}
"""Per store: examples and steps per example."""
TINY = {"memory": (1, 5), "sqlite": (1, 5)}
MACHINES = {"memory": MemorySyncMachine, "sqlite": SQLiteSyncMachine}


def run_case(store: str, examples: int, steps: int) -> dict[str, Any]:
    """Run the machine for one store; the figures of the run."""
    started = time.perf_counter()
    run_state_machine_as_test(
        MACHINES[store],
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,  # each run explores afresh
            suppress_health_check=list(HealthCheck),
        ),
    )
    return {
        "store": store,
        "laptops": LAPTOPS,
        "records": RECORDS,
        "examples": examples,
        "steps_per_example": steps,
        "seconds": round(time.perf_counter() - started, 2),
        "failures": 0,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "sync_machine")
    sizes = TINY if args.tiny else FULL
    cases = [run_case(store, *sizes[store]) for store in ("memory", "sqlite")]
    write_results(args.out, "sync_machine", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
