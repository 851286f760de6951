"""FHIR export and import against a laptop's replica: the only part of caresync.fhir doing I/O.

Import checks the whole file first (every resource validated, every chart
written into its record in memory), then commits every changed record of the
file in one transaction of the store, with the records' conflict rows and
person cards: a refused file, or a crash, stores nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caresync.exceptions import InvalidFhirError
from caresync.fhir.export import bundle_for_record
from caresync.fhir.imports import (
    AppliedChart,
    ImportPlan,
    apply_chart,
    charts_from_resources,
    check_same_person,
)
from caresync.fhir.reading import read_fhir
from caresync.fhir.validation import require_models
from caresync.records import Record
from caresync.replica import Replica

__all__ = ["ImportReport", "export_record", "import_fhir", "plan_import"]


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did, record by record."""

    records: tuple[AppliedChart, ...]
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def record_ids(self) -> list[str]:
        """Every record the file holds, created, updated or unchanged."""
        return [applied.record_id for applied in self.records]

    def as_dict(self) -> dict[str, Any]:
        """What ``caresync fhir import --json`` prints."""
        return {
            "records": self.record_ids,
            "created": [a.record_id for a in self.records if a.created],
            "updated": [a.record_id for a in self.records if a.changed and not a.created],
            "unchanged": [a.record_id for a in self.records if not a.changed],
            "fields_written": sum(a.fields_written for a in self.records),
            "entries_added": sum(a.entries_added for a in self.records),
            "notes_signed": sum(a.notes_signed for a in self.records),
            "addenda_added": sum(a.addenda_added for a in self.records),
            "contested_skipped": {
                a.record_id: a.contested_skipped for a in self.records if a.contested_skipped
            },
            "ignored": dict(self.ignored),
        }


async def export_record(replica: Replica, record_id: str) -> dict[str, Any]:
    """The record as a FHIR Bundle (JSON), its open conflicts as DetectedIssues."""
    require_models()
    view = await replica.record(record_id)
    organisation = (await replica.store.record_organisations([record_id])).get(record_id)
    bundle = bundle_for_record(view, await replica.conflicts(record_id), organisation=organisation)
    await replica.audit("export", record_id, "fhir")
    return bundle


def plan_import(data: bytes, *, organisation: str | None = None) -> ImportPlan:
    """The charts a FHIR file (a Bundle, or NDJSON) holds, every resource validated.

    ``organisation``: the importing replica's (a record id another organisation assigned
    then names a record of this one's; see :func:`charts_from_resources`)."""
    require_models()
    return charts_from_resources(read_fhir(data), organisation=organisation)


async def _keeping_earlier_ids(
    replica: Replica, plan: ImportPlan, organisation: str | None
) -> ImportPlan:
    """``plan``, made again to update the records this replica holds under the ids
    their Patients' ids alone derive (imported before organisations were in those ids,
    or before enrolment) rather than make a second record of each."""
    if not plan.earlier or not plan.found:
        return plan
    held = await replica.store.state_vectors([*plan.earlier, *plan.earlier.values()])
    keep = frozenset(old for new, old in plan.earlier.items() if new not in held and old in held)
    if not keep:
        return plan
    return charts_from_resources(plan.found, organisation=organisation, earlier=keep)


async def import_fhir(
    replica: Replica, source: bytes | ImportPlan, *, author: str | None = None
) -> ImportReport:
    """Create or update the records of a FHIR file, all in one commit, or none.

    ``source`` is the file's bytes, or what :func:`plan_import` made of them.
    Every value the file holds that its record does not is written as a new
    revision by the account logged in on the laptop (``author``, if given, must
    be that account: :meth:`Replica.author_of`). Raises InvalidFhirError (bad
    file), FieldConflictError (a value for a field in conflict here) or
    ImmutableFieldError (a change to a signed note), storing nothing.
    """
    author = await replica.author_of(author)
    organisation = replica.identity.organisation  # None: not enrolled, no server to refuse
    if not isinstance(source, ImportPlan):
        plan = plan_import(source, organisation=organisation)
    elif source.found and source.organisation != organisation:
        # Made for another organisation (plan_import without one): the derived record ids
        # name the organisation, so they are planned again for this replica's.
        plan = charts_from_resources(source.found, organisation=organisation)
    else:
        plan = source
    plan = await _keeping_earlier_ids(replica, plan, organisation)
    ids = [chart.record_id for chart in plan.charts]
    stored = await replica.store.load_many(ids)
    records: list[tuple[Record, AppliedChart, bytes]] = []
    for chart in plan.charts:
        before = stored.get(chart.record_id)
        if before is None and chart.record_id in plan.unassigned and organisation is not None:
            raise InvalidFhirError(
                f"the file names caresync record {chart.record_id} without the organisation it "
                "belongs to, and this laptop holds no such record: it may be another "
                "organisation's, which the server would refuse. Nothing was imported: sync "
                "first (if it is this organisation's), or export it again with this caresync"
            )
        if before is None:
            record = Record.create(replica=replica.replica_id, record_id=chart.record_id)
            state_vector = None
            contested: dict[str, str] = {}
        else:
            record = Record.from_update(chart.record_id, before, replica=replica.replica_id)
            if chart.record_id in plan.derived:
                check_same_person(chart, record)
            state_vector = record.state_vector()
            contested = {p: c.id for p, c in replica.rulebook.contested(record).items()}
        with record.batch():
            applied = apply_chart(
                record, chart, author=author, contested=contested, created=before is None
            )
        if applied.changed:
            records.append((record, applied, record.update_since(state_vector)))
        else:
            records.append((record, applied, b""))
    changed = [(record, update) for record, _applied, update in records if update]
    await replica.commit_records(changed)
    return ImportReport(tuple(applied for _r, applied, _u in records), dict(plan.ignored))
