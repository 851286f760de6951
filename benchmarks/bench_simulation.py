"""How the simulation's time grows with the number of laptops (1,000 patients).

Each case is one ``caresync.simulation`` run in a fresh process (so that its
peak memory is its own): 10, 100 and 300 laptops, 1,000 patients, 20 edits per
laptop, seed 0. Reported per case: the phases' wall times (first copy of every
laptop, offline rounds, final sync to quiescence, the oracle's check), bytes on
the wire, peak resident memory, and the growth of the total against the
smallest case. Target (issue 5): 100 laptops x 1,000 patients in <= 60 s.

Runs are long, so each case runs once; compare ratios within one run (the
machine is shared), not absolute numbers across runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from benchmarks.common import parse_args, write_results

FULL_CASES = ((10, 1000), (100, 1000), (300, 1000))
TINY_CASES = ((2, 10), (4, 10))
TARGET = (100, 1000, 60.0)
"""100 laptops and 1,000 patients in at most 60 s."""

CHILD = """
import asyncio, json, resource, sys
from caresync.simulation import SimulationConfig, run_simulation
laptops, patients, edits = (int(a) for a in sys.argv[1:4])
config = SimulationConfig(laptops=laptops, patients=patients, edits_per_laptop=edits, seed=0)
result = asyncio.run(run_simulation(config)).as_dict()
result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(result))
"""

KEPT = (
    "duration_s",
    "setup_s",
    "first_copy_s",
    "edit_s",
    "final_sync_s",
    "check_s",
    "bytes_up",
    "bytes_down",
    "peak_rss_mb",
    "converged",
    "lost_values",
    "conflicts_open",
    "edits",
)


def run_case(laptops: int, patients: int, edits: int) -> dict[str, Any]:
    """One simulation in a fresh process; its result, trimmed to what the benchmark reports."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(laptops), str(patients), str(edits)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    )
    result = json.loads(done.stdout)
    case: dict[str, Any] = {"laptops": laptops, "patients": patients}
    case.update({key: result[key] for key in KEPT})
    case["s_per_laptop"] = round(result["duration_s"] / laptops, 3)
    case["bytes_down_per_laptop"] = result["bytes_down"] // laptops
    return case


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "simulation")
    sizes = TINY_CASES if args.tiny else FULL_CASES
    edits = 3 if args.tiny else 20
    cases = [run_case(laptops, patients, edits) for laptops, patients in sizes]
    smallest = cases[0]
    for case in cases:
        case["growth_vs_smallest"] = round(case["duration_s"] / smallest["duration_s"], 2)
        if (case["laptops"], case["patients"]) == TARGET[:2]:
            case["target_s"] = TARGET[2]
            case["target_met"] = case["duration_s"] <= TARGET[2]
    write_results(args.out, "simulation", cases)
    return 0 if all(c["converged"] and c["lost_values"] == 0 for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
