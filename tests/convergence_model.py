"""A model of replicas exchanging update bytes over an unreliable network.

Shared by the property tests: the pure-core machine drives it directly; the
store-backed machine wraps each replica with a store. Deterministic: clocks
and ids come from counters, so hypothesis can shrink and replay.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from caresync import DEFAULT_RULEBOOK, HybridLogicalClock, Record, canonical_json

PATHS = ("birthDate", "name", "address/city", "heightCm")
VALUES = ("a", "b", "c", 1, 2, None, [1, 2], {"k": "v"})
COLLECTIONS = ("medications", "allergies", "encounters", "problems", "notes")
STATUSES = ("active", "stopped", "entered-in-error", "finished", "cancelled", "in-progress")
SUBSTANCES = ("penicillin", "latex")
DRUGS = ("amoxicillin", "paracetamol")


@dataclass
class Message:
    target: int
    update: bytes


@dataclass
class Network:
    """Replicas of one record, the messages between them, and everything ever written."""

    replicas: list[Record]
    pending: list[Message] = field(default_factory=list)
    written: set[tuple[str, str]] = field(default_factory=set)
    ticks: itertools.count[int] = field(default_factory=lambda: itertools.count(1_000))

    @classmethod
    def start(cls, n: int, record_id: str = "rec-0") -> Network:
        net = cls([])
        first = net._make(Record.create, "laptop-0", record_id=record_id)
        net.replicas.append(first)
        for i in range(1, n):
            net.replicas.append(
                net._make(Record.from_update, f"laptop-{i}", first.record_id, first.update_since())
            )
        return net

    def _make(self, factory: Any, replica: str, *args: Any, **kwargs: Any) -> Record:
        ids = itertools.count()
        record: Record = factory(
            *args,
            replica=replica,
            clock=HybridLogicalClock(now=lambda: next(self.ticks)),
            new_id=lambda: f"{replica}.{next(ids)}",
            **kwargs,
        )
        index = int(replica.split("-")[1])
        record.on_update(lambda update, local: self._broadcast(index, update, local))
        return record

    def _broadcast(self, source: int, update: bytes, is_local: bool) -> None:
        if not is_local:
            return
        for target in range(len(self.replicas)):
            if target != source:
                self.pending.append(Message(target, update))

    def note_written(self, path: str, value: object) -> None:
        self.written.add((path, canonical_json(value)))

    def restart(self, i: int) -> None:
        """Rebuild replica i from its own bytes, as a store would on reopening."""
        old = self.replicas[i]
        stored = old.update_since()
        # A restarted replica must not reuse ids it already gave out.
        self.replicas[i] = self._make(Record.from_update, f"laptop-{i}", old.record_id, stored)
        self.replicas[i]._new_id = _continue_ids(old)

    def deliver(self, index: int, keep: bool) -> None:
        msg = self.pending[index % len(self.pending)]
        if not keep:
            self.pending.remove(msg)
        self.replicas[msg.target].apply_update(msg.update)

    def sync_all(self) -> None:
        for a in self.replicas:
            for b in self.replicas:
                if a is not b:
                    b.apply_update(a.update_since(b.state_vector()))
        self.pending.clear()


def _continue_ids(old: Record) -> Any:
    start = len([r for r in old.revisions() if r.replica == old.replica])
    counter = itertools.count(start + 1_000_000)
    return lambda: f"{old.replica}.{next(counter)}"


def snapshot(record: Record) -> dict[str, Any]:
    """Everything a person sees of a record: values, conflicts, histories."""
    fields = {}
    for path, state in record.fields().items():
        fields[path] = sorted(h.value_key for h in state.heads)
    histories = {
        path: [
            (r.id, r.value_key, r.parents, r.author, r.replica, r.at, dict(r.seen))
            for r in record.history(path)
        ]
        for path in record.paths()
    }
    # Entries as rules see them (a loaded record indexes them in one pass, a live
    # one revision by revision: both must agree).
    entries = {
        collection: [
            (e.id, {name: [h.id for h in state.heads] for name, state in e.fields.items()})
            for e in record.entries(collection)
        ]
        for collection in COLLECTIONS
    }
    conflicts = [c.as_dict() for c in DEFAULT_RULEBOOK.conflicts(record)]
    return {
        "fields": fields,
        "histories": histories,
        "entries": entries,
        "conflicted": record.conflicted_paths(),
        "conflicts": conflicts,
    }


def revision_ids(record: Record) -> frozenset[str]:
    return frozenset(r.id for r in record.revisions())


def reachable_values(record: Record) -> set[tuple[str, str]]:
    """Every (path, value) present in the record's history."""
    return {(r.path, r.value_key) for r in record.revisions()}
