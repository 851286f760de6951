"""Schemas: open by default, with optional types, validation and collections on top.

Any field an application writes is a register, so divergence always surfaces
as a conflict rather than being decided silently. A schema adds what the
application knows: which top-level names are collections of entries, and what
values a field accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from caresync.exceptions import InvalidPathError, InvalidValueError
from caresync.records.values import JSONValue, check_path, check_value

__all__ = [
    "DEFAULT_COLLECTIONS",
    "DEFAULT_SCHEMA",
    "STATUS_FIELD",
    "FieldSpec",
    "Schema",
    "Validator",
]

Validator = Callable[[JSONValue], "str | None"]
"""Returns None for a good value, or a sentence saying what is wrong with it."""

DEFAULT_COLLECTIONS = frozenset(
    {"allergies", "medications", "problems", "encounters", "observations", "notes"}
)
STATUS_FIELD = "status"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What one field accepts. ``pattern`` uses ``*`` for an entry id segment."""

    pattern: str
    types: tuple[type, ...] | None = None
    choices: frozenset[str] | None = None
    validate: Validator | None = None
    required_in_entry: bool = False

    def check(self, path: str, value: JSONValue) -> None:
        if value is None:
            return  # clearing a field is always allowed; the history keeps the old value
        if self.types is not None and not isinstance(value, self.types):
            names = ", ".join(t.__name__ for t in self.types)
            raise InvalidValueError(
                f"{path}: expected {names}, got {type(value).__name__} {value!r}"
            )
        if self.choices is not None and value not in self.choices:
            raise InvalidValueError(
                f"{path}: {value!r} is not one of {', '.join(sorted(self.choices))}"
            )
        if self.validate is not None:
            problem = self.validate(value)
            if problem:
                raise InvalidValueError(f"{path}: {problem}")


@dataclass(frozen=True, slots=True)
class Schema:
    """Collections and field specs. ``Schema()`` is fully open but for the collections."""

    collections: frozenset[str] = DEFAULT_COLLECTIONS
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)

    def with_fields(self, *specs: FieldSpec) -> Schema:
        """A copy with these field specs added (a later spec replaces an earlier one)."""
        merged = dict(self.fields)
        merged.update({spec.pattern: spec for spec in specs})
        return Schema(self.collections, merged)

    def with_collections(self, names: Iterable[str]) -> Schema:
        """A copy that also treats ``names`` as collections of entries."""
        extra = frozenset(names)
        for name in extra:
            check_path(name)
            if "/" in name or name.startswith("_"):
                raise InvalidPathError(f"collection name {name!r} must be one plain segment")
        return Schema(self.collections | extra, self.fields)

    def entry_key(self, path: str) -> tuple[str, str] | None:
        """(collection, entry id) if ``path`` is a field of a collection entry."""
        first, sep, rest = path.partition("/")
        if not sep or first not in self.collections:
            return None
        entry_id, sep, _ = rest.partition("/")
        return (first, entry_id) if sep else None

    def spec_for(self, path: str) -> FieldSpec | None:
        spec = self.fields.get(path)
        if spec is not None:
            return spec
        key = self.entry_key(path)
        if key is None:
            return None
        collection, entry_id = key
        pattern = f"{collection}/*" + path[len(collection) + 1 + len(entry_id) :]
        return self.fields.get(pattern)

    def check_write(self, path: str, value: object) -> None:
        """Raise a typed error unless ``value`` may be written at ``path``."""
        check_path(path)
        if path.startswith("_"):
            raise InvalidPathError(f"field path {path!r}: a leading '_' is reserved for caresync")
        first, sep, rest = path.partition("/")
        if first in self.collections and (not sep or "/" not in rest):
            raise InvalidPathError(
                f"{first!r} is a collection: write a field of one of its entries, "
                f"as {first}/<entry-id>/<field>"
            )
        if first in self.collections and rest.partition("/")[2].startswith("_"):
            raise InvalidPathError(
                f"field path {path!r}: an entry field starting with '_' is reserved for caresync"
            )
        self.check_value(path, value)

    def check_value(self, path: str, value: object) -> None:
        """Raise InvalidValueError unless ``value`` fits ``path`` (a path already checked)."""
        check_value(value, what=path)
        spec = self.spec_for(path)
        if spec is not None:
            spec.check(path, value)  # type: ignore[arg-type]


DEFAULT_SCHEMA = Schema().with_fields(
    *(FieldSpec(f"{name}/*/{STATUS_FIELD}", types=(str,)) for name in sorted(DEFAULT_COLLECTIONS))
)
