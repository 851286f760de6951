"""A replica's count of open conflicts (every sync's report) equals the conflicts it lists.

The count reads the counts the store keeps (conflict rows, person pairs by state) and
checks only linked charts together; the list derives every conflict. Both must agree
through possible duplicates, a link (with a finding across the linked charts), an
unlink, and a decision that the two are different people.
"""

from __future__ import annotations

from pathlib import Path

from caresync.replica import Replica

A = "dr.a"


async def agree(replica: Replica) -> int:
    count = await replica.count_conflicts()
    assert count == len(await replica.conflicts())
    return count


async def test_the_count_equals_the_list_through_pairs_and_links(tmp_path: Path) -> None:
    replica = await Replica.open(tmp_path / "laptop.db")
    try:
        assert await agree(replica) == 0
        treated = await replica.create_record()
        await replica.set(treated, "name", "Awa Diop", author=A)
        await replica.set(treated, "birthDate", "1990-04-12", author=A)
        await replica.add_entry(
            treated, "medications", {"drug": "amoxicillin", "dose": "500 mg"}, author=A
        )
        other = await replica.create_record()
        await replica.set(other, "name", "Awa Diop", author=A)
        await replica.set(other, "birthDate", "1990-04-12", author=A)
        await replica.add_entry(
            other, "allergies", {"substance": "penicillin", "criticality": "high"}, author=A
        )
        assert await agree(replica) == 2  # a possible duplicate, on each record
        await replica.link_records(treated, other, author=A)
        linked = await agree(replica)
        assert linked >= 1  # the allergy on one chart against the other's prescription
        assert any(c.record_id == treated for c in await replica.conflicts())
        await replica.unlink_records(treated, other, author=A)
        assert await agree(replica) == 2
        await replica.mark_different_people(treated, other, author=A)
        assert await agree(replica) == 0
    finally:
        await replica.close()
