"""Conflict rows written compactly in pull and live frames (protocol version 11 on).

A conflict row's payload is the conflicts package's JSON of the conflict
(``json.dumps(conflict.as_dict(), separators=(",", ":"))``): it repeats the row's
own id, record id, kind, severity and subject, and spells every candidate's keys.
At 300 simulated laptops the rows were a third of every byte sent down, most of
it these repetitions. From version 11 a pull or live frame carries each payload
behind one format byte:

* ``0x00``: the payload follows as it is (any bytes);
* ``0x01``: the payload began with what the row's other fields say
  (:func:`row_prefix`), which is left out, and its frequent JSON pieces (keys and
  the subject) are written as single bytes 0x01..0x1f;
* ``0x02``: the same pieces written as single bytes, nothing left out.

A JSON text from ``json.dumps`` (ASCII by default) never holds a byte below 0x20
unescaped, so those bytes are free to stand for the pieces. The writer uses them
only for a payload that holds none of them, and replaces piece after piece; the
reader puts them back in the reverse order, so it gets the payload's exact bytes
(each piece is printable ASCII and holds no token byte, so a replacement can
neither meet a token nor undo an earlier one). The reader refuses a format byte it
does not know and a row whose payload would grow past
:data:`MAX_EXPANDED_ROWS_BYTES` for the frame (so a small frame cannot stand for
gigabytes): ``LocalProtocolError``, which the codec reports as a
``RemoteProtocolError``. Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable

from caresync.exceptions import LocalProtocolError

__all__ = [
    "COMPACT_ROWS_SINCE",
    "MAX_EXPANDED_ROWS_BYTES",
    "compact_payload",
    "compact_rows",
    "expand_payload",
    "expand_rows",
    "row_prefix",
]

COMPACT_ROWS_SINCE = 11
"""The first protocol version whose pull and live frames write conflict rows compactly."""

MAX_EXPANDED_ROWS_BYTES = 256 * 1024 * 1024
"""The most bytes the compact payloads of one frame may expand to."""

_RAW, _PREFIXED, _TOKENS = 0, 1, 2

# Pieces of Conflict.as_dict() and Candidate.as_dict() JSON, in the order they are
# replaced (longer pieces that hold shorter ones first). Never reorder or change
# one: a version 11 peer reads them by position. Token 0x1f is the row's subject.
_PIECES: tuple[bytes, ...] = (
    b'"},{"value":',
    b'","replica":"replica-',
    b'","revision":"',
    b'"rule":null,"message":"',
    b'","message":"',
    b',"rule":"',
    b' concurrent values: choose one","candidates":[',
    b'","candidates":[',
    b'"}],"paths":["',
    b'","paths":["',
    b'"]}',
    b'{"value":',
    b',"author":"',
    b'","replica":"',
    b'","at":"',
    b'","path":"',
)
_SUBJECT_TOKEN = 0x1F
_SUBJECT = bytes([_SUBJECT_TOKEN])
_TOKENS_OF = tuple(bytes([index + 1]) for index in range(len(_PIECES)))
_FORTH = tuple(zip(_PIECES, _TOKENS_OF, strict=True))
_BACK = tuple(reversed(_FORTH))
_LONGEST_PIECE = max(map(len, _PIECES))
_TOKEN_BYTES = bytes(range(0x01, 0x20))
_MIN_SUBJECT = 4
"""A subject shorter than this is not worth a token."""


_REMEMBERED_ROWS = 16_384
_REMEMBERED_PAYLOAD = 4096
"""Compact payloads of rows up to this size are remembered (at most about 130 MB)."""

Row = tuple[str, str, str, str, str, bytes]
"""A conflict row as frames carry it: record_id, id, kind, subject, severity, payload."""


_PLAIN = re.compile(r"[ !#-\[\]-~]*")
"""Printable ASCII without a quote or a backslash: JSON writes such text as it is."""


def _json(text: str) -> bytes:
    """``text`` as ``json.dumps`` writes it (ASCII), quotes included."""
    if _PLAIN.fullmatch(text) is not None:
        return b'"' + text.encode() + b'"'
    return json.dumps(text).encode()


def row_prefix(record_id: str, row_id: str, kind: str, severity: str, subject: str) -> bytes:
    """What a row's payload begins with when it is the conflict's JSON: its id, record
    id, kind, severity and subject, as the conflicts package writes them."""
    return b"".join(
        (
            b'{"id":',
            _json(row_id),
            b',"record_id":',
            _json(record_id),
            b',"kind":',
            _json(kind),
            b',"severity":',
            _json(severity),
            b',"path":',
            _json(subject),
            b",",
        )
    )


def _subject_piece(subject: str) -> bytes | None:
    piece = _json(subject)[1:-1]
    return piece if len(piece) >= _MIN_SUBJECT else None


def compact_payload(
    record_id: str, row_id: str, kind: str, severity: str, subject: str, payload: bytes
) -> bytes:
    """``payload`` as a version 11 frame writes it (see the module)."""
    if len(payload.translate(None, _TOKEN_BYTES)) != len(payload):  # holds a token byte
        return bytes([_RAW]) + payload
    prefix = row_prefix(record_id, row_id, kind, severity, subject)
    if payload.startswith(prefix):
        form, text = _PREFIXED, payload[len(prefix) :]
    else:
        form, text = _TOKENS, payload
    for piece, token in _FORTH:
        text = text.replace(piece, token)
    subject_piece = _subject_piece(subject)
    if subject_piece is not None:
        text = text.replace(subject_piece, _SUBJECT)
    return bytes([form]) + text


def _expanded_size(text: bytes, subject_piece: bytes | None) -> int:
    size = len(text)
    for piece, token in _FORTH:
        if token in text:
            size += text.count(token) * (len(piece) - 1)
    if subject_piece is not None:
        size += text.count(_SUBJECT) * (len(subject_piece) - 1)
    return size


def expand_payload(
    record_id: str,
    row_id: str,
    kind: str,
    severity: str,
    subject: str,
    data: bytes,
    budget: int = MAX_EXPANDED_ROWS_BYTES,
) -> bytes:
    """The payload that :func:`compact_payload` wrote as ``data``.

    LocalProtocolError for an unknown format byte, an empty compact payload, or one
    that would expand past ``budget`` bytes.
    """
    if not data:
        raise LocalProtocolError("a conflict row's payload is empty")
    form, text = data[0], data[1:]
    if form == _RAW:
        if len(text) > budget:
            raise LocalProtocolError("conflict rows expand past the frame's bound")
        return text
    if form not in (_PREFIXED, _TOKENS):
        raise LocalProtocolError(f"a conflict row's payload has an unknown form {form}")
    subject_piece = _subject_piece(subject)
    prefix = row_prefix(record_id, row_id, kind, severity, subject) if form == _PREFIXED else b""
    # No byte grows past the longest piece: counted exactly only when that might not do.
    longest = max(_LONGEST_PIECE, len(subject_piece or b""))
    if len(text) * longest + len(prefix) > budget and (
        _expanded_size(text, subject_piece) + len(prefix) > budget
    ):
        raise LocalProtocolError("conflict rows expand past the frame's bound")
    # Each token byte stands for its piece, and no piece holds a token byte: putting
    # them back in one pass is putting them back in the reverse order.
    if subject_piece is not None:
        text = text.replace(_SUBJECT, subject_piece)
    for piece, token in _BACK:
        if token in text:
            text = text.replace(token, piece)
    return prefix + text


_remembered = functools.lru_cache(maxsize=_REMEMBERED_ROWS)(compact_payload)


def compact_rows(rows: Iterable[Row]) -> tuple[Row, ...]:
    """Rows (record_id, id, kind, subject, severity, payload) with compact payloads.

    A server sends each version of a row to every laptop that pulls it, so the
    compact payloads of small rows are remembered (:data:`_REMEMBERED_ROWS`).
    """
    return tuple(
        (
            r,
            i,
            k,
            s,
            v,
            (_remembered if len(p) <= _REMEMBERED_PAYLOAD else compact_payload)(r, i, k, v, s, p),
        )
        for r, i, k, s, v, p in rows
    )


def expand_rows(rows: object) -> object:
    """Rows as a version 11 frame holds them, with their payloads as they are.

    Anything that is not a sequence of 6-item rows with text fields and a bytes
    payload is returned as it is, for the message's own checks to refuse.
    LocalProtocolError for a payload that does not expand (see :func:`expand_payload`).
    """
    if not isinstance(rows, (tuple, list)):
        return rows
    budget = MAX_EXPANDED_ROWS_BYTES
    out: list[object] = []
    for row in rows:
        if (
            isinstance(row, (tuple, list))
            and len(row) == 6
            and all(type(field) is str for field in row[:5])
            and type(row[5]) is bytes
        ):
            record_id, row_id, kind, subject, severity, data = row
            payload = expand_payload(record_id, row_id, kind, severity, subject, data, budget)
            budget -= len(payload)
            row = (record_id, row_id, kind, subject, severity, payload)
        out.append(row)
    return tuple(out)
