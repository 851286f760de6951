"""A working day of offline laptops, driven through the caresync.testing plugin.

Four laptops (two in live mode, two syncing in rounds) go out with a copy of the same
patients, edit them offline (the same fields on several laptops, a medication stopped
on one while its dose changed on another, an allergy on one while the matching drug was
prescribed on another), come back in a seeded random order, and settle. Every value
written must be reachable everywhere (promise 1), and every laptop must hold exactly
what the server holds, conflicts included (promise 2). Then the conflicts are settled
on one laptop and disappear everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from caresync import (
    DEFAULT_RULEBOOK,
    ConflictKind,
    Finding,
    JSONValue,
    RecordView,
    Severity,
)
from caresync.testing import Clinic, ClinicFactory, Laptop

Written = list[tuple[str, str, JSONValue]]
"""(record id, path, value) of every write."""


async def _write(
    laptop: Laptop, written: Written, record_id: str, path: str, value: JSONValue
) -> None:
    await laptop.set(record_id, path, value)  # written as the nurse logged in there
    written.append((record_id, path, value))


async def _offline_edits(
    laptop: Laptop, rng: random.Random, patients: dict[str, str], written: Written
) -> None:
    """A few edits of a seeded choice, on a laptop that is offline."""
    for _ in range(4):
        record_id = rng.choice(sorted(patients))
        med = patients[record_id]
        choice = rng.randrange(5)
        if choice == 0:
            await _write(
                laptop,
                written,
                record_id,
                "birthDate",
                f"19{rng.randrange(40, 99)}-01-0{rng.randrange(1, 9)}",
            )
        elif choice == 1:
            await _write(
                laptop,
                written,
                record_id,
                f"medications/{med}/dose",
                f"{rng.choice([250, 500, 850, 1000])} mg",
            )
        elif choice == 2:
            await _write(laptop, written, record_id, f"medications/{med}/status", "stopped")
        elif choice == 3:
            entry = await laptop.add_entry(record_id, "allergies", {"substance": "penicillin"})
            written.append((record_id, f"allergies/{entry}/substance", "penicillin"))
        else:
            entry = await laptop.add_entry(record_id, "medications", {"drug": "amoxicillin 500 mg"})
            written.append((record_id, f"medications/{entry}/drug", "amoxicillin 500 mg"))


async def _lost_values(laptop: Laptop, written: Written) -> list[tuple[str, str, JSONValue]]:
    lost = []
    for record_id, path, value in written:
        history = [rev.value for rev in (await laptop.record(record_id)).history(path)]
        if value not in history:
            lost.append((record_id, path, value))
    return lost


@pytest.mark.parametrize("seed", [7, 2024])
async def test_offline_laptops_come_back_and_nothing_is_lost_or_hidden(
    clinic: Clinic, seed: int
) -> None:
    rng = random.Random(seed)
    laptops = [
        await clinic.laptop("north", user="nurse.north", live=True),
        await clinic.laptop("south", user="nurse.south", live=True),
        await clinic.laptop("east"),  # dr.test's
        await clinic.laptop("west", user="nurse.west"),
    ]
    desk = laptops[2]
    written: Written = []
    patients: dict[str, str] = {}
    for name in ("Awa Diop", "Modou Faye", "Seynabou Gueye"):
        record_id = await desk.create_record()
        await _write(desk, written, record_id, "name", name)
        patients[record_id] = await desk.add_entry(
            record_id, "medications", {"drug": "metformin", "dose": "500 mg"}, author="dr.test"
        )
    await clinic.quiescent()

    for laptop in laptops:
        laptop.offline()
    for laptop in laptops:
        await _offline_edits(laptop, rng, patients, written)
    for laptop in rng.sample(laptops, len(laptops)):
        laptop.online()
    await clinic.quiescent()
    await clinic.assert_converged()

    conflicts = await desk.conflicts()
    kinds = {c.subject for c in conflicts}
    assert len(kinds) >= 2, f"the seeded day made too few kinds of conflict: {kinds}"
    for laptop in laptops:
        assert await laptop.conflicts() == conflicts
        assert await _lost_values(laptop, written) == []
    server_ids = sorted(row.id for row in await clinic.server.store.conflicts())
    assert server_ids == sorted({c.id for c in conflicts})

    # Settle every conflict on one laptop, one at a time: a decision can change the
    # others (a dose chosen changes the stop-versus-dose finding), so list again each time.
    for _ in range(40):
        open_now = await desk.conflicts()
        if not open_now:
            break
        conflict = open_now[0]
        if conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
            await desk.resolve(conflict.id, choose=0, author="dr.test")
        else:
            await desk.acknowledge(conflict.id, author="dr.test")
    assert await desk.conflicts() == []
    await clinic.quiescent()
    for laptop in laptops:
        assert await laptop.conflicts() == []
        assert await _lost_values(laptop, written) == []  # choosing kept the others in history
    await clinic.assert_converged()


def implausible_height(view: RecordView) -> Iterator[Finding]:
    """An application's own rule: a height outside 30-250 cm must be checked."""
    for rev in view.get("heightCm").heads:
        if isinstance(rev.value, int | float) and not 30 <= rev.value <= 250:
            yield Finding(
                rule="implausible-height",
                severity=Severity.FLAG,
                message=f"height {rev.value} cm entered by {rev.author}: check it",
                revisions=(rev.id,),
            )


async def test_an_application_rule_is_run_alike_by_the_server_and_every_laptop(
    clinic_factory: ClinicFactory,
) -> None:
    clinic = await clinic_factory(rulebook=DEFAULT_RULEBOOK.with_rules(implausible_height))
    north = await clinic.laptop("north", user="nurse.sow")
    south = await clinic.laptop("south", user="dr.ba", live=True)
    record_id = await north.create_record()
    north.offline()
    await north.set(record_id, "heightCm", 1720, author="nurse.sow")  # mm typed as cm
    north.online()
    await clinic.quiescent()

    [finding] = await south.conflicts()
    assert finding.subject == "implausible-height"
    assert await north.conflicts() == [finding]
    assert [row.id for row in await clinic.server.store.conflicts()] == [finding.id]

    await south.acknowledge(finding.id, author="dr.ba")
    await clinic.quiescent()
    assert await north.conflicts() == []
    assert await clinic.server.store.count_conflicts() == 0
    await clinic.assert_converged()
