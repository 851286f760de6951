"""``caresync hub``: keep a patient's summary current on the regional health hub.

``hub enable`` and ``hub disable`` write the mark (``hub/summary``) on a
laptop, as the account logged in, like any edit: it works offline and travels
with the next sync. The clinic's server, started with ``caresync serve --hub
URL``, sends the summaries; ``hub status`` says where each stands, on a laptop
(what the server said at the last sync, and ``pending`` for what changed here
since) or on the server (its outbox). See docs/fhir.md and docs/operations.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.cli.common import AUTHOR_HELP, add_db, add_json, author, identifier, run
from caresync.cli.databases import LaptopReader, Reader, open_laptop, open_reader
from caresync.cli.output import Output, cells, escaped
from caresync.hub.model import HUB_PATH, HubSummary
from caresync.hub.status import hub_pending, laptop_summaries, server_summaries

__all__ = ["register", "summaries_of"]


def register(commands: Any) -> None:
    """Add ``hub enable``, ``hub disable`` and ``hub status``."""
    group = commands.add_parser(
        "hub",
        help="patient summaries kept current on the health hub",
        description="Mark a patient's summary to be kept current on the regional health hub "
        "(the server sends it: caresync serve --hub URL), and see where each stands.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, enabled, what in (
        ("enable", True, "keep this patient's summary current on the hub"),
        ("disable", False, "stop keeping this patient's summary on the hub"),
    ):
        parser = actions.add_parser(
            name,
            help=what,
            description=f"{what[0].upper()}{what[1:]}: a revision of the record "
            f"({HUB_PATH} = {str(enabled).lower()}), written as the account logged in on the "
            "laptop. Works offline; the server acts on it once the laptop syncs.",
        )
        add_db(parser, "a laptop's database")
        parser.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
        parser.add_argument("--author", type=author, help=AUTHOR_HELP)
        add_json(parser)
        parser.set_defaults(handler=_mark, enabled=enabled)

    status = actions.add_parser(
        "status",
        help="where each patient's summary stands",
        description="One line per patient whose summary is kept on the hub: its state "
        "(pending, held, sent, failed), version, reason and last attempt. On a laptop: what "
        "the server said at the last sync, and pending for a patient changed here since. "
        "Reads a running server's database too; never writes.",
    )
    add_db(status, "a laptop's or a server's database")
    add_json(status)
    status.set_defaults(handler=_status)


def _mark(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            before = (await replica.record(args.record_id)).get(HUB_PATH)
            if before.exists and not before.in_conflict and before.value is args.enabled:
                return {"record_id": args.record_id, "enabled": args.enabled, "revision": None}
            rev = await replica.set(args.record_id, HUB_PATH, args.enabled, author=args.author)
            return {
                "record_id": args.record_id,
                "enabled": args.enabled,
                "revision": rev.id,
                "author": rev.author,
                "at": rev.at.isoformat(),
            }

    def render(console: Console, data: Mapping[str, Any]) -> None:
        what = "kept on the hub" if data["enabled"] else "no longer kept on the hub"
        already = " (already so: nothing written)" if data["revision"] is None else ""
        console.print(
            escaped(f"summary of {data['record_id']}: {what}{already}"),
            markup=False,
        )

    out.result(run(go()), render)
    return 0


async def summaries_of(reader: Reader) -> list[HubSummary]:
    """The hub summaries a laptop's or a server's database knows of, by record id."""
    if isinstance(reader, LaptopReader):
        return await laptop_summaries(reader.replica)
    return server_summaries(await reader.store.hub_summaries())


def _status(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        reader = await open_reader(args.db)
        try:
            summaries = await summaries_of(reader)
        finally:
            await reader.close()
        return {
            "role": reader.role,
            "hub_pending": hub_pending(summaries),
            "summaries": [summary.as_dict() for summary in summaries],
        }

    out.result(run(go()), _render_status)
    return 0


def _render_status(console: Console, data: Mapping[str, Any]) -> None:
    if not data["summaries"]:
        console.print("no patient summary is kept on the hub", markup=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("record", "state", "version", "last attempt", "reason"):
        table.add_column(column, overflow="fold")
    for row in data["summaries"]:
        table.add_row(
            *cells(
                row["record_id"], row["state"], row["version"], row["last_attempt"], row["reason"]
            )
        )
    console.print(table)
