"""``caresync conflicts``: list open conflicts; resolve or acknowledge one.

``list`` and ``resolve`` derive a conflict the same way (the rulebook over the
merged record), so candidate N of the list is candidate N of ``--choose N``,
and a conflict's id is the same on every replica that has the same updates.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.cli.common import AUTHOR_HELP, add_db, add_json, author, identifier, parse_value, run
from caresync.cli.databases import LaptopReader, Reader, open_laptop, open_reader
from caresync.cli.output import Output, cells, escaped
from caresync.conflicts import Conflict
from caresync.names import shown

__all__ = ["conflict_json", "conflicts_json", "name_authors", "register"]


def conflict_json(conflict: Conflict, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A conflict as ``--json`` shows it: :meth:`Conflict.as_dict`, plus ``subject``,
    and each candidate's ``author_name``, the display name of its author in ``names``
    (the author's account name when it has none).

    ``path`` (the field, or the rule's name for a finding) is the key scripts read;
    ``subject`` holds the same under the name Python uses (``Conflict.subject``).
    """
    data = conflict.as_dict()
    data["subject"] = conflict.subject
    name_authors(data["candidates"], names)
    return data


def name_authors(
    candidates: list[dict[str, Any]], names: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """Give each candidate its ``author_name``: the display name of its ``author``
    in ``names``, else the author's account name."""
    for candidate in candidates:
        author = candidate["author"]
        candidate["author_name"] = (names or {}).get(author, author)
    return candidates


async def conflicts_json(reader: Reader, conflicts: list[Conflict]) -> list[dict[str, Any]]:
    """Each conflict as ``--json`` shows it, with its authors' display names."""
    names = await reader.author_names(c.record_id for c in conflicts)
    return [conflict_json(c, names.get(c.record_id)) for c in conflicts]


def register(commands: Any) -> None:
    """Add ``conflicts list``, ``conflicts resolve`` and ``conflicts acknowledge``."""
    group = commands.add_parser(
        "conflicts",
        help="list and resolve conflicts",
        description="Conflicts: fields with several concurrent values, and findings of the "
        "clinical safety rules.",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    list_ = actions.add_parser(
        "list",
        help="list open conflicts",
        description="List open conflicts with their candidates, numbered from 0 as "
        "`resolve --choose N` takes them. Reads a running server's database too.",
    )
    add_db(list_, "a laptop's or a server's database")
    list_.add_argument(
        "--record",
        metavar="RECORD_ID",
        type=identifier("RECORD_ID"),
        help="only this record's conflicts",
    )
    add_json(list_)
    list_.set_defaults(handler=_list)

    resolve = actions.add_parser(
        "resolve",
        help="resolve a conflict",
        description="Resolve a conflict by choosing candidate N (0-based, as `conflicts "
        "list` shows them) or by entering a new VALUE (JSON when it parses as JSON, else "
        "text). The resolution is an ordinary edit: it syncs like any other.",
    )
    add_db(resolve, "a laptop's database")
    resolve.add_argument("conflict_id", metavar="CONFLICT_ID", type=identifier("CONFLICT_ID"))
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--choose", type=_index, metavar="N", help="keep candidate N")
    how.add_argument("--value", metavar="VALUE", help="enter a new value instead")
    resolve.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(resolve)
    resolve.set_defaults(handler=_resolve)

    ack = actions.add_parser(
        "acknowledge",
        help="acknowledge a flag or info finding",
        description="Acknowledge a finding of severity flag or info (a block must be resolved).",
    )
    add_db(ack, "a laptop's database")
    ack.add_argument("conflict_id", metavar="CONFLICT_ID", type=identifier("CONFLICT_ID"))
    ack.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(ack)
    ack.set_defaults(handler=_acknowledge)


def _index(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"N must be a whole number, not {shown(raw)}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"N counts from 0; {value} is negative")
    return value


def _list(args: argparse.Namespace, out: Output) -> int:
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        reader = await open_reader(args.db)
        try:
            conflicts = await conflicts_json(reader, await reader.conflicts(args.record))
            kept: list[dict[str, Any]] = []
            if isinstance(reader, LaptopReader):  # a laptop keeps aside what it cannot merge
                kept = [
                    {"record_id": q.record_id, "reason": q.reason, "received_ms": q.received_ms}
                    for q in await reader.replica.quarantined(args.record)
                ]
            return conflicts, kept
        finally:
            await reader.close()

    conflicts, kept = run(go())
    out.result({"conflicts": conflicts, "count": len(conflicts), "quarantined": kept}, _render_list)
    return 0


def _resolve(args: argparse.Namespace, out: Output) -> int:
    kwargs: dict[str, Any] = (
        {"choose": args.choose}
        if args.choose is not None
        else {"value": parse_value(args.value, "--value")}
    )

    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            # Its record, for the result; the resolution is what the trail records.
            conflict = await replica.find_conflict(args.conflict_id, audited=False)
            rev = await replica.resolve(args.conflict_id, author=args.author, **kwargs)
            return {
                "conflict_id": args.conflict_id,
                "record_id": conflict.record_id,
                "path": rev.path,
                "value": rev.value,
                "revision": rev.id,
                "author": rev.author,
                "conflicts_open": await replica.count_conflicts(),
            }

    out.result(run(go()), _render_done("resolved"))
    return 0


def _acknowledge(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            conflict = await replica.find_conflict(args.conflict_id, audited=False)
            rev = await replica.acknowledge(args.conflict_id, author=args.author)
            return {
                "conflict_id": args.conflict_id,
                "record_id": conflict.record_id,
                "revision": rev.id,
                "author": rev.author,
                "conflicts_open": await replica.count_conflicts(),
            }

    out.result(run(go()), _render_done("acknowledged"))
    return 0


def _render_done(verb: str) -> Any:
    def render(console: Console, data: Mapping[str, Any]) -> None:
        console.print(
            f"{verb} {data['conflict_id']} (revision {data['revision']}); "
            f"{data['conflicts_open']} conflict(s) still open",
            markup=False,
        )

    return render


def _render_list(console: Console, data: Mapping[str, Any]) -> None:
    conflicts = data["conflicts"]
    for kept in data.get("quarantined", ()):
        console.print(
            escaped(
                f"quarantined  record {kept['record_id']}: an update from the server could not "
                f"be merged and was kept aside ({kept['reason']}); show it to an administrator"
            ),
            markup=False,
            style="bold",
        )
    if not conflicts:
        console.print("no open conflicts", markup=False)
        return
    for c in conflicts:
        console.print(
            escaped(
                f"{c['id']}  {c['severity']}  {c['kind']}  record {c['record_id']}  {c['path']}"
            ),
            markup=False,
            style="bold",
        )
        console.print(escaped(f"  {c['message']}"), markup=False)
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        # An outcome's words are not all it writes ("stopped" sets the dose too): say it.
        writes = any(cand.get("writes") for cand in c["candidates"])
        for column in ("N", "value", *(("writes",) if writes else ()), "author", "replica", "at"):
            table.add_column(column, overflow="fold")
        for n, cand in enumerate(c["candidates"]):
            who = cand["author"]
            if cand["author_name"] != who:
                who = f"{cand['author_name']} ({who})"
            said = (_writes_said(cand.get("writes") or {}),) if writes else ()
            table.add_row(
                *cells(n, repr_value(cand["value"]), *said, who, cand["replica"], cand["at"])
            )
        console.print(table)


def _writes_said(writes: Mapping[str, Any]) -> str:
    """What choosing a candidate writes, each field by its last name: ``status: "stopped";
    dose: "7.5 mg"`` (its full path is in ``--json``), or ``nothing``."""
    if not writes:
        return "nothing"
    return "; ".join(f"{path.rpartition('/')[2]}: {repr_value(v)}" for path, v in writes.items())


def repr_value(value: Any) -> str:
    """A value as JSON (so that the text "42" and the number 42 look different)."""
    return json.dumps(value, ensure_ascii=False)
