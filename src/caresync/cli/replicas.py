"""``caresync replicas`` and ``caresync replica revoke``: the laptops enrolled to a server.

``replicas`` is the monitoring check an administrator would otherwise do by
hand: it lists every enrolled laptop with when the server last saw it and what
the laptop reported of its unsynced changes, marks as stale those not seen,
or holding changes, for longer than ``--stale-hours``, and exits 1 when any
is stale (so cron or a monitoring system can alert on it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.audit import AuditEvent
from caresync.cli.common import add_db, add_json, identifier, organisation, run
from caresync.cli.databases import open_server_store, operator
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output, cells, iso_ms
from caresync.names import shown
from caresync.storage import ReplicaInfo

__all__ = ["register", "replica_report", "stale_hours"]


def register(commands: Any) -> None:
    """Add ``replicas`` and ``replica revoke``."""
    listing = commands.add_parser(
        "replicas",
        help="list enrolled laptops; flag stale ones",
        description="List the laptops enrolled to a server: last seen, unsynced changes they "
        "reported at their last contact. A laptop is stale when not seen, or holding "
        "changes, for more than --stale-hours; the command then exits 1. Revoked laptops "
        "are listed, never stale. Reads a running server's database; never writes.",
    )
    add_db(listing, "the server's database")
    listing.add_argument("--org", type=organisation, help="only this organisation")
    listing.add_argument(
        "--stale-hours", type=stale_hours, default=24.0, help="hours before a laptop is stale (24)"
    )
    add_json(listing)
    listing.set_defaults(handler=_list)

    group = commands.add_parser(
        "replica", help="manage one enrolled laptop", description="Manage an enrolled laptop."
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    revoke = actions.add_parser(
        "revoke",
        help="revoke a laptop",
        description="Revoke a laptop: its sessions end and a running server closes its "
        "connections within a second; it is refused at every later contact and locks itself; "
        "its unsynced work stays on it (export it with `caresync export`). Works while the "
        "server runs.",
    )
    add_db(revoke, "the server's database")
    revoke.add_argument("replica_id", metavar="REPLICA_ID", type=identifier("REPLICA_ID"))
    add_json(revoke)
    revoke.set_defaults(handler=_revoke)


_MAX_STALE_HOURS = 100 * 365 * 24  # a century: more is a typo, and overflows milliseconds


def stale_hours(raw: str) -> float:
    """An argparse type: a number of hours in (0, a century]."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, not {shown(raw)}") from None
    if not 0 < value <= _MAX_STALE_HOURS:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {_MAX_STALE_HOURS} (a century), not {shown(raw)}"
        )
    return value


def replica_report(info: ReplicaInfo, *, now_ms: int, stale_ms: int) -> dict[str, Any]:
    """One laptop as ``replicas`` lists it, with whether (and why) it is stale."""
    pending: int | None = getattr(info, "pending", None)
    oldest: int | None = getattr(info, "oldest_pending_ms", None)
    reasons: list[str] = []
    if not info.revoked:
        seen = info.last_seen_ms if info.last_seen_ms is not None else info.enrolled_ms
        if now_ms - seen > stale_ms:
            reasons.append("not seen" if info.last_seen_ms is not None else "never seen")
        if pending and oldest is not None and now_ms - oldest > stale_ms:
            reasons.append("changes pending")
    return {
        "replica_id": info.replica_id,
        "device_name": info.device_name,
        "org": info.organisation,
        "enrolled_by": info.enrolled_by,
        "enrolled_at": iso_ms(info.enrolled_ms),
        "last_seen": iso_ms(info.last_seen_ms),
        "last_seen_age_h": _age_h(now_ms, info.last_seen_ms),
        "pending": pending,
        "oldest_pending": iso_ms(oldest),
        "oldest_pending_age_h": _age_h(now_ms, oldest) if pending else None,
        "revoked": info.revoked,
        "revoked_at": iso_ms(info.revoked_ms),
        "stale": bool(reasons),
        "reasons": reasons,
    }


def _age_h(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else round(max(0, now_ms - then_ms) / 3_600_000, 2)


def _list(args: argparse.Namespace, out: Output) -> int:
    async def go() -> list[ReplicaInfo]:
        async with await open_server_store(args.db, read_only=True) as store:
            return await store.replicas(args.org)

    infos = run(go())
    now_ms = time.time_ns() // 1_000_000
    stale_ms = int(args.stale_hours * 3_600_000)
    rows = [replica_report(info, now_ms=now_ms, stale_ms=stale_ms) for info in infos]
    stale = sum(1 for row in rows if row["stale"])
    out.result({"replicas": rows, "stale": stale, "stale_hours": args.stale_hours}, _render_list)
    return ExitCode.CHECK_FAILED if stale else ExitCode.OK


def _revoke(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_server_store(args.db, accounts_only=True) as store:
            info = await store.get_replica(args.replica_id)
            if info is None:
                raise CliError(
                    f"no replica {args.replica_id!r} is enrolled to this server "
                    "(list them with `caresync replicas`)",
                    ExitCode.NOT_FOUND,
                )
            if not info.revoked:
                # Its entry in the revocation's own commit (none if it was revoked since).
                await store.revoke_replica(
                    args.replica_id,
                    audit=[AuditEvent(operator(), "revoke", None, args.replica_id)],
                )
            return {"replica_id": args.replica_id, "revoked": True, "already": info.revoked}

    out.result(run(go()))
    return 0


def _render_list(console: Console, data: Mapping[str, Any]) -> None:
    rows = data["replicas"]
    if not rows:
        console.print("no laptop is enrolled", markup=False)
        return
    table = Table(header_style="bold")
    for column in ("replica", "org", "last seen", "pending", "oldest pending", "state"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = (
            "revoked"
            if row["revoked"]
            else ("STALE: " + ", ".join(row["reasons"]) if row["stale"] else "ok")
        )
        table.add_row(
            *cells(
                row["replica_id"],
                row["org"],
                _when(row["last_seen"], row["last_seen_age_h"]),
                "-" if row["pending"] is None else str(row["pending"]),
                _when(row["oldest_pending"], row["oldest_pending_age_h"]),
                state,
            )
        )
    console.print(table)
    console.print(
        f"{data['stale']} stale laptop(s) (not seen, or changes pending, for more than "
        f"{data['stale_hours']:g} h)",
        markup=False,
    )


def _when(iso: str | None, age_h: float | None) -> str:
    return "-" if iso is None else f"{iso} ({age_h:g} h ago)"
