"""The oracle: it logged every value written, and checks the replicas when the run is over.

Theory of operation
-------------------
Loading every record of every replica into pycrdt would cost replicas x
records documents; the oracle instead checks in three layers, each cheap
where it is wide and thorough where it is narrow:

1. **Every replica, by digest.** A record's stored state vector says which
   updates it holds; records are only ever added to (revisions are never
   overwritten or deleted), so two replicas whose state vectors agree for every
   record, with no update waiting for a missing one, hold the same documents —
   and the convergence property tests show the same documents give the same
   fields, history and conflicts. The conflict index rows (ids, kinds,
   severities and a digest of their payloads) must agree too, and every
   laptop's outbox must be empty. These are read straight from each SQLite
   file (schema version 2: the ``records`` and ``conflicts`` tables), after the
   replicas closed, in one query per table. A laptop's digest may come condensed
   as a :class:`ReplicaPrint`, read where its file is (a worker): one equal to
   the server's stands for the digest; any other laptop's digest is read here.
2. **The server, in full.** Every record is loaded once; every value the
   oracle logged must be one of its revisions (current, candidate or history:
   promise 1), and so must every decision's revision (logged by id: the value a
   decision chooses exists already), the conflicts the rulebook computes must be exactly the indexed
   ones, and the stored state vector must be the document's.
3. **A seeded sample of laptops, in full**, held to the same standard and
   compared with the server field by field (heads, conflicts, revision ids).
   That validates layer 1's shortcut on real data. Any laptop whose digest
   differs from the server's is loaded in full as well, so that a value it
   alone holds still counts as reachable and the report names what differs.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caresync.conflicts import Conflict, Rulebook, Severity
from caresync.exceptions import CorruptDatabaseError
from caresync.records import JSONValue, Record, canonical_json
from caresync.storage import SQLiteStore
from caresync.storage.schema import HEAD_JOIN, HEAD_PENDING, HEAD_VECTOR

__all__ = [
    "CONFLICT_EXAMPLES",
    "MAX_DETAILS",
    "Oracle",
    "OracleReport",
    "RecordSnapshot",
    "ReplicaDigest",
    "ReplicaFile",
    "ReplicaPrint",
    "compare_digests",
    "decode_state_vector",
    "load_replica",
    "read_digest",
    "read_print",
    "same_vector",
    "snapshot",
]

MAX_DETAILS = 20
"""At most this many lines explain a failed check (a broken run could list thousands)."""
CONFLICT_EXAMPLES = 5
"""How many open conflicts the report shows as examples."""

StateVector = tuple[tuple[int, int], ...]
ConflictKey = tuple[str, str, str, str, str]


def decode_state_vector(data: bytes) -> StateVector:
    """A Yjs v1 state vector as sorted ``(client, clock)`` pairs (encodings may order them freely).

    Raises :class:`~caresync.exceptions.CorruptDatabaseError` for bytes that are not one.
    """
    pos = 0

    def varuint() -> int:
        nonlocal pos
        result, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise CorruptDatabaseError(f"a stored state vector is malformed: {data[:32]!r}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    count = varuint()
    pairs = [(varuint(), varuint()) for _ in range(count)]
    if pos != len(data):
        raise CorruptDatabaseError(f"a stored state vector has trailing bytes: {data[:32]!r}")
    return tuple(sorted(pair for pair in pairs if pair[1] > 0))


@dataclass(frozen=True)
class ReplicaFile:
    """A replica's database file, and the name the report uses for it."""

    name: str
    path: Path


@dataclass(frozen=True)
class ReplicaDigest:
    """What one replica holds, in brief: per record its state vector, and its conflict rows."""

    name: str
    records: Mapping[str, bytes]
    """Record id -> its stored state vector, as stored (compare with :func:`same_vector`)."""
    waiting: frozenset[str]
    """Records holding an update that waits for one it depends on."""
    conflicts: frozenset[ConflictKey]
    """(record id, conflict id, kind, severity, sha-256 of the payload) per open conflict."""
    outbox: int


def _read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a closed replica's file, to check it."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CorruptDatabaseError(f"cannot open {path} to check it: {exc}") from None


def read_digest(replica: ReplicaFile) -> ReplicaDigest:
    """Read a closed replica's digest from its SQLite file (read-only, one query per table)."""
    raw = _read_only(replica.path)
    try:
        rows = raw.execute(
            f"SELECT r.record_id, {HEAD_VECTOR}, {HEAD_PENDING} FROM records r{HEAD_JOIN}"
        ).fetchall()
        conflict_rows = raw.execute(
            "SELECT record_id, id, kind, severity, payload FROM conflicts"
        ).fetchall()
        outbox = int(raw.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.Error as exc:
        raise CorruptDatabaseError(f"cannot read {replica.path} to check it: {exc}") from None
    finally:
        raw.close()
    return ReplicaDigest(
        name=replica.name,
        records={rid: bytes(sv) for rid, sv, _ in rows},
        waiting=frozenset(rid for rid, _, pending in rows if pending),
        conflicts=frozenset(
            (rid, cid, kind, severity, hashlib.sha256(bytes(payload)).hexdigest())
            for rid, cid, kind, severity, payload in conflict_rows
        ),
        outbox=outbox,
    )


@dataclass(frozen=True)
class ReplicaPrint:
    """A replica's digest in 32 bytes, computed where its file is (a worker process).

    ``fingerprint`` is a SHA-256 over its records' state vectors (as sorted pairs)
    and its conflict rows, in key order; ``waiting`` and ``outbox`` count what
    :class:`ReplicaDigest` lists. Equal fingerprints mean equal digests; unequal
    ones may still be equal digests (a vector spelled with needless bytes), which
    the oracle then reads in full.
    """

    fingerprint: bytes
    waiting: int
    outbox: int


def read_print(path: Path) -> ReplicaPrint:
    """Read a closed replica's :class:`ReplicaPrint` from its SQLite file (read-only)."""
    digest = hashlib.sha256()

    def add(*parts: bytes) -> None:
        for part in parts:  # each part length-prefixed: no two streams run together
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)

    raw = _read_only(path)
    try:
        waiting = 0
        for rid, vector, pending in raw.execute(
            f"SELECT r.record_id, {HEAD_VECTOR}, {HEAD_PENDING} FROM records r{HEAD_JOIN}"
            " ORDER BY r.record_id"
        ):
            vector = bytes(vector)
            tokens = _held_tokens(vector)
            # Sorted pairs (varuints delimit themselves), or, if it does not split, as stored.
            held = b"r" + vector if tokens is None else b"t" + b"".join(map(b"".join, tokens))
            add(rid.encode(), held)
            waiting += bool(pending)
        add(b"conflicts")
        for rid, cid, kind, severity, payload in raw.execute(
            "SELECT record_id, id, kind, severity, payload FROM conflicts ORDER BY record_id, id"
        ):
            add(rid.encode(), cid.encode(), kind.encode(), severity.encode(), bytes(payload))
        outbox = int(raw.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.Error as exc:
        raise CorruptDatabaseError(f"cannot read {path} to check it: {exc}") from None
    finally:
        raw.close()
    return ReplicaPrint(digest.digest(), waiting, outbox)


_VARUINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")
_ZERO = b"\x00"


@functools.lru_cache(maxsize=1 << 16)  # the server's vectors are compared with every laptop's
def _held_tokens(data: bytes) -> tuple[tuple[bytes, bytes], ...] | None:
    """A state vector's (client, clock) pairs as their encoded bytes, clock-0 pairs left
    out, sorted; None if the bytes do not split into a count and that many pairs.

    Equal lists mean equal vectors (a varuint's bytes give its value); unequal ones
    may still be equal vectors written with needless zero groups, which
    :func:`same_vector` then decodes in full.
    """
    tokens: list[bytes] = _VARUINT.findall(data)
    if not tokens or sum(map(len, tokens)) != len(data):
        return None
    # The count may take several bytes: a record written by 128 clients or more (at
    # 1,000 laptops, the records every resolver settles conflicts on).
    count = 0
    for shift, byte in enumerate(tokens[0]):
        count |= (byte & 0x7F) << (7 * shift)
    if len(tokens) != 1 + 2 * count:
        return None
    return tuple(
        sorted(pair for pair in zip(tokens[1::2], tokens[2::2], strict=True) if pair[1] != _ZERO)
    )


def same_vector(one: bytes | None, other: bytes | None) -> bool:
    """True if two encoded state vectors say the same (equal bytes, the usual case; the
    same pairs in another order; or decoded in full)."""
    if one == other:
        return True
    if one is None or other is None:
        return False
    quick = _held_tokens(one)
    if quick is not None and quick == _held_tokens(other):
        return True
    return decode_state_vector(one) == decode_state_vector(other)


def compare_digests(reference: ReplicaDigest, other: ReplicaDigest) -> list[str]:
    """How ``other`` differs from ``reference`` (empty when it holds the same), a few lines."""
    problems: list[str] = []
    missing = reference.records.keys() - other.records.keys()
    extra = other.records.keys() - reference.records.keys()
    if missing:
        problems.append(f"{other.name} lacks {len(missing)} records, e.g. {min(missing)}")
    if extra:
        problems.append(f"{other.name} has {len(extra)} records {reference.name} lacks")
    differing = (
        []
        if other.records == reference.records  # the usual case, compared at C speed
        else sorted(
            rid
            for rid, vector in other.records.items()
            if rid in reference.records and not same_vector(reference.records[rid], vector)
        )
    )
    if differing:
        problems.append(
            f"{other.name} holds other updates than {reference.name} for "
            f"{len(differing)} records, e.g. {differing[0]}"
        )
    if other.waiting:
        problems.append(f"{other.name} has {len(other.waiting)} records with updates waiting")
    if other.conflicts != reference.conflicts:
        only_other = len(other.conflicts - reference.conflicts)
        only_reference = len(reference.conflicts - other.conflicts)
        problems.append(
            f"{other.name}'s open conflicts differ from {reference.name}'s "
            f"({only_other} only there, {only_reference} missing)"
        )
    if other.outbox:
        problems.append(f"{other.name} still has {other.outbox} unacknowledged changes")
    return problems


@dataclass(frozen=True)
class RecordSnapshot:
    """A record as a person sees it: each field's head values, open conflicts, revision ids."""

    fields: Mapping[str, tuple[str, ...]]
    conflicts: tuple[str, ...]
    revisions: frozenset[str]


def snapshot(record: Record, rulebook: Rulebook) -> RecordSnapshot:
    """The record's snapshot under ``rulebook``."""
    return RecordSnapshot(
        fields={
            path: tuple(sorted(head.value_key for head in state.heads))
            for path, state in record.fields().items()
        },
        conflicts=tuple(sorted(c.id for c in rulebook.conflicts(record))),
        revisions=frozenset(rev.id for rev in record.revisions()),
    )


@dataclass
class _LoadedReplica:
    name: str
    records: dict[str, Record]
    indexed: dict[str, set[str]]


async def load_replica(replica: ReplicaFile) -> tuple[dict[str, Record], dict[str, set[str]]]:
    """Every record of a closed replica, loaded, and its conflict index (record -> ids)."""
    async with SQLiteStore.open(replica.path, create=False) as store:
        records = {}
        for rid in await store.record_ids():
            stored = await store.load(rid)
            if stored is not None:
                records[rid] = Record.from_update(rid, stored, replica=f"oracle-{replica.name}")
        indexed: dict[str, set[str]] = {}
        for row in await store.conflicts():
            indexed.setdefault(row.record_id, set()).add(row.id)
    return records, indexed


@dataclass
class OracleReport:
    """What the oracle found."""

    converged: bool
    lost_values: int
    conflicts_open: int
    values_logged: int
    replicas_checked: int
    replicas_checked_in_depth: int
    details: list[str] = field(default_factory=list)
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)


class Oracle:
    """Logs every value written; then checks the replicas (see the module's docstring)."""

    def __init__(self, rulebook: Rulebook) -> None:
        self.rulebook = rulebook
        self._written: dict[str, set[tuple[str, str]]] = {}
        self._decided: dict[str, dict[str, str]] = {}

    def wrote(self, record_id: str, path: str, value: JSONValue) -> None:
        """Log that ``value`` was written at ``path`` of record ``record_id``."""
        self._written.setdefault(record_id, set()).add((path, canonical_json(value)))

    def decided(self, record_id: str, revision_id: str, conflict_id: str) -> None:
        """Log that a decision on ``conflict_id`` (a resolution or an acknowledgement)
        wrote revision ``revision_id`` to record ``record_id``: the revision its call
        returned. Checked by id, since the value it chose exists already (a candidate)."""
        self._decided.setdefault(record_id, {})[revision_id] = conflict_id

    @property
    def values_logged(self) -> int:
        """How many distinct (record, path, value) were logged."""
        return sum(len(values) for values in self._written.values())

    def lost(self, replicas: Iterable[Mapping[str, Record]]) -> list[tuple[str, str, str]]:
        """Logged values found in none of ``replicas``' records, as (record, path, value);
        then logged decisions whose revision none holds, as (record, "decision",
        "<revision id> on conflict <id>")."""
        replicas = list(replicas)
        lost: list[tuple[str, str, str]] = []
        for record_id, values in sorted(self._written.items()):
            reachable: set[tuple[str, str]] = set()
            for records in replicas:
                record = records.get(record_id)
                if record is not None:
                    reachable.update((rev.path, rev.value_key) for rev in record.revisions())
            lost.extend((record_id, path, value) for path, value in sorted(values - reachable))
        for record_id, decisions in sorted(self._decided.items()):
            held: set[str] = set()
            for records in replicas:
                record = records.get(record_id)
                if record is not None:
                    held.update(rev.id for rev in record.revisions())
            lost.extend(
                (record_id, "decision", f"{revision_id} on conflict {decisions[revision_id]}")
                for revision_id in sorted(decisions.keys() - held)
            )
        return lost

    async def check(
        self,
        server: ReplicaFile,
        laptops: Sequence[ReplicaFile],
        deep: Iterable[int],
        prints: Mapping[int, ReplicaPrint] | None = None,
    ) -> OracleReport:
        """Check closed replicas: ``server`` and the laptops at indexes ``deep`` in full.

        ``prints``: laptops' :class:`ReplicaPrint`, by index, read where their files are
        (the workers). A laptop whose print is the server's, with nothing waiting and an
        empty outbox, holds what the server holds and its digest is not read here; any
        other laptop's is, as without prints.
        """
        problems: list[str] = []  # each one means "not converged"
        reference = read_digest(server)
        agreed = read_print(server.path).fingerprint if prints else b""
        if reference.waiting:
            problems.append(
                f"{server.name} has {len(reference.waiting)} records with updates waiting"
            )
        # One laptop's digest at a time: only those loaded in full below are kept (a
        # digest holds every open conflict; 1,000 of them held at once took gigabytes).
        in_full = set(deep)
        digests: dict[int, ReplicaDigest] = {}
        diverged = set()
        for index, replica in enumerate(laptops):
            brief = (prints or {}).get(index)
            if (
                brief is not None
                and index not in in_full
                and (brief.fingerprint, brief.waiting, brief.outbox) == (agreed, 0, 0)
            ):
                continue
            digest = read_digest(replica)
            differences = compare_digests(reference, digest)
            if differences:
                diverged.add(index)
                problems.extend(differences)
            if differences or index in in_full:
                digests[index] = digest

        loaded = [await self._load_checked(server, reference, problems)]
        expected = {rid: snapshot(rec, self.rulebook) for rid, rec in loaded[0].records.items()}
        for index in sorted(in_full | diverged):
            laptop = await self._load_checked(laptops[index], digests[index], problems)
            loaded.append(laptop)
            for rid in sorted(expected.keys() | laptop.records.keys()):
                record = laptop.records.get(rid)
                if record is None or snapshot(record, self.rulebook) != expected.get(rid):
                    problems.append(f"{laptop.name}: record {rid} differs from {server.name}'s")
                    break

        lost = self.lost(replica.records for replica in loaded)
        details = problems + [f"lost: record {rid} {path} = {value}" for rid, path, value in lost]
        return OracleReport(
            converged=not problems,
            lost_values=len(lost),
            conflicts_open=len(reference.conflicts),
            values_logged=self.values_logged,
            replicas_checked=1 + len(laptops),
            replicas_checked_in_depth=len(loaded),
            details=details[:MAX_DETAILS],
            conflict_examples=self._examples(loaded[0].records),
        )

    def _examples(self, records: Mapping[str, Record]) -> list[dict[str, Any]]:
        """A few open conflicts: one per safety rule first, then one per field name."""
        order = {Severity.BLOCK: 0, Severity.FLAG: 1, Severity.INFO: 2}
        conflicts = sorted(
            (c for rid in sorted(records) for c in self.rulebook.conflicts(records[rid])),
            key=lambda c: (c.rule is None, order[c.severity], c.record_id, c.id),
        )
        picked: dict[str, Conflict] = {}
        for conflict in conflicts:
            picked.setdefault(conflict.rule or conflict.subject.rsplit("/", 1)[-1], conflict)
        return [c.as_dict() for c in list(picked.values())[:CONFLICT_EXAMPLES]]

    async def _load_checked(
        self, replica: ReplicaFile, digest: ReplicaDigest, problems: list[str]
    ) -> _LoadedReplica:
        """Load a replica in full and check it against itself: digest and conflict index."""
        records, indexed = await load_replica(replica)
        if records.keys() != digest.records.keys():
            problems.append(f"{replica.name}: its records table and its records disagree")
        for rid, record in sorted(records.items()):
            if not same_vector(record.state_vector(), digest.records.get(rid)):
                problems.append(f"{replica.name}: record {rid}'s stored state vector is wrong")
                break
        for rid, record in sorted(records.items()):
            computed = {c.id for c in self.rulebook.conflicts(record)}
            if computed != indexed.get(rid, set()):
                problems.append(
                    f"{replica.name}: record {rid}'s conflict index does not match its state"
                )
                break
        return _LoadedReplica(replica.name, records, indexed)
