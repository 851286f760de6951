"""Which record field goes in which FHIR element, both ways (pure).

A :class:`Slot` puts one field's value into a resource (when the element can
hold it exactly) and takes it back out. Export puts every field it can, then
runs the takes over what it built: wherever a take would not give back the
record's value exactly (a value the element cannot hold, a default FHIR
requires, a field the resource has no element for), the field travels in a
``field`` extension instead (:data:`~caresync.fhir.vocabulary.EXT_FIELD`), and
import lets the extension win. So import(export(record)) gives back every
field, while a FHIR reader still finds each value where FHIR puts it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from caresync.exceptions import InvalidFhirError
from caresync.fhir.vocabulary import (
    ALLERGY_CLINICAL,
    ALLERGY_VERIFICATION,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    DOCUMENT_STATUSES,
    ENCOUNTER_STATUSES,
    FHIR_DATE,
    GENDERS,
    MEDICATION_STATUSES,
    OBSERVATION_STATUSES,
)
from caresync.records import JSONValue

__all__ = [
    "DEFAULTS",
    "MISSING",
    "SLOTS",
    "Context",
    "Resource",
    "Slot",
    "fhir_string",
]

Resource = dict[str, Any]
"""A FHIR resource as JSON (what ``json.loads`` gives)."""


class _Missing:
    """No value: the resource says nothing about the field."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Context:
    """What a slot needs beyond the resource: how entries of the record are referenced."""

    entry_refs: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(collection, entry id) -> the reference to its resource (export)."""
    ref_entries: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """A reference -> (collection, entry id) of the resource it names (import)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """One record field and the FHIR element it goes in."""

    name: str
    put: Callable[[Resource, JSONValue, Context], bool]
    """Place the value; False (and the resource unchanged) if the element cannot hold it."""
    take: Callable[[Resource, Context], JSONValue | _Missing]
    """The field's value as the resource's elements say it, or MISSING."""


_SAFE_CONTROL = frozenset("\t\r\n")
_MAX_NUMBER = 1e15  # beyond this a decimal may be written in an exponent a reader rounds


def fhir_string(value: object) -> bool:
    """True for text a FHIR ``string`` holds as it is: non-empty, no surrounding blanks,
    no control characters but tab and line breaks."""
    return (
        isinstance(value, str)
        and value != ""
        and value == value.strip()
        and all(c >= " " or c in _SAFE_CONTROL for c in value)
    )


def _fhir_code(value: object) -> bool:
    """A FHIR ``code``: text with no surrounding or doubled whitespace."""
    return fhir_string(value) and " ".join(str(value).split()) == value


def _fhir_date(value: object) -> bool:
    if not isinstance(value, str) or FHIR_DATE.fullmatch(value) is None:
        return False
    if len(value) == 10:
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return False
    return True


def _number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and abs(value) < _MAX_NUMBER


# ------------------------------------------------------------- reading helpers


def _first(items: object) -> dict[str, Any] | None:
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return items[0]
    return None


def _text_of(concept: object) -> JSONValue | _Missing:
    """A CodeableConcept's text, else its first coding's display, else its code."""
    if not isinstance(concept, dict):
        return MISSING
    text = concept.get("text")
    if isinstance(text, str):
        return text
    coding = _first(concept.get("coding"))
    if coding is not None:
        for key in ("display", "code"):
            if isinstance(coding.get(key), str):
                return str(coding[key])
    return MISSING


def _code_of(concept: object, codes: frozenset[str]) -> str | None:
    """The first code of a CodeableConcept's codings that is one of ``codes``."""
    if not isinstance(concept, dict):
        return None
    codings = concept.get("coding")
    if not isinstance(codings, list):
        return None
    for coding in codings:
        if isinstance(coding, dict) and coding.get("code") in codes:
            return str(coding["code"])
    return None


# ------------------------------------------------------------------ slot kinds


def _plain(name: str, key: str, ok: Callable[[object], bool] = fhir_string) -> Slot:
    """A field held as it is by a primitive element ``key``."""

    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not ok(value):
            return False
        resource[key] = value
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        value = resource.get(key)
        return value if isinstance(value, str) else MISSING

    return Slot(name, put, take)


def _code(name: str, key: str, codes: frozenset[str]) -> Slot:
    """A field held by a ``code`` element bound to ``codes``."""
    return _plain(name, key, lambda v: isinstance(v, str) and v in codes)


def _concept(name: str, key: str, *, many: bool = False) -> Slot:
    """A field held as the text of a CodeableConcept (or of the first of a list of them)."""

    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not fhir_string(value):
            return False
        concept = {"text": value}
        resource[key] = [concept] if many else concept
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        held = resource.get(key)
        return _text_of(_first(held) if many else held)

    return Slot(name, put, take)


def _nested_text(name: str, outer: str, inner: str | None = None) -> Slot:
    """A field held as ``outer[0].text`` or ``outer[0].inner[0].text`` (dosage, reaction, note)."""

    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not fhir_string(value):
            return False
        item: dict[str, Any] = {"text": value}
        resource[outer] = [{inner: [item]}] if inner else [item]
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        item = _first(resource.get(outer))
        if item is not None and inner is not None:
            item = _first(item.get(inner))
        if item is None:
            return MISSING
        if inner is not None:
            return _text_of(item)
        text = item.get("text")
        return text if isinstance(text, str) else MISSING

    return Slot(name, put, take)


def _status_pair(
    system: str, clinical: frozenset[str], verification: frozenset[str]
) -> tuple[Slot, Slot]:
    """``status`` and ``verification`` of an allergy or a problem, kept apart.

    The record's ``status`` holds the clinical status (``active``, ...), or
    ``entered-in-error``/``refuted``, which FHIR says in the verification
    status (with no clinical status). ``verification`` holds the verification
    status. Export keeps the two FHIR elements apart; import reads them back.
    """
    unverified = frozenset({"entered-in-error", "refuted"})
    clinical_system = f"http://terminology.hl7.org/CodeSystem/{system}-clinical"
    verification_system = f"http://terminology.hl7.org/CodeSystem/{system}-verification"

    def coded(system_url: str, code: str) -> dict[str, Any]:
        return {"coding": [{"system": system_url, "code": code}]}

    def put_status(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if isinstance(value, str) and value in clinical:
            resource["clinicalStatus"] = coded(clinical_system, value)
            return True
        if isinstance(value, str) and value in unverified and "verificationStatus" not in resource:
            resource["verificationStatus"] = coded(verification_system, value)
            return True
        return False

    def take_status(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        code = _code_of(resource.get("clinicalStatus"), clinical)
        if code is not None:
            return code
        if "clinicalStatus" not in resource:
            code = _code_of(resource.get("verificationStatus"), unverified)
            if code is not None:
                return code
        return MISSING

    def put_verification(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if (
            isinstance(value, str)
            and value in verification
            and "verificationStatus" not in resource
        ):
            resource["verificationStatus"] = coded(verification_system, value)
            return True
        return False

    def take_verification(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        code = _code_of(resource.get("verificationStatus"), verification)
        if code is None or ("clinicalStatus" not in resource and code in unverified):
            return MISSING  # read as the status
        return code

    return (
        Slot("status", put_status, take_status),
        Slot("verification", put_verification, take_verification),
    )


def _note_text() -> Slot:
    """A note's text: the document's one attachment, as UTF-8 text in base64."""

    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not isinstance(value, str) or value == "":
            return False
        data = base64.b64encode(value.encode("utf-8")).decode("ascii")
        resource["content"][0]["attachment"]["data"] = data
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        content = _first(resource.get("content"))
        attachment = content.get("attachment") if content is not None else None
        if not isinstance(attachment, dict) or not isinstance(attachment.get("data"), str):
            return MISSING
        return decode_text(attachment["data"], "DocumentReference.content.attachment.data")

    return Slot("text", put, take)


def decode_text(data: str, where: str) -> str:
    """The UTF-8 text of base64 ``data``; InvalidFhirError naming ``where`` otherwise."""
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidFhirError(f"{where} is not base64 of UTF-8 text") from None


def _observation_value() -> tuple[Slot, Slot]:
    """An observation's ``value`` (number, text or yes/no) and its ``unit``."""

    def put_value(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if isinstance(value, bool):
            resource["valueBoolean"] = value
        elif _number(value):
            resource["valueQuantity"] = {"value": value}
        elif fhir_string(value):
            resource["valueString"] = value
        else:
            return False
        return True

    def take_value(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        if isinstance(resource.get("valueBoolean"), bool):
            return bool(resource["valueBoolean"])
        quantity = resource.get("valueQuantity")
        if isinstance(quantity, dict) and _number(quantity.get("value")):
            number: int | float = quantity["value"]
            return number
        for key in ("valueString", "valueInteger"):
            if isinstance(resource.get(key), (str, int)) and not isinstance(
                resource.get(key), bool
            ):
                held: str | int = resource[key]
                return held
        return MISSING

    def put_unit(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        quantity = resource.get("valueQuantity")
        if not isinstance(quantity, dict) or not fhir_string(value):
            return False
        quantity["unit"] = value
        return True

    def take_unit(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        quantity = resource.get("valueQuantity")
        if isinstance(quantity, dict):
            for key in ("unit", "code"):
                if isinstance(quantity.get(key), str):
                    return str(quantity[key])
        return MISSING

    return Slot("value", put_value, take_value), Slot("unit", put_unit, take_unit)


def _entry_reference(name: str, key: str, collection: str) -> Slot:
    """A field naming another entry of the record (an observation's ``encounter``)."""

    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not isinstance(value, str):
            return False
        reference = ctx.entry_refs.get((collection, value))
        if reference is None:
            return False
        resource[key] = {"reference": reference}
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        held = resource.get(key)
        if not isinstance(held, dict) or not isinstance(held.get("reference"), str):
            return MISSING
        found = ctx.ref_entries.get(held["reference"])
        if found is not None and found[0] == collection:
            return found[1]
        return str(held["reference"])

    return Slot(name, put, take)


def _encounter_class() -> Slot:
    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not _fhir_code(value):
            return False
        resource["class"] = {"code": value}
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        held = resource.get("class")
        if isinstance(held, dict) and isinstance(held.get("code"), str):
            return str(held["code"])
        return MISSING

    return Slot("class", put, take)


def _telecom_phone() -> Slot:
    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not fhir_string(value):
            return False
        resource["telecom"] = [{"system": "phone", "value": value}]
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        telecom = resource.get("telecom")
        if isinstance(telecom, list):
            for point in telecom:
                if (
                    isinstance(point, dict)
                    and point.get("system") == "phone"
                    and isinstance(point.get("value"), str)
                ):
                    return str(point["value"])
        return MISSING

    return Slot("phone", put, take)


def _human_name() -> Slot:
    def put(resource: Resource, value: JSONValue, ctx: Context) -> bool:
        if not fhir_string(value):
            return False
        resource["name"] = [{"text": value}]
        return True

    def take(resource: Resource, ctx: Context) -> JSONValue | _Missing:
        name = _first(resource.get("name"))
        if name is None:
            return MISSING
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = name.get("given")
        parts = [g for g in given if isinstance(g, str)] if isinstance(given, list) else []
        if isinstance(name.get("family"), str):
            parts.append(name["family"])
        return " ".join(parts) if parts else MISSING

    return Slot("name", put, take)


_ALLERGY_STATUS, _ALLERGY_VERIFICATION = _status_pair(
    "allergyintolerance", ALLERGY_CLINICAL, ALLERGY_VERIFICATION
)
_CONDITION_STATUS, _CONDITION_VERIFICATION = _status_pair(
    "condition", CONDITION_CLINICAL, CONDITION_VERIFICATION
)
_OBSERVATION_VALUE, _OBSERVATION_UNIT = _observation_value()

SLOTS: Mapping[str, tuple[Slot, ...]] = {
    "Patient": (
        _human_name(),
        _plain("birthDate", "birthDate", _fhir_date),
        _code("gender", "gender", GENDERS),
        _telecom_phone(),
    ),
    "AllergyIntolerance": (
        _ALLERGY_STATUS,  # before verification: an entered-in-error status takes the element
        _ALLERGY_VERIFICATION,
        _concept("substance", "code"),
        _code("criticality", "criticality", frozenset({"low", "high", "unable-to-assess"})),
        _code("type", "type", frozenset({"allergy", "intolerance"})),
        _nested_text("reaction", "reaction", "manifestation"),
        _plain("onset", "onsetString"),
        _nested_text("note", "note"),
    ),
    "MedicationStatement": (
        _code("status", "status", MEDICATION_STATUSES),
        _concept("drug", "medicationCodeableConcept"),
        _nested_text("dose", "dosage"),
        _concept("reason", "reasonCode", many=True),
        _nested_text("note", "note"),
    ),
    "Condition": (
        _CONDITION_STATUS,
        _CONDITION_VERIFICATION,
        _concept("code", "code"),
        _plain("onset", "onsetString"),
        _nested_text("note", "note"),
    ),
    "Encounter": (
        _code("status", "status", ENCOUNTER_STATUSES),
        _encounter_class(),
        _concept("type", "type", many=True),
        _concept("reason", "reasonCode", many=True),
    ),
    "Observation": (
        _code("status", "status", OBSERVATION_STATUSES),
        _concept("code", "code"),
        _OBSERVATION_VALUE,
        _OBSERVATION_UNIT,  # after the value: a unit needs a quantity to go in
        _entry_reference("encounter", "encounter", "encounters"),
        _nested_text("note", "note"),
    ),
    "DocumentReference": (
        _code("status", "status", DOCUMENT_STATUSES),
        _note_text(),
        _plain("title", "description"),
        _concept("type", "type"),
    ),
}
"""The slots of each resource type, in the order export fills them."""

DEFAULTS: Mapping[str, Resource] = {
    "MedicationStatement": {"status": "unknown", "medicationCodeableConcept": {"text": "unknown"}},
    "Encounter": {
        "status": "unknown",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
    },
    "Observation": {"status": "unknown", "code": {"text": "unknown"}},
    "DocumentReference": {"status": "current"},
}
"""What FHIR requires of a resource when the record holds no value for it (a field
written this way on export is marked absent, so import does not write it)."""
