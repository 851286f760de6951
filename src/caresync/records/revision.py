"""One write of one field, immutable once made, and its wire form inside the document.

A revision is stored in the record's ``revisions`` map under its own id, as a
compact JSON string. JSON rather than nested Yjs types: it keeps integers and
floats apart (Yjs' ``Any`` turns nested ints into floats), is one cheap map
write, and is readable by any Yjs peer with ``JSON.parse``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from caresync.records.clock import Timestamp
from caresync.records.values import JSONValue, canonical_json

__all__ = ["Revision", "decode_revision", "encode_revision"]

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_quote: Callable[[str], str] = json.encoder.encode_basestring
# ``json.loads`` without its wrappers: a third of the cost of decoding a revision.
_raw_decode = json.JSONDecoder().raw_decode


_NO_SEEN: Mapping[str, tuple[str, ...]] = MappingProxyType({})


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
    seen: Mapping[str, tuple[str, ...]] = _NO_SEEN

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


def _str_tuple(raw: object) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        return None
    for item in raw:  # a plain loop: all() over a generator costs twice as much here
        if not isinstance(item, str):
            return None
    return tuple(raw)


def decode_revision(rev_id: str, stored: object) -> Revision | None:
    """Parse a stored revision, or return None if it is malformed.

    Input may come from any peer, so nothing here raises: a malformed revision is
    skipped the same way on every replica, which keeps replicas convergent.
    """
    if not isinstance(stored, str):
        return None
    try:
        body, end = _raw_decode(stored)
    except ValueError:
        end = -1
    if end != len(stored):
        # Not one bare JSON value (padding, trailing data, or no JSON at all):
        # let the standard parser decide, as it always has.
        try:
            body = json.loads(stored)
        except ValueError:
            return None
    if not isinstance(body, dict):
        return None
    path, author, replica = body.get("p"), body.get("a"), body.get("r")
    wall, counter = body.get("t"), body.get("c")
    parents = _str_tuple(body.get("ps"))
    if not (
        isinstance(path, str)
        and path
        and isinstance(author, str)
        and isinstance(replica, str)
        and type(wall) is int
        and type(counter) is int
        and parents is not None
        and "v" in body
    ):
        return None
    seen: dict[str, tuple[str, ...]] = {}
    raw_seen = body.get("s", {})
    if not isinstance(raw_seen, dict):
        return None
    for seen_path, ids in raw_seen.items():
        seen_ids = _str_tuple(ids)
        if seen_ids is None:
            return None
        seen[seen_path] = seen_ids
    # Positional arguments: this runs once per revision of every record loaded.
    return Revision(
        rev_id, path, body["v"], parents, author, replica, Timestamp(wall, counter), seen
    )
