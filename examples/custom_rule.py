"""An application's own clinical safety rule, registered in a Rulebook.

Run:  python examples/custom_rule.py [WORKDIR]

The rule: a drug known to harm an unborn child, prescribed while a pregnancy is
recorded. Offline, a midwife records the pregnancy on one laptop while a doctor
prescribes valproate on another. Neither laptop could warn at the time: each saw only
its own half. After the merge the rule fires, identically on both laptops and on the
server; the doctor reviews and acknowledges it, and the acknowledgement replicates
like any edit. Exits 0 when all of that held.

Rules must be pure and deterministic: every replica runs them over the same merged
record and must reach the same findings.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from caresync import DEFAULT_RULEBOOK, Finding, RecordView, Revision, Rulebook, Severity
from caresync.replica import Replica
from caresync.server import SyncServer

PASSWORD = "example passphrase"

# A short illustration, not a clinical reference: use your formulary's data.
HARMFUL_IN_PREGNANCY = ("valproate", "isotretinoin", "warfarin", "methotrexate")
INACTIVE = ("stopped", "entered-in-error", "completed", "cancelled", "resolved")


def _heads(view: RecordView, collection: str, entry_id: str, field: str) -> tuple[Revision, ...]:
    return view.get(f"{collection}/{entry_id}/{field}").heads


def _active(view: RecordView, collection: str, entry_id: str) -> bool:
    """Active unless every status candidate says otherwise (a status conflict counts)."""
    statuses = _heads(view, collection, entry_id, "status")
    return not statuses or any(s.value not in INACTIVE for s in statuses)


def harmful_drug_in_pregnancy(view: RecordView) -> Iterator[Finding]:
    """Flag every active prescription of a listed drug while a pregnancy is recorded."""
    pregnancies = [
        code
        for entry_id in view.entry_ids("problems")
        if _active(view, "problems", entry_id)
        for code in _heads(view, "problems", entry_id, "code")
        if code.value == "pregnancy"
    ]
    if not pregnancies:
        return
    for med_id in view.entry_ids("medications"):
        if not _active(view, "medications", med_id):
            continue
        for drug in _heads(view, "medications", med_id, "drug"):
            name = str(drug.value).lower()
            if not any(harmful in name for harmful in HARMFUL_IN_PREGNANCY):
                continue
            for pregnancy in pregnancies:
                yield Finding(
                    rule="harmful-drug-in-pregnancy",
                    severity=Severity.FLAG,
                    message=(
                        f"{drug.value} prescribed by {drug.author} while a pregnancy is "
                        f"recorded (by {pregnancy.author}): review the prescription"
                    ),
                    revisions=(pregnancy.id, drug.id),  # the finding's id comes from these
                    key=med_id,
                )


# The application's rulebook: the built-in rules plus its own. The server and every
# laptop must use the same one, or they would disagree on what is open.
RULES: Rulebook = DEFAULT_RULEBOOK.with_rules(harmful_drug_in_pregnancy)


async def run(workdir: Path) -> int:
    server = await SyncServer.open(workdir / "clinic.db", rulebook=RULES)
    await server.add_user("maternity", "midwife.kane", PASSWORD)
    await server.add_user("maternity", "dr.sy", PASSWORD)
    await server.serve("127.0.0.1", 0)
    midwife = await Replica.open(workdir / "laptop-midwife.db", rulebook=RULES)
    doctor = await Replica.open(workdir / "laptop-doctor.db", rulebook=RULES)
    try:
        for laptop, user in ((midwife, "midwife.kane"), (doctor, "dr.sy")):
            await laptop.enrol(
                server.url, username=user, password=PASSWORD, organisation="maternity"
            )
        patient = await midwife.create_record()
        await midwife.set(patient, "name", "Khady Ndour", author="midwife.kane")
        await midwife.sync()
        await doctor.sync()

        print("-- offline: each laptop sees only its own half")
        await midwife.add_entry(
            patient, "problems", {"code": "pregnancy", "onset": "2025-01-10"}, author="midwife.kane"
        )
        await doctor.add_entry(
            patient,
            "medications",
            {"drug": "sodium valproate 500 mg", "dose": "500 mg"},
            author="dr.sy",
        )
        alone = await midwife.conflicts() + await doctor.conflicts()
        print(f"findings before the merge: {len(alone)}")

        print("-- back online: the merged record breaks the rule")
        for laptop in (midwife, doctor, midwife):
            await laptop.sync()
        findings = await doctor.conflicts()
        for finding in findings:
            print(f"  {finding.severity.value} {finding.subject}: {finding.message}")
        on_server = [row.id for row in await server.store.conflicts()]
        alike = (
            len(findings) == 1
            and findings == await midwife.conflicts()
            and on_server == [findings[0].id]
        )

        print("-- the doctor reviews the prescription and acknowledges the finding")
        await doctor.acknowledge(findings[0].id, author="dr.sy")
        await doctor.sync()
        await midwife.sync()
        left = await midwife.conflicts()
        print(f"findings open on the midwife's laptop: {len(left)}")

        ok = (
            alone == []
            and alike
            and findings[0].subject == "harmful-drug-in-pregnancy"
            and left == []
            and await server.store.count_conflicts() == 0
        )
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        await midwife.close()
        await doctor.close()
        await server.close()


def main() -> int:
    if len(sys.argv) > 1:
        return asyncio.run(run(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory(prefix="caresync-example-") as tmp:
        return asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
