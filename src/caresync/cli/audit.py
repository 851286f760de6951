"""``caresync audit``: list, verify and export a database's audit trail; verify an export.

The trail (:mod:`caresync.audit`) says who read or changed which patient record,
when and where, with no clinical content; each entry holds the hash of the one
before it. ``verify`` checks every chain line of a database, or of an export
written by ``export`` (FHIR AuditEvent resources, one JSON object per line), and
names the first entry that was changed, removed or moved.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from caresync.audit import AuditEntry, verify_trail
from caresync.audit.fhir_events import read_lines, to_lines
from caresync.cli.common import add_json, identifier, path, run
from caresync.cli.databases import LaptopReader, open_reader
from caresync.cli.errors import CliError, ExitCode
from caresync.cli.output import Output, cells, escaped
from caresync.exceptions import AuditError
from caresync.storage import ReplicaStore
from caresync.storage._fsync import sync_file
from caresync.storage.unsynced import private_opener

__all__ = ["entry_json", "register"]

MAX_FILE_BYTES = 1 << 30
"""The largest export ``audit verify --file`` reads."""


def register(commands: Any) -> None:
    """Add ``audit list``, ``audit verify`` and ``audit export``."""
    audit = commands.add_parser(
        "audit",
        help="the audit trail: who read or changed which record",
        description="Every read of a record, write, resolution, export, import, login and "
        "failed login is an entry of the audit trail, chained by hashes. A laptop keeps "
        "its own chain and sends it to the server at each sync; a server keeps its own "
        "and each laptop's.",
    )
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list", help="list the trail's entries", description="List the trail's entries."
    )
    _add_db(listing, required=True)
    listing.add_argument(
        "--record",
        metavar="ID",
        type=identifier("a record id"),
        help="only the entries about this record",
    )
    add_json(listing)
    listing.set_defaults(handler=_list)

    verify = actions.add_parser(
        "verify",
        help="check that no entry was changed, removed or moved",
        description="Check every chain of a database (--db) or of an export (--file): exit "
        "status 1, and `first_bad` naming the entry, when one was changed, removed or "
        "reordered. A chain cut short at its end shows only against another copy: compare "
        "`heads` with the server's.",
    )
    source = verify.add_mutually_exclusive_group(required=True)
    _add_db(source, required=False)
    source.add_argument(
        "--file", metavar="FILE", type=path, help="an export written by `caresync audit export`"
    )
    add_json(verify)
    verify.set_defaults(handler=_verify)

    export = actions.add_parser(
        "export",
        help="write the trail as FHIR AuditEvent resources",
        description="Write every entry as a FHIR R4 AuditEvent resource, one JSON object per "
        "line, carrying the chain's hashes (`caresync audit verify --file` checks it). "
        "Never overwrites a file.",
    )
    _add_db(export, required=True)
    export.add_argument("--out", required=True, metavar="FILE", type=path, help="the new file")
    add_json(export)
    export.set_defaults(handler=_export)


def _add_db(parser: Any, *, required: bool) -> None:
    parser.add_argument(
        "--db",
        required=required,
        metavar="PATH",
        type=path,
        help="a laptop's or a server's database (an SQLite file)",
    )


async def _entries(db: str, record_id: str | None = None) -> tuple[str, list[AuditEntry]]:
    reader = await open_reader(db)
    try:
        store: ReplicaStore = (
            reader.replica.store if isinstance(reader, LaptopReader) else reader.store
        )
        return reader.role, await store.audit_entries(record_id=record_id)
    finally:
        await reader.close()


def _iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry as ``audit list --json`` shows it."""
    return {
        "replica_id": entry.replica_id,
        "line": entry.line,
        "seq": entry.seq,
        "at": _iso(entry.at_ms),
        "actor": entry.actor,
        "action": entry.action,
        "record_id": entry.record_id,
        "detail": entry.detail,
        "hash": entry.hash.hex(),
    }


# ------------------------------------------------------------------ list


def _list(args: argparse.Namespace, out: Output) -> int:
    role, entries = run(_entries(args.db, args.record))
    out.result(
        {"role": role, "entries": [entry_json(e) for e in entries], "count": len(entries)},
        _render_list,
    )
    return 0


def _render_list(console: Console, data: Mapping[str, Any]) -> None:
    table = Table("replica", "seq", "at", "actor", "action", "record", "detail")
    for entry in data["entries"]:
        seq = str(entry["seq"]) if entry["line"] == 0 else f"{entry['seq']} (line {entry['line']})"
        table.add_row(
            *cells(
                entry["replica_id"],
                seq,
                entry["at"],
                entry["actor"],
                entry["action"],
                entry["record_id"] or "",
                entry["detail"] or "",
            )
        )
    console.print(table)
    console.print(escaped(f"{data['count']} entries"), markup=False)


# ---------------------------------------------------------------- verify


def _verdict(entries: Sequence[AuditEntry], lines: Sequence[int] | None) -> dict[str, Any]:
    verdict = verify_trail(entries)
    first_bad = None
    if verdict.first_bad is not None:
        bad = verdict.first_bad
        first_bad = {
            "replica_id": bad.replica_id,
            "line": bad.line,
            "seq": bad.seq,
            "reason": verdict.reason,
        }
        if lines is not None and verdict.first_bad_position is not None:
            first_bad["file_line"] = lines[verdict.first_bad_position]
    heads = [
        {"replica_id": replica_id, "line": line, "seq": seq, "hash": digest}
        for (replica_id, line), (seq, digest) in sorted((verdict.heads or {}).items())
    ]
    return {"ok": verdict.ok, "entries": verdict.entries, "first_bad": first_bad, "heads": heads}


def _read_export(file: str) -> dict[str, Any]:
    try:
        size = os.path.getsize(file)
        if size > MAX_FILE_BYTES:
            raise CliError(f"{file} is larger than {MAX_FILE_BYTES} bytes", ExitCode.USAGE)
        with open(file, "rb") as handle:
            numbered = list(read_lines(handle))
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}", ExitCode.USAGE) from exc
    except AuditError as exc:
        # A line that holds no entry at all is as bad as a changed one: say which.
        first_bad: dict[str, Any] = {"reason": str(exc)}
        if exc.line is not None:
            first_bad["file_line"] = exc.line
        return {"ok": False, "entries": None, "first_bad": first_bad, "heads": []}
    return _verdict([entry for _, entry in numbered], [number for number, _ in numbered])


def _verify(args: argparse.Namespace, out: Output) -> int:
    if args.file is not None:
        data = _read_export(args.file)
        data["file"] = args.file
    else:
        _role, entries = run(_entries(args.db))
        data = _verdict(entries, None)
    out.result(data, _render_verify)
    if data["ok"]:
        return ExitCode.OK
    # Like every failing command: one line on standard error, whatever the output format.
    print(f"caresync: error: the audit trail does not verify{_where(data)}", file=sys.stderr)
    return ExitCode.CHECK_FAILED


def _where(data: Mapping[str, Any]) -> str:
    bad = data["first_bad"]
    where = ""
    if "seq" in bad:
        where = f" at entry {bad['seq']} of replica {bad['replica_id']}"
        if bad.get("line"):
            where += f" (line {bad['line']} of its chain)"
        if "file_line" in bad:
            where += f", line {bad['file_line']} of the file"
    elif "file_line" in bad:
        where = f" at line {bad['file_line']} of the file"
    return f"{where}: {bad['reason']}"


def _render_verify(console: Console, data: Mapping[str, Any]) -> None:
    if data["ok"]:
        console.print(escaped(f"ok: {data['entries']} entries, every chain holds"), markup=False)
        return
    console.print(escaped(f"NOT OK{_where(data)}"), markup=False)


# ---------------------------------------------------------------- export


def _export(args: argparse.Namespace, out: Output) -> int:
    _role, entries = run(_entries(args.db))
    try:
        with open(args.out, "x", encoding="utf-8", opener=private_opener) as handle:
            handle.writelines(to_lines(entries))
            handle.flush()
            sync_file(handle.fileno())
    except FileExistsError:
        raise CliError(
            f"{args.out} exists already; audit export never overwrites a file", ExitCode.USAGE
        ) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror or exc}", ExitCode.USAGE) from exc
    out.result(
        {"file": args.out, "entries": len(entries)},
        lambda console, data: console.print(
            escaped(f"wrote {data['entries']} entries to {data['file']}"), markup=False
        ),
    )
    return 0
