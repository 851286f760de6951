"""``caresync login``: check a user's password on a laptop with no network."""

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
    """Add ``login``."""
    parser = commands.add_parser(
        "login",
        help="log a user in on a laptop, offline",
        description="Check a user's password with no network, against what the laptop kept of "
        "that user's last online login here (password from CARESYNC_PASSWORD or asked). "
        "After 5 failures in a row the laptop checks no password for 30 s, doubling with each "
        "further failure up to an hour; a right password resets the count.",
    )
    add_db(parser, "the laptop's database")
    parser.add_argument("--username", required=True, type=username, help="who logs in")
    add_json(parser)
    parser.set_defaults(handler=_login)


def _login(args: argparse.Namespace, out: Output) -> int:
    password = read_password(f"Password for {args.username}: ")

    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
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
