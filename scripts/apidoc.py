"""Build caresync's API reference (HTML) from its docstrings with pdoc.

Run it as ``bash scripts/apidoc`` (which sets up ``.venv`` first), or
``python scripts/apidoc.py [--out DIR]`` in an environment where caresync and
pdoc are installed (``pip install -e ".[test]"``). The pages go to
``build/api/`` (not committed); open ``build/api/index.html``.

The reference documents the public modules below and nothing else: the
package ``caresync`` (everything an application needs) and the documented
subpackages. A warning from pdoc (a docstring or an annotation it cannot
read) fails the build, except the known ones of :data:`KNOWN_WARNINGS`.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

PUBLIC_MODULES = (
    "caresync",
    "caresync.testing",
    "caresync.storage",
    "caresync.protocol",
    "caresync.transport",
    "caresync.simulation",
    "caresync.cli",
    "caresync.fhir",
    "caresync.audit",
    "caresync.hub",
)
"""The modules the reference documents: ``caresync`` and its documented subpackages.

Every public name of caresync is reachable from one of them (tests/test_api_surface.py).
"""

KNOWN_WARNINGS = (
    # A NamedTuple's generated __new__ does not see its module's names, so pdoc cannot
    # evaluate its postponed annotations; the fields are documented all the same.
    re.compile(
        r"Error parsing type annotation .* for caresync\.(Revision|protocol\.RecordCheck)"
        r"\.__init__\."
    ),
)
"""pdoc warnings that do not fail the build (each explained)."""

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "api"


def build(out: Path) -> list[str]:
    """Write the reference to ``out``; returns pdoc's warnings that are not known ones."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(
        docformat="restructuredtext",
        footer_text="caresync: offline-first replication of clinical records",
        show_source=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*PUBLIC_MODULES, output_directory=out)
    problems = []
    for warning in caught:
        text = str(warning.message)
        if not any(known.search(text) for known in KNOWN_WARNINGS):
            problems.append(f"{warning.category.__name__}: {text}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Build the reference; exit 1 (listing them) on warnings, 0 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    problems = build(args.out)
    for problem in problems:
        print(f"apidoc: {problem}", file=sys.stderr)
    if problems:
        print(f"apidoc: {len(problems)} problem(s); fix the docstrings above", file=sys.stderr)
        return 1
    print(f"API reference written to {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
