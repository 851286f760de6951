"""Naming what a clinician reads: an entry by its content, not by its id.

A conflict's message, a finding's words and a contested field all name the
entry they are about. "medications/ceb2…/dose" means nothing at a bedside;
"dose of warfarin 5 mg" does. Pure: each description is a function of the
record's state, so it reads the same on every replica.
"""

from __future__ import annotations

from typing import Protocol

from caresync.records import DEFAULT_SCHEMA, FieldState, JSONValue, Schema

__all__ = ["Readable", "describe_entry", "describe_path"]

_DESCRIBING_FIELDS = {
    "medications": ("drug", "dose"),
    "allergies": ("substance",),
    "problems": ("name", "code", "text"),
    "encounters": ("type", "class", "date", "start"),
    "observations": ("code", "name", "value"),
    "notes": ("title", "text"),
}
_OTHER_FIELDS = ("name", "title", "text")


class Readable(Protocol):
    """What a description reads: a record or a read-only view of one."""

    def get(self, path: str) -> FieldState: ...


def describe_entry(record: Readable, collection: str, entry_id: str) -> str:
    """An entry named by its content: "warfarin 5 mg", "penicillin allergy".

    A field whose heads disagree shows its candidates joined by " / ". An entry
    with nothing to name it by is named "<collection> entry <id>".
    """
    words: list[str] = []
    for name in _DESCRIBING_FIELDS.get(collection, _OTHER_FIELDS):
        heads = record.get(f"{collection}/{entry_id}/{name}").heads
        values = list(dict.fromkeys(_short(h.value) for h in heads if h.value is not None))
        if values:
            words.append(" / ".join(values))
    if not words:
        return f"{collection} entry {entry_id}"
    text = " ".join(words)
    if collection == "allergies":
        return f"{text} allergy"
    if collection == "medications":
        return text
    return f"{text} ({collection})"


def describe_path(record: Readable, path: str, schema: Schema = DEFAULT_SCHEMA) -> str:
    """A field path as a clinician reads it: ``dose of warfarin 5 mg``, ``birthDate``."""
    key = schema.entry_key(path)
    if key is None:
        return path
    collection, entry_id = key
    name = path[len(collection) + len(entry_id) + 2 :]
    return f"{name} of {describe_entry(record, collection, entry_id)}"


def _short(value: JSONValue, limit: int = 40) -> str:
    text = " ".join((value if isinstance(value, str) else str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
