"""A resolver's choices come from what a seed fixes, never from ids or write times.

Revision ids are random, and conflict ids, finding ids and the paths decisions are
written at derive from them; entry ids a laptop makes are random; a field's
candidates are listed by write time, which depends on which laptop the machine ran
first. Before, a resolver settled "the first conflicts by record, subject and id" and
chose "candidate number n": two runs of one seed settled different conflicts or
chose different values. And ``conflicts_resolved`` lost counts: resolvers editing side
by side each read the count before their resolutions and wrote it back after.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from caresync.conflicts import Candidate, Conflict, ConflictKind, Severity
from caresync.records.clock import Timestamp
from caresync.simulation import SimulationConfig, run_simulation
from caresync.simulation.laptops import candidate_order, laptop_file, settling_order


def _conflicts(rng: random.Random) -> list[Conflict]:
    """Three conflicts of one record as one run could list them; ids, times, replicas and
    the order of each conflict's candidates drawn from ``rng`` (another run: other ones)."""

    def hex_id(digits: int) -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(digits))

    def candidate(path: str, value: object, author: str) -> Candidate:
        return Candidate(
            path,
            value,  # type: ignore[arg-type]
            author,
            f"replica-{hex_id(8)}",
            Timestamp(rng.randrange(10**12), rng.randrange(5)),
            hex_id(16),
        )

    entry = hex_id(32)  # an allergy a laptop added: a random entry id
    finding = "f-" + hex_id(20)
    made = [
        ("field", "phone", [("+221 1", "clinician-3"), ("+221 2", "clinician-7")]),
        ("field", "weightKg", [(71.5, "clinician-2"), (70.0, "clinician-9"), (72, "clinician-4")]),
        (
            "field",
            f"_ack/{finding}",
            [("acknowledged", "clinician-1"), ("dismissed", "clinician-5")],
        ),
        ("rule", "duplicate-allergy", [("latex", "clinician-3"), ("Latex", "clinician-8")]),
    ]
    conflicts = []
    for kind, subject, sides in made:
        candidates = [
            candidate(f"allergies/{entry}/substance" if kind == "rule" else subject, v, a)
            for v, a in sides
        ]
        rng.shuffle(candidates)  # listed by write time: any order
        conflicts.append(
            Conflict(
                id=("c-" if kind == "field" else "f-") + hex_id(20),
                record_id="patient-1",
                kind=ConflictKind(kind),
                severity=Severity.BLOCK,
                subject=subject,
                message="",
                candidates=tuple(candidates),
                rule=subject if kind == "rule" else None,
            )
        )
    rng.shuffle(conflicts)
    return conflicts


def _choices(conflicts: list[Conflict], draws: random.Random) -> list[object]:
    """What a resolver settles, in order, and the value it picks for each."""
    picked: list[object] = []
    for conflict in sorted(conflicts, key=settling_order):
        order = candidate_order(conflict)
        picked.append(
            (conflict.subject[:5], conflict.candidates[order[draws.randrange(len(order))]].value)
        )
    return picked


def test_a_resolver_settles_the_same_conflicts_with_the_same_values_in_every_run() -> None:
    runs = [_choices(_conflicts(random.Random(run)), random.Random("0/1")) for run in range(20)]
    assert all(choices == runs[0] for choices in runs)
    # The choices still follow the seed's draws: another seed picks otherwise somewhere.
    others = {
        tuple(_choices(_conflicts(random.Random(0)), random.Random(f"{seed}/1")))
        for seed in range(20)
    }
    assert len(others) > 1


KEYS = (
    "edits",
    "values_logged",
    "concurrent_groups",
    "clinical_cases",
    "conflicts_seen",
    "conflicts_resolved",
    "conflicts_open",
    "sync_rounds",
    "replicas_checked",
    "converged",
    "lost_values",
)


def _resolutions_audited(workdir: Path, laptops: int) -> int:
    """The resolutions and acknowledgements the laptops' own audit trails record."""
    total = 0
    for index in range(laptops):
        raw = sqlite3.connect(workdir / laptop_file(index))
        try:
            mine = raw.execute("SELECT replica_id FROM identity").fetchone()
            total += raw.execute(
                "SELECT count(*) FROM audit_trail WHERE action = 'resolve' AND replica_id = ?",
                mine,
            ).fetchone()[0]
        finally:
            raw.close()
    return total


async def test_two_runs_of_one_seed_give_the_same_result_and_count_every_resolution(
    tmp_path: Path,
) -> None:
    """Thirty laptops on four patients: three resolvers a round, side by side, each with
    conflicts to settle."""
    options = dict(laptops=30, patients=4, edits_per_laptop=4, conflict_rate=0.5, seed=5)
    config = SimulationConfig(**options, concurrency=30, workers=0, workdir=tmp_path / "one")  # type: ignore[arg-type]
    first = await run_simulation(config)
    assert first.ok, first.details
    assert first.conflicts_resolved > 3  # more than one resolver's
    assert first.conflicts_resolved == _resolutions_audited(tmp_path / "one", 30)
    second = await run_simulation(SimulationConfig(**options, concurrency=7, workers=2))  # type: ignore[arg-type]
    assert [getattr(first, k) for k in KEYS] == [getattr(second, k) for k in KEYS]
