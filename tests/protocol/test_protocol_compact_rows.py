"""Protocol version 11: conflict rows in pull and live frames are written compactly and
read back byte for byte; older peers get them as before; bad compact rows are refused."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.protocol.session import SERVER_ID, enrolled_client, handshake, pump, ready_pair

import caresync.protocol.rows
from caresync import Record
from caresync.conflicts import DEFAULT_RULEBOOK
from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    COMPACT_ROWS_SINCE,
    CheckedState,
    CopyConflict,
    FeedItem,
    LiveBatch,
    PullBatch,
    RecordCheck,
    ServerProtocol,
    decode_frame,
    encode_frame,
)
from caresync.protocol.rows import compact_payload, expand_payload, row_prefix
from caresync.replication.pool import conflict_rows

FP = "rules-v1:abc"


def real_rows() -> tuple[CopyConflict, ...]:
    """The rows a rulebook computes for a record two laptops edited at once (a birth
    date and a weight, three candidates for the weight)."""
    base = Record.create(replica="desk")
    copies = [
        Record.from_update(base.record_id, base.update_since(), replica=f"laptop-{n}")
        for n in range(3)
    ]
    for n, copy in enumerate(copies):
        copy.set("weightKg", 40.5 + n, author=f"dr.{n}")
        if n < 2:
            copy.set("birthDate", f"196{n}-01-02", author=f"dr.{n}")
    merged = Record.from_updates(
        base.record_id, [c.update_since() for c in copies], replica="server"
    )
    rows = conflict_rows(merged, DEFAULT_RULEBOOK)
    assert len(rows) == 2
    return tuple(
        CopyConflict(r.record_id, r.id, r.kind, r.subject, r.severity, r.payload)
        for r in sorted(rows, key=lambda row: row.id)
    )


def compacted(row: CopyConflict) -> bytes:
    return compact_payload(row.record_id, row.id, row.kind, row.severity, row.subject, row.payload)


def expanded(row: CopyConflict, data: bytes, budget: int = 1 << 20) -> bytes:
    return expand_payload(row.record_id, row.id, row.kind, row.severity, row.subject, data, budget)


def test_a_conflicts_json_goes_in_less_than_half_and_comes_back_exactly() -> None:
    for row in real_rows():
        data = compacted(row)
        assert data[0] == 1  # what the row's fields say was left out
        assert len(data) < len(row.payload) / 2
        assert expanded(row, data) == row.payload


texts = st.text(min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.tuples(texts, texts, texts, texts, texts),
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), texts),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
            max_leaves=12,
        ).map(lambda value: json.dumps(value, separators=(",", ":")).encode()),
    ),
    prefixed=st.booleans(),
)
def test_any_payload_comes_back_exactly(
    fields: tuple[str, str, str, str, str], body: bytes, prefixed: bool
) -> None:
    """Arbitrary bytes (control bytes too), JSON, and JSON behind the row's own prefix
    holding the row's subject: what is read back is what was written."""
    record_id, row_id, kind, severity, subject = fields
    payload = body
    if prefixed:
        payload = row_prefix(record_id, row_id, kind, severity, subject) + body + subject.encode()
    row = CopyConflict(record_id, row_id, kind, subject, severity, payload or b"x")
    data = compacted(row)
    assert data[0] in (0, 1, 2)
    assert expanded(row, data, 1 << 24) == row.payload


def pull(rows: tuple[CopyConflict, ...]) -> PullBatch:
    items = (FeedItem(3, rows[0].record_id, b"u1"),)
    state = CheckedState(rows[0].record_id, b"\x01\x05\x02", None)
    return PullBatch(items, 3, 9, checked=(state,), conflicts=rows)


def test_pull_and_live_frames_of_version_11_carry_compact_rows_and_decode_to_the_same() -> None:
    rows = real_rows()
    batch = pull(rows)
    live = LiveBatch(batch.items, checked=batch.checked, conflicts=rows)
    for message in (batch, live):
        compact = encode_frame(message, version=COMPACT_ROWS_SINCE)
        older = encode_frame(message, version=COMPACT_ROWS_SINCE - 2)
        assert decode_frame(compact) == (COMPACT_ROWS_SINCE, message)
        assert decode_frame(older) == (COMPACT_ROWS_SINCE - 2, message)
        assert all(row.payload in older for row in rows)  # version 10: as stored
        assert not any(row.payload in compact for row in rows)
        assert len(compact) < len(older) - sum(len(r.payload) for r in rows) / 2


def test_a_version_11_client_gets_compact_rows_an_older_one_rows_as_before() -> None:
    rows = real_rows()
    check = RecordCheck(CheckedState(rows[0].record_id, b"\x01\x05\x02", None), rows)
    for versions in (None, (8, 9, 10)):
        client, server = (
            ready_pair()
            if versions is None
            else handshake(enrolled_client(protocol_versions=versions), ServerProtocol(SERVER_ID))
        )
        newest = (
            client.protocol_version is not None and client.protocol_version >= COMPACT_ROWS_SINCE
        )
        assert newest if versions is None else client.protocol_version == 10
        client.request_pull(2, 10, rulebook=FP)
        pump(client, server)
        server.events_received()
        server.send_pull_batch(
            [FeedItem(3, rows[0].record_id, b"u1")],
            checkpoint=3,
            head_seq=3,
            checks={rows[0].record_id: check},
        )
        sent = b"".join(server.data_to_send())
        assert (rows[0].payload in sent) == (versions is not None)
        client.receive_data(sent)
        [received] = client.events_received()
        assert isinstance(received, PullBatch)
        assert received.conflicts == rows


def raw_frame(rows: list[list[object]], version: int = COMPACT_ROWS_SINCE) -> bytes:
    body = {
        "items": [[3, "rec-a", b"u1"]],
        "checkpoint": 3,
        "head_seq": 9,
        "checked": [["rec-a", b"\x01\x05\x02", None]],
        "conflicts": rows,
        "entries": None,
    }
    return msgpack.packb([version, PullBatch.TYPE_CODE, body], use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\x03{}", "unknown form"),
        (b"", "empty"),
        (b"\x00", "non-empty bytes"),
    ],
)
def test_bad_compact_rows_are_refused(payload: bytes, words: str) -> None:
    frame = raw_frame([["rec-a", "f-1", "field", "weightKg", "block", payload]])
    with pytest.raises(RemoteProtocolError, match=words):
        decode_frame(frame)


def test_rows_that_would_expand_past_the_bound_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small frame cannot stand for gigabytes: token bytes each stand for a piece of
    up to 46 bytes, the subject's for the subject."""
    row = ["rec-a", "f-1", "field", "s" * 4000, "block", b"\x02" + b"\x1f" * 1000]
    with pytest.raises(LocalProtocolError, match="expand past"):
        expanded(CopyConflict(*row), row[5], budget=1 << 20)  # type: ignore[arg-type]
    monkeypatch.setattr(caresync.protocol.rows, "MAX_EXPANDED_ROWS_BYTES", 1 << 20)
    with pytest.raises(RemoteProtocolError, match="expand past"):
        decode_frame(raw_frame([row]))
    small = ["rec-a", "f-1", "field", "weightKg", "block", b"\x02\x1f"]
    assert decode_frame(raw_frame([small, [*small[:1], "f-2", *small[2:]]]))
