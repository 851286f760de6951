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
from caresync.protocol.messages import MAX_PASSWORD_LENGTH

__all__ = ["PASSWORD_ENV", "UNLOCK_PASSWORD_ENV", "read_password"]

PASSWORD_ENV = "CARESYNC_PASSWORD"
UNLOCK_PASSWORD_ENV = "CARESYNC_UNLOCK_PASSWORD"
"""A password that opens a laptop's encrypted database when the one logging in does not
yet: the user's previous password after a change, or a colleague's for a first login."""


def read_password(prompt: str, *, confirm: bool = False, env: str = PASSWORD_ENV) -> str:
    """The password from the environment variable ``env`` (``CARESYNC_PASSWORD``), else
    asked on the terminal.

    ``confirm`` asks twice (for a new password) and refuses a mismatch.
    """
    from_env = os.environ.get(env)
    if from_env is not None:
        if not from_env:
            raise CliError(f"{env} is set but empty", ExitCode.USAGE)
        return _checked(from_env, f"the password in {env}")
    if not sys.stdin or not sys.stdin.isatty():
        raise CliError(
            f"a password is needed: set {env} or run this in a terminal to be asked",
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
    return _checked(password, "the password")


def _checked(password: str, what: str) -> str:
    """A password the protocol can carry: UTF-8 text of at most MAX_PASSWORD_LENGTH characters.

    Refused otherwise, before anything is stored: an account whose password
    cannot be sent could never log in.
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        raise CliError(
            f"{what} is {len(password)} characters; at most {MAX_PASSWORD_LENGTH} are allowed",
            ExitCode.USAGE,
        )
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(
            f"{what} holds bytes that are not UTF-8 text (check the terminal's or the "
            "script's encoding)",
            ExitCode.USAGE,
        ) from None
    return password
