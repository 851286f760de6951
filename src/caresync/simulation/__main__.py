"""``python -m caresync.simulation``: the options of ``caresync simulate``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from caresync.exceptions import CaresyncError
from caresync.simulation.config import SimulationConfig
from caresync.simulation.present import run_simulate_command

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the simulation; 0 when converged and nothing lost."""
    parser = argparse.ArgumentParser(
        prog="python -m caresync.simulation",
        description="Simulate offline laptops against one clinic server and check the outcome.",
    )
    parser.add_argument("--laptops", type=int, required=True)
    parser.add_argument("--patients", type=int, required=True)
    parser.add_argument("--edits-per-laptop", type=int, default=20)
    parser.add_argument("--conflict-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="keep the databases here")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    try:
        config = SimulationConfig(
            laptops=args.laptops,
            patients=args.patients,
            edits_per_laptop=args.edits_per_laptop,
            conflict_rate=args.conflict_rate,
            seed=args.seed,
            workdir=args.dir,
        )
        return run_simulate_command(config, json_output=args.json)
    except CaresyncError as exc:
        print(f"caresync simulate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
