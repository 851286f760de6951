"""Passwords for the command line: from ``CARESYNC_PASSWORD`` or a prompt, never an argument.

An argument would end up in the shell's history and in every process listing.
Without the variable and without a terminal to prompt on, the command fails at
once with a message saying so: it never waits for input that cannot come.
"""

from __future__ import annotations

import getpass
import os
import sys

from caresync.cli.errors import CliError, ExitCode

__all__ = ["PASSWORD_ENV", "read_password"]

PASSWORD_ENV = "CARESYNC_PASSWORD"


def read_password(prompt: str, *, confirm: bool = False) -> str:
    """The password from ``CARESYNC_PASSWORD``, else asked on the terminal.

    ``confirm`` asks twice (for a new password) and refuses a mismatch.
    """
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        if not from_env:
            raise CliError(f"{PASSWORD_ENV} is set but empty", ExitCode.USAGE)
        return from_env
    if not sys.stdin or not sys.stdin.isatty():
        raise CliError(
            f"a password is needed: set {PASSWORD_ENV} or run this in a terminal to be asked",
            ExitCode.USAGE,
        )
    try:
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat the password: ") != password:
            raise CliError("the two passwords differ; nothing was changed", ExitCode.USAGE)
    except EOFError:
        raise CliError("no password was entered", ExitCode.USAGE) from None
    if not password:
        raise CliError("the password is empty", ExitCode.USAGE)
    return password
