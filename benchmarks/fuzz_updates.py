"""Damaged updates against every pure entry point: each is taken or refused, never anything else.

Valid caresync updates (three writers: fields, entries, a signed note, a
conflict and its resolution; fixed client ids, revision ids and clocks) are
damaged by one to three seeded mutations each — bit flips, byte changes,
truncation, splices of two updates, byte insertion and deletion, a varuint
re-encoded longer than it needs or set to a boundary value (0, 1, one off,
2**53 - 1, ...), runs of ``0xff .. 0x7f`` — and fed to:

* ``Record.apply_update`` on a fresh record and on one holding the base state,
  and ``Record.from_updates`` with and without the base state before it;
* the storage byte helpers (``caresync.storage._updates``);
* a ``MemoryStore`` holding the record and an unacknowledged local edit:
  ``write_local`` and ``write_remote`` (to the feed), for the record and for a
  record it does not hold.

Each call must either succeed or raise InvalidUpdateError (RecordMismatchError
too for ``from_updates``, which checks the record's id; any CaresyncError for
the store). A record that refused must be unchanged or refuse further use; a
store that refused must be unchanged and pass its consistency check. Anything
else counts as ``other``, which must stay 0.

``python -m benchmarks.fuzz_updates`` runs 100,000 mutations (bounded by
``--max-seconds`` too) and writes ``benchmarks/results/fuzz_updates.json``;
``--mutations N`` and ``--seed S`` change the run, ``--tiny`` runs 300. The
valid updates' bytes also depend on Python's string hashing (the order of the
paths in a revision's ``seen``), so a run repeats exactly with PYTHONHASHSEED set.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from benchmarks.common import RESULTS_DIR, write_results
from caresync import CaresyncError, InvalidUpdateError, Record, RecordMismatchError
from caresync.records import HybridLogicalClock
from caresync.records.spans import encode_varuint
from caresync.storage import IncomingUpdate, MemoryStore, _updates

RECORD_ID = "0f0e0d0c-0000-4000-8000-00000000f022"
OTHER_RECORD_ID = "0f0e0d0c-0000-4000-8000-00000000f023"
FULL_MUTATIONS = 100_000
TINY_MUTATIONS = 300
VARUINT = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")
"""Yjs varuints: any 0x80..0xff bytes, then one below 0x80 (the scan also finds
varuint-shaped runs inside strings; damaging those is fine too)."""


# ---------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    """Valid updates of one record, and the state a populated record starts from."""

    updates: tuple[bytes, ...]
    base: bytes
    """The creator's state after its first writes: what a populated record holds."""
    local_edit: bytes
    """One more write on top of ``base``: an unacknowledged edit in the store's outbox."""


class _Writer:
    """A record on one replica with a fixed Yjs client id, keeping each local write's update."""

    def __init__(self, replica: str, client_id: int, new_id: Callable[[], str]) -> None:
        doc: Doc[Any] = Doc(client_id=client_id)
        # A wall clock that stands still: the hybrid clock's counter orders the
        # writes, however often it reads the time.
        clock = HybridLogicalClock(lambda: 1_700_000_000_000)
        self.record = Record(RECORD_ID, replica=replica, doc=doc, clock=clock, new_id=new_id)
        self.doc = doc
        self.updates: list[bytes] = []
        self.record.on_update(self._captured)

    def _captured(self, update: bytes, is_local: bool) -> None:
        if is_local:
            self.updates.append(update)


def build_corpus() -> Corpus:
    """The same valid updates on every run: three writers, one record."""
    counter = itertools.count(1)

    def new_id() -> str:
        return f"{next(counter):016x}"

    a = _Writer("laptop-a", 1001, new_id)
    with a.doc.transaction():  # Record.create's first write, with a fixed client id
        a.doc.get("meta", type=Map)["id"] = RECORD_ID
    created = a.record.update_since()
    a.record.set("birthDate", "1970-01-01", author="dr.a")
    a.record.add_entry(
        "allergies", {"substance": "penicillin", "reaction": "rash"}, author="dr.a", entry_id="al1"
    )
    a.record.set("name", {"given": ["Ada", "K"], "family": "L", "n": 3}, author="dr.a")
    base = a.record.update_since()
    a.record.set("heightCm", 172, author="dr.a")
    local_edit = a.updates[-1]

    b = _Writer("laptop-b", 2002, new_id)
    b.record.apply_update(base)
    b.record.set("birthDate", "1970-01-02", author="dr.b")  # concurrent with a's: a conflict
    with b.record.batch():  # several revisions in one update
        b.record.add_entry(
            "medications", {"drug": "metformin", "dose": "500mg"}, author="dr.b", entry_id="m1"
        )
        b.record.set_status("medications", "m1", "stopped", author="dr.b")

    c = _Writer("laptop-c", 3003, new_id)
    c.record.apply_update(created)
    c.record.add_entry("notes", {"text": "seen today"}, author="dr.c", entry_id="n1")
    c.record.sign_note("n1", author="dr.c")
    c.record.acknowledge_finding("f1", {"decision": "ok"}, author="dr.c")

    b_vector = b.record.state_vector()
    a.record.apply_update(b.record.update_since())
    a.record.apply_update(c.record.update_since())
    a.record.set("birthDate", "1970-01-01", author="dr.a")  # resolves the conflict
    updates = [
        created,
        *a.updates,
        *b.updates,
        *c.updates,
        base,
        b.record.update_since(),
        c.record.update_since(),
        a.record.update_since(b_vector),  # a diff: what b lacks
        a.record.update_since(),  # everything, merged
    ]
    return Corpus(tuple(dict.fromkeys(updates)), base, local_edit)


# ------------------------------------------------------------------- mutations


def _position(rng: random.Random, data: bytes, *, end: bool = False) -> int:
    return rng.randrange(len(data) + 1) if end or not data else rng.randrange(len(data))


def bit_flip(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    if not data:
        return data
    i = _position(rng, data)
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def replace_byte(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    if not data:
        return data
    i = _position(rng, data)
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def truncate(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def splice(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    other = rng.choice(corpus.updates)
    return data[: _position(rng, data, end=True)] + other[_position(rng, other, end=True) :]


def insert_bytes(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    i = _position(rng, data, end=True)
    return data[:i] + rng.randbytes(rng.randint(1, 4)) + data[i:]


def delete_bytes(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    if not data:
        return data
    i = _position(rng, data)
    return data[:i] + data[i + rng.randint(1, 4) :]


def inflate_varint(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    """One varuint re-encoded longer, the same value: non-canonical bytes."""
    tokens = list(VARUINT.finditer(data))
    if not tokens:
        return data
    token = rng.choice(tokens)
    return data[: token.start()] + inflated(token.group(), rng.randint(1, 9)) + data[token.end() :]


def inflated(token: bytes, extra: int) -> bytes:
    """``token`` (one varuint) with ``extra`` more bytes that add only zero bits."""
    return token[:-1] + bytes([token[-1] | 0x80]) + b"\x80" * (extra - 1) + b"\x00"


def set_varint(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    """One varuint replaced by a boundary value: a count, length or clock set wrong."""
    tokens = list(VARUINT.finditer(data))
    if not tokens:
        return data
    # Half the time one of the first: the counts, client and clock of the header.
    token = rng.choice(tokens[:5] if rng.random() < 0.5 else tokens)
    value = decode_varuint(token.group())
    new = rng.choice([0, 1, max(value - 1, 0), value + 1, 2**31, 2**53 - 1, 2**64 - 1])
    return data[: token.start()] + encode_varuint(new) + data[token.end() :]


def decode_varuint(token: bytes) -> int:
    return sum((byte & 0x7F) << (7 * shift) for shift, byte in enumerate(token))


def insert_run(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    """A run of 0xff bytes ended by 0x7f: a varuint far too large for any field."""
    i = _position(rng, data, end=True)
    return data[:i] + b"\xff" * rng.randint(1, 12) + b"\x7f" + data[i:]


Mutator = Callable[[random.Random, bytes, Corpus], bytes]
MUTATORS: dict[str, Mutator] = {
    "bit_flip": bit_flip,
    "replace_byte": replace_byte,
    "truncate": truncate,
    "splice": splice,
    "insert_bytes": insert_bytes,
    "delete_bytes": delete_bytes,
    "inflate_varint": inflate_varint,
    "set_varint": set_varint,
    "insert_run": insert_run,
}


def mutations(seed: int, corpus: Corpus) -> Iterator[bytes]:
    """Endless damaged updates: a corpus update with one to three mutations."""
    rng = random.Random(seed)
    names = sorted(MUTATORS)
    while True:
        data = rng.choice(corpus.updates)
        for _ in range(rng.randint(1, 3)):
            data = MUTATORS[rng.choice(names)](rng, data, corpus)
        yield data


# ----------------------------------------------------------------- entry points


class Outcomes:
    """Per entry point: accepted, refused, other; and what the others were."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self.panics = 0
        self.broken_records = 0
        self.examples: list[dict[str, str]] = []

    def record(self, entry: str, outcome: str) -> None:
        self.counts.setdefault(entry, Counter())[outcome] += 1

    def other(self, entry: str, update: bytes, what: str) -> None:
        self.record(entry, "other")
        if len(self.examples) < 20:
            self.examples.append({"entry": entry, "update": update.hex(), "what": what})


def _call(
    outcomes: Outcomes,
    entry: str,
    update: bytes,
    fn: Callable[[], object],
    refusals: tuple[type[BaseException], ...] = (InvalidUpdateError,),
) -> bool:
    """Run one entry point; True if it took the update."""
    try:
        fn()
    except refusals as exc:
        if type(exc.__cause__).__name__ == "PanicException":
            outcomes.panics += 1
        outcomes.record(entry, "refused")
        return False
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - counting what escapes is the point
        outcomes.other(entry, update, f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        return False
    outcomes.record(entry, "accepted")
    return True


def _record_stays_sound(outcomes: Outcomes, entry: str, update: bytes, record: Record) -> None:
    """After a refusal: the record is as it was, or refuses to be used (and says so)."""
    try:
        record.state_vector()
    except InvalidUpdateError as exc:
        if "no longer usable" not in str(exc):
            outcomes.other(entry, update, f"refused for another reason: {exc}")
        outcomes.broken_records += 1


def feed_records(outcomes: Outcomes, update: bytes, corpus: Corpus, base_vector: bytes) -> None:
    """The record entry points: fresh and populated applies, and loading at once."""
    fresh = Record(RECORD_ID, replica="fuzz-fresh")
    if not _call(
        outcomes, "Record.apply_update (fresh)", update, lambda: fresh.apply_update(update)
    ):
        _record_stays_sound(outcomes, "Record.apply_update (fresh)", update, fresh)
        if fresh._broken is None and fresh.revisions():
            outcomes.other("Record.apply_update (fresh)", update, "refused, yet indexed revisions")

    populated = Record.from_update(RECORD_ID, corpus.base, replica="fuzz-populated")
    revisions = {r.id for r in populated.revisions()}
    entry = "Record.apply_update (populated)"
    if not _call(outcomes, entry, update, lambda: populated.apply_update(update)):
        _record_stays_sound(outcomes, entry, update, populated)
        if populated._broken is None and (
            populated.state_vector() != base_vector
            or {r.id for r in populated.revisions()} != revisions
        ):
            outcomes.other(entry, update, "refused, yet the record changed and stays usable")

    loading = (InvalidUpdateError, RecordMismatchError)  # a damaged id names another record
    _call(
        outcomes,
        "Record.from_updates (base + update)",
        update,
        lambda: Record.from_updates(RECORD_ID, [corpus.base, update], replica="fuzz-load"),
        loading,
    )
    _call(
        outcomes,
        "Record.from_updates (update)",
        update,
        lambda: Record.from_updates(RECORD_ID, [update], replica="fuzz-load"),
        loading,
    )


def feed_byte_helpers(outcomes: Outcomes, update: bytes, corpus: Corpus, vector: bytes) -> None:
    """The storage helpers over bytes, with the update as an update and as a state vector."""
    calls: dict[str, Callable[[], object]] = {
        "_updates.merge": lambda: _updates.merge([corpus.base, update], record_id=RECORD_ID),
        "_updates.state_vector_of": lambda: _updates.state_vector_of(update, record_id=RECORD_ID),
        "_updates.has_pending": lambda: _updates.has_pending(update, vector),
        "_updates.covered_by": lambda: _updates.covered_by(update, vector),
        "_updates.covered_by (as vector)": lambda: _updates.covered_by(corpus.base, update),
        "_updates.advance": lambda: _updates.advance(vector, [update], record_id=RECORD_ID),
        "_updates.decode_state_vector": lambda: _updates.decode_state_vector(update),
        "_updates.same_state_vector": lambda: _updates.same_state_vector(update, vector),
    }
    for entry, fn in calls.items():
        _call(outcomes, entry, update, fn)
    entry = "_updates.verify_compaction"
    try:
        found = _updates.verify_compaction(corpus.base, [update], corpus.base, vector)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        outcomes.other(entry, update, f"raised {type(exc).__name__}: {exc}")
        return
    outcomes.record(entry, "accepted" if found is None else "refused")


async def store_snapshot(store: MemoryStore) -> tuple[object, ...]:
    """Everything a write could change, read through the Store API."""
    ids = await store.record_ids()
    return (
        ids,
        await store.load_many(ids),
        [await store.state_vector(i) for i in ids],
        await store.pending(10_000),
        await store.feed_since(0, limit=10_000),
        await store.get_meta("pull"),
        await store.count_conflicts(),
    )


async def seeded_store(corpus: Corpus) -> MemoryStore:
    """A store holding the base state and one unacknowledged local edit."""
    store = MemoryStore(clock=lambda: 1_700_000_000_000)
    await store.write_remote([IncomingUpdate(RECORD_ID, corpus.base, None)], to_feed=True)
    await store.write_local(RECORD_ID, corpus.local_edit, conflicts=None)
    return store


async def feed_store(outcomes: Outcomes, update: bytes, corpus: Corpus) -> None:
    """The store's writes: refused ones leave it unchanged and sound."""
    writes: dict[str, Callable[[MemoryStore], Any]] = {
        "MemoryStore.write_local": lambda s: s.write_local(RECORD_ID, update, conflicts=None),
        "MemoryStore.write_remote": lambda s: s.write_remote(
            [IncomingUpdate(RECORD_ID, update, None)], checkpoint=("pull", "2"), to_feed=True
        ),
        "MemoryStore.write_remote (new record)": lambda s: s.write_remote(
            [IncomingUpdate(OTHER_RECORD_ID, update, None)], checkpoint=("pull", "2")
        ),
    }
    for entry, write in writes.items():
        store = await seeded_store(corpus)
        before = await store_snapshot(store)
        try:
            await write(store)
        except CaresyncError as exc:
            if type(exc.__cause__).__name__ == "PanicException":
                outcomes.panics += 1
            problems = await store.check()
            if problems or await store_snapshot(store) != before:
                outcomes.other(entry, update, f"refused, but the store changed: {problems}")
            else:
                outcomes.record(entry, "refused")
            continue
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - counting what escapes is the point
            outcomes.other(entry, update, f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            continue
        outcomes.record(entry, "accepted")


def run(mutation_count: int, seed: int, max_seconds: float) -> tuple[Outcomes, int, float]:
    """Feed ``mutation_count`` damaged updates (or as many as fit in the time) to everything."""
    corpus = build_corpus()
    vector = _updates.state_vector_of(corpus.base, record_id=RECORD_ID)
    outcomes = Outcomes()
    start = time.perf_counter()
    done = 0
    with asyncio.Runner() as runner:
        for update in itertools.islice(mutations(seed, corpus), mutation_count):
            feed_records(outcomes, update, corpus, vector)
            feed_byte_helpers(outcomes, update, corpus, vector)
            runner.run(feed_store(outcomes, update, corpus))
            done += 1
            if time.perf_counter() - start > max_seconds:
                break
    return outcomes, done, time.perf_counter() - start


def summarise(outcomes: Outcomes, done: int, seconds: float, seed: int) -> list[dict[str, Any]]:
    """One case for the whole run, then one per entry point."""
    totals: Counter[str] = Counter()
    for counts in outcomes.counts.values():
        totals.update(counts)
    cases: list[dict[str, Any]] = [
        {
            "case": "all entry points",
            "mutations": done,
            "seed": seed,
            # The corpus's bytes depend on string hashing (the order of a revision's
            # "seen" paths): set PYTHONHASHSEED too to repeat a run exactly.
            "pythonhashseed": os.environ.get("PYTHONHASHSEED", "random"),
            "seconds": round(seconds, 1),
            "calls": sum(totals.values()),
            "accepted": totals["accepted"],
            "refused": totals["refused"],
            "other": totals["other"],
            "panics_translated": outcomes.panics,
            "records_refusing_further_use": outcomes.broken_records,
        }
    ]
    for entry, counts in sorted(outcomes.counts.items()):
        cases.append(
            {
                "case": entry,
                "accepted": counts["accepted"],
                "refused": counts["refused"],
                "other": counts["other"],
            }
        )
    if outcomes.examples:
        cases.append({"case": "other outcomes (first 20)", "examples": outcomes.examples})
    return cases


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_updates")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_MUTATIONS} mutations only")
    parser.add_argument("--out", type=Path, default=None, help="where to write JSON results")
    parser.add_argument("--mutations", type=int, default=None, help="how many damaged updates")
    parser.add_argument("--seed", type=int, default=20_260_101)
    parser.add_argument("--max-seconds", type=float, default=1_800.0, help="stop after this")
    args = parser.parse_args(argv)
    if args.mutations is None:
        args.mutations = TINY_MUTATIONS if args.tiny else FULL_MUTATIONS
    if args.mutations < 1:
        parser.error("--mutations must be at least 1")
    if args.out is None and not args.tiny:
        args.out = RESULTS_DIR / "fuzz_updates.json"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz; 1 if anything other than taking or refusing happened."""
    args = parse_args(argv)
    outcomes, done, seconds = run(args.mutations, args.seed, args.max_seconds)
    cases = summarise(outcomes, done, seconds, args.seed)
    write_results(args.out, "fuzz_updates", cases)
    total = cases[0]
    print(
        f"{done:,} damaged updates, {total['calls']:,} calls in {seconds:.1f} s: "
        f"{total['accepted']:,} accepted, {total['refused']:,} refused "
        f"({outcomes.panics:,} of them pycrdt panics), {total['other']} other"
    )
    return 0 if total["other"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
