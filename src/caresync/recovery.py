"""Entries a restored server lost, taken back from a colleague laptop's database.

A server restored from an older backup lost what laptops pushed after the backup. A
laptop that syncs again sends what it wrote itself (protocol version 14), but a laptop
lost together with the server's data never will: its entries live on only in the
laptops that pulled them. The server takes a laptop's entries only from that laptop (a
revision's ``replica`` field proves nothing by itself), so these come back only on an
operator's word: :func:`recover_entries` (``SyncServer.recover_entries``) reads a
laptop's database, finds in each record what the server lacks, and admits it as written
by the replica its revisions name (``SyncServer.admit_vouched``), the operator vouching
for the file. The word is sound for an untouched file: a laptop holds nothing of another
laptop's that this server's feed did not give it, and its own entries it wrote.

Everything else a push is checked for still holds: the record schema, the sizes, the
dates, each Yjs client belongs to one replica, records of the laptop's organisation. The
replica named must be one that could have pushed them: not the server itself, not an
enrolled laptop of another organisation, a revoked one only before its revocation (an id
the server does not know is taken at its word: a laptop enrolled after the backup).
What is refused is reported by record and replica, and nothing of that replica's entries
in that record goes in (another replica's may). Running it twice, or on several laptops'
files, adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from caresync.exceptions import InvalidInputError, InvalidUpdateError
from caresync.records.crdt import EMPTY_UPDATE, diff_update
from caresync.records.spans import Client, items_by_client
from caresync.replication.checked import EMPTY_STATE_VECTOR
from caresync.replication.epochs import pieces_of, writers_of
from caresync.storage import LaptopStore
from caresync.storage.base import check_text

if TYPE_CHECKING:  # the server calls in here (SyncServer.recover_entries)
    from caresync.server import SyncServer

__all__ = ["RecoveryReport", "recover_entries"]


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover_entries` found and did."""

    records_read: int
    """Records of the laptop's database compared with the server's."""
    admitted: Mapping[str, int]
    """By replica: updates the server did not hold and now does."""
    records_changed: int
    """Records the server took something new into."""
    refused: Sequence[tuple[str, str, str]] = field(default_factory=tuple)
    """(record id, replica, why) for what the server would not admit (nothing of it went in)."""
    unattributed: Sequence[str] = field(default_factory=tuple)
    """Records holding something the server lacks that names no single writer (or that
    are not entries only): left out, as no replica can be said to have written it."""

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready values."""
        return {
            "records_read": self.records_read,
            "admitted": dict(self.admitted),
            "records_changed": self.records_changed,
            "refused": [
                {"record_id": rid, "replica": replica, "why": why}
                for rid, replica, why in self.refused
            ],
            "unattributed": list(self.unattributed),
        }


async def recover_entries(
    server: SyncServer,
    laptop: LaptopStore,
    *,
    vouched_by: str,
    batch_records: int = 200,
) -> RecoveryReport:
    """Give ``server`` what ``laptop`` (a laptop's database enrolled to it, opened
    read-only will do) holds of its records and it lacks, each entry as written by the
    replica it names, ``vouched_by`` (the operator, as the audit trail names them)
    vouching for the file. See the module docstring.

    ``InvalidInputError`` for a database that is not a laptop's enrolled to this server.
    """
    if not isinstance(batch_records, int) or not 1 <= batch_records <= 10_000:
        raise InvalidInputError(f"batch_records must be from 1 to 10,000, not {batch_records!r}")
    # Before any record: each admission checks it too, and would report every record
    # refused for it.
    check_text(vouched_by, "vouched_by", max_length=256)
    identity = await laptop.get_identity()
    if identity is None or identity.role != "laptop" or not identity.organisation:
        raise InvalidInputError(
            "that database is not an enrolled laptop's: only a laptop's records can be "
            "taken back (a server's backup is restored as a whole instead)"
        )
    if identity.server_id != server.server_id:
        raise InvalidInputError(
            f"that laptop is enrolled to server {identity.server_id}, not to this one "
            f"({server.server_id}): its records are another server's"
        )
    organisation = identity.organisation
    admitted: dict[str, int] = {}
    refused: list[tuple[str, str, str]] = []
    unattributed: list[str] = []
    changed: set[str] = set()
    read = 0
    after: str | None = None
    while True:
        ids = await laptop.record_ids(organisation, after=after, limit=batch_records)
        if not ids:
            break
        after = ids[-1]
        read += len(ids)
        states = await laptop.load_many(ids)
        held = await server.store.state_vectors(ids)
        by_replica: dict[str, list[tuple[str, bytes]]] = {}
        for record_id in ids:
            state = states.get(record_id)
            if state is None:
                continue
            vector = held[record_id][0] if record_id in held else EMPTY_STATE_VECTOR
            pieces = _missing_by_writer(record_id, state, vector)
            if pieces is None:
                unattributed.append(record_id)
                continue
            for replica, found in pieces.items():
                by_replica.setdefault(replica, []).extend((record_id, u) for u in found)
        for replica, updates in by_replica.items():
            count, records, refusals = await _admit(
                server, replica, updates, organisation, vouched_by
            )
            if count:
                admitted[replica] = admitted.get(replica, 0) + count
            changed.update(records)
            refused.extend(refusals)
    return RecoveryReport(read, admitted, len(changed), tuple(refused), tuple(unattributed))


def _missing_by_writer(
    record_id: str, state: bytes, vector: bytes
) -> dict[str, list[bytes]] | None:
    """What of a record's ``state`` a server at ``vector`` lacks, as updates by the
    replica that wrote them; None if some of it names no single writer (or the record
    is not entries only)."""
    try:
        missing = diff_update(state, vector, record_id=record_id)
    except InvalidUpdateError:
        return None
    if missing == EMPTY_UPDATE:  # the server holds all of it
        return {}
    lacking = items_by_client(missing)
    if lacking is None:
        return None
    if not lacking:
        return {}
    # A client's writer is read off all it wrote (what is missing may hold no revision).
    whole = items_by_client(state)
    writers = writers_of(whole) if whole is not None else {}
    clients: dict[str, set[Client]] = {}
    for client in lacking:
        names = writers.get(client, frozenset())
        if len(names) != 1:
            return None
        clients.setdefault(next(iter(names)), set()).add(client)
    out: dict[str, list[bytes]] = {}
    for replica, own in clients.items():
        pieces = pieces_of(missing, own)
        if pieces is None:
            return None
        out[replica] = pieces
    return out


async def _admit(
    server: SyncServer,
    replica: str,
    updates: list[tuple[str, bytes]],
    organisation: str,
    vouched_by: str,
) -> tuple[int, set[str], list[tuple[str, str, str]]]:
    """Admit one replica's updates of a batch of records at once; if the server
    refuses, record by record, so that one refusal keeps out only its own record.
    Returns how many were new, the records changed and the refusals."""
    try:
        count = await server.admit_vouched(
            replica, updates, organisation=organisation, vouched_by=vouched_by
        )
        return count, ({rid for rid, _u in updates} if count else set()), []
    except (InvalidUpdateError, InvalidInputError):
        pass  # said record by record below
    total, records, refusals = 0, set(), []
    by_record: dict[str, list[tuple[str, bytes]]] = {}
    for record_id, update in updates:
        by_record.setdefault(record_id, []).append((record_id, update))
    for record_id, own in by_record.items():
        try:
            count = await server.admit_vouched(
                replica, own, organisation=organisation, vouched_by=vouched_by
            )
        except (InvalidUpdateError, InvalidInputError) as exc:
            refusals.append((record_id, replica, str(exc)))
            continue
        total += count
        if count:
            records.add(record_id)
    return total, records, refusals
