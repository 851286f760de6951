"""``caresync export`` and ``caresync import``: unsynced changes to and from a file.

An export keeps a laptop's unsynced work safe outside its database (before a
laptop is wiped or replaced); an import puts it back in a laptop's outbox, to
be pushed at its next sync. Updates are idempotent: importing something the
server already has changes nothing there.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from caresync.audit import AuditEvent
from caresync.cli.common import add_db, add_json, path, run
from caresync.cli.databases import open_laptop
from caresync.cli.output import Output
from caresync.cli.password import UNLOCK_PASSWORD_ENV, read_password
from caresync.exceptions import InvalidInputError, NotEnrolledError, WrongOrganisationError
from caresync.records import Record, Revision
from caresync.records.persons import PersonCard, person_card
from caresync.replica import Replica
from caresync.replication.index import REINDEX_BATCH_RECORDS
from caresync.replication.pool import conflict_rows
from caresync.storage import ConflictRow, IncomingUpdate
from caresync.storage.laptop_key import unlock_key_file
from caresync.storage.unsynced import read_export_file

__all__ = ["import_file", "register"]


def register(commands: Any) -> None:
    """Add ``export`` and ``import``."""
    export = commands.add_parser(
        "export",
        help="write unsynced changes to a file",
        description="Write every change the server has not acknowledged to a new file "
        "(never overwrites one). The changes stay in the laptop's outbox too.",
    )
    add_db(export, "the laptop's database")
    export.add_argument("--out", required=True, metavar="FILE", type=path, help="the new file")
    add_json(export)
    export.set_defaults(handler=_export)

    import_ = commands.add_parser(
        "import",
        help="put exported changes back in a laptop's outbox",
        description="Re-apply the changes of an export file as local changes of this laptop "
        "(all or nothing); they are pushed at its next sync. The laptop must be enrolled to "
        "the organisation the changes belong to.",
    )
    add_db(import_, "the laptop's database")
    import_.add_argument(
        "file", metavar="FILE", type=path, help="a file written by `caresync export`"
    )
    import_.add_argument(
        "--key-file",
        metavar="KEYS",
        type=path,
        help="the exporting laptop's key file (its `<db>.keys`), for an encrypted export "
        "from another laptop; it opens with the password of a user of that laptop, from "
        f"{UNLOCK_PASSWORD_ENV} or asked",
    )
    add_json(import_)
    import_.set_defaults(handler=_import)


def _export(args: argparse.Namespace, out: Output) -> int:
    async def go() -> dict[str, Any]:
        async with await open_laptop(args.db) as replica:
            count = await replica.export_unsynced(args.out)
            return {"exported": count, "file": args.out, "replica_id": replica.replica_id}

    out.result(run(go()))
    return 0


def _import(args: argparse.Namespace, out: Output) -> int:
    unlock = None
    if args.key_file is not None:
        unlock = read_password(
            f"A password of a user of the laptop that wrote {args.file}: ",
            env=UNLOCK_PASSWORD_ENV,
        )

    async def go() -> dict[str, Any]:
        key = None
        if args.key_file is not None and unlock is not None:
            key = (await asyncio.to_thread(unlock_key_file, args.key_file, unlock)).key
        async with await open_laptop(args.db) as replica:
            return await import_file(replica, args.file, key=key)

    out.result(run(go()))
    return 0


async def import_file(replica: Replica, file: str, *, key: bytes | None = None) -> dict[str, Any]:
    """Put an export's changes in the laptop's outbox, with the conflict rows they make.

    An encrypted export opens with ``key`` (the exporting laptop's database key),
    else with this laptop's own.

    The records and their conflict rows are committed in one transaction, so
    no crash can leave imported changes whose conflicts are not listed. The
    rows are worked out first, from each record as stored plus what the file
    holds for it; a file that does not apply is refused before anything is
    written. Returns what ``caresync import --json`` prints.
    """
    organisation = replica.identity.organisation
    if organisation is None:
        raise NotEnrolledError(
            "this laptop is not enrolled; enrol it (to the organisation the changes "
            "belong to) before importing"
        )
    actor = await replica.author_of(None)  # someone must be logged in (NotLoggedInError)
    if key is None and replica.logins.database_key is not None:
        key = replica.logins.database_key.key  # its own export
    export = await asyncio.to_thread(read_export_file, file, key=key)
    foreign = sorted({u.organisation or "(none)" for u in export.updates} - {organisation})
    if foreign:
        raise WrongOrganisationError(
            f"{file} holds changes of {', '.join(foreign)}; this laptop belongs "
            f"to {organisation}: nothing was imported"
        )
    arrived: dict[str, list[bytes]] = {}
    for update in export.updates:
        arrived.setdefault(update.record_id, []).append(update.update)
    touched = list(arrived)
    # Planned and written under the replica's write lock: no sync commits to these
    # records between the read of what is stored and the write of the rows it makes.
    async with replica.writing(touched):
        rows: dict[str, tuple[ConflictRow, ...]] = {}
        cards: dict[str, PersonCard] = {}
        # A chunk of records loaded at a time: an export may touch many.
        for start in range(0, len(touched), REINDEX_BATCH_RECORDS):
            chunk = touched[start : start + REINDEX_BATCH_RECORDS]
            stored = await replica.store.load_many(chunk)
            for record_id in chunk:
                before = stored.get(record_id)
                parts = arrived[record_id] if before is None else [before, *arrived[record_id]]
                record = Record.from_updates(record_id, parts, replica=replica.replica_id)
                held = set() if before is None else _revision_ids(record_id, before, replica)
                for rev in record.revisions():
                    if rev.id not in held:
                        await _check_own(replica, file, record_id, rev)
                rows[record_id] = conflict_rows(record, replica.rulebook)
                cards[record_id] = person_card(record)
        last = {update.record_id: index for index, update in enumerate(export.updates)}
        edits = [
            IncomingUpdate(
                update.record_id,
                update.update,
                rows[update.record_id] if last[update.record_id] == index else None,
                update.organisation,
                cards[update.record_id] if last[update.record_id] == index else None,
            )
            for index, update in enumerate(export.updates)
        ]
        audit = [
            AuditEvent(actor, "import", record_id, "unsynced changes") for record_id in touched
        ]
        count = len(await replica.store.write_local_many(edits, audit=audit))  # all or nothing
    return {
        "imported": count,
        "records": len(touched),
        "file": file,
        "pending": await replica.store.pending_count(),
        "conflicts_open": await replica.count_conflicts(),
    }


def _revision_ids(record_id: str, state: bytes, replica: Replica) -> set[str]:
    return {
        rev.id
        for rev in Record.from_update(record_id, state, replica=replica.replica_id).revisions()
    }


async def _check_own(replica: Replica, file: str, record_id: str, rev: Revision) -> None:
    """Refuse (before anything is stored) a change the server would refuse to take from
    this laptop: one written on another laptop, or by an account that never logged in
    here. Pushed, it would be refused for good, and keep the outbox from emptying."""
    if rev.replica != replica.replica_id:
        raise InvalidInputError(
            f"{file} holds changes written on laptop {rev.replica} (record {record_id}); "
            "a laptop pushes only its own changes, so this one cannot carry them: nothing "
            "was imported (keep the file; import it on a re-opened copy of that laptop)"
        )
    if not await replica.logins.logged_in_here(rev.author):
        raise InvalidInputError(
            f"{file} holds changes by {rev.author} (record {record_id}), who has never "
            "logged in on this laptop: nothing was imported"
        )
