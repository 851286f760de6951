"""A patient's summary for the health hub: an International-Patient-Summary-shaped
FHIR document Bundle (pure, no I/O; needs the ``fhir`` extra to validate).

The Bundle is of type ``document``: a Composition first (LOINC 60591-5,
"Patient summary Document"), with the three sections the IPS requires —
allergies (48765-2), medications (10160-0), problems (11450-4) — each with a
generated narrative and references to its entries (or an ``emptyReason``);
then the Patient; then its AllergyIntolerances, MedicationStatements and
Conditions. The resources are those of :func:`caresync.fhir.bundle_for_record`
(the same mapping, ids and values), less entries ``entered-in-error``. Every
resource and the Bundle are validated by ``fhir.resources``.

One stable id per patient (:func:`summary_id`), so the hub replaces its copy
on each ``PUT`` and a resend is harmless; the same record gives the same bytes.
"""

from __future__ import annotations

import html
import json
from typing import Any

from caresync.conflicts import RecordView
from caresync.fhir.export import bundle_bytes, bundle_for_record
from caresync.fhir.validation import validate_resource
from caresync.fhir.vocabulary import EXT_FIELD, resource_id

__all__ = ["SUMMARY_SYSTEM", "summary_bundle", "summary_bytes", "summary_id"]

SUMMARY_SYSTEM = "https://caresync.example.org/fhir/summary"
"""The identifier system of a summary Bundle (its value: the record id)."""
_LOINC = "http://loinc.org"
_EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
_XHTML = "http://www.w3.org/1999/xhtml"
_NO_TIME = "1970-01-01T00:00:00Z"
# (section title, LOINC code, its display, the resource type it lists)
_SECTIONS = (
    ("Allergies and Intolerances", "48765-2", "Allergies and adverse reactions Document",
     "AllergyIntolerance"),
    ("Medication Summary", "10160-0", "History of Medication use Narrative",
     "MedicationStatement"),
    ("Problem List", "11450-4", "Problem list - Reported", "Condition"),
)  # fmt: skip
_SUMMARY_CODE = {"system": _LOINC, "code": "60591-5", "display": "Patient summary Document"}
_KEPT = {kind for _t, _c, _d, kind in _SECTIONS}


def summary_id(record_id: str) -> str:
    """The summary Bundle's id on the hub: the same for a patient whatever changes."""
    return resource_id(record_id, "hub-summary")


def summary_bundle(view: RecordView) -> dict[str, Any]:
    """The record's summary as a FHIR ``document`` Bundle (JSON), validated.

    Call it for a record with no open field conflict (the outbox holds such a
    summary): a field in conflict has no one value to summarise.
    Raises MissingExtraError without the fhir extra.
    """
    full = bundle_for_record(view)
    record_id = view.record_id
    timestamp = str(full.get("timestamp", _NO_TIME))
    patient: dict[str, Any] | None = None
    listed: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _KEPT}
    for entry in full["entry"]:
        resource = entry["resource"]
        kind = resource["resourceType"]
        if kind == "Patient":
            patient = resource
        elif kind in _KEPT and not _entered_in_error(resource):
            listed[kind].append(resource)
    if patient is None:  # pragma: no cover - bundle_for_record always writes one
        raise AssertionError("an exported record has a Patient")
    patient_ref = f"urn:uuid:{patient['id']}"
    sections = [_section(title, code, name, listed[kind]) for title, code, name, kind in _SECTIONS]
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": resource_id(record_id, "hub-summary", "composition"),
        "status": "final",
        "type": {"coding": [_SUMMARY_CODE]},
        "subject": {"reference": patient_ref},
        "date": timestamp,
        "author": [{"display": "caresync"}],
        "title": "International Patient Summary",
        "confidentiality": "N",
        "section": sections,
    }
    resources = [composition, patient]
    for _title, _code, _display, kind in _SECTIONS:
        resources.extend(listed[kind])
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": summary_id(record_id),
        "type": "document",
        "identifier": {"system": SUMMARY_SYSTEM, "value": record_id},
        "timestamp": timestamp,
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
    validate_resource(composition, "summary composition")
    validate_resource(bundle, "summary bundle")
    return bundle


def summary_bytes(view: RecordView) -> bytes:
    """:func:`summary_bundle` as byte-stable UTF-8 JSON (what is sent to the hub)."""
    return bundle_bytes(summary_bundle(view))


def _entered_in_error(resource: dict[str, Any]) -> bool:
    if resource.get("status") == "entered-in-error":
        return True
    verification = resource.get("verificationStatus", {})
    codes = [c.get("code") for c in verification.get("coding", ())]
    return "entered-in-error" in codes


def _label(resource: dict[str, Any]) -> str:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    text = concept.get("text")
    return text if isinstance(text, str) and text else "(not named)"


def _item(resource: dict[str, Any]) -> str:
    """One line of a section's narrative: the entry's name and what a clinician must not
    misread — its status (a stopped drug, a refuted allergy, a resolved problem), an
    allergy's criticality and reaction, a drug's dose. A viewer shows the narrative, not
    the coded elements, so it says what they say."""
    details: list[str] = []
    if resource["resourceType"] == "MedicationStatement":
        status = str(resource.get("status"))
        if status == "unknown":  # required: written too when the record holds no FHIR code
            status = _field_text(resource, "status") or "status unknown"
        details.append(status)
        dose = ((resource.get("dosage") or [{}])[0]).get("text")
        if isinstance(dose, str) and dose:
            details.append(dose)
    else:
        statuses = [
            _code(resource.get("clinicalStatus")) or _field_text(resource, "status"),
            _code(resource.get("verificationStatus")) or _field_text(resource, "verification"),
        ]
        said = [s for s in statuses if s]
        details.append(", ".join(said) if said else "status not recorded")
        if resource["resourceType"] == "AllergyIntolerance":
            criticality = resource.get("criticality") or _field_text(resource, "criticality")
            if criticality:
                details.append(f"criticality {criticality}")
            reactions = resource.get("reaction") or [{}]
            manifestation = (reactions[0].get("manifestation") or [{}])[0].get("text")
            if isinstance(manifestation, str) and manifestation:
                details.append(f"reaction: {manifestation}")
    return f"{_label(resource)} ({'; '.join(details)})"


def _code(concept: Any) -> str | None:
    """The first code of a CodeableConcept (a status), or None."""
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding", ()):
        code = coding.get("code")
        if isinstance(code, str) and code:
            return code
    return None


def _field_text(resource: dict[str, Any], name: str) -> str | None:
    """A text value of field ``name`` that its element could not hold (a status outside
    the value set, ``criticality: "severe"``), from the ``field`` extension, or None."""
    for extension in resource.get("extension", ()):
        if extension.get("url") != EXT_FIELD:
            continue
        parts = {p.get("url"): p for p in extension.get("extension", ())}
        if parts.get("name", {}).get("valueString") != name or "value" not in parts:
            continue
        try:
            value = json.loads(parts["value"].get("valueString", ""))
        except ValueError:
            return None
        return value if isinstance(value, str) and value else None
    return None


def _section(
    title: str, code: str, display: str, resources: list[dict[str, Any]]
) -> dict[str, Any]:
    section: dict[str, Any] = {
        "title": title,
        "code": {"coding": [{"system": _LOINC, "code": code, "display": display}]},
    }
    if resources:
        items = "".join(f"<li>{html.escape(_item(r))}</li>" for r in resources)
        div = f'<div xmlns="{_XHTML}"><ul>{items}</ul></div>'
        section["text"] = {"status": "generated", "div": div}
        section["entry"] = [{"reference": f"urn:uuid:{r['id']}"} for r in resources]
    else:
        section["text"] = {
            "status": "generated",
            "div": f'<div xmlns="{_XHTML}"><p>None recorded in caresync.</p></div>',
        }
        section["emptyReason"] = {
            "coding": [{"system": _EMPTY_REASON, "code": "unavailable", "display": "Unavailable"}]
        }
    return section
