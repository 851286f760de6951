"""A laptop's unsynced work: exported to a file, imported again, discarded only
against a complete export."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from functools import partial

from caresync.audit.chain import AuditEvent
from caresync.exceptions import ExportFileError, UnsyncedChangesError
from caresync.records.persons import PersonCard
from caresync.storage._arguments import imported_writes
from caresync.storage._audit import check_events
from caresync.storage.base import ConflictRow, StrPath
from caresync.storage.sqlite._sql import _read_identity
from caresync.storage.sqlite.outbox import OutboxPart
from caresync.storage.unsynced import (
    ExportedUpdate,
    UnsyncedExport,
    content_key,
    read_export_file,
    write_export_file,
)

__all__ = ["UnsyncedPart"]


class UnsyncedPart(OutboxPart):
    """A laptop's unsynced work: export, import, discard."""

    async def export_unsynced(self, path: StrPath) -> int:
        """Write every pending update to a new file at ``path``; returns how many.

        The file never overwrites an existing one, is fsynced, and carries a
        version and a checksum (format: :mod:`caresync.storage.unsynced`). An
        encrypted store writes it encrypted under its key.
        """

        def job(raw: sqlite3.Connection) -> UnsyncedExport:
            identity = _read_identity(raw)
            # What was set aside is unsynced work too (it keeps its outbox seq).
            rows = raw.execute(
                "SELECT o.seq, o.record_id, r.organisation, o.created_ms, o.data"
                " FROM (SELECT seq, record_id, created_ms, data FROM outbox"
                " UNION ALL SELECT seq, record_id, created_ms, data FROM outbox_aside) o"
                " LEFT JOIN records r ON r.record_id = o.record_id ORDER BY o.seq"
            ).fetchall()
            return UnsyncedExport(
                replica_id=None if identity is None else identity.replica_id,
                exported_ms=self._now_ms(),
                updates=tuple(ExportedUpdate(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows),
            )

        export = await self._run("exporting unsynced changes", job)
        await asyncio.to_thread(partial(write_export_file, key=self._key), path, export)
        return len(export.updates)

    async def import_unsynced(
        self,
        path: StrPath,
        *,
        conflicts: Mapping[str, Sequence[ConflictRow]] | None = None,
        persons: Mapping[str, PersonCard] | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> int:
        """Re-apply an export's updates as local writes (they enter the outbox again).

        All or nothing, in one transaction, with the conflict rows given for
        the records touched (the others keep theirs), and ``audit`` appended to
        this replica's audit chain. Returns how many updates.
        """
        events = check_events(audit)
        export = await asyncio.to_thread(partial(read_export_file, key=self._key), path)
        writes = imported_writes(export.updates, conflicts, persons)
        seqs = await self._run(
            "importing unsynced changes", lambda raw: self._write_local(raw, writes, events)
        )
        return len(seqs)

    async def discard_unsynced(self, *, exported_to: StrPath) -> int:
        """Empty the outbox and what is set aside, if and only if ``exported_to`` holds
        every pending update.

        Raises UnsyncedChangesError (and deletes nothing) when the file is
        missing, damaged, or lacks any pending update. The records keep the
        updates; only the duty to upload them goes. Returns how many rows went.
        """
        try:
            export = await asyncio.to_thread(partial(read_export_file, key=self._key), exported_to)
        except ExportFileError as exc:
            raise UnsyncedChangesError(
                f"refused to discard unsynced changes: {exc}; export them first"
            ) from exc
        kept = export.keys()

        def job(raw: sqlite3.Connection) -> int:
            def body() -> int:
                rows = raw.execute(
                    "SELECT seq, record_id, data FROM outbox"
                    " UNION ALL SELECT seq, record_id, data FROM outbox_aside ORDER BY seq"
                )
                missing = [
                    seq
                    for seq, record_id, data in rows
                    if content_key(record_id, bytes(data)) not in kept
                ]
                if missing:
                    raise UnsyncedChangesError(
                        f"refused to discard unsynced changes: {len(missing)} pending updates "
                        f"(outbox {missing[0]}...) are not in {exported_to}; export them again"
                    )
                aside = raw.execute("DELETE FROM outbox_aside").rowcount
                raw.execute("DELETE FROM set_aside")
                return raw.execute("DELETE FROM outbox").rowcount + aside

            return self._write(raw, body)

        return await self._run("discarding unsynced changes", job)
