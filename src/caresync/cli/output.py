"""Where a command's result goes: one JSON object, or text for a person.

With ``--json`` a command writes exactly one JSON object on standard output
and nothing else there; progress bars and notes go to standard error (and
are left out entirely with ``--json``). Without it, results are written for
a person with rich.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.text import Text

from caresync.cli.errors import printable

__all__ = ["escaped", "Output", "Renderer", "cells", "iso_ms", "to_json"]

_PIPE_WIDTH = 200
_SURROGATE = re.compile("[\ud800-\udfff]")

Renderer = Callable[[Console, Mapping[str, Any]], None]
"""Writes a result for a person."""


def iso_ms(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 (UTC), or None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def escaped(value: object) -> str:
    """``value`` as text safe on a terminal: what is not printable is written as its escape.

    Values come from other laptops (a name, a note, a revision's author): a terminal
    escape or a bidirectional override in one must show as ``\x1b`` or ``\u202e``,
    never act on the person's terminal.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def cells(*values: object) -> list[Text]:
    """Table cells shown as given: ``[red]`` is data, not rich markup; escapes are escaped."""
    return [Text("-" if value is None else escaped(value)) for value in values]


def to_json(data: Mapping[str, Any]) -> str:
    """One line of JSON (UTF-8 text kept as is; a datetime becomes ISO 8601)."""

    def default(value: object) -> object:
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    text = json.dumps(dict(data), ensure_ascii=False, default=default)
    # A file path may hold bytes that are not UTF-8 (lone surrogates in Python): JSON
    # writes them as \\udcXX escapes, which standard output can always encode.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class Output:
    """A command's voice: ``result`` once at the end, ``note`` for a person only."""

    def __init__(self, *, json_output: bool) -> None:
        self.json = json_output
        # Consoles look up sys.stdout/sys.stderr when they write (pytest's capsys works).
        # Piped output is read by tools, not a terminal: keep table rows whole.
        width = None if sys.stdout.isatty() else _PIPE_WIDTH
        self.console = Console(highlight=False, soft_wrap=True, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the command wrote its result already."""
        return self._done

    def result(self, data: Mapping[str, Any], render: Renderer | None = None) -> None:
        """Write the command's result: the JSON object, or ``render`` (default: key: value)."""
        if self._done:  # one JSON object per run, whatever a command does
            raise RuntimeError("a command wrote two results")
        self._done = True
        if self.json:
            sys.stdout.write(to_json(data) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(self.console, data)
        else:
            for key, value in data.items():
                self.console.print(f"{key}: {_plain(value)}", markup=False)

    def event(self, data: Mapping[str, Any], text: str) -> None:
        """One line of a command that runs until stopped (``sync --live``): with --json,
        one JSON object per line, written at once; otherwise ``text``."""
        if self.json:
            sys.stdout.write(to_json(data) + "\n")
            sys.stdout.flush()
        else:
            self.console.print(text, markup=False)
            sys.stdout.flush()

    def note(self, text: str) -> None:
        """A line for a person, on standard error; nothing with --json."""
        if not self.json:
            self.err.print(text, markup=False)


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.1f}"
    # A file name given on the command line: shown escaped if it holds a control
    # character or bytes that are not UTF-8 (which standard output cannot encode).
    return printable(str(value))
