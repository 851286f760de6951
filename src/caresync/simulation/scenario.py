"""The seeded plan of a simulation: patients, rounds, who is online, every edit (pure).

Nothing here does I/O: :func:`plan` turns a :class:`SimulationConfig` into a
:class:`Scenario`, and the same seed always gives the same scenario (the same
patients, the same edits on the same laptops in the same rounds, the same
laptops online). The runner then plays it against real replicas.

Why edits in one round are concurrent: the runner makes every edit of a round
before any laptop of that round syncs, so two laptops that edit the same field
in one round have not seen each other's write. That is how a planned
"concurrent group" becomes a real conflict, without relying on timing.

The clinical cases are those of DESIGN.md, each between two laptops in one
round: two dates of birth; a medication stopped on one laptop while its dose
changed on another; an allergy recorded on one while the matching drug was
prescribed on another; an entry marked entered-in-error while edited
elsewhere; the same allergy recorded twice.

From the second round on, a few laptops also resolve conflicts they see
(choosing a candidate, or acknowledging a flag) before their edits: a
resolution is an ordinary write, made offline like any other.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Literal

from caresync.records import JSONValue
from caresync.simulation.config import SimulationConfig

__all__ = [
    "CLINICAL_CASES",
    "FIELD_PATHS",
    "LAPTOPS_PER_CASE",
    "LAPTOPS_PER_RESOLVER",
    "RESOLUTIONS_PER_RESOLVER",
    "Edit",
    "EditOp",
    "Patient",
    "Round",
    "Scenario",
    "plan",
]

EditOp = Literal["set", "status", "add_entry"]

FIELD_PATHS = ("phone", "address/city", "address/line", "summary", "weightKg", "contact/name")
"""The registers that ordinary edits write (every value written is unique to its edit)."""

CLINICAL_CASES = (
    "birth-dates",
    "stopped-vs-dose",
    "allergy-vs-prescription",
    "entered-in-error-vs-edit",
    "duplicate-allergy",
)
"""The clinical cases of DESIGN.md, played in turn, each on its own patient."""

LAPTOPS_PER_CASE = 5
"""One clinical case per this many laptops (at least one when there are two laptops)."""
LAPTOPS_PER_RESOLVER = 10
"""From the second round on, one laptop in this many resolves conflicts it sees (at least one)."""
RESOLUTIONS_PER_RESOLVER = 3
"""How many open conflicts a resolver settles (the first ones by record and subject)."""

_CITIES = ("Dakar", "Thiès", "Saint-Louis", "Kaolack", "Ziguinchor", "Touba")
_FIRST = ("Awa", "Moussa", "Fatou", "Ibrahima", "Aminata", "Cheikh", "Mariama", "Ousmane")
_LAST = ("Diop", "Ndiaye", "Sow", "Ba", "Fall", "Sy", "Diallo", "Gueye")


@dataclass(frozen=True, slots=True)
class Patient:
    """A patient imported into the clinic's register before the laptops enrol."""

    index: int
    record_id: str
    name: str
    birth_date: str
    medication_id: str
    """Entry id of the medication every patient starts with (metformin 500 mg)."""


@dataclass(frozen=True, slots=True)
class Edit:
    """One edit on one laptop: ``set`` a field, set a medication's ``status``, or add an entry.

    For ``add_entry``, ``path`` is the collection and ``fields`` the entry's first
    values; the entry id is chosen by the replica when the edit is made.
    """

    laptop: int
    patient: int
    op: EditOp
    path: str
    value: JSONValue = None
    fields: tuple[tuple[str, JSONValue], ...] = ()
    case: str | None = None
    """The clinical case this edit belongs to, if any."""
    group: int | None = None
    """The concurrent group (several laptops, one field, one round) it belongs to, if any."""


@dataclass(frozen=True, slots=True)
class Round:
    """A round of work: every laptop's edits, then the laptops in ``online`` sync."""

    index: int
    edits: tuple[tuple[Edit, ...], ...]
    """``edits[laptop]``: that laptop's edits in this round, in order."""
    online: frozenset[int]
    resolvers: frozenset[int] = frozenset()
    """Laptops where someone resolves a few open conflicts before this round's edits."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run will do, decided up front from the seed."""

    patients: tuple[Patient, ...]
    rounds: tuple[Round, ...]
    concurrent_groups: int
    clinical_cases: int

    @property
    def edit_count(self) -> int:
        """How many edits the laptops make in all."""
        return sum(len(e) for r in self.rounds for e in r.edits)


def plan(config: SimulationConfig) -> Scenario:
    """The scenario of ``config``: the same seed gives the same scenario."""
    rng = random.Random(config.seed)
    patients = tuple(_patient(rng, n) for n in range(config.patients))
    laptops = config.laptops
    per_laptop: list[list[list[Edit]]] = [
        [[] for _ in range(laptops)] for _ in range(config.rounds)
    ]
    counters = [0] * laptops  # per laptop, makes every written value unique

    def value_for(laptop: int, path: str) -> JSONValue:
        counters[laptop] += 1
        n = counters[laptop]
        if path == "weightKg":
            return round(40 + laptop + n / 1000, 3)
        if path == "phone":
            return f"+221 77 {laptop:03d} {n:04d}"
        if path == "address/city":
            return f"{rng.choice(_CITIES)} ({laptop}.{n})"
        return f"{path} by laptop {laptop}, edit {n}"

    # Ordinary edits: each laptop's spread over the rounds; some aimed at hot fields.
    hot: list[list[tuple[int, int]]] = [[] for _ in range(config.rounds)]
    for laptop in range(laptops):
        count = config.edits_of(laptop)
        for k in range(count):
            round_index = k * config.rounds // max(1, count)
            slot = len(per_laptop[round_index][laptop])
            if laptops > 1 and rng.random() < config.conflict_rate:
                hot[round_index].append((laptop, slot))
                per_laptop[round_index][laptop].append(Edit(laptop, -1, "set", ""))  # placeholder
                continue
            path = rng.choice(FIELD_PATHS)
            edit = Edit(laptop, rng.randrange(len(patients)), "set", path, value_for(laptop, path))
            per_laptop[round_index][laptop].append(edit)

    # Hot edits of a round are grouped, two or three laptops per field, all distinct.
    groups = 0
    for round_index, slots in enumerate(hot):
        rng.shuffle(slots)
        pending = list(slots)
        while pending:
            members = [pending.pop()]
            size = 3 if rng.random() < 0.25 else 2
            while pending and len(members) < size:
                candidate = next((s for s in pending if all(s[0] != m[0] for m in members)), None)
                if candidate is None:
                    break
                pending.remove(candidate)
                members.append(candidate)
            patient = rng.randrange(len(patients))
            path = rng.choice(FIELD_PATHS)
            group = groups if len(members) > 1 else None
            groups += len(members) > 1
            for laptop, slot in members:
                per_laptop[round_index][laptop][slot] = Edit(
                    laptop, patient, "set", path, value_for(laptop, path), group=group
                )

    # The clinical cases, each between two distinct laptops on its own patient.
    cases = 0
    if laptops > 1:
        count = max(1, laptops // LAPTOPS_PER_CASE)
        chosen = rng.sample(range(len(patients)), min(count, len(patients)))
        for n, patient_index in enumerate(chosen):
            a, b = rng.sample(range(laptops), 2)
            round_index = rng.randrange(config.rounds)
            for edit in _clinical_case(
                CLINICAL_CASES[n % len(CLINICAL_CASES)], a, b, patients[patient_index], rng
            ):
                per_laptop[round_index][edit.laptop].append(edit)
            cases += 1

    rounds = tuple(
        Round(
            index=r,
            edits=tuple(tuple(edits) for edits in per_laptop[r]),
            online=frozenset(i for i in range(laptops) if rng.random() < config.online_rate),
            resolvers=frozenset(
                rng.sample(range(laptops), max(1, laptops // LAPTOPS_PER_RESOLVER))
                if r > 0 and laptops > 1
                else ()
            ),
        )
        for r in range(config.rounds)
    )
    return Scenario(
        patients=patients, rounds=rounds, concurrent_groups=groups, clinical_cases=cases
    )


def _patient(rng: random.Random, n: int) -> Patient:
    record_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    year, month, day = rng.randrange(1930, 2020), rng.randrange(1, 13), rng.randrange(1, 29)
    return Patient(
        index=n,
        record_id=record_id,
        name=f"{rng.choice(_FIRST)} {rng.choice(_LAST)} ({n})",
        birth_date=f"{year}-{month:02d}-{day:02d}",
        medication_id=uuid.UUID(int=rng.getrandbits(128), version=4).hex,
    )


def _clinical_case(
    case: str, a: int, b: int, patient: Patient, rng: random.Random
) -> tuple[Edit, Edit]:
    """The two concurrent edits of one clinical case, on laptops ``a`` and ``b``."""
    p = patient.index
    med = f"medications/{patient.medication_id}"
    if case == "birth-dates":
        year = int(patient.birth_date[:4])
        return (
            Edit(a, p, "set", "birthDate", f"{year}-04-21", case=case),
            Edit(b, p, "set", "birthDate", f"{year}-12-04", case=case),
        )
    if case == "stopped-vs-dose":
        return (
            Edit(a, p, "status", med, "stopped", case=case),
            Edit(b, p, "set", f"{med}/dose", "1000 mg", case=case),
        )
    if case == "allergy-vs-prescription":
        return (
            Edit(a, p, "add_entry", "allergies", fields=(("substance", "penicillin"),), case=case),
            Edit(
                b,
                p,
                "add_entry",
                "medications",
                fields=(("drug", "amoxicillin"), ("dose", f"{rng.choice((250, 500))} mg")),
                case=case,
            ),
        )
    if case == "entered-in-error-vs-edit":
        return (
            Edit(a, p, "status", med, "entered-in-error", case=case),
            Edit(b, p, "set", f"{med}/dose", "850 mg", case=case),
        )
    return (
        Edit(a, p, "add_entry", "allergies", fields=(("substance", "latex"),), case=case),
        Edit(b, p, "add_entry", "allergies", fields=(("substance", "Latex"),), case=case),
    )
