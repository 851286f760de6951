"""What a loaded record costs in memory, beside its bare pycrdt document (issue 18, item 3).

The chart is the sync benchmark's patient (five fields and an allergy: 8
revisions, 1,321 bytes stored). Each run is a fresh process that prepares the
charts' update bytes, then keeps ``N`` of one kind loaded and reports how much
its memory grew, divided by ``N``:

* ``document``: a bare ``pycrdt.Doc`` with the chart's update applied, the floor;
* ``record``: ``Record.from_update`` as the record pool loads one (the pool's
  shared clock and replica name);
* ``record + rules``: the same, then its conflicts listed by a ``Rulebook``, as
  every replica does before storing a record's conflict rows (the rulebook
  keeps its result per record while the record lives);
* ``record + change``: the same, then one field's change from another replica
  merged in (``apply_update``), as a pull does to a record in the pool; it is
  compared with ``document + change``, a bare document given the same two updates.

Two measures per run: resident memory (``/proc/self/statm``: Python objects,
pycrdt's Rust allocations and the allocators' overhead, what the operating
system sees) and, in another process, Python's own allocations only
(``tracemalloc``, which does not see pycrdt's Rust heap, so it understates a
document). The figure that counts is resident memory; the other says where the
Python part goes (its largest allocation sites are kept in the results). Runs of
the kinds alternate, so a busy moment of the machine falls on all of them.
Target: a loaded record at most 4x its document.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import parse_args, write_results

KINDS = ("document", "record", "record + rules", "document + change", "record + change")
# What each kind is compared with: the bare document holding the same bytes.
FLOOR = {
    "document": "document",
    "record": "document",
    "record + rules": "document",
    "document + change": "document + change",
    "record + change": "document + change",
}
FULL_RECORDS, FULL_RUNS = 3_000, 7
TINY_RECORDS, TINY_RUNS = 20, 1
TARGET_RATIO = 4.0
_ROOT = Path(__file__).parent.parent

CHILD = "import sys; from benchmarks.bench_memory import child; child(sys.argv[1:])"


def chart(i: int) -> tuple[str, bytes, bytes]:
    """One patient chart's id and stored update, and a change made elsewhere to it."""
    from caresync import Record

    record = Record.create(replica="clinic-import")
    record.set("name", f"Patient {i}", author="import")
    record.set("birthDate", f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}", author="import")
    record.set("gender", "female" if i % 2 else "male", author="import")
    record.set("address/city", "Dakar", author="import")
    record.add_entry(
        "allergies", {"substance": "penicillin", "criticality": "high"}, author="import"
    )
    stored = record.update_since()
    before = record.state_vector()
    record.set("address/city", "Thies", author="nurse")
    return record.record_id, stored, record.update_since(before)


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(argv: list[str]) -> None:
    """One run in this (fresh) process: ``KIND COUNT MEASURE``; prints a JSON line."""
    import gc
    import tracemalloc

    from pycrdt import Doc

    from caresync import HybridLogicalClock, Record, Rulebook

    kind, count, measure = argv[0], int(argv[1]), argv[2]
    charts = [chart(i) for i in range(count)]
    clock = HybridLogicalClock()
    rulebook = Rulebook()

    def load(record_id: str, stored: bytes, change: bytes) -> object:
        if kind.startswith("document"):
            doc: Doc[Any] = Doc()
            doc.apply_update(stored)
            if kind == "document + change":
                doc.apply_update(change)
            return doc
        record = Record.from_update(record_id, stored, replica="laptop", clock=clock)
        if kind == "record + rules":
            rulebook.conflicts(record)
        elif kind == "record + change":
            record.apply_update(change)
        return record

    for record_id, stored, change in charts[:3]:  # warm up: imports, caches, first arenas
        load(record_id, stored, change)
    kept: list[object] = [None] * count
    gc.collect()
    if measure == "python":
        tracemalloc.start(1)
    start, before = _resident_bytes(), tracemalloc.get_traced_memory()[0]
    for i, (record_id, stored, change) in enumerate(charts):
        kept[i] = load(record_id, stored, change)
    gc.collect()
    result: dict[str, Any] = {"kind": kind, "records": count}
    if measure == "python":
        result["python_bytes"] = (tracemalloc.get_traced_memory()[0] - before) / count
        snapshot = tracemalloc.take_snapshot()
        result["python_sites"] = [
            f"{site.size / count:.0f} B {Path(frame.filename).name}:{frame.lineno}"
            for site in snapshot.statistics("lineno")[:8]
            for frame in (site.traceback[0],)
        ]
        tracemalloc.stop()
    else:
        result["resident_bytes"] = (_resident_bytes() - start) / count
    print(json.dumps(result))


def run_child(kind: str, count: int, measure: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(count), measure],
        capture_output=True,
        text=True,
        cwd=_ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory run {kind!r} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values)),
        "min": round(min(values)),
        "max": round(max(values)),
    }


def _ratio(ours: float, floor: float) -> float | None:
    return round(ours / floor, 2) if floor else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "memory")
    count = TINY_RECORDS if args.tiny else FULL_RECORDS
    runs = TINY_RUNS if args.tiny else FULL_RUNS
    resident: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(runs):
        for kind in KINDS:  # alternate: a busy moment falls on every kind alike
            resident[kind].append(run_child(kind, count, "resident")["resident_bytes"])
    python = {kind: run_child(kind, count, "python") for kind in KINDS}
    cases: list[dict[str, Any]] = []
    for kind in KINDS:
        per_run, floor = resident[kind], resident[FLOOR[kind]]
        # At --tiny sizes a run may grow by less than a page: no ratio then.
        ratios = [ours / doc if doc else None for ours, doc in zip(per_run, floor, strict=True)]
        case: dict[str, Any] = {
            "case": "memory of one loaded record vs its bare pycrdt document",
            "kind": kind,
            "records_per_run": count,
            "runs": runs,
            "resident_bytes": _summary(per_run),
            "compared_with": FLOOR[kind],
            "ratio_to_document": _ratio(statistics.median(per_run), statistics.median(floor)),
            "ratio_per_run": [None if r is None else round(r, 2) for r in ratios],
            "python_bytes": round(python[kind]["python_bytes"]),
            "python_sites": python[kind]["python_sites"],
        }
        if not kind.startswith("document"):
            case["target_ratio"] = TARGET_RATIO
        cases.append(case)
    write_results(args.out, "memory", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
