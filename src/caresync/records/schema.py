"""Schemas: open by default, with optional types, validation and collections on top.

Any field an application writes is a register, so divergence always surfaces
as a conflict rather than being decided silently. A schema adds what the
application knows: which top-level names are collections of entries, what
values a field accepts, and which paths hold a *count* (``stock/...`` by
default): a count's revisions record changes, and its value is their sum, so
concurrent changes add up instead of conflicting (see :data:`DEFAULT_COUNTS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from caresync.exceptions import InvalidPathError, InvalidValueError
from caresync.records.values import JSONValue, check_path, check_value

__all__ = [
    "COUNT_CHANGE",
    "COUNT_TOTAL",
    "DEFAULT_COLLECTIONS",
    "DEFAULT_COUNTS",
    "DEFAULT_SCHEMA",
    "STATUS_FIELD",
    "MAX_COUNT",
    "FieldSpec",
    "Schema",
    "Validator",
    "count_change",
]

Validator = Callable[[JSONValue], "str | None"]
"""Returns None for a good value, or a sentence saying what is wrong with it."""

DEFAULT_COLLECTIONS = frozenset(
    {"allergies", "medications", "problems", "encounters", "observations", "notes"}
)
STATUS_FIELD = "status"

DEFAULT_COUNTS = frozenset({"stock/**"})
"""Count patterns of every schema unless it says otherwise: every path under ``stock/``.

A pattern is a path whose segments may be ``*`` (any one segment) or, as the
last segment, ``**`` (one or more segments); its first segment is a name.
``inventory/*`` makes ``inventory/gloves`` a count, ``supplies/*/quantity`` the
``quantity`` field of every entry of a ``supplies`` collection.
"""

COUNT_CHANGE = "delta"
"""Key of a count revision's value holding the change it made (an int)."""
COUNT_TOTAL = "count"
"""Key of a count revision's value holding the count its writer meant (an int).

The value a writer saw plus its change: shown in history, never summed. The
count's value is the sum of every revision's :data:`COUNT_CHANGE`.
"""
MAX_COUNT = 2**53 - 1
"""The largest magnitude of a count or a change written (what a JavaScript peer reads exactly)."""
_COUNT_KEYS = frozenset({COUNT_CHANGE, COUNT_TOTAL})
_COUNT_FORMAT = (
    f'a count revision\'s value is {{"{COUNT_CHANGE}": <change>, "{COUNT_TOTAL}": <count>}}, '
    "two integers within +/- 2**53 (the change from the value its writer saw, and the "
    "count the writer meant)"
)
_NOTES = "notes"  # records.record.NOTES_COLLECTION: a signed note's fields never count


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


def count_change(value: object) -> int | None:
    """The change a count revision's stored value records, or None if it records none.

    ``{"delta": -1, "count": 9}`` gives -1. A bare integer (written at the path
    before it was a count, or by a writer that does not know counts) is an
    absolute count, not a change: None here, and the record reads it as the
    change from the count its writer had seen.
    """
    if type(value) is dict:
        change = value.get(COUNT_CHANGE)
        if type(change) is int:
            return change
    return None


@dataclass(frozen=True, slots=True)
class Schema:
    """Collections, field specs and counts.

    ``Schema()`` is fully open but for the collections and the ``stock/``
    counts; ``Schema(counts=frozenset())`` has no counts at all.
    """

    collections: frozenset[str] = DEFAULT_COLLECTIONS
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    counts: frozenset[str] = DEFAULT_COUNTS
    # Made from ``counts`` once: a tuple of literal prefixes for a cheap first
    # test (``str.startswith``), then one regular expression.
    count_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _count_pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    counts_in_collections: bool = field(init=False, repr=False, compare=False)
    """True if a count pattern names fields of a collection's entries."""

    def __post_init__(self) -> None:
        counts = self.counts
        if isinstance(counts, (str, bytes)) or not isinstance(counts, Iterable):
            raise InvalidPathError(
                f"Schema.counts is a set of patterns, not {type(counts).__name__}"
            )
        if not isinstance(counts, frozenset):
            counts = frozenset(counts)
            object.__setattr__(self, "counts", counts)
        for pattern in counts:
            _check_count_pattern(pattern, self.collections)
        ordered = sorted(counts)
        prefixes = tuple(dict.fromkeys(_literal_prefix(p) for p in ordered))
        regex = "|".join(_count_regex(p) for p in ordered)
        object.__setattr__(self, "count_prefixes", prefixes)
        object.__setattr__(self, "_count_pattern", re.compile(regex) if regex else None)
        object.__setattr__(
            self,
            "counts_in_collections",
            any(p.partition("/")[0] in self.collections for p in ordered),
        )

    def with_fields(self, *specs: FieldSpec) -> Schema:
        """A copy with these field specs added (a later spec replaces an earlier one)."""
        merged = dict(self.fields)
        merged.update({spec.pattern: spec for spec in specs})
        return Schema(self.collections, merged, self.counts)

    def with_counts(self, *patterns: str) -> Schema:
        """A copy in which paths matching ``patterns`` also hold counts.

        ``*`` stands for any one segment, a last ``**`` for one or more:
        ``with_counts("inventory/*", "supplies/*/quantity")``. A count's value is
        the sum of the changes its writes recorded, so concurrent writes add up
        (see ``Record.adjust``). Every replica and the server must use the
        same schema: a replica that does not know a path is a count reads its
        revisions as plain values.
        """
        return Schema(self.collections, self.fields, self.counts | frozenset(patterns))

    def is_count(self, path: str) -> bool:
        """True if ``path`` holds a count (never caresync's own ``_`` fields)."""
        if not path.startswith(self.count_prefixes):
            return False
        pattern = self._count_pattern
        if pattern is None or pattern.fullmatch(path) is None:
            return False
        if self.counts_in_collections:
            key = self.entry_key(path)
            if key is not None and path[len(key[0]) + len(key[1]) + 2 :].startswith("_"):
                return False  # an entry's bookkeeping (``_created``)
        return True

    def with_collections(self, names: Iterable[str]) -> Schema:
        """A copy that also treats ``names`` as collections of entries."""
        extra = frozenset(names)
        for name in extra:
            check_path(name)
            if "/" in name or name.startswith("_"):
                raise InvalidPathError(f"collection name {name!r} must be one plain segment")
        return Schema(self.collections | extra, self.fields, self.counts)

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
        """Raise a typed error unless ``value`` may be written at ``path``.

        At a count path, ``value`` is what a revision stores (see
        :meth:`check_value`), not the count an application sets.
        """
        self.check_write_path(path)
        self.check_value(path, value)

    def check_write_path(self, path: str) -> None:
        """Raise InvalidPathError unless an application may write at ``path``."""
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

    def check_value(self, path: str, value: object) -> None:
        """Raise InvalidValueError unless ``value`` fits ``path`` (a path already checked).

        At a count path the value is a revision's stored value: the object
        ``{"delta": <change>, "count": <count>}`` of two integers (what
        ``Record.set`` and ``Record.adjust`` write), or a bare integer (an
        absolute count, as a writer that does not know counts writes); a field
        spec of the path checks the count.
        """
        check_value(value, what=path)
        if self.count_prefixes and self.is_count(path):
            value = _stored_count(path, value)
        spec = self.spec_for(path)
        if spec is not None:
            spec.check(path, value)  # type: ignore[arg-type]


def _stored_count(path: str, value: object) -> int:
    """The count a revision's stored value means; InvalidValueError if it is not one."""
    if type(value) is int:  # checked within +/- 2**53 already; not a bool
        return value
    if (
        type(value) is dict
        and value.keys() == _COUNT_KEYS
        and type(value[COUNT_CHANGE]) is int
        and type(value[COUNT_TOTAL]) is int
    ):
        count: int = value[COUNT_TOTAL]
        return count
    raise InvalidValueError(f"{path} is a count: {_COUNT_FORMAT}, not {value!r:.200}")


def _check_count_pattern(pattern: object, collections: frozenset[str]) -> None:
    if not isinstance(pattern, str):
        raise InvalidPathError(f"a count pattern must be a string, not {type(pattern).__name__}")
    check_path(pattern)
    segments = pattern.split("/")
    first = segments[0]
    if first in ("*", "**") or first.startswith("_"):
        raise InvalidPathError(
            f"count pattern {pattern!r} must start with a name (not a wildcard or '_')"
        )
    if first == _NOTES:
        raise InvalidPathError(
            f"count pattern {pattern!r}: a note's fields cannot be counts (a signed note "
            "is immutable)"
        )
    if "**" in segments[:-1] or any("*" in s and s not in ("*", "**") for s in segments):
        raise InvalidPathError(
            f"count pattern {pattern!r}: '*' stands for one whole segment, and '**' only "
            "as the last segment"
        )
    if first in collections and len(segments) < 3 and segments[-1] != "**":
        raise InvalidPathError(
            f"count pattern {pattern!r}: {first!r} is a collection, so a count is a field "
            f"of its entries, as {first}/*/<field>"
        )


def _literal_prefix(pattern: str) -> str:
    """What every path a pattern matches starts with: ``stock/`` for ``stock/**``, ``visits``
    for ``visits``."""
    first, sep, _rest = pattern.partition("/")
    return first + sep


def _count_regex(pattern: str) -> str:
    parts = []
    for segment in pattern.split("/"):
        if segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append(".+")
        else:
            parts.append(re.escape(segment))
    return "(?:" + "/".join(parts) + ")"


DEFAULT_SCHEMA = Schema().with_fields(
    *(FieldSpec(f"{name}/*/{STATUS_FIELD}", types=(str,)) for name in sorted(DEFAULT_COLLECTIONS))
)
