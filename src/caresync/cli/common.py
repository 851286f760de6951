"""Parsing shared by the commands: options, values, and running a coroutine."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from caresync.cli.output import Output

__all__ = [
    "Handler",
    "add_db",
    "add_json",
    "author",
    "parse_value",
    "run",
    "text",
]

T = TypeVar("T")
Handler = Callable[[argparse.Namespace, Output], int]
"""What a command runs: it returns the exit code (errors are raised)."""


def add_db(parser: argparse.ArgumentParser, what: str = "the database") -> None:
    """The ``--db PATH`` option every command but ``simulate`` has."""
    parser.add_argument("--db", required=True, metavar="PATH", help=f"{what} (an SQLite file)")


def add_json(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option: one JSON object on standard output, nothing else there."""
    parser.add_argument(
        "--json", action="store_true", help="write one JSON object on standard output"
    )


def text(what: str, *, max_length: int = 256) -> Callable[[str], str]:
    """An argparse type for a non-empty name (refused with a message naming ``what``)."""

    def check(value: str) -> str:
        if not value.strip() or len(value) > max_length:
            raise argparse.ArgumentTypeError(
                f"{what} must be non-empty and at most {max_length} characters"
            )
        return value

    check.__name__ = what  # argparse names the type in its message
    return check


author = text("author")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{raw} is out of range")
    return value


def parse_value(raw: str) -> Any:
    """A value given on the command line: JSON when it parses as JSON, else the string.

    ``42`` is a number, ``true`` a boolean, ``"42"`` and ``42 mg`` strings,
    ``{"code": "J45"}`` an object. ``NaN``, ``Infinity`` and ``1e999`` are not finite
    JSON numbers: they stay strings.
    """
    try:
        return json.loads(raw, parse_constant=_no_constants, parse_float=_finite)
    except ValueError:
        return raw


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion in a fresh event loop."""
    return asyncio.run(coro)
