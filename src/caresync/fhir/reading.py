"""Reading a FHIR file: one Bundle (JSON), or NDJSON (one resource or Bundle a line).

Untrusted input: sizes are bounded, the text must be UTF-8 JSON, and every
resource is validated by the FHIR model library before anything maps it.
Whatever is wrong raises InvalidFhirError saying where (``line 3``, ``entry
2``) and what; nothing is read past the first problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from caresync.exceptions import InvalidFhirError
from caresync.fhir.validation import validate_resource

__all__ = ["MAX_FILE_BYTES", "MAX_RESOURCES", "FoundResource", "read_fhir"]

MAX_FILE_BYTES = 64 * 1024 * 1024
"""The largest file import reads."""
MAX_RESOURCES = 100_000
"""The most resources one file may hold."""


@dataclass(frozen=True, slots=True)
class FoundResource:
    """A validated resource, where it was found, and its Bundle entry's ``fullUrl``."""

    resource: dict[str, Any]
    where: str
    full_url: str | None = None


def read_fhir(data: bytes) -> list[FoundResource]:
    """Every resource of a Bundle or of NDJSON ``data``, validated, Bundles unpacked.

    A file whose text parses as one JSON object is a Bundle (or a single
    resource); otherwise each non-blank line is one JSON object: a resource,
    or a Bundle whose entries are taken.
    """
    if len(data) > MAX_FILE_BYTES:
        raise InvalidFhirError(
            f"the file is {len(data)} bytes; FHIR import reads at most {MAX_FILE_BYTES}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFhirError(f"the file is not UTF-8 text (byte {exc.start})") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise InvalidFhirError("the file is empty: expected a FHIR Bundle or NDJSON resources")
    whole: object = None
    try:
        whole = _parse(text)
    except InvalidFhirError:
        # NDJSON when its first line is one JSON object; else the file's own error.
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2 or not _is_object(lines[0]):
            raise
    found: list[FoundResource] = []
    if isinstance(whole, dict):
        found.extend(_unpack(whole, "the file"))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            parsed = _parse(line, where)
            if not isinstance(parsed, dict):
                raise InvalidFhirError(f"{where}: expected one JSON object (a FHIR resource)")
            found.extend(_unpack(parsed, where))
            if len(found) > MAX_RESOURCES:
                break
    if len(found) > MAX_RESOURCES:
        raise InvalidFhirError(f"the file holds more than {MAX_RESOURCES} resources")
    if not found:
        raise InvalidFhirError("the file holds no FHIR resource")
    return found


def _parse(text: str, where: str = "the file") -> object:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except InvalidFhirError:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidFhirError(
            f"{where} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidFhirError(f"{where} is not JSON a reader can take ({exc})") from None


def _is_object(line: str) -> bool:
    try:
        return isinstance(_parse(line), dict)
    except InvalidFhirError:
        return False


def _no_constant(name: str) -> object:
    raise InvalidFhirError(f"{name} is not a JSON number (FHIR has no {name})")


def _unpack(resource: dict[str, Any], where: str) -> Iterator[FoundResource]:
    """The resource, validated; a Bundle gives its entries' resources instead."""
    validate_resource(resource, where)
    if resource.get("resourceType") != "Bundle":
        yield FoundResource(resource, where)
        return
    entries = resource.get("entry") or []
    for index, entry in enumerate(entries):
        at = f"{where}, entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            raise InvalidFhirError(f"{at}: a Bundle entry without a resource")
        inner = entry["resource"]
        if inner.get("resourceType") == "Bundle":
            raise InvalidFhirError(f"{at}: a Bundle inside a Bundle is not imported")
        full_url = entry.get("fullUrl")
        yield FoundResource(inner, at, full_url if isinstance(full_url, str) else None)
