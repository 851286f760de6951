"""``caresync encrypt``: a plain laptop database made encrypted, in place.

The work is :func:`caresync.convert.encrypt_laptop`'s; this reads the password
(``CARESYNC_PASSWORD`` or a prompt) and reports.
"""

from __future__ import annotations

import argparse
from typing import Any

from caresync.cli.common import add_db, add_json, run
from caresync.cli.output import Output
from caresync.cli.password import read_password
from caresync.convert import encrypt_laptop
from caresync.storage import key_file_for

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``encrypt``."""
    parser = commands.add_parser(
        "encrypt",
        help="encrypt a plain laptop database in place",
        description="Encrypt a plain (unencrypted) laptop database in place, for the account "
        "logged in on it: its password (from CARESYNC_PASSWORD or asked) is checked as an "
        "offline login and wraps the new key in LAPTOP_DB.keys. An encrypted copy is written "
        "beside the database and checked row by row before it replaces it, so an interruption "
        "loses nothing (run the command again to finish). Other users of the laptop get a "
        "copy of the key at their next online login (`caresync sync --username NAME "
        "--unlock`). Refuses an encrypted database, a server's, and a laptop nobody is "
        "logged in on.",
    )
    add_db(parser, "the plain laptop database")
    add_json(parser)
    parser.set_defaults(handler=_encrypt)


def _encrypt(args: argparse.Namespace, out: Output) -> int:
    password = read_password(f"Password of the user logged in on {args.db}: ")
    user = run(encrypt_laptop(args.db, password))
    out.result(
        {"database": str(args.db), "username": user, "key_file": str(key_file_for(args.db))},
        lambda console, data: console.print(
            f"{data['database']} is encrypted; {data['username']}'s password opens it (key "
            f"file {data['key_file']}: keep it with the database)",
            markup=False,
        ),
    )
    return 0
