"""Small helpers shared by the pure-core tests."""

from __future__ import annotations

from caresync import Record


def exchange(*records: Record) -> None:
    """Bring every record up to date with every other (full mesh, both ways)."""
    for a in records:
        for b in records:
            if a is not b:
                b.apply_update(a.update_since(b.state_vector()))


def replicas(n: int = 2) -> list[Record]:
    """``n`` copies of one new record, on replicas laptop-0 ... laptop-(n-1)."""
    first = Record.create(replica="laptop-0")
    return [first] + [
        Record.from_update(first.record_id, first.update_since(), replica=f"laptop-{i}")
        for i in range(1, n)
    ]
