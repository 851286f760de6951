"""``caresync fhir``: a record as a FHIR R4 Bundle, and FHIR files into records.

``fhir export`` writes one ``collection`` Bundle per record (byte-stable: the
same record gives the same bytes); ``fhir import`` creates or updates records
from a Bundle or NDJSON, all of a file or nothing. Both need the ``fhir`` extra
(``pip install "caresync[fhir]"``): without it they fail with that advice
before opening anything. See docs/fhir.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from caresync.cli.common import AUTHOR_HELP, add_db, add_json, author, identifier, path, run
from caresync.cli.databases import LaptopReader, open_laptop, open_reader
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output, escaped
from caresync.exceptions import InvalidFhirError
from caresync.fhir import (
    MAX_FILE_BYTES,
    bundle_bytes,
    bundle_for_record,
    import_fhir,
    plan_import,
    require_models,
)
from caresync.storage.unsynced import private_opener

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``fhir export`` and ``fhir import``."""
    group = commands.add_parser(
        "fhir",
        help="FHIR R4 export and import",
        description="A record as a FHIR R4 Bundle, and FHIR Bundles or NDJSON into records "
        '(needs pip install "caresync[fhir]"). See docs/fhir.md.',
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    export = actions.add_parser(
        "export",
        help="write a record as a FHIR Bundle",
        description="Write the record as one FHIR R4 collection Bundle: Patient, its "
        "allergies, medications, problems, encounters, observations and notes, a "
        "DetectedIssue per open conflict with every candidate, and Provenance. The same "
        "record gives the same bytes. Reads a running server's database too; never writes it.",
    )
    add_db(export, "a laptop's or a server's database")
    export.add_argument("record_id", metavar="RECORD_ID", type=identifier("RECORD_ID"))
    export.add_argument(
        "--out",
        metavar="FILE",
        type=path,
        default=None,
        help="a new file (never overwritten; readable by its owner only); default: standard output",
    )
    add_json(export)
    export.set_defaults(handler=_export)

    import_ = actions.add_parser(
        "import",
        help="create or update records from FHIR",
        description="Create or update a record per Patient of FILE (a FHIR R4 Bundle, or "
        "NDJSON: one resource or Bundle a line). Every resource is validated first; values "
        "the record does not hold yet are written as revisions by the account logged in on "
        "the laptop. A bad file, a "
        "value for a field in conflict, or a change to a signed note stores nothing.",
    )
    add_db(import_, "a laptop's database")
    import_.add_argument("file", metavar="FILE", type=path, help="a FHIR Bundle or NDJSON file")
    import_.add_argument("--author", type=author, help=AUTHOR_HELP)
    add_json(import_)
    import_.set_defaults(handler=_import)


def _export(args: argparse.Namespace, out: Output) -> int:
    require_models()  # before anything is opened: the advice to install, not a traceback

    async def go() -> bytes:
        reader = await open_reader(args.db)
        try:
            view = await reader.view(args.record_id)
            conflicts = await reader.conflicts(args.record_id)
            store = reader.replica.store if isinstance(reader, LaptopReader) else reader.store
            organisation = (await store.record_organisations([args.record_id])).get(args.record_id)
            await reader.audit("export", args.record_id, "fhir")
        finally:
            await reader.close()
        return bundle_bytes(bundle_for_record(view, conflicts, organisation=organisation))

    data = run(go())
    resources = data.count(b'"fullUrl"')
    if args.out is not None:
        _write_new(args.out, data)
        out.result(
            {
                "record_id": args.record_id,
                "file": args.out,
                "resources": resources,
                "bytes": len(data),
            },
            lambda console, result: console.print(
                escaped(f"wrote {result['resources']} resources to {result['file']}"),
                markup=False,
            ),
        )
    elif out.json:
        out.result({"record_id": args.record_id, "bundle": json.loads(data)})
    else:
        out.result({}, lambda _console, _data: _write_stdout(data))
    return 0


def _write_stdout(data: bytes) -> None:
    sys.stdout.write(data.decode("utf-8"))
    sys.stdout.flush()


def _write_new(target: str, data: bytes) -> None:
    try:
        with open(target, "xb", opener=private_opener) as file:
            file.write(data)
    except FileExistsError:
        raise CliError(
            f"{target} exists already; fhir export never overwrites a file, choose a new name"
        ) from None


def _import(args: argparse.Namespace, out: Output) -> int:
    require_models()
    data = _read(args.file)
    plan_import(data)  # the whole file checked before the database opens

    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            who = await replica.author_of(args.author)
            # Planned again knowing the laptop's organisation (whose record ids are its own).
            report = await import_fhir(replica, data, author=who)
            result = report.as_dict()
            result["author"] = who
            result["conflicts_open"] = await replica.count_conflicts()
            return result

    out.result(run(go()), _render_import)
    return 0


def _read(file: str) -> bytes:
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise CliError(f"{file}: no such file", ExitCode.NOT_FOUND) from None
    except IsADirectoryError:
        raise CliError(f"{file} is a directory, not a FHIR file") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidFhirError(f"{file} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _render_import(console: Console, data: Mapping[str, Any]) -> None:
    console.print(
        escaped(
            f"{len(data['records'])} record(s): {len(data['created'])} created, "
            f"{len(data['updated'])} updated, {len(data['unchanged'])} unchanged; "
            f"{data['fields_written']} field(s) written, {data['entries_added']} entries added, "
            f"{data['notes_signed']} note(s) signed, {data['addenda_added']} addenda added"
        ),
        markup=False,
    )
    for record_id in data["records"]:
        console.print(escaped(f"  {record_id}"), markup=False)
    for record_id, paths in data["contested_skipped"].items():
        console.print(
            escaped(f"  {record_id}: in conflict in the file, not imported: {', '.join(paths)}"),
            markup=False,
        )
    for kind, count in data["ignored"].items():
        console.print(escaped(f"  not imported: {count} {kind}"), markup=False)
