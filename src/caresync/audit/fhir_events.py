"""Audit entries as FHIR R4 AuditEvent resources, one JSON object per line (pure).

Each resource carries everything its entry's hash covers, so a file can be
verified on its own (:func:`read_lines`, then
:func:`~caresync.audit.chain.verify_trail`): the time is ``recorded`` (to the
millisecond), the account is the requesting agent, the replica is the source's
observer, the patient record is the entity; the chain itself (line, number,
previous hash, hash, detail) is in the extension :data:`CHAIN_EXTENSION`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

from caresync.audit.chain import AuditEntry, check_entry
from caresync.exceptions import AuditError

__all__ = ["CHAIN_EXTENSION", "RECORD_SYSTEM", "read_lines", "to_audit_event", "to_lines"]

CHAIN_EXTENSION: Final = "urn:caresync:audit-chain"
ACTION_SYSTEM: Final = "urn:caresync:audit-action"
RECORD_SYSTEM: Final = "urn:caresync:record-id"
_DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"

# (DICOM event type code, its display, FHIR AuditEvent.action)
_TYPES: Final[dict[str, tuple[str, str, str]]] = {
    "read": ("110110", "Patient Record", "R"),
    "list": ("110112", "Query", "E"),
    "write": ("110110", "Patient Record", "U"),
    "resolve": ("110110", "Patient Record", "U"),
    "export": ("110106", "Export", "R"),
    "import": ("110107", "Import", "C"),
    "login": ("110114", "User Authentication", "E"),
    "login-failed": ("110114", "User Authentication", "E"),
    "logout": ("110114", "User Authentication", "E"),
    # A laptop attached to, or detached from, the clinic's network of replicas.
    "enrol": ("110108", "Network Entry", "E"),
    "revoke": ("110108", "Network Entry", "E"),
}
_FAILED: Final = frozenset({"login-failed"})
_INSTANT = re.compile(r"\A(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z\Z")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_LINE_BYTES: Final = 16_384
"""The longest line :func:`read_lines` reads (an entry's resource is far shorter)."""


def _instant(at_ms: int) -> str:
    seconds, millis = divmod(at_ms, 1000)
    moment = _EPOCH + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def _at_ms(text: object) -> int:
    match = _INSTANT.match(text) if isinstance(text, str) else None
    if match is None:
        raise AuditError(
            f"recorded must be an instant like 2026-01-31T12:00:00.000Z, not {text!r:.40}"
        )
    year, month, day, hour, minute, second, millis = (int(g) for g in match.groups())
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError as exc:
        raise AuditError(f"recorded is not a real time: {text!r:.40}") from exc
    return (moment - _EPOCH) // dt.timedelta(seconds=1) * 1000 + millis


def to_audit_event(entry: AuditEntry) -> dict[str, Any]:
    """One entry as an AuditEvent resource (a JSON-ready dict)."""
    code, display, action = _TYPES[entry.action]
    chain: list[dict[str, Any]] = [
        {"url": "line", "valueInteger": entry.line},
        {"url": "seq", "valueInteger": entry.seq},
        {"url": "previousHash", "valueString": entry.prev_hash.hex()},
        {"url": "hash", "valueString": entry.hash.hex()},
    ]
    if entry.detail is not None:
        chain.append({"url": "detail", "valueString": entry.detail})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": entry.hash.hex()[:64],
        "extension": [{"url": CHAIN_EXTENSION, "extension": chain}],
        "type": {"system": _DICOM, "code": code, "display": display},
        "subtype": [{"system": ACTION_SYSTEM, "code": entry.action}],
        "action": action,
        "recorded": _instant(entry.at_ms),
        "outcome": "4" if entry.action in _FAILED else "0",
        "agent": [{"who": {"identifier": {"value": entry.actor}}, "requestor": True}],
        "source": {"observer": {"identifier": {"value": entry.replica_id}}},
    }
    if entry.record_id is not None:
        event["entity"] = [
            {"what": {"identifier": {"system": RECORD_SYSTEM, "value": entry.record_id}}}
        ]
    return event


def to_lines(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """Each entry as one line of JSON (no newline inside), ending in a newline."""
    for entry in entries:
        yield json.dumps(to_audit_event(entry), separators=(",", ":"), sort_keys=True) + "\n"


def from_audit_event(resource: object) -> AuditEntry:
    """The entry an AuditEvent written by :func:`to_audit_event` holds (AuditError if it
    is not one). Its hash is not checked here: :func:`~caresync.audit.chain.verify_trail`
    does, and names the entry."""
    try:
        entry = _entry(resource)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, AuditError):
            raise
        raise AuditError(f"not an AuditEvent of a caresync audit trail ({exc!r:.80})") from exc
    # Exactly what the entry writes, nothing more or other: a reader of the file must not
    # see an outcome, a second agent or patient, that no hash covers.
    if to_audit_event(entry) != resource:
        raise AuditError(
            f"the AuditEvent of entry {entry.seq} of {entry.replica_id} holds more than, or "
            "other than, what its entry wrote (changed after the export)"
        )
    return entry


def _entry(resource: Any) -> AuditEntry:
    if resource.get("resourceType") != "AuditEvent":
        raise AuditError("a line holds no AuditEvent resource")
    chain = {}
    for extension in resource["extension"]:
        if extension["url"] == CHAIN_EXTENSION:
            chain = {part["url"]: part for part in extension["extension"]}
    if not chain:
        raise AuditError(f"an AuditEvent without the {CHAIN_EXTENSION} extension")
    detail = chain.get("detail")
    (subtype,) = [c for c in resource["subtype"] if c.get("system") == ACTION_SYSTEM]
    entities = resource.get("entity") or []
    record_id = entities[0]["what"]["identifier"]["value"] if entities else None
    entry = AuditEntry(
        replica_id=resource["source"]["observer"]["identifier"]["value"],
        seq=chain["seq"]["valueInteger"],
        at_ms=_at_ms(resource["recorded"]),
        actor=resource["agent"][0]["who"]["identifier"]["value"],
        action=subtype["code"],
        record_id=record_id,
        detail=None if detail is None else detail["valueString"],
        prev_hash=_hash(chain["previousHash"]["valueString"]),
        hash=_hash(chain["hash"]["valueString"]),
        line=chain["line"]["valueInteger"],
    )
    if type(entry.line) is not int or not 0 <= entry.line < 2**31:
        raise AuditError(f"an audit line must be an int from 0, not {entry.line!r:.20}")
    check_entry(entry, check_hash=False)  # verify_trail finds a changed entry, by position
    return entry


def _hash(text: object) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{64}", text):
        raise AuditError(f"a chain hash must be 64 lowercase hex digits, not {text!r:.80}")
    return bytes.fromhex(text)


def read_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, AuditEntry]]:
    """Parse an export, line by line: (line number, entry), blank lines skipped;
    AuditError names a line that holds no entry."""
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_BYTES:
            error = AuditError(f"line {number} is longer than {MAX_LINE_BYTES} bytes")
            error.line = number
            raise error
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except (ValueError, RecursionError) as exc:
            error = AuditError(f"line {number} is not JSON: {exc}")
            error.line = number
            raise error from exc
        try:
            yield number, from_audit_event(resource)
        except AuditError as exc:
            error = AuditError(f"line {number}: {exc}")
            error.line = number
            raise error from exc
