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
from caresync.cli.databases import laptop_path, operator, rulebook, store_key
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output
from caresync.recovery import RecoveryReport, recover_entries
from caresync.server import SyncServer
from caresync.storage import SQLiteStore, server_database_key
from caresync.storage.servers import is_database_url

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
    laptop = laptop_path(args.laptop)
    if not laptop.exists():
        raise CliError(f"{laptop} does not exist", ExitCode.DATABASE)
    if not is_database_url(args.db) and not Path(args.db).exists():
        raise CliError(f"{args.db} does not exist", ExitCode.DATABASE)
    report = run(_run(args.db, laptop))
    out.result(report.as_dict())
    return 0


async def _run(db: str, laptop: Path) -> RecoveryReport:
    key = await store_key(laptop)
    async with SQLiteStore.open(laptop, create=False, read_only=True, key=key) as store:
        server = await SyncServer.open(db, rulebook=rulebook(), key=server_database_key())
        async with server:
            return await recover_entries(server, store, vouched_by=operator())
