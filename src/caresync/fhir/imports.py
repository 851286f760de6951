"""Mapping in: FHIR resources to charts, and charts into records (pure, no I/O).

:func:`charts_from_resources` reads validated resources (see
:mod:`caresync.fhir.reading`) into one :class:`~caresync.fhir.chart.Chart` per
Patient; :func:`apply_chart` writes a chart into a record as revisions by the
importing person. Nothing here touches a database: the shell
(:mod:`caresync.fhir.shell`) commits every record of a file in one transaction.

Which record a Patient is: the value of its caresync record-id identifier, else
a UUID derived from its ``id`` (or its entry's ``fullUrl``), so importing the
same file twice updates the same record. Which entry a resource is: its
caresync entry-id identifier, else an id derived the same way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from caresync.exceptions import (
    FieldConflictError,
    InvalidFhirError,
    InvalidInputError,
)
from caresync.fhir.chart import Addendum, Chart, ChartEntry
from caresync.fhir.reading import FoundResource
from caresync.fhir.slots import MISSING, SLOTS, Context, Resource, decode_text
from caresync.fhir.vocabulary import (
    ENTRY_SYSTEM,
    EXT_FIELD,
    NAMESPACE,
    ORGANISATION_SYSTEM,
    RECORD_SYSTEM,
    RESOURCE_OF_COLLECTION,
)
from caresync.hub.model import HUB_PATH
from caresync.records import (
    ADDENDA_FIELD,
    DEFAULT_COLLECTIONS,
    LINKS_FIELD,
    NOTES_COLLECTION,
    SIGNATURE_FIELD,
    JSONValue,
    Record,
    canonical_json,
)
from caresync.records.values import check_path, check_value

__all__ = ["AppliedChart", "ImportPlan", "apply_chart", "charts_from_resources"]

_COLLECTION_OF_RESOURCE = {kind: name for name, kind in RESOURCE_OF_COLLECTION.items()}
_MAX_ID = 128  # a record id the sync protocol carries
_MAX_ENTRY_ID = 256


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What a file holds for caresync: a chart per Patient, and what it does not import."""

    charts: tuple[Chart, ...]
    ignored: Mapping[str, int] = field(default_factory=dict)
    """Resource type -> how many of the file's resources of that type were not imported
    (Provenance and DetectedIssue are the export's own; see docs/fhir.md)."""
    derived: frozenset[str] = frozenset()
    """Records whose id was derived from the Patient's id (the file names no caresync
    record id): such a record is only updated if it is plainly the same person."""
    unassigned: frozenset[str] = frozenset()
    """Record ids the file names without the organisation they belong to (an export from
    before organisations were written, another tool): imported only over a record this
    replica holds, since another organisation's would be refused at every push."""
    earlier: Mapping[str, str] = field(default_factory=dict)
    """Each record id derived from a Patient's id within the importing organisation, and
    the id the Patient's id alone derives: what this caresync derived before, and
    derives on a laptop not yet enrolled. A record held under the earlier id is
    updated there (see :func:`charts_from_resources`'s ``earlier``)."""
    found: tuple[FoundResource, ...] = ()
    """The resources the plan was made of (to plan again, keeping earlier ids)."""
    organisation: str | None = None
    """The organisation the plan was made for: an import by a replica of another (a
    plan made with none, say) plans ``found`` again for its own."""


@dataclass(slots=True)
class AppliedChart:
    """What writing one chart into a record did."""

    record_id: str
    created: bool
    fields_written: int = 0
    entries_added: int = 0
    notes_signed: int = 0
    addenda_added: int = 0
    contested_skipped: list[str] = field(default_factory=list)
    """Paths the file marks as in conflict: not written (their candidates are in the
    file's DetectedIssues)."""

    @property
    def changed(self) -> bool:
        """True if anything was written."""
        return bool(
            self.created
            or self.fields_written
            or self.entries_added
            or self.notes_signed
            or self.addenda_added
        )


# ----------------------------------------------------------------- reading in


def _derived_id(*parts: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, "\x1f".join(("import", *parts)))


def _identifier(resource: Resource, system: str) -> str | None:
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):  # Bundle.identifier is one, not a list
        identifiers = [identifiers]
    if not isinstance(identifiers, list):
        return None
    for item in identifiers:
        if isinstance(item, dict) and item.get("system") == system:
            value = item.get("value")
            return value if isinstance(value, str) else None
    return None


def _name(found: FoundResource) -> str:
    """How a message names a resource: ``entry 2 (Patient/abc)``."""
    kind = found.resource.get("resourceType")
    rid = found.resource.get("id")
    return f"{found.where} ({kind}/{rid})" if isinstance(rid, str) else f"{found.where} ({kind})"


def _keys(found: FoundResource) -> list[str]:
    """Every reference string that names this resource."""
    keys = []
    kind = found.resource.get("resourceType")
    rid = found.resource.get("id")
    if isinstance(rid, str):
        keys.append(f"{kind}/{rid}")
        keys.append(f"urn:uuid:{rid}")
    if found.full_url:
        keys.append(found.full_url)
        tail = "/".join(found.full_url.rstrip("/").split("/")[-2:])
        if tail.startswith(f"{kind}/"):
            keys.append(tail)
    return keys


def _local_name(found: FoundResource) -> str:
    """The resource's own id, else its fullUrl; InvalidFhirError if it has neither."""
    rid = found.resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if found.full_url:
        return found.full_url
    raise InvalidFhirError(
        f"{_name(found)} has no id and no fullUrl: caresync cannot tell which entry it is "
        "when the file is imported again"
    )


def _record_id(
    found: FoundResource, organisation: str | None, earlier: Collection[str] = ()
) -> tuple[str, bool]:
    """The record a Patient is, and whether its id is derived (not the file's own)."""
    own = _identifier(found.resource, RECORD_SYSTEM)
    if own is not None:
        if not 0 < len(own) <= _MAX_ID or not own.isprintable() or own != own.strip():
            raise InvalidFhirError(
                f"{_name(found)}: its caresync record id {own[:80]!r} is not 1 to {_MAX_ID} "
                "printable characters"
            )
        assigner = _assigner(found.resource)
        if organisation is not None and assigner is not None and assigner != organisation:
            # Another organisation's record: written here under its id, it would be
            # refused at every push (and hold the outbox back). A record of our own,
            # whose id also names us: two organisations importing it get two records.
            return str(_derived_id("record", organisation, assigner, own)), True
        return own, False
    return _patient_record_id(_local_name(found), organisation, earlier), True


def _earlier_id(local_name: str) -> str:
    """The record id the Patient's own id alone derives (no organisation in it)."""
    return str(_derived_id("Patient", local_name))


def _patient_record_id(local_name: str, organisation: str | None, earlier: Collection[str]) -> str:
    """The record id of a Patient that names no caresync record id, from its own id.

    Derived within the importing organisation: two organisations receiving files from
    one hospital (its ``Patient/p-42``) get records of their own, not one id that the
    first to sync owns and the server refuses to the other at every push (telling it,
    too, that the other holds that patient). A laptop not yet enrolled, and a record
    imported before (``earlier`` holds its id), keep the id the Patient's id alone
    derives."""
    legacy = _earlier_id(local_name)
    if organisation is None or legacy in earlier:
        return legacy
    return str(_derived_id("Patient", organisation, local_name))


def _assigner(resource: Resource) -> str | None:
    """The organisation that assigned the Patient's caresync record id, if the file says:
    read from the same identifier the id is read from (the first of that system)."""
    identifiers = resource.get("identifier")
    for item in identifiers if isinstance(identifiers, list) else ():
        if isinstance(item, dict) and item.get("system") == RECORD_SYSTEM:
            assigner = item.get("assigner")
            identifier = assigner.get("identifier") if isinstance(assigner, dict) else None
            if isinstance(identifier, dict) and identifier.get("system") == ORGANISATION_SYSTEM:
                value = identifier.get("value")
                return value if isinstance(value, str) and value else None
            return None
    return None


def _entry_id(found: FoundResource, record_id: str) -> str:
    own = _identifier(found.resource, ENTRY_SYSTEM)
    if own is not None:
        # An addendum's is "<note-id>/addenda/<addendum-id>".
        parts = own.split(f"/{ADDENDA_FIELD}/") if _appends_to(found.resource) else [own]
        if len(parts) > 2 or any(
            not 0 < len(part) <= _MAX_ENTRY_ID
            or "/" in part
            or not part.isprintable()
            or part != part.strip()
            for part in parts
        ):
            raise InvalidFhirError(
                f"{_name(found)}: its caresync entry id {own[:80]!r} is not 1 to "
                f"{_MAX_ENTRY_ID} printable characters without '/'"
            )
        return own
    kind = str(found.resource.get("resourceType"))
    return _derived_id(record_id, kind, _local_name(found)).hex


def _subject(resource: Resource) -> str | None:
    for key in ("patient", "subject"):
        held = resource.get(key)
        if isinstance(held, dict) and isinstance(held.get("reference"), str):
            return str(held["reference"])
    return None


def _appends_to(resource: Resource) -> str | None:
    """For an addendum: the reference of the note it appends to."""
    relations = resource.get("relatesTo")
    if not isinstance(relations, list):
        return None
    for relation in relations:
        if isinstance(relation, dict) and relation.get("code") == "appends":
            target = relation.get("target")
            if isinstance(target, dict) and isinstance(target.get("reference"), str):
                return str(target["reference"])
    return None


def _field_name(name: object, where: str, *, top_level: bool) -> str:
    if not isinstance(name, str):
        raise InvalidFhirError(f"{where}: a field extension without a name")
    try:
        check_path(name)
    except InvalidInputError as exc:
        raise InvalidFhirError(f"{where}: field {name[:80]!r}: {exc}") from None
    head = name.partition("/")[0]
    if name.startswith("_") or "/_" in name:
        raise InvalidFhirError(f"{where}: field {name[:80]!r} is reserved for caresync")
    if top_level and name == HUB_PATH:
        raise InvalidFhirError(
            f"{where}: field {name!r} is caresync's health-hub setting, not clinical content "
            "(set it with caresync hub enable)"
        )
    if top_level and (head in DEFAULT_COLLECTIONS or head == LINKS_FIELD):
        raise InvalidFhirError(
            f"{where}: field {name[:80]!r} belongs to a collection or a link decision, "
            "not to the Patient"
        )
    if not top_level and (head in (SIGNATURE_FIELD, ADDENDA_FIELD)):
        raise InvalidFhirError(
            f"{where}: field {name[:80]!r} is a note's signature or addenda, "
            "which travel as DocumentReferences"
        )
    return name


def _fields(
    found: FoundResource, ctx: Context, *, top_level: bool
) -> tuple[dict[str, JSONValue], dict[str, str]]:
    """A resource's fields (its elements, then its field extensions) and contested ones."""
    resource = found.resource
    where = _name(found)
    fields: dict[str, JSONValue] = {}
    for slot in SLOTS.get(str(resource.get("resourceType")), ()):
        value = slot.take(resource, ctx)
        if value is not MISSING:
            fields[slot.name] = value  # type: ignore[assignment]
    contested: dict[str, str] = {}
    extensions = resource.get("extension")
    for extension in extensions if isinstance(extensions, list) else ():
        if not isinstance(extension, dict) or extension.get("url") != EXT_FIELD:
            continue
        parts: dict[str, Any] = {}
        for part in extension.get("extension") or ():
            if isinstance(part, dict) and isinstance(part.get("url"), str):
                parts[part["url"]] = part
        name = _field_name(parts.get("name", {}).get("valueString"), where, top_level=top_level)
        if "conflict" in parts:
            fields.pop(name, None)
            contested[name] = str(parts["conflict"].get("valueString", ""))
        elif "absent" in parts:
            fields.pop(name, None)
        elif "value" in parts and isinstance(parts["value"].get("valueString"), str):
            fields[name] = _json_value(parts["value"]["valueString"], f"{where}, field {name}")
        else:
            raise InvalidFhirError(f"{where}: field extension {name!r} holds no value")
    for name, value in fields.items():
        try:
            check_value(value, what=f"{where}, field {name}")
        except InvalidInputError as exc:
            raise InvalidFhirError(str(exc)) from None
    return fields, contested


def _json_value(text: str, where: str) -> JSONValue:
    try:
        value: JSONValue = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise InvalidFhirError(f"{where}: the value is not JSON") from None
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(name)


def charts_from_resources(
    found: Sequence[FoundResource],
    *,
    organisation: str | None = None,
    earlier: Collection[str] = frozenset(),
) -> ImportPlan:
    """One chart per Patient of validated ``found`` resources (InvalidFhirError if they do
    not make charts: a resource of no Patient, two Patients for one record, ...).

    ``organisation``: the importing replica's; a Patient whose caresync record id another
    organisation assigned becomes a record of its own (an id derived from that one), and
    so does a Patient of another system (an id derived from its own and the organisation).
    ``earlier``: record ids the Patient's id alone derives that the replica holds (a
    record imported before organisations were in the id, or before enrolment): kept."""
    derived_ids: set[str] = set()
    earlier_ids: dict[str, str] = {}
    unassigned: set[str] = set()
    patients: dict[str, str] = {}  # reference -> record id
    patient_found: dict[str, FoundResource] = {}
    ignored: dict[str, int] = {}
    for item in found:
        if item.resource.get("resourceType") != "Patient":
            continue
        record_id, derived_id = _record_id(item, organisation, earlier)
        if derived_id:
            derived_ids.add(record_id)
            if _identifier(item.resource, RECORD_SYSTEM) is None:
                legacy = _earlier_id(_local_name(item))
                if legacy != record_id:
                    earlier_ids[record_id] = legacy
        elif _assigner(item.resource) is None:
            unassigned.add(record_id)
        if record_id in patient_found:
            raise InvalidFhirError(
                f"{_name(item)} and {_name(patient_found[record_id])} are both record "
                f"{record_id}: one Patient per record"
            )
        patient_found[record_id] = item
        for key in _keys(item):
            patients[key] = record_id
    if not patient_found:
        raise InvalidFhirError("the file holds no Patient: caresync imports a record per Patient")
    only = next(iter(patient_found)) if len(patient_found) == 1 else None
    # Which record and entry each clinical resource is, before reading any field.
    placed: list[tuple[FoundResource, str, str, str]] = []  # item, record, collection, entry
    ref_entries: dict[str, tuple[str, str]] = {}
    owner_of_ref: dict[str, str] = {}
    for item in found:
        kind = str(item.resource.get("resourceType"))
        collection = _COLLECTION_OF_RESOURCE.get(kind)
        if collection is None:
            if kind != "Patient":
                ignored[kind] = ignored.get(kind, 0) + 1
            continue
        subject = _subject(item.resource)
        if subject is not None:
            named = patients.get(subject)
            if named is None:
                raise InvalidFhirError(
                    f"{_name(item)} is about {subject[:120]!r}, which is no Patient of the file"
                )
            record_id = named
        elif only is not None:
            record_id = only
        else:
            raise InvalidFhirError(
                f"{_name(item)} names no patient, and the file holds "
                f"{len(patient_found)} Patients: say which one it is about"
            )
        entry_id = _entry_id(item, record_id)
        placed.append((item, record_id, collection, entry_id))
        for key in _keys(item):
            ref_entries[key] = (collection, entry_id)
            owner_of_ref[key] = record_id
    ctx = Context(ref_entries=ref_entries)
    charts: dict[str, Chart] = {}
    for record_id, item in patient_found.items():
        fields, contested = _fields(item, ctx, top_level=True)
        # The identifiers' fields, unless a field extension says otherwise (it wins).
        identified = {
            name: value
            for name, value in _patient_identifiers(item.resource).items()
            if name not in contested
        }
        charts[record_id] = Chart(record_id, {**identified, **fields}, contested, ())
    entries: dict[tuple[str, str, str], ChartEntry] = {}
    addenda: list[tuple[FoundResource, str, str, str]] = []
    for item, record_id, collection, entry_id in placed:
        if collection == NOTES_COLLECTION and _appends_to(item.resource) is not None:
            addenda.append((item, record_id, collection, entry_id))
            continue
        entry_key = (record_id, collection, entry_id)
        if entry_key in entries:
            raise InvalidFhirError(f"{_name(item)}: {collection}/{entry_id} appears twice")
        fields, contested = _fields(item, ctx, top_level=False)
        signed = collection == NOTES_COLLECTION and item.resource.get("docStatus") in (
            "final",
            "amended",
        )
        entries[entry_key] = ChartEntry(collection, entry_id, fields, contested, signed)
    for item, record_id, _collection, entry_id in addenda:
        target = _appends_to(item.resource) or ""
        note = ref_entries.get(target)
        if note is None or note[0] != NOTES_COLLECTION or owner_of_ref.get(target) != record_id:
            raise InvalidFhirError(
                f"{_name(item)} appends to {target[:120]!r}, which is no note of the same "
                "patient in the file"
            )
        text = _addendum_text(item)
        own = _identifier(item.resource, ENTRY_SYSTEM) or ""
        addendum_id = own.rpartition("/")[2] if "/addenda/" in own else entry_id
        note_key = (record_id, NOTES_COLLECTION, note[1])
        parent = entries.get(note_key)
        if parent is None:  # it appends to an addendum (or to itself), not to a note
            raise InvalidFhirError(
                f"{_name(item)} appends to {target[:120]!r}, which is an addendum, not a note"
            )
        entries[note_key] = ChartEntry(
            parent.collection,
            parent.entry_id,
            parent.fields,
            parent.contested,
            parent.signed,
            parent.signed_by,
            (*parent.addenda, Addendum(addendum_id, text)),
        )
    by_record: dict[str, list[ChartEntry]] = {}
    for (record_id, _c, _e), entry in entries.items():
        by_record.setdefault(record_id, []).append(entry)
    result = []
    for record_id, chart in sorted(charts.items()):
        chart_entries = sorted(
            by_record.get(record_id, ()), key=lambda e: (e.collection, e.entry_id)
        )
        result.append(Chart(record_id, chart.fields, chart.contested, tuple(chart_entries)))
    return ImportPlan(
        tuple(result),
        dict(sorted(ignored.items())),
        frozenset(derived_ids),
        frozenset(unassigned),
        earlier_ids,
        tuple(found),
        organisation,
    )


def _patient_identifiers(patient: Resource) -> dict[str, JSONValue]:
    """``identifiers/<system>`` fields from the Patient's identifiers (not caresync's own)."""
    fields: dict[str, JSONValue] = {}
    others: list[JSONValue] = []
    identifiers = patient.get("identifier")
    for item in identifiers if isinstance(identifiers, list) else ():
        if not isinstance(item, dict) or item.get("system") == RECORD_SYSTEM:
            continue
        system, value = item.get("system"), item.get("value")
        if not isinstance(value, str):
            continue
        if isinstance(system, str) and system and "/" not in system and " " not in system:
            fields.setdefault(f"identifiers/{system}", value)
        else:
            others.append({"system": system, "value": value} if system else {"value": value})
    if others:
        fields["identifiers"] = others
    return fields


def _addendum_text(item: FoundResource) -> str:
    contents = item.resource.get("content")
    for content in contents if isinstance(contents, list) else ():
        attachment = content.get("attachment") if isinstance(content, dict) else None
        if isinstance(attachment, dict) and isinstance(attachment.get("data"), str):
            text = decode_text(attachment["data"], f"{_name(item)}: its attachment")
            if text.strip():
                return text
    raise InvalidFhirError(f"{_name(item)} is an addendum without text")


# ------------------------------------------------------------------- writing


def apply_chart(
    record: Record,
    chart: Chart,
    *,
    author: str,
    contested: Mapping[str, str] | None = None,
    created: bool = False,
) -> AppliedChart:
    """Write what ``chart`` holds and ``record`` does not, as revisions by ``author``.

    A field with the same value is not written again; a field the chart does not
    hold is left as it is (import never clears); an entry the record lacks is
    added with its id; a note signed in the chart is signed (by ``author``); an
    addendum whose text the note lacks is added. ``contested`` names the
    record's paths without one settled value (``Rulebook.contested``): writing
    one would decide a conflict, so it raises FieldConflictError instead, as
    does a field in conflict. Fields the chart marks contested are skipped and
    listed. Raises before writing when it can; the caller discards the record
    if anything raises (see :mod:`caresync.fhir.shell`).
    """
    held = dict(contested or {})
    done = AppliedChart(record.record_id, created)
    done.contested_skipped.extend(sorted(chart.contested))
    for name, value in sorted(chart.fields.items()):
        if _write(record, name, value, author, held):
            done.fields_written += 1
    for entry in chart.entries:
        prefix = f"{entry.collection}/{entry.entry_id}/"
        done.contested_skipped.extend(prefix + name for name in sorted(entry.contested))
        if entry.entry_id not in record.entry_ids(entry.collection):
            record.add_entry(
                entry.collection, dict(entry.fields), author=author, entry_id=entry.entry_id
            )
            done.entries_added += 1
        else:
            signed = (
                entry.collection == NOTES_COLLECTION
                and record.entry(entry.collection, entry.entry_id).signed
            )
            for name, value in sorted(entry.fields.items()):
                if signed and _same(record, prefix + name, value):
                    continue
                if _write(record, prefix + name, value, author, held):
                    done.fields_written += 1
        if entry.collection != NOTES_COLLECTION:
            continue
        current = record.entry(NOTES_COLLECTION, entry.entry_id)
        if entry.signed and not current.signed:
            record.sign_note(entry.entry_id, author=author)
            done.notes_signed += 1
        have = [
            state.heads[-1].value
            for name, state in current.fields.items()
            if name.startswith(ADDENDA_FIELD + "/") and state.heads
        ]
        for addendum in entry.addenda:
            if addendum.text in have:
                have.remove(addendum.text)
                continue
            record.add_addendum(entry.entry_id, addendum.text, author=author)
            done.addenda_added += 1
    return done


def _same(record: Record, path: str, value: JSONValue) -> bool:
    state = record.get(path)
    return (
        state.exists
        and not state.in_conflict
        and canonical_json(state.value) == canonical_json(value)
    )


def _write(
    record: Record, path: str, value: JSONValue, author: str, held: Mapping[str, str]
) -> bool:
    """Write ``value`` at ``path`` unless it holds it already; False if nothing was written."""
    state = record.get(path)
    if state.in_conflict or path in held:
        conflict_id = state.conflict_id or held.get(path, "")
        if state.in_conflict or not _same(record, path, value):
            raise FieldConflictError(
                f"record {record.record_id}: {path} is in conflict (conflict {conflict_id}); "
                "resolve it before importing a value for it: nothing was imported",
                path=path,
                conflict_id=conflict_id,
            )
        return False
    if _same(record, path, value):
        return False
    record.set(path, value, author=author)
    return True


IDENTITY_FIELDS = ("name", "birthDate")
"""What must agree before a file's Patient updates a record found by a derived id."""


def check_same_person(chart: Chart, record: Record) -> None:
    """Refuse (InvalidFhirError) to update ``record`` from a chart that is plainly another
    person: a name or birth date both hold, and that differ. Two sources' ``Patient/1``
    derive the same record id; writing one into the other would merge two patients."""
    for name in IDENTITY_FIELDS:
        if name not in chart.fields:
            continue
        state = record.get(name)
        if not state.exists or state.in_conflict:
            continue
        if canonical_json(state.value) != canonical_json(chart.fields[name]):
            raise InvalidFhirError(
                f"the file's Patient for record {chart.record_id} has another {name} than "
                "that record: it looks like another person (two sources may use the same "
                "Patient id); nothing was imported. To update that record, import a file that "
                "names its caresync record id (an export of it)"
            )
