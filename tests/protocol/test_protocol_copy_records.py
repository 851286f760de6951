"""A CopyBatch's records are checked in a few passes of builtins when they are plain;
anything else gets the record-by-record checks, which name what is wrong. Both must
accept and refuse exactly the same batches."""

from __future__ import annotations

import re

import pytest

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import decode_frame, encode_frame
from caresync.protocol.messages import MAX_ID_LENGTH, CopyBatch, CopyRecord

GOOD = [(f"rec-{i:04d}", b"update %d" % i) for i in range(50)]


def _batch(records: list[object]) -> CopyBatch:
    last = records[-1][0] if records and isinstance(records[-1], (tuple, list)) else None  # type: ignore[index]
    count = len(records)
    return CopyBatch(tuple(records), count, count, 0, 0, last, 0, True)  # type: ignore[arg-type]


def test_plain_pairs_become_copy_records_in_order() -> None:
    batch = _batch(list(GOOD))
    assert all(type(record) is CopyRecord for record in batch.records)
    assert [tuple(record) for record in batch.records] == GOOD
    assert batch.last_record_id == GOOD[-1][0]


def test_lists_and_copy_records_mixed_are_still_taken() -> None:
    mixed: list[object] = [list(pair) if i % 3 == 0 else pair for i, pair in enumerate(GOOD)]
    mixed[1] = CopyRecord(*GOOD[1])
    batch = _batch(mixed)
    assert [tuple(record) for record in batch.records] == GOOD


BAD: list[tuple[str, object, str]] = [
    ("not a pair", ("rec-0025x",), "a (record_id, update) pair"),
    ("three fields", ("rec-0025x", b"u", b"v"), "a (record_id, update) pair"),
    ("a str item of two characters", "ab", "a (record_id, update) pair"),
    ("an id that is bytes", (b"rec-0025x", b"u"), "records[].record_id"),
    ("an empty id", ("", b"u"), "records[].record_id"),
    ("an id too long", ("rec-0025x" + "y" * MAX_ID_LENGTH, b"u"), "records[].record_id"),
    ("an unprintable id", ("rec-0025\nx", b"u"), "records[].record_id"),
    ("an update that is a str", ("rec-0025x", "u"), "records[].update"),
    ("an empty update", ("rec-0025x", b""), "records[].update"),
    ("an update that is a bytearray", ("rec-0025x", bytearray(b"u")), "records[].update"),
    ("an id out of order", ("rec-0001x", b"u"), "strictly ascending"),
    ("an id twice", ("rec-0025", b"u"), "strictly ascending"),
]


@pytest.mark.parametrize(("why", "item", "message"), BAD, ids=[b[0] for b in BAD])
def test_one_bad_record_among_good_ones_is_refused_and_named(
    why: str, item: object, message: str
) -> None:
    records: list[object] = [*GOOD[:26], item, *GOOD[26:]]
    with pytest.raises(LocalProtocolError, match=re.escape(message)):
        _batch(records)


def test_a_bad_record_from_the_wire_is_a_remote_protocol_error() -> None:
    frame = encode_frame(_batch(list(GOOD)))
    assert decode_frame(frame)[1] == _batch(list(GOOD))
    bad = frame.replace(b"rec-0010", b"rec-0\x0710")  # an unprintable id
    with pytest.raises(RemoteProtocolError, match=re.escape("records[].record_id")):
        decode_frame(bad)
