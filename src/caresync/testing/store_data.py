"""What the store conformance suite writes with: records whose updates are kept, a clock.

Public for a store adapter's own tests too (see :mod:`caresync.testing.store_suite`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caresync.audit import GENESIS, AuditEvent, link
from caresync.audit.chain import AuditEntry
from caresync.records import Record
from caresync.records.crdt import Doc, Map, apply_update
from caresync.records.persons import PersonCard, PersonPair, pair_of, person_card
from caresync.storage import ConflictRow, Identity, IncomingUpdate, ReplicaStore, SessionRow
from caresync.storage._updates import same_state_vector

__all__ = [
    "READ",
    "WRITE",
    "FakeClock",
    "Patient",
    "audit_chain",
    "card",
    "conflict",
    "digest",
    "incoming",
    "oracle",
    "registered",
    "revision_ids",
    "same_vector",
    "session_row",
    "set_laptop_identity",
    "whole",
]

READ = AuditEvent("dr.a", "read", "rec-1")
"""An audit event: dr.a read rec-1."""
WRITE = AuditEvent("dr.a", "write", "rec-1")
"""An audit event: dr.a wrote rec-1."""

_ids = itertools.count()


class Patient:
    """A record on one replica; ``updates`` holds the bytes of each local write, in order."""

    def __init__(self, replica: str = "laptop-a", record_id: str | None = None) -> None:
        self.record = Record.create(replica=replica, record_id=record_id)
        self.updates: list[bytes] = [self.record.update_since()]
        self.record.on_update(self._captured)

    def _captured(self, update: bytes, is_local: bool) -> None:
        if is_local:
            self.updates.append(update)

    @property
    def id(self) -> str:
        """The record's id."""
        return self.record.record_id

    @property
    def created(self) -> bytes:
        """The update that created the record (its id in ``meta``)."""
        return self.updates[0]

    def edit(self, path: str = "birthDate", value: object = None, author: str = "dr.a") -> bytes:
        """Write one field; returns that write's update."""
        if value is None:
            value = f"v{next(_ids)}"
        self.record.set(path, value, author=author)  # type: ignore[arg-type]
        return self.updates[-1]

    def copy(self, replica: str) -> Patient:
        """The same record on another replica, as of now."""
        other = Patient.__new__(Patient)
        other.record = Record.from_update(self.id, self.record.update_since(), replica=replica)
        other.updates = [other.record.update_since()]
        other.record.on_update(other._captured)
        return other


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        """Move the clock on by ``ms`` milliseconds."""
        self.now += ms


def conflict(record_id: str, n: int = 0, *, kind: str = "field") -> ConflictRow:
    """A conflict row the store treats as opaque."""
    return ConflictRow(
        id=f"c-{record_id[:8]}-{n}",
        record_id=record_id,
        kind=kind,
        subject=f"birthDate#{n}",
        severity="block",
        payload=b'{"candidates": 2}',
    )


def revision_ids(update: bytes, record_id: str) -> set[str]:
    """Ids of the revisions an update (or merged state) holds: its ``revisions`` map's keys."""
    doc: Doc[Any] = Doc()
    apply_update(doc, update, record_id=record_id)
    return set(doc.get("revisions", type=Map).keys())


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_vector(a: bytes, b: bytes) -> bool:
    """Two encoded state vectors that say the same (clients may come in any order)."""
    return same_state_vector(a, b)


async def set_laptop_identity(store: ReplicaStore, replica_id: str = "laptop-7") -> None:
    """Give the store a laptop's identity, so that it has an audit chain of its own."""
    await store.set_identity(Identity(replica_id, "laptop"))


def audit_chain(
    replica_id: str, count: int, *, start: tuple[int, bytes] = (0, GENESIS), actor: str = "dr.a"
) -> list[AuditEntry]:
    """``count`` linked entries of ``replica_id``'s chain, after ``start`` (number, hash)."""
    entries = []
    seq, previous = start
    for _ in range(count):
        entry = link(
            AuditEvent(actor, "read", "rec-1"),
            replica_id=replica_id,
            seq=seq + 1,
            at_ms=1_000 + seq,
            prev_hash=previous,
        )
        entries.append(entry)
        seq, previous = entry.seq, entry.hash
    return entries


def session_row(token: str, *, replica: str | None = "r1", user: str = "dr.a") -> SessionRow:
    """A session of ``user`` of the organisation "clinic" (token hash ``hash-<token>``)."""
    return SessionRow(f"hash-{token}", "clinic", user, replica, 1_000, 5_000)


# The person index: records with identifying fields, and the pairs their cards make.


def registered(
    name: str, birth: str = "1990-04-12", *, sex: str | None = "female", replica: str = "laptop-a"
) -> Patient:
    """A record with its identifying fields written (each write's update kept)."""
    p = Patient(replica)
    p.edit("name", name)
    p.edit("birthDate", birth)
    if sex is not None:
        p.edit("sex", sex)
    return p


def whole(p: Patient) -> bytes:
    """The record as one update (its creation and every edit)."""
    return p.record.update_since()


def card(p: Patient) -> PersonCard:
    """The record's person card, as it stands."""
    return person_card(p.record)


def incoming(p: Patient, org: str | None = None, *, person: bool = True) -> IncomingUpdate:
    """The whole record as received from a peer, with its card (unless ``person=False``)."""
    return IncomingUpdate(p.id, whole(p), None, org, card(p) if person else None)


def oracle(cards: Mapping[str, tuple[str | None, PersonCard]]) -> list[PersonPair]:
    """Every pair the final cards make: cards of one organisation sharing a key, compared."""
    ids = sorted(cards)
    pairs = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            (org_a, card_a), (org_b, card_b) = cards[a], cards[b]
            if org_a == org_b and card_a.blocking_keys() & card_b.blocking_keys():
                pair = pair_of(card_a, card_b)
                if pair is not None:
                    pairs.append(pair)
    return pairs
