"""The oracle: cheap digests for every replica, full depth where it matters, and it catches faults.

The faults are injected into the files a real run left behind: a value the
oracle logged that was never written, a laptop that wrote after the last sync,
a conflict index that no longer matches its records.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caresync.conflicts import DEFAULT_RULEBOOK
from caresync.exceptions import CorruptDatabaseError
from caresync.replica import Replica
from caresync.simulation import Oracle, SimulationConfig, plan, run_simulation
from caresync.simulation.oracle import (
    ReplicaDigest,
    ReplicaFile,
    ReplicaPrint,
    compare_digests,
    decode_state_vector,
    read_digest,
    read_print,
    same_vector,
)
from caresync.simulation.runner import SERVER_FILE, laptop_file
from caresync.storage.schema import HEAD_JOIN, HEAD_VECTOR

LAPTOPS = 4
CONFIG = dict(laptops=LAPTOPS, patients=12, edits_per_laptop=6, conflict_rate=0.3, seed=11)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of one real, converged run (tests copy them before damaging anything)."""
    workdir = tmp_path_factory.mktemp("run")

    result = asyncio.run(run_simulation(SimulationConfig(**CONFIG, workdir=workdir)))  # type: ignore[arg-type]
    assert result.ok, result.details
    assert result.conflicts_open > 0
    return workdir


@pytest.fixture
def workdir(finished_run: Path, tmp_path: Path) -> Path:
    for source in finished_run.iterdir():
        (tmp_path / source.name).write_bytes(source.read_bytes())
    return tmp_path


def _files(workdir: Path) -> tuple[ReplicaFile, list[ReplicaFile]]:
    return (
        ReplicaFile("server", workdir / SERVER_FILE),
        [ReplicaFile(f"laptop-{i}", workdir / laptop_file(i)) for i in range(LAPTOPS)],
    )


def _seeded_oracle() -> Oracle:
    """An oracle that logged what the run's patients were imported with."""
    oracle = Oracle(DEFAULT_RULEBOOK)
    for patient in plan(SimulationConfig(**CONFIG)).patients:  # type: ignore[arg-type]
        oracle.wrote(patient.record_id, "name", patient.name)
        oracle.wrote(patient.record_id, "birthDate", patient.birth_date)
    return oracle


async def test_a_converged_run_passes(workdir: Path) -> None:
    server, laptops = _files(workdir)
    report = await _seeded_oracle().check(server, laptops, deep=[0, 2])
    assert report.converged, report.details
    assert report.lost_values == 0
    assert report.values_logged == 2 * 12
    assert report.replicas_checked == 1 + LAPTOPS
    assert report.replicas_checked_in_depth == 3
    assert report.conflicts_open > 0


async def test_a_value_written_nowhere_is_counted_lost(workdir: Path) -> None:
    oracle = _seeded_oracle()
    patient = plan(SimulationConfig(**CONFIG)).patients[3]  # type: ignore[arg-type]
    oracle.wrote(patient.record_id, "phone", "+221 00 000 0000")  # never written anywhere
    oracle.wrote(patient.record_id, "name", "Someone Else")
    server, laptops = _files(workdir)
    report = await oracle.check(server, laptops, deep=[])
    assert report.converged
    assert report.lost_values == 2
    assert any("+221 00 000 0000" in line for line in report.details)


async def test_a_laptop_that_wrote_after_the_last_sync_diverges(workdir: Path) -> None:
    patient = plan(SimulationConfig(**CONFIG)).patients[0]  # type: ignore[arg-type]
    async with await Replica.open(workdir / laptop_file(2), create=False) as laptop:
        await laptop.set(
            patient.record_id, "phone", "+221 11 111 1111"
        )  # clinician-2, still logged in
    oracle = _seeded_oracle()
    oracle.wrote(patient.record_id, "phone", "+221 11 111 1111")
    server, laptops = _files(workdir)
    report = await oracle.check(server, laptops, deep=[])
    assert not report.converged
    assert any("laptop-2" in line and "other updates" in line for line in report.details)
    assert any("laptop-2" in line and "unacknowledged" in line for line in report.details)
    # The diverging laptop was loaded in full, so its value is not counted lost.
    assert report.replicas_checked_in_depth == 2
    assert report.lost_values == 0


async def test_a_conflict_index_that_does_not_match_the_records_is_caught(workdir: Path) -> None:
    raw = sqlite3.connect(workdir / SERVER_FILE)
    with raw:
        raw.execute(
            "DELETE FROM conflicts WHERE (record_id, id) = "
            "(SELECT record_id, id FROM conflicts ORDER BY record_id, id LIMIT 1)"
        )
    raw.close()
    server, laptops = _files(workdir)
    report = await _seeded_oracle().check(server, laptops, deep=[])
    assert not report.converged
    assert any("conflict index does not match" in line for line in report.details)
    assert any("open conflicts differ" in line for line in report.details)


def test_state_vectors_compare_whatever_order_they_were_encoded_in() -> None:
    # two clients: (5, 3) and (300, 1); 300 takes two varuint bytes
    one = bytes([2, 5, 3, 0xAC, 0x02, 1])
    other = bytes([2, 0xAC, 0x02, 1, 5, 3])
    assert decode_state_vector(one) == decode_state_vector(other) == ((5, 3), (300, 1))
    assert same_vector(one, other)
    assert not same_vector(one, bytes([1, 5, 3]))
    assert not same_vector(one, None)
    with pytest.raises(CorruptDatabaseError):
        decode_state_vector(bytes([2, 5]))
    with pytest.raises(CorruptDatabaseError):
        decode_state_vector(bytes([1, 5, 3, 9]))


def _varuint(value: int, padded: bool = False) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if padded:  # a needless zero group: the same number, other bytes
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def _vector(pairs: list[tuple[int, int]], padded: frozenset[int] = frozenset()) -> bytes:
    return _varuint(len(pairs)) + b"".join(
        _varuint(client) + _varuint(clock, index in padded)
        for index, (client, clock) in enumerate(pairs)
    )


@given(
    st.lists(st.tuples(st.integers(0, 2**53), st.integers(0, 2**20)), max_size=5),
    st.randoms(use_true_random=False),
    st.frozensets(st.integers(0, 5), max_size=2),
    st.sampled_from(["same", "clock moved", "pair dropped", "zero clock added"]),
)
def test_same_vector_says_what_decoding_in_full_says(
    pairs: list[tuple[int, int]], rng: random.Random, padded: frozenset[int], change: str
) -> None:
    """The quick comparison (the pairs' bytes, sorted) answers as the full decoding does:
    in any order, with clients at clock 0, with numbers spelled with needless bytes."""
    other = list(pairs)
    rng.shuffle(other)
    if change == "clock moved" and other:
        other[0] = (other[0][0], other[0][1] + 1)
    elif change == "pair dropped" and other:
        other.pop()
    elif change == "zero clock added":
        other.append((rng.randrange(2**53), 0))
    one, two = _vector(pairs), _vector(other, padded)
    assert same_vector(one, two) == (decode_state_vector(one) == decode_state_vector(two))
    assert same_vector(two, one) == (decode_state_vector(two) == decode_state_vector(one))


def test_digests_name_every_kind_of_difference() -> None:
    reference = ReplicaDigest(
        "server", {"a": bytes([2, 1, 2, 7, 1]), "b": b"\x00"}, frozenset(), frozenset(), 0
    )
    same = ReplicaDigest(  # the same vectors, encoded in another order
        "laptop-1", {"a": bytes([2, 7, 1, 1, 2]), "b": b"\x00"}, frozenset(), frozenset(), 0
    )
    assert compare_digests(reference, same) == []
    broken = ReplicaDigest(
        "laptop-2",
        {"a": bytes([2, 1, 1, 7, 1]), "c": b"\x00"},
        frozenset({"a"}),
        frozenset({("a", "x", "field", "block", "00")}),
        3,
    )
    problems = " | ".join(compare_digests(reference, broken))
    for expected in (
        "lacks 1 records",
        "has 1 records",
        "other updates",
        "waiting",
        "conflicts differ",
        "3 unacknowledged",
    ):
        assert expected in problems


def test_a_file_that_is_not_a_replica_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    sqlite3.connect(junk).close()
    with pytest.raises(CorruptDatabaseError, match=r"junk\.db"):
        read_digest(ReplicaFile("junk", junk))


def _prints(workdir: Path) -> dict[int, ReplicaPrint]:
    return {i: read_print(workdir / laptop_file(i)) for i in range(LAPTOPS)}


async def test_prints_of_a_converged_run_are_the_servers_and_it_passes(workdir: Path) -> None:
    server, laptops = _files(workdir)
    prints = _prints(workdir)
    agreed = read_print(server.path)
    assert all(p == ReplicaPrint(agreed.fingerprint, 0, 0) for p in prints.values())
    report = await _seeded_oracle().check(server, laptops, deep=[0], prints=prints)
    assert report.converged, report.details
    assert report.replicas_checked == 1 + LAPTOPS
    assert report.replicas_checked_in_depth == 2


async def test_a_print_that_differs_makes_the_oracle_read_that_laptop(workdir: Path) -> None:
    """A print unlike the server's is no verdict: the laptop's digest is read and
    compared as without prints (here it holds the same, so the run passes)."""
    server, laptops = _files(workdir)
    prints = {i: ReplicaPrint(bytes(32), 0, 0) for i in range(LAPTOPS)}
    report = await _seeded_oracle().check(server, laptops, deep=[], prints=prints)
    assert report.converged, report.details


async def test_a_laptop_that_wrote_after_the_last_sync_diverges_with_prints(
    workdir: Path,
) -> None:
    patient = plan(SimulationConfig(**CONFIG)).patients[0]  # type: ignore[arg-type]
    async with await Replica.open(workdir / laptop_file(2), create=False) as laptop:
        await laptop.set(patient.record_id, "phone", "+221 11 111 1111")
    prints = _prints(workdir)
    assert prints[2].outbox > 0
    assert prints[2].fingerprint != read_print(workdir / SERVER_FILE).fingerprint
    server, laptops = _files(workdir)
    report = await _seeded_oracle().check(server, laptops, deep=[], prints=prints)
    assert not report.converged
    assert any("laptop-2" in line and "other updates" in line for line in report.details)
    assert report.replicas_checked_in_depth == 2


async def test_a_conflict_row_removed_from_a_laptop_changes_its_print(workdir: Path) -> None:
    before = read_print(workdir / laptop_file(1))
    raw = sqlite3.connect(workdir / laptop_file(1))
    with raw:
        raw.execute(
            "DELETE FROM conflicts WHERE (record_id, id) = "
            "(SELECT record_id, id FROM conflicts ORDER BY record_id, id LIMIT 1)"
        )
    raw.close()
    assert read_print(workdir / laptop_file(1)).fingerprint != before.fingerprint
    server, laptops = _files(workdir)
    report = await _seeded_oracle().check(server, laptops, deep=[], prints=_prints(workdir))
    assert not report.converged
    assert any("laptop-1's open conflicts differ" in line for line in report.details)


def _set_vector(raw: sqlite3.Connection, rid: str, vector: bytes) -> None:
    """Spell a record's state vector anew where it is kept: its row, and its newest log row
    when that is newer than the row (SQLite schema 18)."""
    raw.execute("UPDATE records SET state_vector = ? WHERE record_id = ?", (vector, rid))
    raw.execute(
        f"UPDATE log SET state_vector = ? WHERE id = (SELECT h.id FROM records r{HEAD_JOIN}"
        " WHERE r.record_id = ?)",
        (vector, rid),
    )
    assert (
        raw.execute(
            f"SELECT {HEAD_VECTOR} FROM records r{HEAD_JOIN} WHERE r.record_id = ?", (rid,)
        ).fetchone()[0]
        == vector
    )


def test_a_print_does_not_depend_on_the_order_a_vector_lists_its_clients(workdir: Path) -> None:
    path = workdir / laptop_file(0)
    before = read_print(path)
    raw = sqlite3.connect(path)
    with raw:
        rows = raw.execute(
            f"SELECT r.record_id, {HEAD_VECTOR} FROM records r{HEAD_JOIN}"
        ).fetchall()
        rid, vector = next((r, bytes(v)) for r, v in rows if decode_state_vector(bytes(v))[1:])
        pairs = list(decode_state_vector(vector))  # sorted: spell it in another order
        reordered = _vector(pairs) if _vector(pairs) != vector else _vector(pairs[::-1])
        assert reordered != vector
        _set_vector(raw, rid, reordered)
    raw.close()
    assert read_print(path) == before


def test_a_vector_of_128_clients_or_more_prints_alike_in_any_order(workdir: Path) -> None:
    """At 1,000 laptops the records every resolver settles conflicts on hold updates of
    more than 127 clients, and their count takes two varuint bytes: a laptop that lists
    the clients in another order than the server still prints as the server does (it
    printed otherwise, so the oracle read every laptop's digest in full)."""
    rng = random.Random(7)
    pairs = sorted((rng.randrange(2**40), rng.randrange(1, 2**14)) for _ in range(130))
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    server_path, laptop_path = workdir / SERVER_FILE, workdir / laptop_file(0)
    assert read_print(laptop_path).fingerprint == read_print(server_path).fingerprint
    rid = None
    for path, spelled in ((server_path, _vector(pairs)), (laptop_path, _vector(shuffled))):
        raw = sqlite3.connect(path)
        with raw:
            rid = rid or raw.execute("SELECT min(record_id) FROM records").fetchone()[0]
            _set_vector(raw, rid, spelled)
        raw.close()
    assert _vector(pairs) != _vector(shuffled)
    assert same_vector(_vector(pairs), _vector(shuffled))
    assert read_print(laptop_path).fingerprint == read_print(server_path).fingerprint
    # A clock moved in one of them still changes the print.
    moved = [*shuffled[:-1], (shuffled[-1][0], shuffled[-1][1] + 1)]
    raw = sqlite3.connect(laptop_path)
    with raw:
        _set_vector(raw, rid, _vector(moved))
    raw.close()
    assert read_print(laptop_path).fingerprint != read_print(server_path).fingerprint
