"""``caresync record``: create a record, write a field, add an entry, show a record."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.cli.common import (
    AUTHOR_HELP,
    MAX_VALUE_DEPTH,
    add_db,
    add_json,
    author,
    identifier,
    parse_value,
    run,
    text,
)
from caresync.cli.conflicts import conflicts_json, name_authors
from caresync.cli.databases import Reader, open_laptop, open_reader
from caresync.cli.errors import CliError
from caresync.cli.output import Output, cells, escaped
from caresync.conflicts import Candidate, RecordView
from caresync.names import shown
from caresync.records import CountState, FieldState, Revision
from caresync.replica import Replica

__all__ = [
    "DISPLAY_NAME_FIELDS",
    "LINKED_COLLECTIONS",
    "display_name",
    "field_json",
    "linked_summary",
    "register",
    "show_record",
]

DISPLAY_NAME_FIELDS = ("name", "displayName", "fullName")
"""The fields ``record list`` shows a record by, the first one written."""


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):  # ASCII digits only: not "5_0", not "٣"
        raise argparse.ArgumentTypeError(f"expected an integer such as -1 or 5, not {shown(text)}")
    return int(text)


_INTEGER = re.compile(r"[+-]?[0-9]{1,16}")


def register(commands: Any) -> None:
    """Add ``record new``, ``set``, ``adjust``, ``add-entry``, ``sign``, ``link``, ``unlink``,
    ``show`` and ``list``."""
    group = commands.add_parser(
        "record", help="create, change and show patient records", description="Patient records."
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    new = actions.add_parser(
        "new", help="create a record", description="Create a new, empty patient record."
    )
    add_db(new, "a laptop's database")
    new.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(new)
    new.set_defaults(handler=_new)

    set_ = actions.add_parser(
        "set",
        help="write a field",
        description="Write VALUE at PATH (committed before the command returns). VALUE is "
        'JSON when it parses as JSON (42, true, null, [1,2], {...}, "quoted"), else the '
        "text as given. Writing a field in conflict resolves the conflict with this value.",
    )
    add_db(set_, "a laptop's database")
    set_.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
    set_.add_argument(
        "path", metavar="PATH", help="birthDate, allergies/<entry-id>/criticality, ..."
    )
    set_.add_argument("value", metavar="VALUE")
    set_.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(set_)
    set_.set_defaults(handler=_set)

    adjust = actions.add_parser(
        "adjust",
        help="add a change to a count",
        description="Add CHANGE (an integer: -1 dispenses one) to the count at PATH (a path "
        "under stock/, or one the application declares a count). Concurrent changes made on "
        "several laptops add up; `record set` on a count records the change from the count it "
        "reads.",
    )
    add_db(adjust, "a laptop's database")
    adjust.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
    adjust.add_argument("path", metavar="PATH", help="stock/<item>, ...")
    adjust.add_argument("change", metavar="CHANGE", type=_integer, help="-1, 5, ...")
    adjust.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(adjust)
    adjust.set_defaults(handler=_adjust)

    entry = actions.add_parser(
        "add-entry",
        help="add an entry to a collection",
        description="Add an entry (an allergy, a medication, a note, ...) with its first "
        "fields; prints the new entry's id. Its fields are then at "
        "COLLECTION/<entry-id>/<field>.",
    )
    add_db(entry, "a laptop's database")
    entry.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
    entry.add_argument("collection", metavar="COLLECTION", type=text("collection"))
    entry.add_argument(
        "fields", metavar="FIELDS", nargs="?", default="{}", help='a JSON object: {"drug": "..."}'
    )
    entry.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(entry)
    entry.set_defaults(handler=_add_entry)

    sign = actions.add_parser(
        "sign",
        help="sign a note",
        description="Sign a note of a record: its text can no longer change (add an addendum "
        "instead). A note whose fields are in conflict cannot be signed until they are "
        "resolved.",
    )
    add_db(sign, "a laptop's database")
    sign.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
    sign.add_argument("note_id", metavar="NOTE_ID", type=identifier("NOTE_ID"))
    sign.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(sign)
    sign.set_defaults(handler=_sign)

    for action, verb, description in (
        (
            "link",
            "link two records as one person",
            "Link two records as one person (the same patient registered twice): shown "
            "together, and the allergy check runs across them. Nothing is merged; the link "
            "is a decision written to both records, synced like any edit, and undone with "
            "`record unlink`.",
        ),
        (
            "unlink",
            "undo a link between two records",
            "Undo a link made with `record link`: the two records are separate again (if "
            "they still look alike, the possible-duplicate finding comes back).",
        ),
    ):
        linking = actions.add_parser(action, help=verb, description=description)
        add_db(linking, "a laptop's database")
        linking.add_argument("record_a", metavar="RECORD_A", type=identifier("RECORD_A"))
        linking.add_argument("record_b", metavar="RECORD_B", type=identifier("RECORD_B"))
        linking.add_argument("--author", type=author, help=AUTHOR_HELP)
        add_json(linking)
        linking.set_defaults(handler=_link if action == "link" else _unlink)

    show = actions.add_parser(
        "show",
        help="show a record",
        description="Show every field's value, or its candidates when in conflict, the "
        "record's open conflicts, and the records linked to it as the same person with their "
        "allergies and medications. Reads a running server's database too; never writes.",
    )
    add_db(show, "a laptop's or a server's database")
    show.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
    show.add_argument("--history", action="store_true", help="also every revision of every field")
    add_json(show)
    show.set_defaults(handler=_show)

    list_ = actions.add_parser(
        "list",
        help="list records",
        description="List every record with a display name (its `name` field, or "
        "`displayName`, `fullName`) and its open conflicts. Reads a running server's "
        "database too; never writes.",
    )
    add_db(list_, "a laptop's or a server's database")
    add_json(list_)
    list_.set_defaults(handler=_list)


# ------------------------------------------------------------------- writing


def _new(args: argparse.Namespace, out: Output) -> int:
    async def go() -> tuple[str, str]:
        async with await open_laptop(args.db) as replica:
            writer = await replica.author_of(args.author)
            return await replica.create_record(), writer

    record_id, writer = run(go())
    out.result({"record_id": record_id, "author": writer}, _render_id("record_id"))
    return 0


def _set(args: argparse.Namespace, out: Output) -> int:
    value = parse_value(args.value)

    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            rev = await replica.set(args.record_id, args.path, value, author=args.author)
            return await _written(replica, args.record_id, rev)

    out.result(run(go()), _render_set)
    return 0


def _adjust(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            rev = await replica.adjust(args.record_id, args.path, args.change, author=args.author)
            return await _written(replica, args.record_id, rev)

    out.result(run(go()), _render_set)
    return 0


async def _written(replica: Replica, record_id: str, rev: Revision) -> dict[str, Any]:
    """What ``record set`` and ``record adjust`` print; a count adds its ``total``."""
    written: dict[str, Any] = {
        "record_id": record_id,
        "path": rev.path,
        "value": rev.value,
        "revision": rev.id,
        "author": rev.author,
        "at": rev.at.isoformat(),
    }
    state = (await replica.record(record_id)).get(rev.path)
    if isinstance(state, CountState):
        written["total"] = state.total
    return written


def _add_entry(args: argparse.Namespace, out: Output) -> int:
    # An entry's fields are values one level down: the object itself adds a level.
    fields = parse_value(args.fields, "FIELDS", max_depth=MAX_VALUE_DEPTH + 1)
    if not isinstance(fields, dict):
        raise CliError(
            f'FIELDS must be a JSON object like {{"drug": "..."}}, not {shown(args.fields)}'
        )

    async def go() -> str:
        async with await open_laptop(args.db) as replica:
            return await replica.add_entry(
                args.record_id, args.collection, fields, author=args.author
            )

    entry_id = run(go())
    out.result(
        {"record_id": args.record_id, "collection": args.collection, "entry_id": entry_id},
        _render_id("entry_id"),
    )
    return 0


def _sign(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            rev = await replica.sign_note(args.record_id, args.note_id, author=args.author)
            return {
                "record_id": args.record_id,
                "note_id": args.note_id,
                "revision": rev.id,
                "author": rev.author,
                "at": rev.at.isoformat(),
            }

    out.result(
        run(go()),
        lambda console, data: console.print(
            escaped(f"signed note {data['note_id']} as {data['author']} at {data['at']}"),
            markup=False,
        ),
    )
    return 0


def _link(args: argparse.Namespace, out: Output) -> int:
    return _decide_link(args, out, linked=True)


def _unlink(args: argparse.Namespace, out: Output) -> int:
    return _decide_link(args, out, linked=False)


def _decide_link(args: argparse.Namespace, out: Output, *, linked: bool) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            decide = replica.link_records if linked else replica.unlink_records
            rev = await decide(args.record_a, args.record_b, author=args.author)
            return {
                "record_id": args.record_a,
                "other_record_id": args.record_b,
                "decision": rev.value,
                "linked_records": await replica.linked_records(args.record_a),
                "revision": rev.id,
                "author": rev.author,
                "at": rev.at.isoformat(),
            }

    out.result(
        run(go()),
        lambda console, data: console.print(
            escaped(
                f"{'linked' if linked else 'unlinked'} {data['record_id']} and "
                f"{data['other_record_id']} ({data['author']}, {data['at']})"
            ),
            markup=False,
        ),
    )
    return 0


def _render_id(key: str) -> Any:
    def render(console: Console, data: Mapping[str, Any]) -> None:
        console.print(str(data[key]), markup=False)

    return render


def _render_set(console: Console, data: Mapping[str, Any]) -> None:
    console.print(
        f"{data['path']} = {_short(data['value'])}  (revision {data['revision']})", markup=False
    )


# ------------------------------------------------------------------- reading


def _show(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        reader = await open_reader(args.db)
        try:
            view = await reader.view(args.record_id)
            conflicts = await conflicts_json(reader, await reader.conflicts(args.record_id))
            names = (await reader.author_names([args.record_id]))[args.record_id]
            linked = [
                linked_summary(
                    await reader.view(other),
                    await conflicts_json(reader, await reader.conflicts(other)),
                )
                for other in await reader.linked_records(args.record_id)
            ]
        finally:
            await reader.close()
        data = show_record(view, conflicts, history=args.history, names=names)
        data["linked"] = linked
        return data

    out.result(run(go()), _render_show)
    return 0


def _list(args: argparse.Namespace, out: Output) -> int:
    async def go() -> list[dict[str, Any]]:
        reader = await open_reader(args.db)
        try:
            return await list_records(reader)
        finally:
            await reader.close()

    records = run(go())
    out.result(
        {
            "records": records,
            "count": len(records),
            "conflicts_open": sum(r["conflicts_open"] for r in records),
        },
        _render_list,
    )
    return 0


LINKED_COLLECTIONS = ("allergies", "medications")
"""What ``record show`` lists of each record linked to the one shown."""


def linked_summary(
    view: RecordView, conflicts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A linked record as ``record show`` lists it: its name, allergies and medications.

    ``conflicts`` are that record's open conflicts (``--json`` form): a field one of
    its ``block`` findings involves shows as that finding, as in :func:`show_record`.
    """
    contested = _contested(view, conflicts or [])
    return {
        "record_id": view.record_id,
        "display_name": display_name(view),
        **{
            collection: [
                {
                    "entry_id": entry.id,
                    **{
                        n: contested.get(f"{collection}/{entry.id}/{n}") or field_json(f)
                        for n, f in entry.fields.items()
                    },
                }
                for entry in view.entries(collection)
            ]
            for collection in LINKED_COLLECTIONS
        },
    }


async def list_records(reader: Reader) -> list[dict[str, Any]]:
    """Every record of the database, by id: its display name and open conflicts."""
    open_conflicts: dict[str, list[dict[str, Any]]] = {}
    for conflict in await reader.conflicts():
        open_conflicts.setdefault(conflict.record_id, []).append(
            {
                "id": conflict.id,
                "kind": conflict.kind.value,
                "severity": conflict.severity.value,
                "path": conflict.subject,
                "subject": conflict.subject,
            }
        )
    listed = []
    record_ids = await reader.record_ids()
    # One entry for the listing (it shows every patient's name), not one per record.
    await reader.audit("list", None, f"records: {len(record_ids)}")
    for record_id in record_ids:
        view = await reader.view(record_id, audited=False)
        conflicts = open_conflicts.get(record_id, [])
        listed.append(
            {
                "record_id": record_id,
                "display_name": display_name(view),
                "conflicts_open": len(conflicts),
                "conflicts": conflicts,
            }
        )
    return listed


def display_name(view: RecordView) -> str | None:
    """The name a person knows a record by, or None when none is written.

    The first of :data:`DISPLAY_NAME_FIELDS` that holds a value: text as it is, an
    object or a list as the text of its parts (``{"given": "Awa", "family": "Ba"}``
    is ``Awa Ba``); when the field is in conflict, its candidates joined with `` | ``.
    """
    for path in DISPLAY_NAME_FIELDS:
        state = view.get(path)
        if not state.exists:
            continue
        if state.in_conflict:
            return " | ".join(_name_text(c.value) for c in state.candidates)
        text_ = _name_text(state.value)
        if text_:
            return text_
    return None


def _name_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_name_text(v) for v in value.values() if v is not None).strip()
    if isinstance(value, list):
        return " ".join(_name_text(v) for v in value if v is not None).strip()
    return "" if value is None else json.dumps(value, ensure_ascii=False)


def _render_list(console: Console, data: Mapping[str, Any]) -> None:
    if not data["records"]:
        console.print("no records", markup=False)
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("record", "name", "open conflicts"):
        table.add_column(column, overflow="fold")
    for record in data["records"]:
        shown_conflicts = ", ".join(
            f"{c['id']} ({c['severity']}, {c['path']})" for c in record["conflicts"]
        )
        table.add_row(*cells(record["record_id"], record["display_name"], shown_conflicts or "-"))
    console.print(table)
    console.print(
        f"{data['count']} record(s), {data['conflicts_open']} open conflict(s)", markup=False
    )


def field_json(state: FieldState, names: Mapping[str, str] | None = None) -> Any:
    """A field as ``record show`` prints it: its value, or its conflict and candidates
    (each with its author's display name from ``names``)."""
    if state.in_conflict:
        candidates = [Candidate.from_revision(h).as_dict() for h in state.candidates]
        return {"conflict": state.conflict_id, "candidates": name_authors(candidates, names)}
    return state.value


def show_record(
    view: RecordView,
    conflicts: list[dict[str, Any]],
    *,
    history: bool = False,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``record show`` object for a record.

    A field that an open ``block`` finding involves (a medication's status *and* its
    dose, while it was stopped on one laptop and its dose changed on another) is no
    settled value until a person chooses: it shows as that finding and its candidates,
    as a field conflict does.
    """
    contested = _contested(view, conflicts)
    fields = {
        path: contested.get(path) or field_json(view.get(path), names) for path in view.paths()
    }
    data: dict[str, Any] = {
        "record_id": view.record_id,
        "fields": fields,
        "conflicts": conflicts,
    }
    if history:
        data["history"] = {
            path: [rev.as_dict() for rev in view.history(path)] for path in view.paths()
        }
    return data


def _contested(view: RecordView, conflicts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fields an open ``block`` finding involves, each shown as that finding and its
    candidates (a field in conflict itself shows its own conflict: left out here)."""
    contested: dict[str, dict[str, Any]] = {}
    for conflict in conflicts:
        if conflict.get("severity") != "block":
            continue
        for path in conflict.get("paths", ()):
            state = view.get(path)
            if state.exists and not state.in_conflict and path not in contested:
                contested[path] = {"conflict": conflict["id"], "candidates": conflict["candidates"]}
    return contested


def _short(value: Any, limit: int = 60) -> str:
    text_ = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text_ if len(text_) <= limit else text_[: limit - 1] + "…"


def _is_conflict(value: Any) -> bool:
    return isinstance(value, dict) and "conflict" in value and "candidates" in value


def _shown(value: Any) -> str:
    """A field as ``record show`` prints it: its value, or CONFLICT and every candidate."""
    if not _is_conflict(value):
        return _short(value)
    return f"CONFLICT {value['conflict']}: " + " | ".join(
        f"[{i}] {_short(c['value'], 30)} ({c['author']})" for i, c in enumerate(value["candidates"])
    )


def _render_show(console: Console, data: Mapping[str, Any]) -> None:
    console.print(f"record {escaped(data['record_id'])}", markup=False, style="bold")
    table = Table(show_header=True, header_style="bold")
    table.add_column("field", overflow="fold")
    table.add_column("value", overflow="fold")
    for path, value in data["fields"].items():
        table.add_row(*cells(path, _shown(value)))
    console.print(table)
    conflicts = data["conflicts"]
    console.print(f"{len(conflicts)} open conflict(s)", markup=False)
    for c in conflicts:
        console.print(escaped(f"  {c['id']}  {c['severity']}  {c['message']}"), markup=False)
    for linked in data.get("linked", ()):
        name = linked["display_name"] or "no name"
        console.print(
            escaped(f"linked as the same person: {linked['record_id']} ({name})"),
            markup=False,
            style="bold",
        )
        for collection in LINKED_COLLECTIONS:
            for entry in linked[collection]:
                fields = "; ".join(
                    f"{k}: {_shown(v) if _is_conflict(v) else _short(v, 40)}"
                    for k, v in entry.items()
                    if k != "entry_id"
                )
                console.print(escaped(f"  {collection}: {fields}"), markup=False)
    for path, revisions in data.get("history", {}).items():
        console.print(escaped(f"history of {path}:"), markup=False, style="bold")
        for rev in revisions:
            console.print(
                escaped(f"  {rev['at']}  {rev['author']}@{rev['replica']}  {_short(rev['value'])}"),
                markup=False,
            )
