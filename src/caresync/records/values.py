"""Field values and paths: what the record model accepts, checked before anything is written."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from caresync.exceptions import InvalidPathError, InvalidValueError

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_VALUE_BYTES",
    "JSONValue",
    "canonical_json",
    "check_path",
    "check_value",
]

JSONValue = None | bool | int | float | str | list[Any] | dict[str, Any]

MAX_PATH_LENGTH = 512
MAX_VALUE_BYTES = 256 * 1024
_MAX_DEPTH = 32
_MAX_SAFE_INT = 2**53 - 1  # integers beyond this lose precision in JavaScript peers
_BAD_SEGMENT = re.compile(r"(^|/)(/|$)|(^|/)\s|\s(/|$)|[\x00-\x1f\x7f]")


def canonical_json(value: object) -> str:
    """One spelling per value, so that equal values compare equal as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_path(path: object) -> str:
    """Return ``path`` if the record model accepts it, else raise InvalidPathError.

    A path is ``/``-separated segments: ``birthDate``, ``address/city``,
    ``allergies/<entry-id>/criticality``. Segments are non-empty, without
    surrounding spaces or control characters. A leading ``_`` is reserved for
    caresync's own bookkeeping.
    """
    if not isinstance(path, str):
        raise InvalidPathError(f"a field path must be a string, not {type(path).__name__}")
    if not path or len(path) > MAX_PATH_LENGTH:
        raise InvalidPathError(
            f"a field path must be 1 to {MAX_PATH_LENGTH} characters, got {len(path)}"
        )
    if not _is_utf8(path):
        raise InvalidPathError(
            f"field path {path!r:.80} holds a lone surrogate (text that is not valid UTF-8)"
        )
    if _BAD_SEGMENT.search(path):
        raise InvalidPathError(
            f"field path {path!r} has an empty segment, a segment with surrounding "
            "spaces, or a control character"
        )
    return path


def check_value(value: object, *, what: str = "value") -> None:
    """Raise InvalidValueError unless ``value`` is JSON-like and within limits.

    Accepted: None, bool, int (within +/- 2**53), finite float, str, lists and
    string-keyed dicts of these. NaN is refused because it never equals itself,
    which would make two equal entries look like a conflict.
    """
    _check(value, what, 0)
    if isinstance(value, str):
        size = len(value.encode())
    elif isinstance(value, (list, dict)):
        size = len(canonical_json(value).encode())
    else:
        return
    if size > MAX_VALUE_BYTES:
        raise InvalidValueError(f"{what} is {size} bytes encoded; the limit is {MAX_VALUE_BYTES}")


def _is_utf8(text: str) -> bool:
    """False for a str holding a lone surrogate, which no replica could store or send."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(value: object, what: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidValueError(f"{what} is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, str):
        if not value.isascii() and not _is_utf8(value):
            raise InvalidValueError(f"{what}: text with a lone surrogate is not valid UTF-8")
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise InvalidValueError(f"{what}: integer {value} is outside +/- 2**53")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"{what}: {value} is not a finite number")
        return
    if isinstance(value, list):
        for item in value:
            _check(item, what, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValueError(f"{what}: dictionary keys must be strings, got {key!r}")
            if not key.isascii() and not _is_utf8(key):
                raise InvalidValueError(f"{what}: a key with a lone surrogate is not valid UTF-8")
            _check(item, what, depth + 1)
        return
    raise InvalidValueError(
        f"{what}: {type(value).__name__} is not a JSON-like value "
        "(use None, bool, int, float, str, list or dict)"
    )
