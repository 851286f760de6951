"""``python -m caresync.simulation.worker FD``: a simulation's laptop worker process.

Kept apart from :mod:`caresync.simulation.workers` so that running it as a
script does not import the module twice (the package imports ``workers``).
"""

from __future__ import annotations

import sys

from caresync.simulation.workers import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
