"""The ``caresync`` command line: ``main(argv)`` runs one command and returns its exit code.

Commands, options, JSON keys and exit codes are documented in docs/cli.md;
scripts depend on them.
"""

from caresync.cli.app import main

__all__ = ["main"]
