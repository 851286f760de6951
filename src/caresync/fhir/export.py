"""Mapping out: a record as one FHIR R4 ``collection`` Bundle (pure, no I/O).

One Bundle per record: the Patient, one resource per entry (AllergyIntolerance,
MedicationStatement, Condition, Encounter, Observation, DocumentReference; an
addendum is a DocumentReference that ``appends`` to its note), a DetectedIssue
per open conflict listing every candidate, and a Provenance per resource saying
who wrote its current values. Ids derive from the record and entry ids
(:func:`~caresync.fhir.vocabulary.resource_id`) and keys are written sorted, so
exporting the same record twice gives the same bytes. See docs/fhir.md.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

from caresync.conflicts import Candidate, Conflict, RecordView
from caresync.fhir.chart import Chart, ChartEntry, chart_of
from caresync.fhir.slots import DEFAULTS, MISSING, SLOTS, Context, Resource
from caresync.fhir.validation import validate_resource
from caresync.fhir.vocabulary import (
    CONFLICT_SYSTEM,
    ENTRY_SYSTEM,
    EXT_CANDIDATE,
    EXT_FIELD,
    EXT_WROTE,
    ORGANISATION_SYSTEM,
    RECORD_SYSTEM,
    RESOURCE_OF_COLLECTION,
    resource_id,
)
from caresync.records import ADDENDA_FIELD, JSONValue, Revision, Timestamp, canonical_json

__all__ = ["bundle_bytes", "bundle_for_record", "bundle_of_chart"]

_SEVERITY = {"block": "high", "flag": "moderate", "info": "low"}
_TEXT_PLAIN = "text/plain; charset=utf-8"
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def bundle_for_record(
    view: RecordView, conflicts: Sequence[Conflict] = (), *, organisation: str | None = None
) -> dict[str, Any]:
    """The record as a FHIR ``collection`` Bundle (JSON), every resource validated.

    ``conflicts`` are the record's open conflicts (``Replica.conflicts(record_id)``):
    each becomes a DetectedIssue with all its candidates. A field in conflict
    is left out of its resource (a field extension names its conflict).
    ``organisation`` (the record's) is written as the assigner of its record id, so
    that another organisation importing the file makes a record of its own.
    Raises MissingExtraError without the fhir extra.
    """
    chart = chart_of(view)
    return bundle_of_chart(chart, view=view, conflicts=conflicts, organisation=organisation)


def bundle_of_chart(
    chart: Chart,
    *,
    view: RecordView | None = None,
    conflicts: Sequence[Conflict] = (),
    organisation: str | None = None,
) -> dict[str, Any]:
    """The Bundle of a chart; with the record's ``view``, Provenance and DetectedIssues too."""
    record_id = chart.record_id
    patient_id = resource_id(record_id)
    patient_ref = f"urn:uuid:{patient_id}"
    refs: dict[tuple[str, str], str] = {
        (e.collection, e.entry_id): f"urn:uuid:{resource_id(record_id, e.collection, e.entry_id)}"
        for e in chart.entries
    }
    ctx = Context(entry_refs=refs)
    entries: list[tuple[Resource, list[str] | None]] = []  # a resource and its record paths
    patient = _patient(chart, ctx, organisation)
    entries.append((patient, list(chart.fields)))
    for entry in chart.entries:
        resource = _entry_resource(chart, entry, patient_ref, ctx)
        prefix = f"{entry.collection}/{entry.entry_id}/"
        entries.append((resource, [prefix + name for name in entry.fields]))
        for addendum in entry.addenda:
            entries.append((_addendum(chart, entry, addendum, patient_ref, refs), None))
    resources = [resource for resource, _paths in entries]
    if view is not None:
        paths_of = {resource["id"]: paths for resource, paths in entries if paths is not None}
        resource_of_path = {
            path: resource["id"] for resource, paths in entries for path in paths or ()
        }
        resources.extend(_issues(view, chart, conflicts, patient_ref, resource_of_path))
        for resource, paths in entries:
            if paths:
                provenance = _provenance(view, resource, paths_of[resource["id"]])
                if provenance is not None:
                    resources.append(provenance)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": resource_id(record_id, "bundle"),
        "type": "collection",
        "identifier": {"system": RECORD_SYSTEM, "value": record_id},
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
    if view is not None:
        latest = max((rev.at for rev in view_revisions(view)), default=None)
        stamp = _instant(latest) if latest is not None else None
        if stamp is not None:
            bundle["timestamp"] = stamp
    for index, resource in enumerate(resources):
        validate_resource(resource, f"exported entry {index}")
    validate_resource(bundle, "exported bundle")
    return bundle


def bundle_bytes(bundle: dict[str, Any]) -> bytes:
    """The Bundle as UTF-8 JSON: keys sorted, indented, one newline at the end (byte-stable)."""
    return (json.dumps(bundle, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def view_revisions(view: RecordView) -> list[Revision]:
    """Every current head of every application path of the record."""
    return [rev for path in view.paths() for rev in view.get(path).heads]


# ------------------------------------------------------------------ resources


def _with_fields(
    resource: Resource,
    kind: str,
    fields: dict[str, JSONValue] | Any,
    contested: Any,
    ctx: Context,
) -> Resource:
    """Put every field its slot can hold, then add a field extension where a take differs."""
    slots = SLOTS.get(kind, ())
    for slot in slots:
        if slot.name in fields and slot.name not in contested:
            slot.put(resource, fields[slot.name], ctx)
    taken = {}
    for slot in slots:
        value = slot.take(resource, ctx)
        if value is not MISSING:
            taken[slot.name] = value
    extensions: list[dict[str, Any]] = []
    for name in sorted(set(fields) | set(taken) | set(contested)):
        if name in contested:
            extensions.append(_field_extension(name, conflict=contested[name]))
        elif name in fields:
            if name not in taken or canonical_json(taken[name]) != canonical_json(fields[name]):
                extensions.append(_field_extension(name, value=fields[name]))
        else:
            extensions.append(_field_extension(name, absent=True))
    if extensions:
        resource["extension"] = extensions
    return resource


def _field_extension(
    name: str, *, value: JSONValue = None, absent: bool = False, conflict: str | None = None
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "name", "valueString": name}]
    if conflict is not None:
        parts.append({"url": "conflict", "valueString": conflict})
    elif absent:
        parts.append({"url": "absent", "valueBoolean": True})
    else:
        parts.append({"url": "value", "valueString": canonical_json(value)})
    return {"url": EXT_FIELD, "extension": parts}


def _patient(chart: Chart, ctx: Context, organisation: str | None = None) -> Resource:
    record_id = chart.record_id
    own: dict[str, Any] = {"system": RECORD_SYSTEM, "value": record_id}
    if organisation is not None:
        own["assigner"] = {"identifier": {"system": ORGANISATION_SYSTEM, "value": organisation}}
    identifiers: list[dict[str, Any]] = [own]
    patient: Resource = {"resourceType": "Patient", "id": resource_id(record_id)}
    fields = dict(chart.fields)
    taken_ids: set[str] = set()
    for name, value in sorted(fields.items()):
        system = identifier_system(name)
        if system is not None and _identifier_value(value):
            identifiers.append({"system": system, "value": value})
            taken_ids.add(name)
    patient["identifier"] = identifiers
    rest = {k: v for k, v in fields.items() if k not in taken_ids}
    return _with_fields(patient, "Patient", rest, chart.contested, ctx)


def identifier_system(path: str) -> str | None:
    """The identifier system a top-level field ``identifiers/<system>`` names, else None."""
    head, _, system = path.partition("/")
    if head != "identifiers" or not system or "/" in system:
        return None
    return system if system == system.strip() and " " not in system else None


def _identifier_value(value: object) -> bool:
    return isinstance(value, str) and value != "" and value == value.strip() and value.isprintable()


def _entry_resource(chart: Chart, entry: ChartEntry, patient_ref: str, ctx: Context) -> Resource:
    kind = RESOURCE_OF_COLLECTION[entry.collection]
    resource: Resource = {
        "resourceType": kind,
        "id": resource_id(chart.record_id, entry.collection, entry.entry_id),
        "identifier": [{"system": ENTRY_SYSTEM, "value": entry.entry_id}],
    }
    resource.update(copy.deepcopy(dict(DEFAULTS.get(kind, {}))))
    subject_key = "patient" if kind == "AllergyIntolerance" else "subject"
    resource[subject_key] = {"reference": patient_ref}
    if kind == "DocumentReference":
        resource["content"] = [{"attachment": {"contentType": _TEXT_PLAIN}}]
        resource["docStatus"] = "final" if entry.signed else "preliminary"
        if entry.signed and entry.signed_by:
            resource["authenticator"] = {"display": entry.signed_by}
    return _with_fields(resource, kind, dict(entry.fields), entry.contested, ctx)


def _addendum(
    chart: Chart,
    entry: ChartEntry,
    addendum: Any,
    patient_ref: str,
    refs: dict[tuple[str, str], str],
) -> Resource:
    """An addendum: its own final DocumentReference that ``appends`` to its note."""
    entry_value = f"{entry.entry_id}/addenda/{addendum.id}"
    resource: Resource = {
        "resourceType": "DocumentReference",
        "id": resource_id(
            chart.record_id, entry.collection, entry.entry_id, ADDENDA_FIELD, addendum.id
        ),
        "identifier": [{"system": ENTRY_SYSTEM, "value": entry_value}],
        "status": "current",
        "docStatus": "final",
        "subject": {"reference": patient_ref},
        "relatesTo": [
            {"code": "appends", "target": {"reference": refs[(entry.collection, entry.entry_id)]}}
        ],
        "content": [{"attachment": {"contentType": _TEXT_PLAIN}}],
    }
    if addendum.author:
        resource["author"] = [{"display": addendum.author}]
    if addendum.text:
        data = base64.b64encode(addendum.text.encode("utf-8")).decode("ascii")
        resource["content"][0]["attachment"]["data"] = data
    return resource


# ------------------------------------------------------------ issues, provenance


def _instant(at: Timestamp) -> str | None:
    """A revision time as a FHIR instant, None outside the calendar."""
    text = at.isoformat()
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return text


def _issues(
    view: RecordView,
    chart: Chart,
    conflicts: Sequence[Conflict],
    patient_ref: str,
    resource_of_path: dict[str, str],
) -> list[Resource]:
    """A DetectedIssue per open conflict of the record, every candidate in an extension.

    A field conflict missing from ``conflicts`` (the caller passed none) is made
    from the field itself, so no candidate is ever left out.
    """
    record_id = chart.record_id
    listed = {c.id: c for c in conflicts if c.record_id == record_id}
    issues: list[Resource] = []
    for conflict in sorted(listed.values(), key=lambda c: c.id):
        issues.append(
            _issue(
                record_id,
                conflict.id,
                conflict.kind.value if conflict.rule is None else conflict.rule,
                conflict.severity.value,
                conflict.subject,
                conflict.message,
                conflict.candidates,
                conflict.paths or (conflict.subject,),
                patient_ref,
                resource_of_path,
                chart,
            )
        )
    for path in view.paths():
        state = view.get(path)
        conflict_id = state.conflict_id
        if conflict_id is None or conflict_id in listed:
            continue
        issues.append(
            _issue(
                record_id,
                conflict_id,
                "field",
                "block",
                path,
                f"{path} has {len(state.candidates)} concurrent values",
                tuple(Candidate.from_revision(h) for h in state.candidates),
                (path,),
                patient_ref,
                resource_of_path,
                chart,
            )
        )
    return issues


def _issue(
    record_id: str,
    conflict_id: str,
    kind: str,
    severity: str,
    subject: str,
    message: str,
    candidates: Iterable[Candidate],
    paths: Iterable[str],
    patient_ref: str,
    resource_of_path: dict[str, str],
    chart: Chart,
) -> Resource:
    implicated = sorted(
        {
            resource_of_path.get(path) or _resource_of_contested(chart, path)
            for path in paths
            if resource_of_path.get(path) or _resource_of_contested(chart, path)
        }
    )
    issue: Resource = {
        "resourceType": "DetectedIssue",
        "id": resource_id(record_id, "conflict", conflict_id),
        "identifier": [{"system": CONFLICT_SYSTEM, "value": conflict_id}],
        "status": "preliminary",
        "code": {"coding": [{"system": CONFLICT_SYSTEM, "code": kind}], "text": subject},
        "severity": _SEVERITY.get(severity, "moderate"),
        "patient": {"reference": patient_ref},
        "detail": message or subject,
        "extension": [_candidate_extension(c) for c in candidates],
    }
    if implicated:
        issue["implicated"] = [{"reference": f"urn:uuid:{rid}"} for rid in implicated]
    return issue


def _resource_of_contested(chart: Chart, path: str) -> str:
    """The id of the resource a contested path belongs to ('' if none)."""
    head, _, rest = path.partition("/")
    if head in RESOURCE_OF_COLLECTION:
        entry_id = rest.partition("/")[0]
        if any(e.collection == head and e.entry_id == entry_id for e in chart.entries):
            return resource_id(chart.record_id, head, entry_id)
        return ""
    return resource_id(chart.record_id) if path in chart.contested else ""


def _candidate_extension(candidate: Candidate) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "value", "valueString": canonical_json(candidate.value)},
        {"url": "author", "valueString": candidate.author},
        {"url": "replica", "valueString": candidate.replica},
        {"url": "at", "valueString": candidate.at.isoformat()},
        {"url": "path", "valueString": candidate.path},
        {"url": "revision", "valueString": candidate.revision},
    ]
    if candidate.writes:
        parts.append(
            {"url": "writes", "valueString": canonical_json([list(w) for w in candidate.writes])}
        )
    return {"url": EXT_CANDIDATE, "extension": [p for p in parts if p.get("valueString")]}


def _provenance(view: RecordView, resource: Resource, paths: list[str]) -> Resource | None:
    """Who wrote the resource's current values: one agent per author, with the fields."""
    wrote: dict[str, set[str]] = {}
    latest: Timestamp | None = None
    for path in paths:
        for rev in view.get(path).heads:
            wrote.setdefault(rev.author, set()).add(path)
            latest = rev.at if latest is None or rev.at > latest else latest
    if latest is None:
        return None
    recorded = _instant(latest) or "1970-01-01T00:00:00.000Z"
    agents = []
    for author in sorted(wrote):
        agents.append(
            {
                "type": {"coding": [{"system": _PARTICIPANT, "code": "author"}]},
                "who": {"display": author},
                "extension": [{"url": EXT_WROTE, "valueString": p} for p in sorted(wrote[author])],
            }
        )
    return {
        "resourceType": "Provenance",
        "id": resource_id(view.record_id, "provenance", resource["id"]),
        "target": [{"reference": f"urn:uuid:{resource['id']}"}],
        "recorded": recorded,
        "agent": agents,
    }
