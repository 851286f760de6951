"""``caresync encrypt`` and ``caresync reencrypt``: a database's encryption, in place.

``encrypt``: a plain laptop database made encrypted; the work is
:func:`caresync.convert.encrypt_laptop`'s. ``reencrypt``: an encrypted
database (a laptop's or a server's) rewritten in the cipher new databases are
written in (AEGIS-256), same key; the work is
:func:`caresync.storage.encrypt_in_place.reencrypt_in_place`'s. Both read the
password (``CARESYNC_PASSWORD`` or a prompt) and report.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from caresync.cli.common import add_db, add_json, run
from caresync.cli.databases import store_key
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.cli.password import read_password
from caresync.convert import encrypt_laptop
from caresync.storage import key_file_for
from caresync.storage._cipher import NEW_DATABASE_CIPHER
from caresync.storage.encrypt_in_place import reencrypt_in_place

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``encrypt`` and ``reencrypt``."""
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
    parser = commands.add_parser(
        "reencrypt",
        help="rewrite an encrypted database in the current cipher (AEGIS-256), same key",
        description="Rewrite an encrypted database written in an older format (SQLCipher's, "
        "as caresync wrote it before AEGIS-256) in the format new databases are written in: "
        "AEGIS-256, cheaper per page written. The key stays the same, so every password "
        "that opened it still does. A laptop's database is unlocked by a password (from "
        "CARESYNC_PASSWORD or asked) of a user who logged in there; a server's by "
        "CARESYNC_DATABASE_KEY. A new copy is written beside the database and checked row "
        "by row before it replaces it, so an interruption loses nothing. A database in "
        "AEGIS already is left as it is. Refuses a plain database, a wrong password or "
        "key, and a database another process has open (stop `serve` or `sync --live`).",
    )
    add_db(parser, "the encrypted database (a laptop's or a server's)")
    add_json(parser)
    parser.set_defaults(handler=_reencrypt)


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


def _reencrypt(args: argparse.Namespace, out: Output) -> int:
    database = Path(args.db)
    if not database.is_file():
        raise CliError(f"there is no database at {database}; nothing was done", ExitCode.NOT_FOUND)
    key = run(store_key(database))
    if key is None:
        raise CliError(
            f"{database} is not encrypted (no key file beside it, and CARESYNC_DATABASE_KEY "
            "is not set for a server's): `caresync encrypt` encrypts a laptop's. "
            "Nothing was changed",
            ExitCode.DATABASE,
        )
    rewritten = run(asyncio.to_thread(reencrypt_in_place, database, key))
    out.result(
        {"database": str(database), "cipher": NEW_DATABASE_CIPHER, "rewritten": rewritten},
        lambda console, data: console.print(
            f"{data['database']} is rewritten in {data['cipher']}; the same passwords open it"
            if data["rewritten"]
            else f"{data['database']} is in {data['cipher']} already; nothing was changed",
            markup=False,
        ),
    )
    return 0
