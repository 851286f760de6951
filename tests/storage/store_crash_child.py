"""A replica that works until it is killed: the child process of the crash tests.

Usage: ``python store_crash_child.py DB SEED RUN``. It opens the store at DB
and loops forever over local edits, pulled batches (with checkpoints, some
into the change feed), compactions and acknowledgements. On stdout, flushed
line by line, it reports what it is about to do and what has returned:

    L <seq> <record_id> <revision_id>        a local edit returned (committed)
    P <n> <record_id>:<revision_id> ...      about to store pull n (checkpoint "pull" = n)
    PA <n> <feed seqs or ->                  pull n returned
    CI <record_id> / C <record_id> <folded>  about to compact / compaction returned
    AI <seq> / A <seq>                       about to acknowledge(seq) / it returned

The parent kills it with SIGKILL at a random line, then checks the file.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys

from caresync import Record
from caresync.storage import Identity, IncomingUpdate, SQLiteStore

RECORDS = [f"rec-{n}" for n in range(4)]
PATHS = ("birthDate", "name", "address/city", "heightCm")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Captured:
    """A record whose local writes' update bytes are kept, one at a time."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.last: bytes = b""
        record.on_update(self._on_update)

    def _on_update(self, update: bytes, is_local: bool) -> None:
        if is_local:
            self.last = update

    def edit(self, rng: random.Random, tag: str) -> tuple[bytes, str]:
        rev = self.record.set(rng.choice(PATHS), f"{tag}-{rng.random():.6f}", author="dr.crash")
        return self.last, rev.id


async def main(db: str, seed: int, run: int) -> None:
    async with SQLiteStore.open(db) as store:
        await work(store, random.Random(seed * 1000 + run), run)


async def work(store: SQLiteStore, rng: random.Random, run: int) -> None:
    if await store.get_identity() is None:
        await store.set_identity(Identity("laptop-crash", "laptop"))
    mine: dict[str, Captured] = {}
    peers: dict[str, Captured] = {}
    for record_id in RECORDS:
        stored = await store.load(record_id)
        if stored is None:
            record = Record.create(replica=f"laptop-r{run}", record_id=record_id)
            await store.write_local(record_id, record.update_since(), conflicts=None)
            stored = record.update_since()
        else:
            record = Record.from_update(record_id, stored, replica=f"laptop-r{run}")
        mine[record_id] = Captured(record)
        peers[record_id] = Captured(Record.from_update(record_id, stored, replica=f"peer-r{run}"))
    pull = int(await store.get_meta("pull") or 0)
    new_records = itertools.count()
    while True:
        op = rng.random()
        if op < 0.55:
            record_id = rng.choice(RECORDS)
            update, rev_id = mine[record_id].edit(rng, "local")
            seq = await store.write_local(record_id, update, conflicts=None)
            say(f"L {seq} {record_id} {rev_id}")
        elif op < 0.8:
            pull += 1
            size = rng.choice((1, 5, 20, 300))
            items: list[IncomingUpdate] = []
            revs: list[str] = []
            for _ in range(size):
                if rng.random() < 0.05:
                    fresh_id = f"remote-r{run}-{next(new_records)}"
                    fresh = Captured(Record.create(replica=f"peer-r{run}", record_id=fresh_id))
                    items.append(IncomingUpdate(fresh_id, fresh.record.update_since(), None))
                    update, rev_id = fresh.edit(rng, "new")
                    items.append(IncomingUpdate(fresh_id, update, None))
                    revs.append(f"{fresh_id}:{rev_id}")
                    continue
                record_id = rng.choice(RECORDS)
                update, rev_id = peers[record_id].edit(rng, "peer")
                items.append(IncomingUpdate(record_id, update, None))
                revs.append(f"{record_id}:{rev_id}")
            to_feed = rng.random() < 0.5
            say(f"P {pull} {' '.join(revs)}")
            seqs = await store.write_remote(items, checkpoint=("pull", str(pull)), to_feed=to_feed)
            say(f"PA {pull} {','.join(map(str, seqs)) if to_feed else '-'}")
            for item in items:
                if item.record_id in mine:
                    mine[item.record_id].record.apply_update(item.update)
        elif op < 0.9:
            record_id = rng.choice(RECORDS)
            say(f"CI {record_id}")
            folded = await store.compact(record_id)
            say(f"C {record_id} {folded}")
        else:
            pending = await store.pending(50)
            if pending:
                seq = rng.choice(pending).seq
                say(f"AI {seq}")
                await store.acknowledge(seq)
                say(f"A {seq}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
