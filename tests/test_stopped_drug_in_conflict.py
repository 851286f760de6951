"""A medication stopped while its dose changed, its drug renamed on both sides.

The stopped-vs-dose-change rule named the drug by reading its value, which raises
when the drug is itself in conflict: the rule failed (RuleError), so the record's
conflicts could not be listed, and no replica could commit the merged record (its
index rows are computed with the commit): the laptop whose edits arrived second
could never sync them, and both disagreements stayed hidden.
"""

from __future__ import annotations

from tests.helpers import exchange, replicas
from tests.test_pool_readers import HeldStore

from caresync import DEFAULT_RULEBOOK, Record
from caresync.replication.absorb import absorb
from caresync.replication.pool import RecordPool


def stopped_and_renamed() -> tuple[Record, Record, str]:
    """Laptop a stopped it and renamed the drug; laptop b changed the dose and renamed it."""
    a, b = replicas()
    med = a.add_entry(
        "medications", {"drug": "warfarin", "dose": "5 mg", "status": "active"}, author="dr.a"
    )
    exchange(a, b)
    a.set_status("medications", med, "stopped", author="dr.a")
    a.set(f"medications/{med}/drug", "warfarin sodium", author="dr.a")
    b.set(f"medications/{med}/dose", "7.5 mg", author="dr.b")
    b.set(f"medications/{med}/drug", "Coumadin", author="dr.b")
    return a, b, med


def test_a_stop_against_a_dose_change_is_found_when_the_drug_is_in_conflict() -> None:
    a, b, med = stopped_and_renamed()
    exchange(a, b)
    by_subject = {c.subject: c for c in DEFAULT_RULEBOOK.conflicts(a)}
    finding = by_subject["stopped-vs-dose-change"]
    assert [c.value for c in finding.candidates] == ["stopped", "continue at 7.5 mg"]
    assert "warfarin sodium / Coumadin" in finding.message  # both names, neither chosen
    assert f"medications/{med}/drug" in by_subject  # the drug's own conflict, listed too
    assert DEFAULT_RULEBOOK.conflicts(b) == DEFAULT_RULEBOOK.conflicts(a)


async def test_a_replica_takes_in_the_merged_record() -> None:
    a, b, _med = stopped_and_renamed()
    store = HeldStore()
    pool = RecordPool(store, replica="here", rulebook=DEFAULT_RULEBOOK)
    first = [(a.record_id, a.update_since())]
    await absorb(pool, store, first, checkpoint=None, organisation="clinic-a")
    second = [(b.record_id, b.update_since())]
    await absorb(pool, store, second, checkpoint=None, organisation="clinic-a")
    rows = {row.subject for row in await store.conflicts()}
    assert "stopped-vs-dose-change" in rows
