"""The record model's costs beside the raw pycrdt operations it wraps, in one run.

For records of 10, 1,000 and 10,000 revisions:

* write: one field revision (``Record.set``) vs a raw ``Map[key] = same bytes``;
* merge: taking in a whole record's update (``Record.from_update``, which also
  indexes heads) vs a raw ``Doc.apply_update`` of the same bytes;
* read: one field's value, and listing the record's open conflicts (rules
  included, cache bypassed) — these should stay flat as the record grows;
* load and check many small records (11 revisions, an allergy and a medication),
  as a first copy does: ``Record.from_update``, then the rules over each;
* the same records with one field changed elsewhere, as an incremental sync
  takes them in: loaded then merged (``from_update`` + ``apply_update``) vs
  both at once (``Record.from_updates``), then the rules.
"""

from __future__ import annotations

import itertools
from typing import Any

from pycrdt import Doc, Map

from benchmarks.common import median_seconds, parse_args, write_results
from caresync import Record, Rulebook

FIELDS_PER_RECORD = 50


def build_record(revisions: int) -> Record:
    """A record with ``revisions`` revisions over 50 top-level fields and a medication."""
    record = Record.create(replica="bench")
    record.add_entry("medications", {"drug": "metformin", "dose": "500mg"}, author="dr")
    with record.batch():
        for i in range(max(0, revisions - record_revision_count(record))):
            record.set(f"field{i % FIELDS_PER_RECORD}", i, author="dr")
    return record


def record_revision_count(record: Record) -> int:
    return len(record.revisions())


def bench_write(record: Record, writes: int, repeats: int) -> tuple[float, float]:
    """Seconds per write: Record.set vs raw Map write of the same stored bytes."""
    counter = itertools.count()

    def ours() -> None:
        for _ in range(writes):
            record.set("heightCm", next(counter), author="dr")

    doc: Doc[Any] = Doc()
    raw_map: Map[Any] = doc.get("revisions", type=Map)
    stored = '{"p":"heightCm","v":1234,"ps":["0123456789abcdef"],"a":"dr","r":"bench","t":1,"c":0}'
    with doc.transaction():
        for i in range(len(record.revisions())):
            raw_map[f"pre{i}"] = stored
    raw_keys = itertools.count()

    def raw() -> None:
        for _ in range(writes):
            raw_map[f"{next(raw_keys):016x}"] = stored

    return (
        median_seconds(ours, repeats) / writes,
        median_seconds(raw, repeats) / writes,
    )


def bench_merge(record: Record, repeats: int) -> tuple[float, float]:
    update = record.update_since()

    def ours() -> None:
        Record.from_update(record.record_id, update, replica="other")

    def raw() -> None:
        Doc().apply_update(update)

    return median_seconds(ours, repeats), median_seconds(raw, repeats)


def bench_reads(record: Record, repeats: int) -> tuple[float, float]:
    def read() -> None:
        for _ in range(100):
            record.get("field1").value  # noqa: B018 - the read is what is measured

    def conflicts() -> None:
        for _ in range(10):
            Rulebook().conflicts(record)  # a new rulebook: no cached result

    return median_seconds(read, repeats) / 100, median_seconds(conflicts, repeats) / 10


def small_record_update(i: int) -> tuple[str, bytes]:
    """A typical small chart: demographics, one allergy, one medication, one correction."""
    record = Record.create(replica="clinic")
    with record.batch():
        record.set("name", f"patient {i}", author="dr")
        record.set("birthDate", "1980-01-01", author="dr")
        record.set("sex", "female", author="dr")
        record.add_entry(
            "allergies", {"substance": "penicillin", "criticality": "high"}, author="dr"
        )
        record.add_entry(
            "medications", {"drug": "metformin", "dose": "500mg", "status": "active"}, author="dr"
        )
        record.set("birthDate", "1980-01-02", author="dr")
    return record.record_id, record.update_since()


def bench_small_records(count: int, repeats: int) -> tuple[float, float]:
    """Seconds per record: loading it, and loading it then listing its conflicts."""
    updates = [small_record_update(i) for i in range(count)]
    rulebook = Rulebook()

    def load() -> None:
        for record_id, update in updates:
            Record.from_update(record_id, update, replica="laptop")

    def load_and_check() -> None:
        for record_id, update in updates:
            rulebook.conflicts(Record.from_update(record_id, update, replica="laptop"))

    return (
        median_seconds(load, repeats) / count,
        median_seconds(load_and_check, repeats) / count,
    )


def bench_small_records_with_increment(count: int, repeats: int) -> tuple[float, float]:
    """Seconds per record: a stored small record and an arrived change, then the rules."""
    cases = []
    for i in range(count):
        record_id, stored = small_record_update(i)
        elsewhere = Record.from_update(record_id, stored, replica="elsewhere")
        before = elsewhere.state_vector()
        elsewhere.set("birthDate", "1980-03-03", author="dr")
        cases.append((record_id, stored, elsewhere.update_since(before)))
    rulebook = Rulebook()

    def load_then_merge() -> None:
        for record_id, stored, arrived in cases:
            record = Record.from_update(record_id, stored, replica="laptop")
            record.apply_update(arrived)
            rulebook.conflicts(record)

    def at_once() -> None:
        for record_id, stored, arrived in cases:
            rulebook.conflicts(Record.from_updates(record_id, (stored, arrived), replica="laptop"))

    return (
        median_seconds(load_then_merge, repeats) / count,
        median_seconds(at_once, repeats) / count,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "records")
    sizes = [10, 200] if args.tiny else [10, 1_000, 10_000]
    repeats = 1 if args.tiny else 7
    writes = 20 if args.tiny else 500
    cases: list[dict[str, Any]] = []
    for size in sizes:
        record = build_record(size)
        merged = build_record(size)
        ours_w, raw_w = bench_write(record, writes, repeats)
        ours_m, raw_m = bench_merge(merged, repeats)
        read_s, conflicts_s = bench_reads(merged, repeats)
        cases += [
            {
                "case": "write one revision",
                "revisions": size,
                "caresync_us": round(ours_w * 1e6, 2),
                "raw_pycrdt_us": round(raw_w * 1e6, 2),
                "ratio": round(ours_w / raw_w, 2),
            },
            {
                "case": "merge whole record",
                "revisions": size,
                "caresync_ms": round(ours_m * 1e3, 3),
                "raw_pycrdt_ms": round(raw_m * 1e3, 3),
                "ratio": round(ours_m / raw_m, 2),
            },
            {
                "case": "read one field",
                "revisions": size,
                "caresync_us": round(read_s * 1e6, 2),
            },
            {
                "case": "list conflicts (rules run, no cache)",
                "revisions": size,
                "caresync_us": round(conflicts_s * 1e6, 2),
            },
        ]
    small = 50 if args.tiny else 2_000
    load_s, check_s = bench_small_records(small, repeats)
    cases.append(
        {
            "case": "load small records, then list conflicts",
            "records": small,
            "revisions_each": record_revision_count(
                Record.from_update(*small_record_update(0), replica="count")
            ),
            "load_us": round(load_s * 1e6, 1),
            "load_and_conflicts_us": round(check_s * 1e6, 1),
        }
    )
    merge_s, at_once_s = bench_small_records_with_increment(small, repeats)
    cases.append(
        {
            "case": "small record and an arrived change, then list conflicts",
            "records": small,
            "load_then_merge_us": round(merge_s * 1e6, 1),
            "from_updates_us": round(at_once_s * 1e6, 1),
        }
    )
    write_results(args.out, "records", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
