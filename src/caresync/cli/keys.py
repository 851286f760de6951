"""``caresync keys``: who can open an encrypted laptop's database, and its key.

``keys remove-user`` removes one user's copy of the key from the laptop's key file
(``LAPTOP_DB.keys``), on the word of another user whose password opens it now:
:func:`caresync.storage.laptop_key.remove_laptop_user`. ``keys rotate`` rewrites
the database under a new key, and leaves only the acting user's copy of it:
:func:`caresync.storage.laptop_key.rotate_laptop_key`. Both read the password
(``CARESYNC_PASSWORD`` or a prompt) and report.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from caresync.cli.common import add_db, add_json, run, username
from caresync.cli.databases import laptop_path
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.cli.password import read_password
from caresync.storage import key_file_for
from caresync.storage.laptop_key import remove_laptop_user, rotate_laptop_key

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``keys remove-user`` and ``keys rotate``."""
    group = commands.add_parser(
        "keys",
        help="who can open an encrypted laptop, and its key",
        description="Remove one user's copy of an encrypted laptop database's key, or "
        "rotate the key (a new one, the database rewritten under it). See "
        "docs/operations.md: when a clinician leaves, a laptop changes hands, or a key "
        "may have leaked, remove-user, then rotate.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    remove = actions.add_parser(
        "remove-user",
        help="remove one user's copy of a laptop's key: their password no longer opens it",
        description="Remove USERNAME's copy of the key from LAPTOP_DB.keys: from now on "
        "their password no longer opens this laptop's database (until an online login "
        "on this laptop while it is open gives them one again). Needs the password of "
        "ANOTHER user who has a copy (from CARESYNC_PASSWORD or asked; --by names them, "
        "else every other user's copy is tried), counted as every unlock is. The key "
        "itself does not change: whoever opened the database before could have kept it, "
        "and backups keep their own key file; `caresync keys rotate` makes a new key. "
        "Refuses the last copy (nobody could open the database any more) and a user "
        "with no copy.",
    )
    add_db(remove, "the encrypted laptop database")
    remove.add_argument(
        "remove_user", metavar="USERNAME", type=username, help="whose copy to remove"
    )
    remove.add_argument(
        "--by",
        type=username,
        help="the user whose password is given (default: any other user's it opens)",
    )
    add_json(remove)
    remove.set_defaults(handler=_remove_user)
    rotate = actions.add_parser(
        "rotate",
        help="rewrite a laptop's database under a new key; only your copy of it is kept",
        description="Make a new random key for an encrypted laptop database and rewrite "
        "the database under it in place (a copy beside it, checked row by row, then "
        "renamed over it: an interruption leaves a database that its old or its new key "
        "file opens; opening it with the acting user's password, or running the command "
        "again, finishes it). The password (from CARESYNC_PASSWORD or asked) of a user "
        "who has a copy unlocks the old key (--username names them) and wraps the new "
        "one: the new key file holds only that user's copy. Every other user gets one "
        "again at their next online login on this laptop while it is open (`caresync "
        "sync --username NAME --unlock`). The old key no longer opens the database. "
        "Refuses a plain database, a database with no key file, and one in use by "
        "another process (stop `sync --live` first).",
    )
    add_db(rotate, "the encrypted laptop database")
    rotate.add_argument(
        "--username", type=username, help="whose password is given (default: whoever's it opens)"
    )
    add_json(rotate)
    rotate.set_defaults(handler=_rotate)


def _remove_user(args: argparse.Namespace, out: Output) -> int:
    database = laptop_path(args.db)
    if args.by is not None and args.by == args.remove_user:
        raise CliError(
            f"--by names {args.remove_user}, whose copy is to be removed: the password must be "
            "another user's; nothing was changed",
            ExitCode.USAGE,
        )
    password = read_password(f"Password of another user of {database} (not {args.remove_user}): ")
    remaining = run(
        asyncio.to_thread(remove_laptop_user, database, args.remove_user, password, args.by)
    )
    out.result(
        {
            "database": str(database),
            "removed": args.remove_user,
            "users": remaining,
            "key_file": str(key_file_for(database)),
        },
        lambda console, data: console.print(
            f"{data['removed']}'s copy of the key is removed from {data['key_file']}: their "
            f"password no longer opens {data['database']} (users with a copy: "
            f"{', '.join(data['users'])}). The key itself is unchanged: anyone who opened "
            "the database before could have kept it, and backups keep their own key file; "
            f"`caresync keys rotate --db {data['database']}` makes a new one.",
            markup=False,
        ),
    )
    return 0


def _rotate(args: argparse.Namespace, out: Output) -> int:
    database = laptop_path(args.db)
    who = args.username if args.username is not None else "a user who logged in there"
    password = read_password(f"Password to open {database} ({who}): ")
    done = run(asyncio.to_thread(rotate_laptop_key, database, password, args.username))
    out.result(
        {
            "database": str(database),
            "username": done.username,
            "dropped": list(done.dropped),
            "key_file": str(key_file_for(database)),
        },
        lambda console, data: console.print(_rotated_text(data), markup=False),
    )
    return 0


def _rotated_text(data: Mapping[str, Any]) -> str:
    text = (
        f"{data['database']} is rewritten under a new key; the old key no longer opens it. "
        f"Only {data['username']}'s password opens it now (key file {data['key_file']})."
    )
    if data["dropped"]:
        text += (
            f" {', '.join(data['dropped'])} no longer can: each gets a copy again at their next "
            f"online login on this laptop while it is open (`caresync sync --db "
            f"{data['database']} --username NAME --unlock`, with CARESYNC_UNLOCK_PASSWORD "
            f"set to {data['username']}'s password)."
        )
    return text
