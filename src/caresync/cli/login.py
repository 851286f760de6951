"""``caresync login`` and ``caresync logout``: who is logged in on a laptop, offline.

The account logged in writes every entry made on the laptop (see
:mod:`caresync.logins`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from caresync.cli.common import add_db, add_json, run, username
from caresync.cli.databases import open_laptop
from caresync.cli.output import Output
from caresync.cli.password import read_password

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``login`` and ``logout``."""
    parser = commands.add_parser(
        "login",
        help="log a user in on a laptop, offline",
        description="Check a user's password with no network, against what the laptop kept of "
        "that user's last online login here (password from CARESYNC_PASSWORD or asked), and "
        "log them in: every entry made on the laptop is then written as that account, until "
        "`logout`, another login, or 30 minutes without an edit. "
        "After 5 failures in a row the laptop checks no password for 30 s, doubling with each "
        "further failure up to an hour; a right password resets the count.",
    )
    add_db(parser, "the laptop's database")
    parser.add_argument("--username", required=True, type=username, help="who logs in")
    add_json(parser)
    parser.set_defaults(handler=_login)

    logout = commands.add_parser(
        "logout",
        help="log out of a laptop",
        description="Nobody is logged in on the laptop any more: entries are refused until "
        "someone logs in (`login`, or a sync with --username).",
    )
    add_db(logout, "the laptop's database")
    add_json(logout)
    logout.set_defaults(handler=_logout)


def _login(args: argparse.Namespace, out: Output) -> int:
    password = read_password(f"Password for {args.username}: ")

    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db, username=args.username, password=password) as replica:
            await replica.login_offline(args.username, password)
            return {
                "username": args.username,
                "replica_id": replica.replica_id,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }

    out.result(
        run(go()),
        lambda console, data: console.print(f"{data['username']} logged in offline", markup=False),
    )
    return 0


def _logout(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            who = replica.user
            await replica.logout()
            return {"logged_out": who, "replica_id": replica.replica_id}

    out.result(
        run(go()),
        lambda console, data: console.print(
            f"{data['logged_out']} logged out" if data["logged_out"] else "nobody was logged in",
            markup=False,
        ),
    )
    return 0
