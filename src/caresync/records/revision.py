"""One write of one field, immutable once made, and its wire form inside the document.

A revision is stored in the record's ``revisions`` map under its own id, as a
compact JSON string. JSON rather than nested Yjs types: it keeps integers and
floats apart (Yjs' ``Any`` turns nested ints into floats), is one cheap map
write, and is readable by any Yjs peer with ``JSON.parse``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from caresync.records.clock import Timestamp
from caresync.records.values import JSONValue, canonical_json

__all__ = ["NO_SEEN", "Revision", "decode_revision", "encode_revision"]

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_quote: Callable[[str], str] = json.encoder.encode_basestring
# ``json.loads`` without its wrappers: the scanner ``JSONDecoder.raw_decode`` calls
# (in C), minus the whitespace skip; a value with surrounding whitespace goes to
# ``json.loads`` below, as anything not exactly one JSON value does.
# (``scan_once`` is set by JSONDecoder.__init__; typeshed does not declare it.)
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

# JSON nested deeper than this is malformed, decided alike on every replica.
# Without a bound the parser's recursion limit would decide, and that depends on
# the caller's stack depth: a RecursionError on one replica, a revision on
# another. Values are at most 32 deep (checked on write); 200 leaves the parser
# far from Python's limit of 1,000 frames, and it lets a revision shorter than
# 400 characters (most of them) skip the check.
MAX_STORED_DEPTH = 200
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INNERMOST_PAIR = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


NO_SEEN: Mapping[str, tuple[str, ...]] = MappingProxyType({})
"""The ``seen`` of every revision that saw nothing: shared, where a dict each cost 64 bytes."""

# Names a loaded record repeats in every revision (its author, its replica, its
# paths, also named in other revisions' ``seen``) are interned: one string per
# process instead of one per revision parsed. (Interned strings are freed with
# their last user, so this holds nothing longer than the records do.)
_intern = sys.intern


class Revision(NamedTuple):
    """One write of one field, immutable.

    A NamedTuple rather than a frozen dataclass: one is built on every write and
    for every revision loaded, and a frozen dataclass costs four times as much.

    ``parents`` are the revisions of the same path the writer had seen (the heads
    at the time). ``seen`` holds, for a field of a collection entry, the heads of
    the entry's other fields at the time: it is how safety rules tell "written
    after seeing that" from "written concurrently".
    """

    id: str
    path: str
    value: JSONValue
    parents: tuple[str, ...]
    author: str
    replica: str
    at: Timestamp
    seen: Mapping[str, tuple[str, ...]] = NO_SEEN

    @property
    def value_key(self) -> str:
        """The value's canonical JSON: equal values have equal keys."""
        return canonical_json(self.value)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description, as shown in history and candidates."""
        return {
            "revision": self.id,
            "path": self.path,
            "value": self.value,
            "parents": list(self.parents),
            "author": self.author,
            "replica": self.replica,
            "at": self.at.isoformat(),
        }


def _json_scalar_or_any(value: object) -> str:
    if isinstance(value, str):
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int or type(value) is float:
        return repr(value)  # finite numbers only (checked on write); repr is valid JSON
    return _encode_json(value)


def encode_revision(rev: Revision) -> str:
    """The revision's stored form: one compact JSON object.

    Built by hand from escaped parts because it sits on the write hot path;
    ``decode_revision`` reads it back with the standard parser.
    """
    parents = ",".join(_quote(p) for p in rev.parents)
    seen = ""
    if rev.seen:
        seen = (
            ',"s":{'
            + ",".join(
                f"{_quote(path)}:[{','.join(_quote(i) for i in ids)}]"
                for path, ids in rev.seen.items()
            )
            + "}"
        )
    return (
        f'{{"p":{_quote(rev.path)},"v":{_json_scalar_or_any(rev.value)},"ps":[{parents}],'
        f'"a":{_quote(rev.author)},"r":{_quote(rev.replica)},'
        f'"t":{rev.at.wall_ms},"c":{rev.at.counter}{seen}}}'
    )


def _too_deep(stored: str) -> bool:
    """True unless the brackets outside strings pair up within MAX_STORED_DEPTH levels.

    Valid JSON nested ``d`` deep loses every bracket in ``d`` passes that each
    drop the innermost pairs; anything left over is too deep or not JSON.
    """
    text = _JSON_STRING.sub("", stored)
    for _ in range(MAX_STORED_DEPTH):
        text, dropped = _INNERMOST_PAIR.subn("", text)
        if not dropped:
            break
    return any(bracket in text for bracket in "[]{}")


_new_tuple = tuple.__new__
_ABSENT: object = object()


def decode_revision(rev_id: str, stored: object) -> Revision | None:
    """Parse a stored revision, or return None if it is malformed.

    Input may come from any peer, so nothing here raises: a malformed revision is
    skipped the same way on every replica, which keeps replicas convergent.
    Runs once per revision of every record loaded, hence the plain code: no
    helper calls, keys read with ``[]`` under one ``try``, tuples built directly.
    """
    if type(stored) is not str:  # pycrdt hands out exact strs
        return None
    if (
        # Nesting deeper than the bound takes two brackets a level; most are shorter.
        len(stored) > 2 * MAX_STORED_DEPTH
        and stored.count("[") + stored.count("{") > MAX_STORED_DEPTH
        and _too_deep(stored)
    ):
        return None
    try:
        body, end = _scan_once(stored, 0)
    except (ValueError, StopIteration):
        end = -1
    if end != len(stored):
        # Not one bare JSON value (padding, trailing data, or no JSON at all):
        # let the standard parser decide, as it always has.
        try:
            body = json.loads(stored)
        except ValueError:
            return None
    # JSON parsing makes exact dicts, lists, strs and ints (bool is not int here),
    # so ``type(x) is`` checks say the same as isinstance, for less.
    if type(body) is not dict:
        return None
    try:
        path = body["p"]
        value = body["v"]
        raw_parents = body["ps"]
        author = body["a"]
        replica = body["r"]
        wall = body["t"]
        counter = body["c"]
    except KeyError:
        return None
    if not (
        type(path) is str
        and path
        and type(author) is str
        and type(replica) is str
        and type(wall) is int
        and type(counter) is int
        and type(raw_parents) is list
    ):
        return None
    for parent in raw_parents:  # a plain loop: all() over a generator costs twice as much
        if type(parent) is not str:
            return None
    seen = body.get("s", _ABSENT)
    if seen is _ABSENT or seen == {}:
        seen = NO_SEEN
    elif type(seen) is not dict:
        return None
    else:
        kept: dict[str, tuple[str, ...]] = {}
        for seen_path, ids in seen.items():
            if type(ids) is not list:
                return None
            for item in ids:
                if type(item) is not str:
                    return None
            kept[_intern(seen_path)] = tuple(ids)
        seen = kept
    # tuple.__new__ directly: a NamedTuple's generated __new__ costs twice as much.
    at: Timestamp = _new_tuple(Timestamp, (wall, counter))
    return _new_tuple(
        Revision,
        (
            rev_id,
            _intern(path),
            value,
            tuple(raw_parents),
            _intern(author),
            _intern(replica),
            at,
            seen,
        ),
    )
