"""An in-process walk-through of the record model: three laptops, offline edits, a merge.

Run with ``python -m caresync.demo`` (or ``bash scripts/demo``). It shows what a
plain CRDT merge would lose and what caresync keeps: concurrent values of a
date of birth, a medication stopped on one laptop while its dose changed on
another, and an allergy recorded on one laptop while the matching drug was
prescribed on another. Then it resolves them and checks every laptop agrees.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from caresync.conflicts import DEFAULT_RULEBOOK, Conflict
from caresync.records import Record

__all__ = ["main"]


def _exchange(laptops: list[Record]) -> None:
    for source in laptops:
        for target in laptops:
            if source is not target:
                target.apply_update(source.update_since(target.state_vector()))


def _conflict_table(title: str, conflicts: list[Conflict]) -> Table:
    table = Table(title=title, show_lines=True)
    for column in ("severity", "what", "candidates"):
        table.add_column(column)
    for conflict in conflicts:
        candidates = "\n".join(
            f"[{i}] {c.value!r} by {c.author} on {c.replica}"
            for i, c in enumerate(conflict.candidates)
        )
        table.add_row(conflict.severity.value, conflict.message, candidates)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the walk-through; exit 0 when every laptop converged and nothing was lost."""
    console = Console()
    clinic = Record.create(replica="clinic-server")
    clinic.set("name", "Amina Diallo", author="registrar")
    clinic.set("birthDate", "1988-04-12", author="registrar")
    med = clinic.add_entry(
        "medications", {"drug": "metformin", "dose": "500 mg", "status": "active"}, author="dr.ba"
    )
    laptops = [
        Record.from_update(clinic.record_id, clinic.update_since(), replica=f"laptop-{name}")
        for name in ("north", "south")
    ]
    north, south = laptops
    console.print("[bold]Both laptops copy the record, then go offline.[/bold]")

    north.set("birthDate", "1988-04-21", author="nurse.sow")
    south.set("birthDate", "1988-12-04", author="dr.ndiaye")
    north.set_status("medications", med, "stopped", author="nurse.sow")
    south.set(f"medications/{med}/dose", "1000 mg", author="dr.ndiaye")
    north.add_entry("allergies", {"substance": "penicillin"}, author="nurse.sow")
    south.add_entry("medications", {"drug": "amoxicillin 500 mg"}, author="dr.ndiaye")

    console.print("[bold]They come back and sync.[/bold]")
    everyone = [clinic, *laptops]
    _exchange(everyone)
    conflicts = DEFAULT_RULEBOOK.conflicts(clinic)
    console.print(_conflict_table("Open conflicts, the same on every laptop", conflicts))
    same = all(DEFAULT_RULEBOOK.conflicts(r) == conflicts for r in everyone)

    console.print("[bold]Dr Ndiaye resolves them on the south laptop.[/bold]")
    for conflict in conflicts:
        if conflict.kind.value == "field" or conflict.severity.value == "block":
            DEFAULT_RULEBOOK.resolve(south, conflict.id, choose=0, author="dr.ndiaye")
        else:
            DEFAULT_RULEBOOK.acknowledge(south, conflict.id, author="dr.ndiaye")
    _exchange(everyone)

    history = [f"{r.value} ({r.author})" for r in clinic.history("birthDate")]
    console.print(f"Date of birth now {clinic.value('birthDate')!r}; history: {history}")
    converged = same and all(
        r.fields() == clinic.fields() and not DEFAULT_RULEBOOK.conflicts(r) for r in everyone
    )
    kept = {"1988-04-12", "1988-04-21", "1988-12-04"} <= {
        r.value for r in clinic.history("birthDate")
    }
    console.print(f"converged: {converged}, every value kept in history: {kept}")
    return 0 if converged and kept else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
