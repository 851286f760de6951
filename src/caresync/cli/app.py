"""The ``caresync`` command: the parser of every command, and one place for errors.

Each command group lives in its own module and registers its parsers here; a
command's handler returns its exit code or raises. Here every error becomes
one line on standard error and an exit code (:mod:`caresync.cli.errors`):
never a traceback for a person's mistake.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from caresync import __version__
from caresync.cli import (
    audit,
    backup,
    conflicts,
    encrypt,
    fhir,
    hub,
    keys,
    login,
    records,
    recover,
    replicas,
    serve,
    simulate,
    status,
    sync,
    transfer,
    users,
)
from caresync.cli.common import SUBSTANCES_ENV, guard_arguments
from caresync.cli.databases import use_substances
from caresync.cli.errors import (
    CliError,
    ExitCode,
    exit_code_for,
    for_people,
    one_line,
    printable,
)
from caresync.cli.output import Output, to_json
from caresync.exceptions import CaresyncError

__all__ = ["build_parser", "main"]

DEBUG_ENV = "CARESYNC_DEBUG"


class _UsageError(Exception):
    """A command line argparse refused."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line of error, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``caresync`` command."""
    parser = _Parser(
        prog="caresync",
        description="Offline-first replication of clinical records: run a clinic server, "
        "enrol and sync laptops, read and resolve conflicts. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"caresync {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens on standard error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        serve,
        users,
        sync,
        login,
        encrypt,
        keys,
        status,
        records,
        conflicts,
        transfer,
        backup,
        recover,
        replicas,
        simulate,
        fhir,
        audit,
        hub,
    ):
        module.register(commands)
    guard_arguments(parser)  # no NUL, valid text: every argument of every command
    return parser


@functools.cache
def _shared_parser() -> argparse.ArgumentParser:
    """The parser :func:`main` reads command lines with, built once a process.

    Building it adds some 150 arguments, each with a gettext look-up (15-40 ms); a
    process that runs many commands (a test suite, a script embedding ``main``) pays
    that once. Parsing changes nothing in it: every call gets a fresh namespace.
    """
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``caresync`` command; returns its exit code (0 on success).

    A failure writes one line on standard error; with ``--json`` it also writes one
    JSON object on standard output, ``{"error": {"code": EXIT_CODE, "kind": ...,
    "message": ...}}``, so a script's JSON parser always has an object to read.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    wants_json = _wants_json(arguments)
    parser = _shared_parser()
    try:
        args = parser.parse_args(arguments)
    except _UsageError as exc:
        return _fail(str(exc), ExitCode.USAGE, json_output=wants_json, prefix=False)
    except SystemExit as exc:  # --help and --version print and "exit" 0
        return exc.code if isinstance(exc.code, int) else ExitCode.OK
    if args.verbose:
        # Otherwise logging's last-resort handler writes warnings to stderr by itself.
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=sys.stderr,
        )
    out = Output(json_output=getattr(args, "json", False))
    # An error after the command wrote its result adds no second JSON object.
    json_error = out.json

    def fail(message: str, code: ExitCode) -> int:
        return _fail(message, code, json_output=json_error and not out.done)

    try:
        if hasattr(args, "substances"):
            use_substances(args.substances or os.environ.get(SUBSTANCES_ENV) or None)
        return int(args.handler(args, out))
    except KeyboardInterrupt:
        return fail("interrupted; every change committed so far is kept", ExitCode.INTERRUPTED)
    except (CaresyncError, CliError) as exc:
        return fail(one_line(exc), exit_code_for(exc))
    except BrokenPipeError:  # the reader went away (`caresync ... | head`)
        return ExitCode.OK
    except OSError as exc:
        code = ExitCode.NOT_FOUND if isinstance(exc, FileNotFoundError) else ExitCode.DATABASE
        return fail(one_line(exc), code)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the last resort: one line, not a traceback
        # BaseException: a native extension's panic (pyo3's PanicException) is one too.
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        return fail(
            f"internal error ({type(exc).__name__}: {one_line(exc)}); this is a bug in "
            f"caresync: please report it (set {DEBUG_ENV}=1 for the traceback)",
            ExitCode.INTERNAL,
        )


def _wants_json(arguments: Sequence[str]) -> bool:
    """Whether ``--json`` was given (before a ``--``): known even when parsing fails."""
    for argument in arguments:
        if argument == "--":
            return False
        if argument == "--json":
            return True
    return False


def _fail(message: str, code: ExitCode, *, json_output: bool, prefix: bool = True) -> int:
    """Report a failure: one line on standard error, and the JSON object with --json."""
    message = for_people(message)
    if prefix:
        line = f"caresync: error: {message}"
    else:  # "caresync COMMAND: what was wrong": the JSON message is what was wrong
        prog, _, message = message.partition(": ")
        line = f"{prog}: error: {message}"
    sys.stderr.write(printable(line) + "\n")
    sys.stderr.flush()
    if json_output:
        error = {"code": int(code), "kind": code.name.lower(), "message": printable(message)}
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.write(to_json({"error": error}) + "\n")
            sys.stdout.flush()
    return code
