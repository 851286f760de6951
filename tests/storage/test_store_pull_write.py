"""The SQLite store's side of a pull (issue 18): what a pull reads before it writes is
not read again, and a batch's rows go in key order with each record's log in write order."""

from __future__ import annotations

import random
from pathlib import Path

from store_helpers import Patient
from tests.sqlite_trace import traced, write_transactions

from caresync.storage import IncomingUpdate, SQLiteStore


def _reads_of_records(statements: list[str]) -> list[str]:
    return [
        s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM records" in s
    ]


async def test_a_write_after_state_vectors_reads_no_record_row_again(tmp_path: Path) -> None:
    """A pull reads the state vectors of the records it writes (to check the server's
    rows); the write then finds them in the cache: the same states, no second read."""
    path = tmp_path / "replica.db"
    patients = [Patient(replica="desk") for _ in range(5)]
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ()) for p in patients])
    edits = [IncomingUpdate(p.id, p.edit(), None) for p in patients]
    async with SQLiteStore.open(path) as store:
        assert len(store.cache) == 0  # opening reads nothing
        vectors = await store.state_vectors([p.id for p in patients])
        assert set(vectors) == {p.id for p in patients}
        assert len(store.cache) == 5
        async with traced(store) as statements:
            await store.write_remote(edits)
        (write,) = write_transactions(statements)
        assert _reads_of_records(write) == []
        after = await store.state_vectors([p.id for p in patients])
        for p in patients:
            assert await store.load(p.id) is not None
            assert after[p.id][0] == p.record.state_vector()
    # The same file read cold: what was committed is what the cache said.
    async with SQLiteStore.open(path) as store:
        cold = await store.state_vectors([p.id for p in patients])
        assert cold == after


async def test_without_the_read_first_the_write_reads_the_rows_itself(tmp_path: Path) -> None:
    """The test above could pass by the write never reading: here it must."""
    path = tmp_path / "replica.db"
    patient = Patient(replica="desk")
    async with SQLiteStore.open(path) as store:
        await store.write_remote([IncomingUpdate(patient.id, patient.created, ())])
    async with SQLiteStore.open(path) as store:
        async with traced(store) as statements:
            await store.write_remote([IncomingUpdate(patient.id, patient.edit(), None)])
        (write,) = write_transactions(statements)
        assert len(_reads_of_records(write)) == 1


async def test_a_batch_logs_each_record_in_write_order_whatever_the_key_order(
    tmp_path: Path,
) -> None:
    """Rows go in key order (not arrival order), each record's log rows in the order its
    updates came: every record loads whole, and its log ids ascend in write order."""
    rng = random.Random(7)
    patients = [Patient(replica="desk") for _ in range(12)]
    async with SQLiteStore.open(tmp_path / "replica.db") as store:
        await store.write_remote([IncomingUpdate(p.id, p.created, ()) for p in patients])
        batch: list[tuple[str, bytes]] = []
        for _round in range(3):
            for p in rng.sample(patients, len(patients)):
                batch.append((p.id, p.edit()))
        await store.write_remote([IncomingUpdate(rid, update, None) for rid, update in batch])

        def log_rows(raw: object) -> list[tuple[str, int, bytes, int]]:
            return list(
                raw.execute(  # type: ignore[attr-defined]
                    "SELECT r.record_id, l.id, l.data, l.rk FROM log l"
                    " JOIN records r ON r.rk = l.rk ORDER BY l.id"
                )
            )

        rows = await store._run("reading the log", log_rows)
        for p in patients:
            mine = [bytes(data) for rid, _id, data, _rk in rows if rid == p.id]
            assert mine == p.updates  # created, then its edits in write order
            loaded = await store.load(p.id)
            assert loaded is not None
        keys = [rk for _rid, _id, _data, rk in rows[len(patients) :]]
        # The batch's rows in key order (arrival order interleaved the records).
        assert len(keys) == 3 * len(patients)
        assert keys == sorted(keys)
