"""``python -m caresync.simulation``: the same command as ``caresync simulate``.

It hands its arguments to the command line, so both share one parser, one
set of checks and one way of reporting errors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``caresync simulate`` with these options; 0 when converged and nothing lost."""
    from caresync.cli import main as cli_main

    return cli_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
