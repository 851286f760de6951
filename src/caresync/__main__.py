"""``python -m caresync``: the command line (see docs/cli.md)."""

import sys

from caresync.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
