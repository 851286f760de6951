"""What encryption at rest costs: the same store work, plain and encrypted, in one run.

* durable single edits: ``write_local`` of one edit at a time (each committed
  and fsynced, WAL, ``synchronous = FULL``), into a plain store and into one
  opened with a key (a new database: AEGIS-256, SQLite3 Multiple Ciphers);
* first copy: ``write_remote`` of N new records (five fields each) in batches
  of 500, a checkpoint per batch, with their person cards (as a laptop stores
  a first copy) and without (the store's own work only, where encryption's
  share is largest);
* opening: ``SQLiteStore.open`` and ``close`` of a small database (the raw key
  needs no key derivation per open), and one unlock of the key file with the
  default argon2id parameters (once per login).

Plain and encrypted runs alternate, on the same bytes, so drift of the machine
falls on both alike. Each case reports the median of at least 5 runs with the
min and max, the ratio of the medians and the ratio within each run (plain and
encrypted one after the other). Target (issue 14): encrypted costs at most 15%
more on durable edits and on the first copy.

What is the same on both sides: the data, the store's statements, SQLite's
page size (4 KiB), the write-ahead log and ``synchronous = FULL`` (the store
sets them on every connection). What is not: the plain store runs on the
standard library's SQLite, the encrypted one on the SQLite built into APSW
(``apsw-sqlite3mc``: another version and build, and another binding, behind
the store's DB-API adapter ``caresync.storage._apsw_dbapi``), and an
encrypted page keeps 64 of its bytes for nonce and tag, so the file has about
2% more pages. The last case measures that first difference
apart (the library with no key), and the format of databases written before
AEGIS (SQLCipher's, still opened).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench_person_index import people
from benchmarks.common import RESULTS_DIR, write_results
from caresync import Record
from caresync.records.persons import person_card
from caresync.storage import IncomingUpdate, KeyRing, SQLiteStore
from caresync.storage import _cipher as cipher_module
from caresync.storage.sqlite import core as sqlite_module  # where opening calls _connection

# SQLite3 Multiple Ciphers' DB-API (APSW behind the store's adapter) as the store found it;
# None where apsw-sqlite3mc is not installed (the store then writes SQLCipher's format).
multiple_ciphers: Any = cipher_module._mc

BATCH = 500
TARGET_RATIO = 1.15
FIELDS = ("name", "birthDate", "sex", "phone", "address/city")


def spread(seconds: list[float], scale: float = 1.0) -> dict[str, float]:
    return {
        "median": round(statistics.median(seconds) * scale, 3),
        "min": round(min(seconds) * scale, 3),
        "max": round(max(seconds) * scale, 3),
    }


def compare(
    plain: list[float], encrypted: list[float], scale: float = 1.0, *, target: bool = True
) -> dict[str, Any]:
    """Both spreads and the ratio of the medians (against the 15% target, for wall times)."""
    ratio = statistics.median(encrypted) / statistics.median(plain)
    per_run = [e / p for p, e in zip(plain, encrypted, strict=True)]
    shown: dict[str, Any] = {
        "plain": spread(plain, scale),
        "encrypted": spread(encrypted, scale),
        "ratio": round(ratio, 3),
        "ratio_per_run": [round(r, 3) for r in per_run],
    }
    if target:
        shown["target_met"] = ratio <= TARGET_RATIO
    return shown


def encrypted_with() -> str:
    """What the encrypted side runs on, for the results."""
    if multiple_ciphers is None:
        return "SQLCipher's format through sqlcipher3 (apsw-sqlite3mc is not installed here)"
    conn = multiple_ciphers.connect(":memory:")
    try:
        (mc, sqlite) = conn.execute("SELECT sqlite3mc_version(), sqlite_version()").fetchone()
    finally:
        conn.close()
    return f"AEGIS-256, 4 KiB pages: {mc} on SQLite {sqlite} (apsw-sqlite3mc)"


def in_turn(
    run: int, plain: list[float], encrypted: list[float]
) -> list[tuple[bytes | None, list[float]]]:
    """(key, where its time goes) for the plain and the encrypted store, in turn: the
    plain one first in even runs, the encrypted one first in odd runs (a fresh key each)."""
    pair: list[tuple[bytes | None, list[float]]] = [(None, plain), (os.urandom(32), encrypted)]
    return pair if run % 2 == 0 else pair[::-1]


# ---------------------------------------------------------------- single edits


def edit_updates(edits: int) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """20 records' creations, then ``edits`` one-field edits spread over them."""
    records = [Record.create(replica="laptop") for _ in range(20)]
    created = [(r.record_id, r.update_since()) for r in records]
    edits_made = []
    for n in range(edits):
        record = records[n % 20]
        before = record.state_vector()
        record.set(FIELDS[n % len(FIELDS)], f"value {n}", author="dr")
        edits_made.append((record.record_id, record.update_since(before)))
    return created, edits_made


async def time_edits(
    path: Path,
    key: bytes | None,
    created: list[tuple[str, bytes]],
    edits: list[tuple[str, bytes]],
    cpu: list[float],
) -> float:
    """Seconds of wall time for the edits; their CPU seconds (every thread) go to ``cpu``."""
    async with SQLiteStore.open(path, key=key) as store:
        for record_id, update in created:
            await store.write_local(record_id, update, conflicts=())
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        for record_id, update in edits:
            await store.write_local(record_id, update, conflicts=())
        cpu.append(time.process_time() - cpu_start)
        return time.perf_counter() - start


async def bench_edits(work: Path, edits: int, runs: int) -> dict[str, Any]:
    created, made = edit_updates(edits)
    plain: list[float] = []
    encrypted: list[float] = []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for run in range(runs):
        for key, times in in_turn(run, plain, encrypted):
            path = work / f"edits-{'enc' if key else 'plain'}-{run}.db"
            times.append(await time_edits(path, key, created, made, cpu[key is not None]))
    per_edit = [s / edits for s in plain], [s / edits for s in encrypted]
    cpu_per_edit = [s / edits for s in cpu[False]], [s / edits for s in cpu[True]]
    return {
        "case": "durable single edits (write_local, each fsynced)",
        "encrypted_with": encrypted_with(),
        "edits": edits,
        "runs": runs,
        "ms_per_edit": compare(*per_edit, scale=1e3),
        "cpu_ms_per_edit": compare(*cpu_per_edit, scale=1e3, target=False),
        "extra_ms_per_edit": round(
            (statistics.median(per_edit[1]) - statistics.median(per_edit[0])) * 1e3, 3
        ),
        "plain_per_s": round(edits / statistics.median(plain)),
        "encrypted_per_s": round(edits / statistics.median(encrypted)),
    }


# ------------------------------------------------------------------ first copy


def copy_items(records: int, cards: bool) -> list[IncomingUpdate]:
    """New records of five fields, the people of ``bench_person_index`` (about 1% of them
    registered twice), as a laptop's first copy receives them."""
    persons, _ = people(records)
    items = []
    for n, person in enumerate(persons):
        record = Record.create(replica="server")
        with record.batch():
            record.set("name", person.name, author="dr")
            record.set("birthDate", person.birth, author="dr")
            record.set("sex", person.sex, author="dr")
            record.set("phone", f"+2547{n:08d}", author="dr")
            record.set("address/city", "Kisumu", author="dr")
        card = person_card(record) if cards else None
        items.append(IncomingUpdate(record.record_id, record.update_since(), None, "org", card))
    return items


async def time_copy(
    path: Path, key: bytes | None, items: list[IncomingUpdate], cpu: list[float]
) -> float:
    """Seconds of wall time for the copy; its CPU seconds (every thread) go to ``cpu``."""
    async with SQLiteStore.open(path, key=key) as store:
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        for done in range(0, len(items), BATCH):
            await store.write_remote(
                items[done : done + BATCH], checkpoint=("first-copy", str(done))
            )
        cpu.append(time.process_time() - cpu_start)
        return time.perf_counter() - start


def remove_database(path: Path) -> None:
    for leftover in path.parent.glob(f"{path.name}*"):
        leftover.unlink()


async def bench_copy(work: Path, records: int, runs: int, cards: bool) -> dict[str, Any]:
    items = copy_items(records, cards)
    tag = "cards" if cards else "bare"
    plain: list[float] = []
    encrypted: list[float] = []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for run in range(runs):
        for key, times in in_turn(run, plain, encrypted):
            path = work / f"copy-{tag}-{'enc' if key else 'plain'}-{run}.db"
            times.append(await time_copy(path, key, items, cpu[key is not None]))
            if run < runs - 1:
                remove_database(path)  # keep the disk small; the last run's files stay
    sizes = {
        kind: (work / f"copy-{tag}-{kind}-{runs - 1}.db").stat().st_size
        for kind in ("plain", "enc")
    }
    return {
        "case": "first copy: write_remote in batches of 500"
        + (", with person cards" if cards else ", without person cards"),
        "encrypted_with": encrypted_with(),
        "records": records,
        "runs": runs,
        "seconds": compare(plain, encrypted),
        "cpu_seconds": compare(cpu[False], cpu[True], target=False),
        "plain_records_per_s": round(records / statistics.median(plain)),
        "encrypted_records_per_s": round(records / statistics.median(encrypted)),
        "file_bytes": {"plain": sizes["plain"], "encrypted": sizes["enc"]},
    }


# --------------------------------------------------------------------- opening


async def time_open(path: Path, key: bytes | None) -> float:
    start = time.perf_counter()
    async with SQLiteStore.open(path, key=key, create=False) as store:
        await store.get_identity()
    return time.perf_counter() - start


async def bench_open(work: Path, runs: int) -> dict[str, Any]:
    key = os.urandom(32)
    for name, k in (("open-plain.db", None), ("open-enc.db", key)):
        async with SQLiteStore.open(work / name, key=k) as store:
            await store.write_remote(copy_items(100, cards=False))
    plain: list[float] = []
    encrypted: list[float] = []
    for run in range(runs):
        for k, times in in_turn(run, plain, encrypted):
            name, opening_key = ("open-enc.db", key) if k else ("open-plain.db", None)
            times.append(await time_open(work / name, opening_key))
    KeyRing.create(work / "k.keys", "amina", "a password")
    unlocks = []
    for _ in range(runs):
        ring = KeyRing.load(work / "k.keys")
        start = time.perf_counter()
        ring.unlock("amina", "a password")
        unlocks.append(time.perf_counter() - start)
    return {
        "case": "open and close a 100-record store; unlock the key file (argon2id default)",
        "runs": runs,
        "open_ms": compare(plain, encrypted, 1e3, target=False),
        "unlock_ms": spread(unlocks, 1e3),
    }


# ------------------------------------------------- where the cost comes from


@contextlib.contextmanager
def library_without_key() -> Iterator[None]:
    """Plain stores (no key) opened through APSW (the store's adapter) and its SQLite build
    instead of the standard library's: the library's own cost, without encryption."""
    real = sqlite_module._connection

    def connection(target: str | Path, *, key: bytes | None, uri: bool) -> sqlite3.Connection:
        if key is not None:
            return real(target, key=key, uri=uri)
        return multiple_ciphers.connect(
            os.fspath(target), uri=uri, timeout=2.0, isolation_level=None
        )

    sqlite_module._connection = connection  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite_module._connection = real  # type: ignore[assignment]


@contextlib.contextmanager
def sqlcipher_format() -> Iterator[None]:
    """New encrypted stores written in SQLCipher's format (AES-256-CBC and HMAC-SHA256 a
    page), as caresync wrote them before AEGIS and still opens them."""
    real = cipher_module.NEW_DATABASE_CIPHER
    cipher_module.NEW_DATABASE_CIPHER = cipher_module.SQLCIPHER
    try:
        yield
    finally:
        cipher_module.NEW_DATABASE_CIPHER = real


LIBRARY_KINDS = (
    ("stdlib", "mc_no_key", "mc_aegis", "mc_sqlcipher_format")
    if multiple_ciphers is not None
    else ("stdlib", "mc_aegis")  # without apsw-sqlite3mc: the store's cipher, SQLCipher's
)


def library_context(kind: str) -> contextlib.AbstractContextManager[None]:
    if kind == "mc_no_key":
        return library_without_key()
    if kind == "mc_sqlcipher_format":
        return sqlcipher_format()
    return contextlib.nullcontext()


async def bench_library(work: Path, edits: int, records: int, runs: int) -> dict[str, Any]:
    """Durable edits and a first copy without cards, four ways (CPU seconds): the
    standard library's SQLite; APSW's with no key; with a key in AEGIS (what a
    new database is); with a key in SQLCipher's format (databases written before)."""
    created, made = edit_updates(edits)
    items = copy_items(records, cards=False)
    kinds = LIBRARY_KINDS
    cpu: dict[str, dict[str, list[float]]] = {k: {"edits": [], "copy": []} for k in kinds}
    for run in range(runs):
        shift = run % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            key = None if kind in ("stdlib", "mc_no_key") else os.urandom(32)
            with library_context(kind):
                path = work / f"lib-edits-{kind}-{run}.db"
                await time_edits(path, key, created, made, cpu[kind]["edits"])
                remove_database(path)
                path = work / f"lib-copy-{kind}-{run}.db"
                await time_copy(path, key, items, cpu[kind]["copy"])
                remove_database(path)
    base = {case: statistics.median(cpu["stdlib"][case]) for case in ("edits", "copy")}
    return {
        "case": "where the CPU goes: the standard library's SQLite; APSW's with no "
        "key; with a key, AEGIS (new databases); with a key, SQLCipher's format (before)",
        "edits": edits,
        "records": records,
        "runs": runs,
        "cpu_ms_per_edit": {
            k: round(statistics.median(cpu[k]["edits"]) / edits * 1e3, 3) for k in kinds
        },
        "cpu_ms_per_edit_ratio": {
            k: round(statistics.median(cpu[k]["edits"]) / base["edits"], 3) for k in kinds
        },
        "cpu_s_first_copy_without_cards": {
            k: round(statistics.median(cpu[k]["copy"]), 3) for k in kinds
        },
        "cpu_first_copy_ratio": {
            k: round(statistics.median(cpu[k]["copy"]) / base["copy"], 3) for k in kinds
        },
    }


async def run(edits: int, records: int, runs: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="caresync-bench-encryption-") as tmp:
        work = Path(tmp)
        return [
            await bench_edits(work, edits, runs),
            await bench_copy(work, records, runs, cards=True),
            await bench_copy(work, records, runs, cards=False),
            await bench_open(work, runs),
            await bench_library(work, edits, records, runs),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_encryption")
    parser.add_argument("--tiny", action="store_true", help="every case once, tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help="where to write JSON results")
    parser.add_argument("--edits", type=int, default=2000, help="durable edits a run")
    parser.add_argument("--records", type=int, default=20_000, help="records in a first copy")
    parser.add_argument("--runs", type=int, default=5, help="runs of each case (at least 5)")
    args = parser.parse_args(argv)
    if args.out is None and not args.tiny:
        args.out = RESULTS_DIR / "encryption.json"
    if args.tiny:
        edits, records, runs = 20, 50, 1
    else:
        edits, records, runs = args.edits, args.records, max(args.runs, 5)
    cases = asyncio.run(run(edits, records, runs))
    write_results(args.out, "encryption", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
