"""``caresync recover``: take back, from a laptop's database, entries a restored server lost.

For the laptops lost together with the server's data (see :mod:`caresync.recovery`):
their entries live on in the laptops that pulled them, and an operator on the server's
machine vouches for one such laptop's database file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from caresync.cli.common import add_db, add_json, path, run
from caresync.cli.databases import (
    laptop_path,
    open_server_store,
    operator,
    rulebook,
    store_key,
)
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.recovery import RecoveryReport, recover_entries
from caresync.server import SyncServer
from caresync.storage import SQLiteStore, server_database_key

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``recover``."""
    recover = commands.add_parser(
        "recover",
        help="take back from a laptop's database what a restored server lost",
        description="After a server was restored from an older backup, give it what a "
        "laptop's database holds of its records and it lacks: entries of laptops lost with "
        "the server's data, which live on in the laptops that pulled them. Each entry goes "
        "in as written by the laptop it names, checked as a push is; you vouch for the file "
        "(it is recorded in the server's audit trail as yours). Run it on the server's "
        "machine with the server stopped (an SQLite database takes one writer), on a copy "
        "of a colleague laptop's database (caresync backup of it); an encrypted one asks "
        "for the password of a user who logged in there (or CARESYNC_PASSWORD).",
    )
    add_db(recover, "the server's database")
    recover.add_argument(
        "--from",
        dest="laptop",
        required=True,
        metavar="FILE",
        type=path,
        help="a laptop's database enrolled to this server (read, never written)",
    )
    add_json(recover)
    recover.set_defaults(handler=_recover)


def _recover(args: argparse.Namespace, out: Output) -> int:
    report = run(_run(args.db, laptop_path(args.laptop)))
    out.result(report.as_dict())
    # The server still lacks something: a script must not go on to delete the copy.
    return ExitCode.CHECK_FAILED if report.refused or report.unattributed else ExitCode.OK


async def _run(db: str, laptop: Path) -> RecoveryReport:
    # Missing files are the stores' own DatabaseNotFoundError (exit 3), as for every command.
    key = await store_key(laptop)
    async with SQLiteStore.open(laptop, create=False, read_only=True, key=key) as store:
        identity = await store.get_identity()
        if identity is None or identity.role != "laptop" or not identity.organisation:
            raise CliError(
                f"{laptop} is not an enrolled laptop's database: entries are taken back "
                "from a laptop's (a server's backup is restored whole instead)",
                ExitCode.DATABASE,
            )
        # Read first, beside a server that may run: opening SERVER_DB as a server would
        # create one where none is (a mistyped PostgreSQL URL), and begin a feed epoch.
        async with await open_server_store(db, read_only=True) as checked:
            served = await checked.get_identity()
        server_id = "" if served is None else served.replica_id
        if identity.server_id != server_id:
            raise CliError(
                f"{laptop} is a laptop of server {identity.server_id}, not of this one "
                f"({server_id}): its records are another server's; nothing was taken",
                ExitCode.REFUSED,
            )
        server = await SyncServer.open(db, rulebook=rulebook(), key=server_database_key())
        async with server:
            return await recover_entries(server, store, vouched_by=operator())
