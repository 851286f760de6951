"""FHIR mapping: a record out as a Bundle and back in, unit by unit and as a property.

The property: for any chart one writer makes, importing its export into a new
record gives the same clinical content, exporting the same record twice gives
the same bytes, and importing the export into the record it came from writes
nothing.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import exchange, replicas

from caresync import (
    DEFAULT_RULEBOOK,
    FieldConflictError,
    ImmutableFieldError,
    InvalidFhirError,
    MissingExtraError,
    Record,
    RecordView,
)
from caresync.fhir import (
    Chart,
    apply_chart,
    bundle_bytes,
    bundle_for_record,
    chart_of,
    charts_from_resources,
    plan_import,
    read_fhir,
    require_models,
    resource_id,
    validate_resource,
)
from caresync.fhir.vocabulary import (
    CONFLICT_SYSTEM,
    ENTRY_SYSTEM,
    EXT_CANDIDATE,
    EXT_FIELD,
    RECORD_SYSTEM,
)

AUTHOR = "dr.importer"


def export(record: Record) -> bytes:
    return bundle_bytes(bundle_for_record(RecordView(record), DEFAULT_RULEBOOK.conflicts(record)))


def resources(data: bytes) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in json.loads(data)["entry"]]


def of_type(data: bytes, kind: str) -> list[dict[str, Any]]:
    return [r for r in resources(data) if r["resourceType"] == kind]


def import_new(data: bytes) -> Record:
    """The first chart of ``data`` written into a new record."""
    chart = plan_import(data).charts[0]
    record = Record.create(replica="laptop-import", record_id=chart.record_id)
    apply_chart(record, chart, author=AUTHOR, created=True)
    return record


def parts(extension: dict[str, Any]) -> dict[str, Any]:
    return {
        p["url"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in extension["extension"]
    }


def field_markers(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        parts(e)["name"]: parts(e) for e in resource.get("extension", ()) if e["url"] == EXT_FIELD
    }


def sample() -> tuple[Record, dict[str, str]]:
    record = Record.create(replica="laptop-1", record_id="rec-1")
    record.set("name", "Awa Ba", author="dr.a")
    record.set("birthDate", "1990-04-12", author="dr.a")
    record.set("gender", "female", author="dr.a")
    record.set("identifiers/nin", "1 234 567", author="dr.a")
    record.set("address", {"city": "Dakar"}, author="dr.a")
    ids = {
        "allergy": record.add_entry(
            "allergies",
            {
                "substance": "penicillin",
                "criticality": "high",
                "status": "active",
                "verification": "confirmed",
                "reaction": "anaphylaxis",
            },
            author="dr.a",
        ),
        "medication": record.add_entry(
            "medications",
            {"drug": "metformin", "dose": "500 mg", "status": "active"},
            author="dr.a",
        ),
        "problem": record.add_entry("problems", {"code": "J45", "onset": "2020"}, author="dr.a"),
        "encounter": record.add_entry(
            "encounters", {"type": "home visit", "status": "finished"}, author="dr.a"
        ),
    }
    ids["observation"] = record.add_entry(
        "observations",
        {"code": "temperature", "value": 37.5, "unit": "Cel", "encounter": ids["encounter"]},
        author="dr.a",
    )
    ids["note"] = record.add_entry("notes", {"text": "Otitis media.\nAmoxicillin."}, author="dr.a")
    record.sign_note(ids["note"], author="dr.a")
    record.add_addendum(ids["note"], "Seen again: better.", author="dr.b")
    return record, ids


# ---------------------------------------------------------------------- export


def test_export_maps_each_collection_to_its_resource_and_validates() -> None:
    record, ids = sample()
    data = export(record)
    bundle = json.loads(data)
    assert bundle["type"] == "collection"
    validate_resource(bundle, "test")
    kinds = sorted(r["resourceType"] for r in resources(data))
    assert kinds.count("Patient") == 1
    for kind in (
        "AllergyIntolerance",
        "MedicationStatement",
        "Condition",
        "Encounter",
        "Observation",
    ):
        assert kinds.count(kind) == 1, kind
    assert kinds.count("DocumentReference") == 2  # the note and its addendum
    assert "Provenance" in kinds
    (patient,) = of_type(data, "Patient")
    assert patient["id"] == resource_id("rec-1")
    assert {"system": RECORD_SYSTEM, "value": "rec-1"} in patient["identifier"]
    assert {"system": "nin", "value": "1 234 567"} in patient["identifier"]
    assert patient["name"] == [{"text": "Awa Ba"}]
    assert patient["birthDate"] == "1990-04-12"
    assert patient["gender"] == "female"
    # A field FHIR has no element for travels as a field extension, exactly.
    assert json.loads(field_markers(patient)["address"]["value"]) == {"city": "Dakar"}
    (observation,) = of_type(data, "Observation")
    assert observation["valueQuantity"] == {"value": 37.5, "unit": "Cel"}
    (encounter,) = of_type(data, "Encounter")
    assert observation["encounter"] == {"reference": f"urn:uuid:{encounter['id']}"}
    assert {"system": ENTRY_SYSTEM, "value": ids["encounter"]} in encounter["identifier"]


def test_allergy_clinical_and_verification_status_are_kept_apart() -> None:
    record, ids = sample()
    (allergy,) = of_type(export(record), "AllergyIntolerance")
    assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    assert allergy["clinicalStatus"]["coding"][0]["system"].endswith("allergyintolerance-clinical")
    assert allergy["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert allergy["verificationStatus"]["coding"][0]["system"].endswith(
        "allergyintolerance-verification"
    )
    record.set_status("allergies", ids["allergy"], "entered-in-error", author="dr.a")
    (allergy,) = of_type(export(record), "AllergyIntolerance")
    # entered-in-error is a verification status: no clinical status then (FHIR's ait-2).
    assert "clinicalStatus" not in allergy
    assert allergy["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    back = import_new(export(record))
    assert back.value(f"allergies/{ids['allergy']}/status") == "entered-in-error"
    assert back.value(f"allergies/{ids['allergy']}/verification") == "confirmed"


def test_signed_note_and_addendum() -> None:
    record, ids = sample()
    docs = of_type(export(record), "DocumentReference")
    note = next(d for d in docs if "relatesTo" not in d)
    addendum = next(d for d in docs if "relatesTo" in d)
    assert note["docStatus"] == "final"
    assert note["authenticator"] == {"display": "dr.a"}
    text = note["content"][0]["attachment"]
    assert base64.b64decode(text["data"]).decode() == "Otitis media.\nAmoxicillin."
    assert text["contentType"].startswith("text/plain")
    assert addendum["relatesTo"] == [
        {"code": "appends", "target": {"reference": f"urn:uuid:{note['id']}"}}
    ]
    assert addendum["author"] == [{"display": "dr.b"}]
    back = import_new(export(record))
    entry = back.entry("notes", ids["note"])
    assert entry.signed
    assert entry.value("text") == "Otitis media.\nAmoxicillin."
    assert [s.value for n, s in entry.fields.items() if n.startswith("addenda/")] == [
        "Seen again: better."
    ]


def test_export_is_byte_stable_and_ids_are_derived() -> None:
    record, _ids = sample()
    first = export(record)
    again = Record.from_update("rec-1", record.update_since(), replica="laptop-9")
    assert export(again) == first == export(record)
    ids = [r["id"] for r in resources(first)]
    assert len(ids) == len(set(ids))


def test_a_field_conflict_exports_every_candidate() -> None:
    a, b = replicas()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1990-02-01", author="dr.b")
    entry = a.add_entry("medications", {"drug": "warfarin", "dose": "5 mg"}, author="dr.a")
    exchange(a, b)
    a.set(f"medications/{entry}/dose", "7.5 mg", author="dr.a")
    b.set(f"medications/{entry}/dose", "2.5 mg", author="dr.b")
    exchange(a, b)
    data = export(a)
    (patient,) = of_type(data, "Patient")
    assert "birthDate" not in patient  # no value is shown as settled
    marker = field_markers(patient)["birthDate"]
    state = a.get("birthDate")
    assert marker["conflict"] == state.conflict_id
    issues = of_type(data, "DetectedIssue")
    issue = next(i for i in issues if i["identifier"][0]["value"] == state.conflict_id)
    assert issue["identifier"][0]["system"] == CONFLICT_SYSTEM
    assert issue["implicated"] == [{"reference": f"urn:uuid:{patient['id']}"}]
    candidates = [parts(e) for e in issue["extension"] if e["url"] == EXT_CANDIDATE]
    assert sorted(json.loads(c["value"]) for c in candidates) == ["1990-01-02", "1990-02-01"]
    assert sorted(c["author"] for c in candidates) == ["dr.a", "dr.b"]
    assert all(c["replica"] and c["at"] and c["revision"] for c in candidates)
    (medication,) = of_type(data, "MedicationStatement")
    assert "dosage" not in medication
    dose_issue = next(
        i
        for i in issues
        if i["identifier"][0]["value"] == a.get(f"medications/{entry}/dose").conflict_id
    )
    doses = [parts(e)["value"] for e in dose_issue["extension"]]
    assert sorted(json.loads(d) for d in doses) == ["2.5 mg", "7.5 mg"]
    # Import keeps what is settled and writes nothing for a field in conflict.
    plan = plan_import(data)
    assert "birthDate" in plan.charts[0].contested
    back = import_new(data)
    assert not back.get("birthDate").exists
    assert back.value(f"medications/{entry}/drug") == "warfarin"


def test_export_without_the_conflict_list_still_lists_field_conflicts() -> None:
    a, b = replicas()
    a.set("name", "Awa", author="dr.a")
    b.set("name", "Awa Ba", author="dr.b")
    exchange(a, b)
    data = bundle_bytes(bundle_for_record(RecordView(a), []))
    (issue,) = of_type(data, "DetectedIssue")
    assert len(issue["extension"]) == 2


def test_a_block_finding_keeps_values_and_lists_its_outcomes() -> None:
    record = Record.create(replica="laptop-1", record_id="rec-2")
    record.add_entry("allergies", {"substance": "penicillin", "criticality": "high"}, author="a")
    record.add_entry("medications", {"drug": "amoxicillin 500 mg"}, author="a")
    conflicts = DEFAULT_RULEBOOK.conflicts(record)
    finding = next(c for c in conflicts if c.rule == "allergy-vs-prescription")
    data = export(record)
    (allergy,) = of_type(data, "AllergyIntolerance")
    assert allergy["code"] == {"text": "penicillin"}  # the value stays where FHIR reads it
    issue = next(
        i for i in of_type(data, "DetectedIssue") if i["identifier"][0]["value"] == finding.id
    )
    assert issue["severity"] == "high"
    assert issue["code"]["coding"][0]["code"] == "allergy-vs-prescription"
    assert issue["detail"] == finding.message
    listed = [parts(e) for e in issue["extension"]]
    assert len(listed) == len(finding.candidates)
    assert [json.loads(c["value"]) for c in listed] == [c.value for c in finding.candidates]
    assert json.loads(listed[0]["writes"]) == [list(w) for w in finding.candidates[0].writes]


# ---------------------------------------------------------------------- import


def test_round_trip_of_the_sample_and_a_second_import_writes_nothing() -> None:
    record, _ids = sample()
    data = export(record)
    back = import_new(data)
    assert chart_of(RecordView(back)).content() == chart_of(RecordView(record)).content()
    again = apply_chart(back, plan_import(data).charts[0], author=AUTHOR)
    assert not again.changed


def test_update_writes_only_changed_fields_as_the_importer() -> None:
    record, ids = sample()
    data = json.loads(export(record))
    for entry in data["entry"]:
        if entry["resource"]["resourceType"] == "MedicationStatement":
            entry["resource"]["dosage"] = [{"text": "850 mg"}]
    copy = Record.from_update("rec-1", record.update_since(), replica="laptop-2")
    before = len(copy.revisions())
    done = apply_chart(copy, plan_import(json.dumps(data).encode()).charts[0], author=AUTHOR)
    assert done.fields_written == 1
    assert not done.created
    assert len(copy.revisions()) == before + 1
    rev = copy.history(f"medications/{ids['medication']}/dose")[-1]
    assert (rev.value, rev.author) == ("850 mg", AUTHOR)


def test_import_refuses_a_value_for_a_field_in_conflict() -> None:
    a, b = replicas()
    a.set("birthDate", "1990-01-02", author="dr.a")
    b.set("birthDate", "1990-02-01", author="dr.b")
    exchange(a, b)
    chart = Chart(a.record_id, {"birthDate": "1991-01-01"})
    with pytest.raises(FieldConflictError, match="resolve it"):
        apply_chart(a, chart, author=AUTHOR)


def test_import_refuses_to_change_a_signed_note() -> None:
    record, _ids = sample()
    data = json.loads(export(record))
    for entry in data["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "DocumentReference" and "relatesTo" not in resource:
            resource["content"][0]["attachment"]["data"] = base64.b64encode(b"changed").decode()
    copy = Record.from_update("rec-1", record.update_since(), replica="laptop-2")
    with pytest.raises(ImmutableFieldError):
        apply_chart(copy, plan_import(json.dumps(data).encode()).charts[0], author=AUTHOR)


def test_a_foreign_bundle_imports_by_its_codes_and_again_updates_the_same_record() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "https://hub.example/fhir/Patient/p1",
                "resource": {
                    "resourceType": "Patient",
                    "id": "p1",
                    "name": [{"given": ["Khady"], "family": "Ndour"}],
                    "identifier": [{"system": "https://hub.example/nin", "value": "42"}],
                },
            },
            {
                "fullUrl": "https://hub.example/fhir/AllergyIntolerance/a1",
                "resource": {
                    "resourceType": "AllergyIntolerance",
                    "id": "a1",
                    "patient": {"reference": "Patient/p1"},
                    "code": {
                        "coding": [
                            {
                                "system": "http://snomed.info/sct",
                                "code": "91936005",
                                "display": "Allergy to penicillin",
                            }
                        ]
                    },
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                },
            },
            {
                "resource": {
                    "resourceType": "Practitioner",
                    "id": "x",
                },
            },
        ],
    }
    data = json.dumps(bundle).encode()
    plan = plan_import(data)
    assert plan.ignored == {"Practitioner": 1}
    (chart,) = plan.charts
    assert chart == plan_import(data).charts[0]  # the same ids every time
    assert chart.fields["name"] == "Khady Ndour"
    assert chart.fields["identifiers"] == [{"system": "https://hub.example/nin", "value": "42"}]
    (entry,) = chart.entries
    assert entry.fields == {"substance": "Allergy to penicillin", "status": "active"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b'{"resourceType": "Patient", "birthDate": NaN}', "NaN"),
        (b'{"resourceType": "Nope"}', "not a FHIR R4 resource type"),
        (b'{"resourceType": "Patient", "birthDate": "yesterday"}', "birthDate"),
        (b'{"resourceType": "Patient", "hacked": 1}', "hacked"),
        (b"[1, 2]", "JSON object"),
        (
            b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}',
            "no Patient",
        ),
        (
            b'{"resourceType": "Patient", "id": "p"}\n'
            b'{"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/q"}}',
            "no Patient of the file",
        ),
        (b"[" * 100_000, "JSON"),
    ],
)
def test_bad_files_are_refused_with_a_message(text: bytes, message: str) -> None:
    with pytest.raises(InvalidFhirError, match=message):
        plan_import(text)


def test_hostile_field_extensions_are_refused() -> None:
    def patient_with(name: str, value: str) -> bytes:
        return json.dumps(
            {
                "resourceType": "Patient",
                "id": "p",
                "extension": [
                    {
                        "url": EXT_FIELD,
                        "extension": [
                            {"url": "name", "valueString": name},
                            {"url": "value", "valueString": value},
                        ],
                    }
                ],
            }
        ).encode()

    for name, value, message in [
        ("_ack/x", '"yes"', "reserved"),
        ("allergies/x/substance", '"x"', "collection"),
        ("links/other", '"same-person"', "link"),
        ("bad//path", '"x"', "empty segment"),
        ("note", "{not json", "not JSON"),
        ("deep", "[" * 40 + "]" * 40, "nested"),
    ]:
        with pytest.raises(InvalidFhirError, match=message):
            charts_from_resources(read_fhir(patient_with(name, value)))


def test_ndjson_holds_several_records() -> None:
    record, _ids = sample()
    other = Record.create(replica="laptop-1", record_id="rec-other")
    other.set("name", "Moussa", author="dr.a")
    lines = [
        json.dumps(json.loads(export(record))),
        json.dumps(json.loads(export(other))),
    ]
    plan = plan_import("\n".join(lines).encode())
    assert sorted(c.record_id for c in plan.charts) == ["rec-1", "rec-other"]


def test_without_the_extra_a_typed_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_models.cache_clear()
    monkeypatch.setitem(sys.modules, "fhir.resources.R4B", None)
    try:
        with pytest.raises(MissingExtraError, match=r'pip install "caresync\[fhir\]"'):
            plan_import(b'{"resourceType": "Patient"}')
    finally:
        require_models.cache_clear()


# -------------------------------------------------------------- the property

_TEXT = st.text(min_size=0, max_size=12)
_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=6,
)
_NAME = st.from_regex(r"[a-z][a-zA-Z0-9]{0,8}", fullmatch=True)

_CODES = {
    "status": [
        "active",
        "inactive",
        "resolved",
        "entered-in-error",
        "refuted",
        "stopped",
        "completed",
        "finished",
        "in-progress",
        "final",
        "current",
        "unknown",
        "odd one",
    ],
    "verification": ["confirmed", "unconfirmed", "refuted", "entered-in-error", "maybe"],
    "criticality": ["low", "high", "unable-to-assess", "severe"],
    "type": ["allergy", "intolerance", "home visit"],
    "class": ["AMB", "HH", "home visit", " padded "],
    "gender": ["male", "female", "other", "unknown", "f"],
    "birthDate": ["1990", "1990-04", "1990-04-12", "1990-02-31", "12/04/1990"],
    "onset": ["2020", "childhood", ""],
}
_FIELDS = {
    "allergies": [
        "substance",
        "status",
        "verification",
        "criticality",
        "type",
        "reaction",
        "onset",
        "note",
    ],
    "medications": ["drug", "dose", "status", "reason", "note"],
    "problems": ["code", "status", "verification", "onset", "note"],
    "encounters": ["status", "class", "type", "reason"],
    "observations": ["code", "status", "value", "unit", "note"],
    "notes": ["text", "title", "type", "status"],
}


@st.composite
def field_value(draw: st.DrawFn, name: str) -> Any:
    choices = [_JSON, _TEXT]
    if name in _CODES:
        choices.append(st.sampled_from(_CODES[name]))
    if name == "value":
        choices.append(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
    value = draw(st.one_of(*choices))
    if name == "status" and not isinstance(value, str):
        value = "active"  # the default schema: a status is text
    return value


@st.composite
def fields_of(draw: st.DrawFn, known: list[str]) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(known), unique=True, max_size=len(known)))
    extra = draw(st.lists(_NAME, unique=True, max_size=2))
    return {n: draw(field_value(n)) for n in [*names, *(e for e in extra if e not in names)]}


@st.composite
def charts(draw: st.DrawFn) -> Record:
    record = Record.create(replica="laptop-1", record_id=draw(st.sampled_from(["r-1", "a b/c"])))
    top = draw(fields_of(["name", "birthDate", "gender", "phone", "identifiers/nin", "address"]))
    for name, value in top.items():
        if name not in (
            "allergies",
            "medications",
            "problems",
            "encounters",
            "observations",
            "notes",
            "links",
            "stock",
        ):
            record.set(name, value, author=draw(st.sampled_from(["dr.a", "dr.b"])))
    encounters: list[str] = []
    for collection in (
        "encounters",
        "allergies",
        "medications",
        "problems",
        "observations",
        "notes",
    ):
        for _ in range(draw(st.integers(0, 2))):
            fields = draw(fields_of(_FIELDS[collection]))
            fields = {k: v for k, v in fields.items() if k not in ("signature", "addenda")}
            if collection == "observations" and encounters and draw(st.booleans()):
                fields["encounter"] = draw(st.sampled_from(encounters))
            entry_id = record.add_entry(collection, fields, author="dr.a")
            if collection == "encounters":
                encounters.append(entry_id)
            if collection == "notes":
                if draw(st.booleans()):
                    record.sign_note(entry_id, author="dr.b")
                for text in draw(st.lists(_TEXT.filter(str.strip), max_size=2)):
                    record.add_addendum(entry_id, text, author="dr.a")
    return record


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(charts())
def test_import_of_the_export_gives_back_the_same_clinical_content(record: Record) -> None:
    data = export(record)
    assert export(record) == data  # byte-stable
    back = import_new(data)
    assert chart_of(RecordView(back)).content() == chart_of(RecordView(record)).content()
    # Importing the export into the record it came from changes nothing.
    assert not apply_chart(record, plan_import(data).charts[0], author=AUTHOR).changed
