"""The names caresync's FHIR mapping uses: systems, extensions, code sets and resource ids.

Pure constants and functions. Every id is derived from the record id and the
entry id with UUID version 5 (a SHA-1 name hash), so exporting the same record
twice gives the same ids, byte for byte.
"""

from __future__ import annotations

import re
import uuid

__all__ = [
    "ALLERGY_CLINICAL",
    "ALLERGY_VERIFICATION",
    "CONDITION_CLINICAL",
    "CONDITION_VERIFICATION",
    "CONFLICT_SYSTEM",
    "DOCUMENT_STATUSES",
    "ENCOUNTER_STATUSES",
    "ENTRY_SYSTEM",
    "EXT_CANDIDATE",
    "EXT_FIELD",
    "EXT_WROTE",
    "FHIR_DATE",
    "FHIR_VERSION",
    "GENDERS",
    "MEDICATION_STATUSES",
    "NAMESPACE",
    "OBSERVATION_STATUSES",
    "ORGANISATION_SYSTEM",
    "RECORD_SYSTEM",
    "RESOURCE_OF_COLLECTION",
    "resource_id",
]

FHIR_VERSION = "4.3.0"
"""The FHIR release the resources are validated against (R4B, wire-compatible with R4 4.0.1
for every resource caresync writes or reads: see docs/fhir.md)."""

_BASE = "https://caresync.example.org/fhir"
RECORD_SYSTEM = f"{_BASE}/record-id"
"""Identifier system of a Patient's caresync record id."""
ORGANISATION_SYSTEM = f"{_BASE}/organisation"
"""Identifier system of the organisation a record id belongs to (its identifier's assigner)."""
ENTRY_SYSTEM = f"{_BASE}/entry-id"
"""Identifier system of a resource's caresync entry id (``<entry-id>``, or
``<note-id>/addenda/<addendum-id>`` for an addendum)."""
CONFLICT_SYSTEM = f"{_BASE}/conflict"
"""Identifier system of a DetectedIssue's conflict id, and code system of its kind."""
EXT_FIELD = f"{_BASE}/StructureDefinition/field"
"""A record field the resource's elements do not hold exactly (see docs/fhir.md)."""
EXT_CANDIDATE = f"{_BASE}/StructureDefinition/candidate"
"""One candidate of an open conflict, on its DetectedIssue."""
EXT_WROTE = f"{_BASE}/StructureDefinition/wrote"
"""On a Provenance agent: a field whose current value that author wrote."""

NAMESPACE = uuid.UUID("6f1c0b62-4d0e-5b8e-9d62-2f3c8a1e7c55")
"""The UUID namespace of every id the export derives."""

RESOURCE_OF_COLLECTION = {
    "allergies": "AllergyIntolerance",
    "medications": "MedicationStatement",
    "problems": "Condition",
    "encounters": "Encounter",
    "observations": "Observation",
    "notes": "DocumentReference",
}
"""The FHIR resource type each collection of the record model maps to."""

GENDERS = frozenset({"male", "female", "other", "unknown"})
ALLERGY_CLINICAL = frozenset({"active", "inactive", "resolved"})
ALLERGY_VERIFICATION = frozenset({"unconfirmed", "confirmed", "refuted", "entered-in-error"})
CONDITION_CLINICAL = frozenset(
    {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
)
CONDITION_VERIFICATION = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
MEDICATION_STATUSES = frozenset(
    {
        "active",
        "completed",
        "entered-in-error",
        "intended",
        "stopped",
        "on-hold",
        "unknown",
        "not-taken",
    }
)
ENCOUNTER_STATUSES = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
OBSERVATION_STATUSES = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
DOCUMENT_STATUSES = frozenset({"current", "superseded", "entered-in-error"})

FHIR_DATE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
"""FHIR's ``date`` (a year, a year and month, or a full date)."""


def resource_id(record_id: str, *parts: str) -> str:
    """The id of a resource of ``record_id``: a UUID derived from the record id and ``parts``.

    ``resource_id(r)`` is the Patient's, ``resource_id(r, "allergies", e)`` an
    allergy's, ``resource_id(r, "conflict", c)`` a DetectedIssue's. The same
    arguments always give the same id; a FHIR id allows 64 characters at most, so
    the record's and entry's own ids travel as identifiers instead.
    """
    name = "\x1f".join((record_id, *parts))
    return str(uuid.uuid5(NAMESPACE, name))
