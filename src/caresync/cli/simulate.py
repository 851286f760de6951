"""``caresync simulate``: many offline laptops against one clinic server, checked by an oracle.

The simulation itself lives in :mod:`caresync.simulation` (imported only when
this command runs, so the other commands start fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from caresync.cli.common import add_json, path
from caresync.cli.output import Output
from caresync.names import shown

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``simulate``."""
    simulate = commands.add_parser(
        "simulate",
        help="simulate many offline laptops and check they converge",
        description="Start a clinic server on an embedded SQLite database and N laptops, each "
        "with its own SQLite file and websocket connection on 127.0.0.1; edit offline and "
        "online at random (with concurrent edits and clinical conflicts); sync to quiescence; "
        "check that every replica converged and no value was lost. Exit 0 when they did, 1 "
        "when not. The same seed gives the same edits.",
    )
    simulate.add_argument("--laptops", required=True, type=_count(1), help="laptops (N >= 1)")
    simulate.add_argument("--patients", required=True, type=_count(1), help="patients (M >= 1)")
    simulate.add_argument(
        "--edits-per-laptop", type=_count(0), default=20, help="edits per laptop (20)"
    )
    simulate.add_argument(
        "--conflict-rate",
        type=_rate,
        default=0.1,
        help="share of edits made concurrently on the same fields (0.1)",
    )
    simulate.add_argument("--seed", type=int, default=0, help="random seed (0)")
    simulate.add_argument(
        "--workdir",
        "--dir",
        dest="workdir",
        metavar="DIR",
        type=path,
        help="keep the databases here (default: a temporary directory, removed after)",
    )
    simulate.add_argument(
        "--transport",
        choices=("websocket", "memory"),
        default="websocket",
        help="websocket: a socket per sync on 127.0.0.1 (default); memory: in-memory "
        "channels, the same protocol and databases without sockets",
    )
    simulate.add_argument(
        "--pool-size",
        type=_count(1),
        default=1024,
        metavar="N",
        help="records each laptop and the server keep loaded (1024): most of a laptop's memory",
    )
    simulate.add_argument(
        "--edits-total",
        type=_count(0),
        default=None,
        metavar="N",
        help="N ordinary edits in all, spread over the laptops, instead of --edits-per-laptop "
        "each (the total work then stays the same as laptops grow)",
    )
    simulate.add_argument(
        "--workers",
        type=_count(0),
        default=None,
        metavar="N",
        help="worker processes that play the laptops (0: all in one process; default: 2 "
        "from 50 laptops on websockets, else 0)",
    )
    add_json(simulate)
    simulate.set_defaults(handler=_simulate)


def _count(minimum: int) -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {shown(raw)}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {shown(raw)}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {shown(raw)}")
    return value


def _simulate(args: argparse.Namespace, out: Output) -> int:
    from caresync.simulation import SimulationConfig, run_simulate_command

    config = SimulationConfig(
        laptops=args.laptops,
        patients=args.patients,
        edits_per_laptop=args.edits_per_laptop,
        conflict_rate=args.conflict_rate,
        seed=args.seed,
        workdir=None if args.workdir is None else Path(args.workdir),
        transport=args.transport,
        pool_size=args.pool_size,
        workers=args.workers,
        edits_total=args.edits_total,
    )
    code: int = run_simulate_command(config, json_output=args.json, console=out.console)
    return code
