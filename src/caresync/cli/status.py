"""``caresync status``: where a laptop or a server database stands."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.cli.common import add_db, add_json, run
from caresync.cli.databases import LaptopReader, Reader, ServerReader, open_reader
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.live import live_state
from caresync.cli.output import Output, cells
from caresync.credentials import ServerKey
from caresync.gate import SERVER_KEY_META
from caresync.hub.status import hub_pending, hub_pending_counted, laptop_summaries
from caresync.storage import SQLiteStore

__all__ = ["register", "status_of"]


def register(commands: Any) -> None:
    """Add the ``status`` command."""
    parser = commands.add_parser(
        "status",
        help="where a laptop (or a server) database stands",
        description="Show a database's identity, unsynced changes, last sync, conflicts and "
        "records. Reads a running server's database too; never writes.",
    )
    add_db(parser, "a laptop's or a server's database")
    add_json(parser)
    parser.set_defaults(handler=_handle)

    key = commands.add_parser(
        "server-key",
        help="the fingerprint of a server's key",
        description="Print the fingerprint of the key a server proves itself with. Give it to "
        "whoever enrols laptops (`caresync enrol --server-key ...`), so that even the first "
        "connection cannot be an impostor's. Reads a running server's database; never writes.",
    )
    add_db(key, "the server's database")
    add_json(key)
    key.set_defaults(handler=_server_key)


def _handle(args: argparse.Namespace, out: Output) -> int:
    out.result(run(_status(args.db)), _render)
    return 0


async def _status(path: str) -> dict[str, Any]:
    reader = await open_reader(path)
    try:
        return await status_of(reader)
    finally:
        await reader.close()


async def status_of(reader: Reader) -> dict[str, Any]:
    """The status object of ``docs/cli.md`` for a laptop's or a server's database."""
    if isinstance(reader, LaptopReader):
        replica = reader.replica
        status = await replica.status()
        live = await live_state(replica)
        return {
            "role": "laptop",
            "replica_id": status.replica_id,
            "server_id": status.server_id,
            "server_url": replica.identity.server_url,
            "org": status.organisation,
            "state": live or ("locked" if replica.locked else "offline"),
            "live": live is not None,
            "user": replica.user,
            "pending": status.pending,
            "oldest_pending_age_s": _round(status.oldest_pending_age_s),
            "last_sync": None if status.last_sync is None else status.last_sync.isoformat(),
            "copy_age_s": _round(status.copy_age_s),
            "conflicts_open": status.conflicts_open,
            "records": status.records,
            "quarantined": status.quarantined,
            "quarantined_records": sorted(
                {kept.record_id for kept in await replica.store.quarantined()}
            ),  # ids only: status records no read
            "server_key": replica.pinned_server_key,
            "client_version": status.client_version,
            "client_newest": status.client_newest,
            "client_min": status.client_min,
            "update_available": status.update_available,
            "update_required": status.update_required,
            "audit_refused": status.audit_refused,
            "offline_logins_ended": dict(status.offline_logins_ended),
            # Records whose changes the server refused: held back, kept, and why.
            "set_aside": [
                {
                    "record_id": held.record_id,
                    "reason": held.reason,
                    "since": datetime.fromtimestamp(held.since_ms / 1000, tz=UTC).isoformat(),
                    "entries": held.entries,
                }
                for held in status.set_aside
            ],
            "hub_pending": hub_pending(await laptop_summaries(replica)),
        }
    return await _server_status(reader)


async def _server_status(reader: ServerReader) -> dict[str, Any]:
    store = reader.store
    replicas = await store.replicas()
    return {
        "role": "server",
        "replica_id": reader.identity.replica_id,
        "server_id": reader.identity.replica_id,
        "server_url": None,
        "org": None,
        "state": None,
        "live": False,
        "user": None,
        # A server's own outbox (an SQLite server's is empty; a PostgreSQL one has none).
        "pending": await store.pending_count() if isinstance(store, SQLiteStore) else 0,
        "oldest_pending_age_s": None,
        "last_sync": None,
        "copy_age_s": None,
        "conflicts_open": await reader.count_conflicts(),
        "records": await store.count_records(),
        "feed_head": await store.feed_head(),
        "replicas": sum(1 for r in replicas if not r.revoked),
        "replicas_revoked": sum(1 for r in replicas if r.revoked),
        "server_key": await _fingerprint(reader),
        "hub_pending": hub_pending_counted(await store.hub_state_counts()),
    }


async def _fingerprint(reader: ServerReader) -> str | None:
    stored = await reader.store.get_meta(SERVER_KEY_META)
    return None if stored is None else ServerKey.from_text(stored).fingerprint


def _server_key(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        reader = await open_reader(args.db)
        try:
            if not isinstance(reader, ServerReader):
                raise CliError(
                    f"{args.db} is a laptop's database: a laptop shows the key it pinned in "
                    "`caresync status`"
                )
            fingerprint = await _fingerprint(reader)
            if fingerprint is None:
                raise CliError(
                    f"{args.db} holds no server key yet: the server makes it when it first "
                    "serves (`caresync serve`)",
                    ExitCode.NOT_FOUND,
                )
            return {"server_id": reader.identity.replica_id, "server_key": fingerprint}
        finally:
            await reader.close()

    out.result(run(go()), lambda console, data: console.print(data["server_key"], markup=False))
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _render(console: Console, data: Mapping[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in data.items():
        if value is None and key in ("server_url", "state", "copy_age_s", "org", "user"):
            continue
        if key in ("quarantined", "quarantined_records", "set_aside") and not value:
            continue  # shown only when something was kept aside
        if key == "offline_logins_ended":
            for user, why in (value or {}).items():  # one line each: who cannot, and why
                table.add_row(*cells("no offline login", f"{user}: {why}"))
            continue
        if key == "set_aside":
            for held in value:  # one row a record: what to look at, and the server's reason
                table.add_row(
                    *cells(key, f"{held['record_id']} ({held['entries']}): {held['reason']}")
                )
            continue
        table.add_row(*cells(key, value))
    console.print(table)
