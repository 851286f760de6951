"""Parsing shared by the commands: options, values, and running a coroutine.

Every argument is checked where it is parsed, so that a command line a person
typed wrong is refused (exit 2, one line naming the argument) before anything
is opened, created or sent: names (:mod:`caresync.names`), ids, server URLs,
hosts and ports, file paths, and values. :func:`guard_arguments` adds the
checks every argument gets, whatever its command: no NUL character, and text
that is valid Unicode (an argument made of bytes that are not UTF-8 arrives
holding lone surrogates); only file paths may hold such bytes, since a file's
name may.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import re
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from caresync.cli.errors import CliError
from caresync.cli.output import Output
from caresync.exceptions import InvalidInputError
from caresync.names import check_device_name, check_organisation, check_username, shown
from caresync.protocol.messages import MAX_ID_LENGTH

__all__ = [
    "Handler",
    "add_db",
    "add_json",
    "AUTHOR_HELP",
    "author",
    "device_name",
    "guard_arguments",
    "identifier",
    "MAX_VALUE_DEPTH",
    "listen_host",
    "organisation",
    "parse_value",
    "path",
    "port",
    "run",
    "server_url",
    "stop_on_signals",
    "text",
    "username",
]

T = TypeVar("T")
Handler = Callable[[argparse.Namespace, Output], int]
"""What a command runs: it returns the exit code (errors are raised)."""

MAX_URL_LENGTH = 2048
_MAX_PATH_BYTES = 4095  # PATH_MAX less its NUL, on Linux and macOS
_MAX_NAME_BYTES = 255  # NAME_MAX: one component of a path
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


SUBSTANCES_ENV = "CARESYNC_SUBSTANCES"


def add_db(parser: argparse.ArgumentParser, what: str = "the database") -> None:
    """The ``--db PATH`` option every command but ``simulate`` has, and ``--substances``.

    Every command that opens a database computes conflicts with one rulebook, and a
    database re-indexes when it meets another: so the substance table an application
    uses goes with every command (``--substances``, or ``CARESYNC_SUBSTANCES``).
    """
    parser.add_argument(
        "--db", required=True, metavar="PATH", type=path, help=f"{what} (an SQLite file)"
    )
    parser.add_argument(
        "--substances",
        metavar="FILE",
        type=path,
        default=None,
        help="the allergy check's substance table (JSON, the bundled table's format; "
        f"default: ${SUBSTANCES_ENV}, else the bundled table)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option: one JSON object on standard output, nothing else there."""
    parser.add_argument(
        "--json", action="store_true", help="write one JSON object on standard output"
    )


# ---------------------------------------------------------------- arguments


def path(raw: str) -> str:
    """An argparse type for a file or directory path (it need not exist).

    Bytes that are not UTF-8 are allowed (a file's name may hold them); a NUL,
    an empty path and one longer than the system allows are refused.
    """
    if not raw:
        raise argparse.ArgumentTypeError("a path cannot be empty")
    if "\x00" in raw:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL character: {shown(raw)}")
    try:
        encoded = os.fsencode(raw)
    except UnicodeError:
        raise argparse.ArgumentTypeError(
            f"{shown(raw)} holds characters no file name can hold on this system"
        ) from None
    if len(encoded) > _MAX_PATH_BYTES or any(
        len(part) > _MAX_NAME_BYTES for part in encoded.split(b"/")
    ):
        raise argparse.ArgumentTypeError(
            f"the path {shown(raw)} is too long (at most {_MAX_PATH_BYTES} bytes, "
            f"{_MAX_NAME_BYTES} per name)"
        )
    return raw


def text(what: str, *, max_length: int = 256) -> Callable[[str], str]:
    """An argparse type for a non-empty name on one line (refused naming ``what``)."""

    def check(value: str) -> str:
        if not value.strip() or len(value) > max_length or not value.isprintable():
            raise argparse.ArgumentTypeError(
                f"{what} must be non-empty, printable, on one line and at most "
                f"{max_length} characters, not {shown(value)}"
            )
        return value

    check.__name__ = what  # argparse names the type in its message
    return check


author = text("author")
AUTHOR_HELP = (
    "who writes it: the account logged in on the laptop, which is the default "
    "(naming anyone else is refused)"
)


def _name_type(check: Callable[[object], str], what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        try:
            return check(raw)
        except InvalidInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse


username = _name_type(check_username, "username")
organisation = _name_type(check_organisation, "organisation")
device_name = _name_type(check_device_name, "device name")


def identifier(what: str) -> Callable[[str], str]:
    """An argparse type for an id (record, conflict, replica): 1 to 128 printable characters.

    The wire protocol carries no longer id, so none is stored anywhere.
    """

    def check(raw: str) -> str:
        if not 0 < len(raw) <= MAX_ID_LENGTH or not raw.isprintable() or raw != raw.strip():
            raise argparse.ArgumentTypeError(
                f"{what} is 1 to {MAX_ID_LENGTH} printable characters without surrounding "
                f"spaces, not {shown(raw)}"
            )
        return raw

    check.__name__ = what
    return check


def port(raw: str) -> int:
    """An argparse type for a TCP port to listen on: 0 to 65535 (0: any free one)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5) or int(raw) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number 0..65535, not {shown(raw)}")
    return int(raw)


def _host_ok(host: str) -> bool:
    """An IP address, or a host name whose labels are letters, digits, '-' (and IDNA)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    return len(ascii_host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def listen_host(raw: str) -> str:
    """An argparse type for the address ``serve`` listens on: an IP address or a host name."""
    if not raw.isprintable() or not _host_ok(raw):
        raise argparse.ArgumentTypeError(
            f"expected an IP address (127.0.0.1, ::1, 0.0.0.0) or a host name, not {shown(raw)}"
        )
    return raw


def server_url(raw: str) -> str:
    """An argparse type for a server's URL: ``ws://HOST[:PORT][/PATH]`` or ``wss://...``."""

    def bad(why: str) -> argparse.ArgumentTypeError:
        return argparse.ArgumentTypeError(
            f"{shown(raw)} is not a server URL like ws://127.0.0.1:8765: {why}"
        )

    if not raw.startswith(("ws://", "wss://")):
        raise bad("it must start with ws:// or wss://")
    if len(raw) > MAX_URL_LENGTH:
        raise bad(f"it is longer than {MAX_URL_LENGTH} characters")
    if not raw.isprintable() or " " in raw:
        raise bad("it holds a space, or a character that is not printable")
    try:
        parts = urlsplit(raw)
        port_ = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise bad(str(exc)) from None
    host = parts.hostname
    if not host:
        raise bad("it names no host")
    if not _host_ok(host):
        raise bad(f"{shown(host)} is not a host name or an IP address")
    if port_ == 0:
        raise bad("port 0 is not a server's port")
    if parts.username is not None or parts.password is not None:
        raise bad("it holds a user or password; give the username with --username")
    if parts.fragment or raw.endswith("#"):
        raise bad("it holds a #fragment")
    return raw


def guard_arguments(parser: argparse.ArgumentParser) -> None:
    """Check every argument of ``parser`` and its subcommands, whatever its own type.

    Wraps each action's type with a check that refuses a NUL character, and,
    except for :func:`path` arguments, text that is not valid Unicode (the lone
    surrogates Python makes of bytes that are not UTF-8). A command added later
    gets the same checks.
    """
    for action in parser._actions:  # argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                guard_arguments(sub)
        elif action.nargs != 0 and not getattr(action.type, "guarded", False):
            action.type = _guarded(action.type)


def _guarded(inner: Any) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        if "\x00" in raw:
            raise argparse.ArgumentTypeError(
                f"an argument cannot hold a NUL character: {shown(raw)}"
            )
        if inner is not path and not _is_unicode(raw):
            raise argparse.ArgumentTypeError(
                f"{shown(raw)} holds bytes that are not UTF-8 text (check the terminal's or "
                "the script's encoding)"
            )
        return raw if inner is None else inner(raw)

    parse.__name__ = getattr(inner, "__name__", "text")
    parse.guarded = True  # type: ignore[attr-defined]
    return parse


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -------------------------------------------------------------------- values


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{raw} is out of range")
    return value


MAX_VALUE_DEPTH = 32
"""How deep a value may nest: the record model's limit, checked here before anything opens."""


def parse_value(raw: str, what: str = "VALUE", *, max_depth: int = MAX_VALUE_DEPTH) -> Any:
    """A value given on the command line: JSON when it parses as JSON, else the string.

    ``42`` is a number, ``true`` a boolean, ``"42"`` and ``42 mg`` strings,
    ``{"code": "J45"}`` an object. ``NaN``, ``Infinity`` and ``1e999`` are not finite
    JSON numbers: they stay strings. JSON nested more than ``max_depth`` levels (or
    too deeply for the parser), or with a ``\\udXXX`` escape that is not a character,
    is refused (CliError), whatever the Python version's parser accepts.
    """
    try:
        value = json.loads(raw, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError:
        raise CliError(f"{what} is JSON nested far too deeply to be a value: flatten it") from None
    except ValueError:
        return raw
    problem = _problem(value, max_depth)
    if problem == "depth":
        raise CliError(
            f"{what} is JSON nested more than {max_depth} levels deep, more than a value may "
            "be: flatten it"
        )
    if problem == "surrogate":
        raise CliError(
            f"{what} holds a \\uXXXX escape that is not a character (a lone surrogate): "
            "write the character itself"
        )
    return value


def _problem(value: object, max_depth: int) -> str | None:
    """What the command line refuses in parsed JSON: "depth", "surrogate", or None.

    Depth counts as the record model does: the items of a list or an object at the
    top are one level down.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:  # a loop, not recursion: json.loads may accept deeper nesting than recursion
        item, depth = stack.pop()
        if depth > max_depth:
            return "depth"
        if isinstance(item, str):
            if not _is_unicode(item):
                return "surrogate"
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _is_unicode(key):
                    return "surrogate"
                stack.append((child, depth + 1))
    return None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event SIGINT or SIGTERM sets while the block runs (a command that runs until
    stopped: ``serve``, ``sync --live``); called inside the running event loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion in a fresh event loop."""
    return asyncio.run(coro)
