"""How the simulation's time grows with the number of laptops (1,000 patients).

Each case is one ``caresync.simulation`` run in a fresh process (so that its
peak memory is its own): 100 and 300 laptops, and with ``--thousand`` 1,000
(it runs for several minutes; ``--laptops=1000`` runs one size alone), 1,000
patients, 20 edits per laptop, seed 0, the default options (laptops in two
worker processes, websockets on 127.0.0.1, each laptop's SQLite with its real
durability). Reported per case:
the phases' wall times (first copy of every laptop, offline rounds, final sync
to quiescence, the oracle's check), bytes on the wire (and per laptop), peak
resident memory of all the run's processes, the load average of the machine
before and after, and the growth of time and bytes against the first case.

``--edits-total=N`` runs every case with ``SimulationConfig(edits_total=N)``: N
edits in all instead of 20 per laptop, so the work no longer grows with the
square of laptops (an option; the default scenario is the one above).

Why bytes too: every laptop ends holding every revision, and each laptop makes
20 edits, so what each laptop downloads grows with the number of laptops, and
the total with its square. "Linear" is judged as time per byte moved staying
flat, not time per laptop (see docs/performance.md#simulation).

Targets (issue 18): 1,000 laptops x 1,000 patients in at most 6 minutes and at
most 8 GB peak, converged, nothing lost. Runs are long, so each case runs
once; compare ratios within one run (the machine is shared), not absolute
numbers across runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from benchmarks.common import parse_args, write_results

FULL_CASES = ((100, 1000), (300, 1000))
THOUSAND = (1000, 1000)
"""Opt-in (``--thousand``): several minutes on two cores."""
TINY_CASES = ((2, 10), (4, 10))
TARGET = (1000, 1000, 360.0, 8192.0)
"""1,000 laptops and 1,000 patients in at most 6 minutes and 8 GB peak."""

CHILD = """
import asyncio, json, sys
from caresync.simulation import SimulationConfig, run_simulation
laptops, patients, edits, total = (int(a) for a in sys.argv[1:5])
config = SimulationConfig(
    laptops=laptops, patients=patients, edits_per_laptop=edits, seed=0,
    edits_total=None if total < 0 else total,
)
print(json.dumps(asyncio.run(run_simulation(config)).as_dict()))
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
    "workers",
    "sync_rounds",
    "converged",
    "lost_values",
    "conflicts_open",
    "edits",
)


def run_case(laptops: int, patients: int, edits: int, total: int | None = None) -> dict[str, Any]:
    """One simulation in a fresh process; its result, trimmed to what the benchmark reports."""
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(laptops),
            str(patients),
            str(edits),
            str(-1 if total is None else total),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:  # say why: the child's last lines (its own typed error)
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the simulation of {laptops} laptops failed ({done.returncode})")
    result = json.loads(done.stdout)
    case: dict[str, Any] = {"laptops": laptops, "patients": patients, "edits_total": total}
    case.update({key: result[key] for key in KEPT})
    case["s_per_laptop"] = round(result["duration_s"] / laptops, 3)
    case["bytes_down_per_laptop"] = result["bytes_down"] // laptops
    moved = result["bytes_up"] + result["bytes_down"]
    case["s_per_gb_moved"] = round(result["duration_s"] / (moved / 1e9), 1)
    case["load_before"] = round(load_before, 2)
    case["load_after"] = round(os.getloadavg()[0], 2)
    return case


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    thousand = "--thousand" in argv
    chosen = [a.split("=", 1)[1] for a in argv if a.startswith("--laptops=")]
    budget = [int(a.split("=", 1)[1]) for a in argv if a.startswith("--edits-total=")]
    ours = ("--thousand", "--laptops=", "--edits-total=")
    args = parse_args([a for a in argv if not a.startswith(ours)], "simulation")
    sizes = TINY_CASES if args.tiny else FULL_CASES + ((THOUSAND,) if thousand else ())
    if chosen:  # --laptops=100,1000: those sizes only, 1,000 patients each
        sizes = tuple((int(n), 1000) for n in chosen[-1].split(","))
    edits = 3 if args.tiny else 20
    cases: list[dict[str, Any]] = []
    for laptops, patients in sizes:
        cases.append(run_case(laptops, patients, edits, budget[-1] if budget else None))
        compare(cases)
        write_results(args.out, "simulation", cases)  # after each case: a long run keeps them
    return 0 if all(c["converged"] and c["lost_values"] == 0 for c in cases) else 1


def compare(cases: list[dict[str, Any]]) -> None:
    """Add each case's growth against the first (time, bytes, time per laptop) and targets."""
    first = cases[0]
    for case in cases:
        laptops = case["laptops"] / first["laptops"]
        case["laptops_vs_first"] = round(laptops, 2)
        case["time_vs_first"] = round(case["duration_s"] / first["duration_s"], 2)
        case["bytes_down_vs_first"] = round(case["bytes_down"] / first["bytes_down"], 2)
        case["time_per_laptop_vs_first"] = round(case["time_vs_first"] / laptops, 2)
        if (case["laptops"], case["patients"]) == TARGET[:2]:
            case["target_s"], case["target_peak_mb"] = TARGET[2], TARGET[3]
            case["target_met"] = (
                case["duration_s"] <= TARGET[2] and case["peak_rss_mb"] <= TARGET[3]
            )


if __name__ == "__main__":
    raise SystemExit(main())
