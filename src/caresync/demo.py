"""``python -m caresync.demo``: the simulation at a small size (kept for old scripts).

The main job is now :mod:`caresync.simulation` (``bash scripts/demo`` runs it):
a clinic server and offline laptops on SQLite over websockets, checked by an
oracle. This module only runs it with small defaults; any option of
``python -m caresync.simulation`` may be given and overrides them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from caresync.simulation.__main__ import main as simulation_main

__all__ = ["DEFAULTS", "main"]

DEFAULTS = ("--laptops", "3", "--patients", "20", "--edits-per-laptop", "10", "--seed", "7")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a small simulation; 0 when every replica converged and nothing was lost."""
    return simulation_main([*DEFAULTS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
