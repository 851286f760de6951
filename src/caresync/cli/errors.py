"""Exit codes of the command line, and how caresync's errors map to them.

Every command exits 0 on success. A failure prints one line on standard error
(``caresync: error: ...``) and exits with the code of its class below, so a
script can tell "fix your input" from "try again later" without parsing text.
"""

from __future__ import annotations

import enum

from caresync.exceptions import (
    CaresyncError,
    ConnectionLostError,
    DatabaseNotFoundError,
    FieldConflictError,
    ImmutableFieldError,
    InvalidInputError,
    ProtocolError,
    StorageError,
    SyncRefusedError,
    UnknownConflictError,
    UnknownEntryError,
    UnknownKeyUserError,
    UnknownRecordError,
)

__all__ = ["CliError", "ExitCode", "exit_code_for", "for_people", "one_line", "printable"]

MAX_LINE = 2000
"""An error line is cut here: a message echoing a hostile argument stays readable."""


class ExitCode(enum.IntEnum):
    """What a command's exit status means (documented in docs/cli.md)."""

    OK = 0
    CHECK_FAILED = 1
    """The command ran, and what it checked is not well: a simulation that did not
    converge or lost values, laptops that are stale, entries a recovery left out."""
    USAGE = 2
    """Bad input: an unknown option, a malformed value or path, a bad choice."""
    NOT_FOUND = 3
    """No such database, record, entry or conflict."""
    DATABASE = 4
    """The database cannot be used: not caresync's, too new, corrupt, in use, or the
    wrong kind (a server's where a laptop's is needed, or the reverse)."""
    REFUSED = 5
    """The server or the replica refused: wrong server or organisation, bad
    password or expired session, revoked, not enrolled."""
    CONNECTION = 6
    """The server could not be reached, or the link dropped; unsynced work is kept.
    Try again later."""
    CONFLICT = 7
    """The field must be resolved first, or belongs to a signed note."""
    PROTOCOL = 8
    """The peer broke the sync protocol."""
    INTERNAL = 70
    """A bug in caresync (set CARESYNC_DEBUG=1 for the traceback)."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C."""


class CliError(Exception):
    """A failure the command line detected itself, with the exit code it means."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


# Most specific first: the first class an error is an instance of decides.
_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (CliError, ExitCode.USAGE),  # overridden by CliError.code
    (DatabaseNotFoundError, ExitCode.NOT_FOUND),
    (UnknownRecordError, ExitCode.NOT_FOUND),
    (UnknownEntryError, ExitCode.NOT_FOUND),
    (UnknownConflictError, ExitCode.NOT_FOUND),
    (UnknownKeyUserError, ExitCode.NOT_FOUND),
    (FieldConflictError, ExitCode.CONFLICT),
    (ImmutableFieldError, ExitCode.CONFLICT),
    (InvalidInputError, ExitCode.USAGE),
    (StorageError, ExitCode.DATABASE),
    (SyncRefusedError, ExitCode.REFUSED),
    (ConnectionLostError, ExitCode.CONNECTION),
    (ProtocolError, ExitCode.PROTOCOL),
    (CaresyncError, ExitCode.USAGE),
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code for an error a command raised (INTERNAL for anything unexpected)."""
    if isinstance(error, CliError):
        return error.code
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return ExitCode.INTERNAL


# The library's messages speak Python (its arguments); a person at a shell reads the options.
_PYTHON_TO_CLI = (
    (", and create=False: nothing was created", ": nothing was created"),
    ("insecure=True, --insecure", "--insecure"),
    ("insecure=True", "--insecure"),
    ("choose=N or value=...", "--choose N or --value VALUE"),
    ("it syncs with `sync`", "it syncs with `caresync sync`"),
)


def for_people(message: str) -> str:
    """A library message as the command line says it: options, not Python arguments."""
    for python, cli in _PYTHON_TO_CLI:
        message = message.replace(python, cli)
    return message


def one_line(error: BaseException) -> str:
    """The error's message on one line (never empty), as :func:`printable` makes it."""
    return printable(str(error)) or type(error).__name__


def printable(text: str) -> str:
    """``text`` safe to write on a terminal, on one line of at most MAX_LINE characters.

    Runs of whitespace become one space; any other character that is not
    printable (a control character such as a terminal escape, a bidirectional
    override, a lone surrogate from bytes that are not UTF-8) is written as its
    escape (``\\x1b``, ``\\u202e``, ``\\udcff``), so an error that echoes an argument
    can neither break the line nor act on the terminal.
    """
    joined = " ".join(text.split())
    if not joined.isprintable():
        joined = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in joined
        )
    if len(joined) > MAX_LINE:
        joined = f"{joined[:MAX_LINE]}… ({len(joined) - MAX_LINE} more characters)"
    return joined
