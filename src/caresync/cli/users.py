"""``caresync user``: accounts on a server (add one, name it, change a password)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from caresync.cli.common import add_db, add_json, organisation, run, username
from caresync.cli.databases import open_server_store, rulebook
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.cli.password import PASSWORD_ENV, read_password
from caresync.exceptions import InvalidInputError
from caresync.names import check_display_name
from caresync.server import SyncServer, hash_password
from caresync.storage import server_database_key
from caresync.storage.servers import is_database_url

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``user add``, ``user name``, ``user passwd``, ``user disable``, ``user enable``
    and ``user admin``."""
    group = commands.add_parser(
        "user", help="accounts on a server", description="Accounts of a server's organisations."
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser(
        "add",
        help="add an account",
        description="Add a user to an organisation of a server database (created if "
        f"missing). The password comes from {PASSWORD_ENV} or a prompt (asked twice); it is "
        "stored as an argon2id hash. Works while the server runs.",
    )
    add_db(add, "the server's database (created if missing)")
    add.add_argument("--org", required=True, type=organisation, help="organisation")
    add.add_argument("--username", required=True, type=username, help="the new user")
    add.add_argument(
        "--name",
        type=_display_name,
        help='how people see the account, e.g. "Dr Aïcha Diallo" (default: the username); '
        "shown beside each entry the user writes",
    )
    add.add_argument(
        "--exist-ok",
        action="store_true",
        help="a user that exists already in that organisation is not an error (its password "
        "is left as it is: change it with `user passwd`)",
    )
    add.add_argument(
        "--admin",
        action="store_true",
        help="make the account an administrator: it may open the server's admin page "
        "(GET /admin); `user admin --revoke` takes that back",
    )
    add_json(add)
    add.set_defaults(handler=_add)

    admin = actions.add_parser(
        "admin",
        help="grant or revoke the administrator role",
        description="Let an account open the server's admin page (GET /admin), or take that "
        "back. The page checks the role at every request: a running server follows at once.",
    )
    add_db(admin, "the server's database")
    admin.add_argument("--org", required=True, type=organisation, help="organisation")
    admin.add_argument("--username", required=True, type=username, help="the user")
    which = admin.add_mutually_exclusive_group(required=True)
    which.add_argument("--grant", dest="admin", action="store_true", help="make it an admin")
    which.add_argument("--revoke", dest="admin", action="store_false", help="no longer an admin")
    add_json(admin)
    admin.set_defaults(handler=_set_admin)

    name = actions.add_parser(
        "name",
        help="set how people see an account",
        description="Set an account's display name, shown beside each entry it wrote "
        "(laptops learn it at their next sync). Works while the server runs.",
    )
    add_db(name, "the server's database")
    name.add_argument("--org", required=True, type=organisation, help="organisation")
    name.add_argument("--username", required=True, type=username, help="the user")
    name.add_argument(
        "--name", required=True, type=_display_name, help='the display name ("" removes it)'
    )
    add_json(name)
    name.set_defaults(handler=_name)

    passwd = actions.add_parser(
        "passwd",
        help="change a password",
        description=f"Set a user's new password (from {PASSWORD_ENV} or a prompt, asked "
        "twice). The user's sessions end at once: a running server closes their connections "
        "within a second, and laptops ask for the new password.",
    )
    add_db(passwd, "the server's database")
    passwd.add_argument("--org", required=True, type=organisation, help="organisation")
    passwd.add_argument("--username", required=True, type=username, help="the user")
    add_json(passwd)
    passwd.set_defaults(handler=_passwd)

    for action, verb, what in (
        (
            "disable",
            "disable an account",
            "It can no longer log in, and its sessions end at once (a running server closes "
            "their connections within a second). Nothing it wrote is touched; `user enable` "
            "undoes it.",
        ),
        (
            "enable",
            "let a disabled account log in again",
            "With its password, as before it was disabled.",
        ),
    ):
        parser = actions.add_parser(action, help=verb, description=f"{verb.capitalize()}. {what}")
        add_db(parser, "the server's database")
        parser.add_argument("--org", required=True, type=organisation, help="organisation")
        parser.add_argument("--username", required=True, type=username, help="the user")
        add_json(parser)
        parser.set_defaults(handler=_disable if action == "disable" else _enable)


def _add(args: argparse.Namespace, out: Output) -> int:
    # The password first: a command that cannot get one creates nothing.
    password = read_password(f"New password for {args.username} ({args.org}): ", confirm=True)

    async def go() -> tuple[str, bool]:
        password_hash = await asyncio.to_thread(hash_password, password)
        if is_database_url(args.db):
            # Made on first use, as a new file is; opening an existing one changes nothing.
            async with await SyncServer.open(args.db, rulebook=rulebook()):
                pass
        elif not await asyncio.to_thread(Path(args.db).exists):
            new = await SyncServer.open(args.db, rulebook=rulebook(), key=server_database_key())
            async with new as server:
                await server.store.add_user(
                    args.org, args.username, password_hash, display_name=args.name, admin=args.admin
                )
                return server.server_id, False
        # An existing one, perhaps served right now: accounts only, beside the server.
        async with await open_server_store(args.db, accounts_only=True) as store:
            identity = await store.get_identity()
            server_id = "" if identity is None else identity.replica_id
            if await store.get_user(args.org, args.username) is not None:
                if args.exist_ok:
                    return server_id, True
                raise CliError(
                    f"user {args.username!r} exists in {args.org!r} (give --exist-ok to accept "
                    "that; `user passwd` changes a password)"
                )
            await store.add_user(
                args.org, args.username, password_hash, display_name=args.name, admin=args.admin
            )
            return server_id, False

    server_id, already = run(go())
    out.result(
        {
            "org": args.org,
            "username": args.username,
            "server_id": server_id,
            "already": already,
            "admin": args.admin and not already,
        }
    )
    return 0


def _display_name(raw: str) -> str:
    if raw == "":
        return raw
    try:
        return check_display_name(raw)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name(args: argparse.Namespace, out: Output) -> int:
    async def go() -> None:
        async with await open_server_store(args.db, accounts_only=True) as store:
            if await store.get_user(args.org, args.username) is None:
                raise CliError(f"no user {args.username!r} in {args.org!r}", ExitCode.NOT_FOUND)
            await store.set_display_name(args.org, args.username, args.name or None)

    run(go())
    out.result({"org": args.org, "username": args.username, "name": args.name or None})
    return 0


def _passwd(args: argparse.Namespace, out: Output) -> int:
    password = read_password(f"New password for {args.username} ({args.org}): ", confirm=True)

    async def go() -> None:
        password_hash = await asyncio.to_thread(hash_password, password)
        async with await open_server_store(args.db, accounts_only=True) as store:
            if await store.get_user(args.org, args.username) is None:
                raise CliError(f"no user {args.username!r} in {args.org!r}", ExitCode.NOT_FOUND)
            await store.set_password_hash(args.org, args.username, password_hash)

    run(go())
    out.result({"org": args.org, "username": args.username, "changed": True})
    return 0


def _disable(args: argparse.Namespace, out: Output) -> int:
    return _set_disabled(args, out, True)


def _enable(args: argparse.Namespace, out: Output) -> int:
    return _set_disabled(args, out, False)


def _set_disabled(args: argparse.Namespace, out: Output, disabled: bool) -> int:
    async def go() -> None:
        async with await open_server_store(args.db, accounts_only=True) as store:
            if await store.get_user(args.org, args.username) is None:
                raise CliError(f"no user {args.username!r} in {args.org!r}", ExitCode.NOT_FOUND)
            await store.set_user_disabled(args.org, args.username, disabled)

    run(go())
    out.result({"org": args.org, "username": args.username, "disabled": disabled})
    return 0


def _set_admin(args: argparse.Namespace, out: Output) -> int:
    async def go() -> None:
        async with await open_server_store(args.db, accounts_only=True) as store:
            if await store.get_user(args.org, args.username) is None:
                raise CliError(f"no user {args.username!r} in {args.org!r}", ExitCode.NOT_FOUND)
            await store.set_user_admin(args.org, args.username, args.admin)

    run(go())
    out.result({"org": args.org, "username": args.username, "admin": args.admin})
    return 0
