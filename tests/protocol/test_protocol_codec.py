"""The codec: envelope, framing, strict validation, typed errors only."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from tests.protocol.session import SAMPLES

from caresync.exceptions import (
    AuthenticationError,
    CaresyncError,
    ClientTooOldError,
    ConnectionLostError,
    FeedDivergedError,
    FrameTooLargeError,
    LocalProtocolError,
    NotEnrolledError,
    ProtocolError,
    RemoteProtocolError,
    ReplicaRevokedError,
    SyncRefusedError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.protocol import (
    BATCH_OVERHEAD_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    ERROR_CLASSES,
    MAX_BATCH_ITEMS,
    MAX_ID_LENGTH,
    MAX_SEQ,
    MESSAGE_TYPES,
    MIN_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Authenticate,
    CopyBatch,
    CopyRecord,
    CopyRequest,
    Enrol,
    Error,
    ErrorCode,
    FeedItem,
    Goodbye,
    Hello,
    LiveUpdate,
    Message,
    OutboxReport,
    PullBatch,
    PullRequest,
    PushAck,
    PushBatch,
    PushItem,
    Subscribe,
    Welcome,
    decode_frame,
    encode_frame,
    error_for,
    item_wire_size,
)


def raw(version: Any, code: Any, body: Any) -> bytes:
    return msgpack.packb([version, code, body], use_bin_type=True)


@pytest.mark.parametrize("message", list(SAMPLES.values()), ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = encode_frame(message)
    assert decode_frame(data) == (PROTOCOL_VERSION, message)
    assert decode_frame(bytearray(data)) == (PROTOCOL_VERSION, message)
    assert decode_frame(memoryview(data)) == (PROTOCOL_VERSION, message)


def test_envelope_layout() -> None:
    data = encode_frame(PullRequest(7, 50), version=3)
    assert msgpack.unpackb(data) == [3, 18, {"after_seq": 7, "limit": 50}]
    data = encode_frame(PullRequest(7, 50, include_own=True), version=4)
    assert msgpack.unpackb(data) == [4, 18, {"after_seq": 7, "limit": 50, "include_own": True}]
    data = encode_frame(LiveUpdate(3, "r", b"\x01\x02"), version=1)
    assert msgpack.unpackb(data) == [1, 23, {"seq": 3, "record_id": "r", "update": b"\x01\x02"}]
    data = encode_frame(OutboxReport(2, 1234))
    assert msgpack.unpackb(data) == [
        PROTOCOL_VERSION,
        24,
        {"pending": 2, "oldest_pending_ms": 1234},
    ]


def test_type_codes_are_unique_small_ints() -> None:
    assert all(0 < code < 128 for code in MESSAGE_TYPES)  # one msgpack byte each
    assert sorted(cls.__name__ for cls in MESSAGE_TYPES.values()) == sorted(
        cls.__name__ for cls in SAMPLES
    )


def test_frozen_layouts() -> None:
    frozen = {cls for cls in MESSAGE_TYPES.values() if cls.FROZEN_LAYOUT}
    assert frozen == {Hello, Welcome, Error, Goodbye}
    # a frozen-layout message decodes in any version; the others only in ours
    assert decode_frame(encode_frame(Goodbye("x"), version=42)) == (42, Goodbye("x"))
    with pytest.raises(RemoteProtocolError, match="unsupported protocol version 42"):
        decode_frame(encode_frame(PullRequest(0), version=42))


VALID_PULL = {"after_seq": 0, "limit": 1}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\xc1", "not a valid msgpack"),  # never-used byte
        (encode_frame(PullRequest(0))[:-1], "not a valid msgpack"),  # truncated
        (encode_frame(PullRequest(0)) + b"\x00", "not a valid msgpack"),  # trailing data
        (b"\x91" * 5000, "not a valid msgpack"),  # nested too deep
        (msgpack.packb({"a": 1}), "not an envelope"),
        (msgpack.packb([1, 18]), "not an envelope"),
        (msgpack.packb([1, 18, VALID_PULL, 4]), "not an envelope"),
        (raw(0, 18, VALID_PULL), "bad protocol version"),
        (raw(70000, 18, VALID_PULL), "bad protocol version"),
        (raw(1.0, 18, VALID_PULL), "bad protocol version"),
        (raw(True, 18, VALID_PULL), "bad protocol version"),
        (raw(1, "18", VALID_PULL), "bad message type code"),
        (raw(1, 99, VALID_PULL), "unknown message type 99"),
        (raw(1, -1, VALID_PULL), "unknown message type -1"),
        (raw(1, 18, [0, 1]), "body is not a map"),
        (raw(1, 18, {"after_seq": 0}), "missing fields \\['limit'\\]"),
        (raw(1, 18, {**VALID_PULL, "extra": 1}), "unknown fields \\['extra'\\]"),
        (raw(1, 18, {"after_seq": 0, b"limit": 1}), "missing fields"),
        (raw(1, 18, {"after_seq": -1, "limit": 1}), "after_seq"),
        (raw(1, 18, {"after_seq": True, "limit": 1}), "after_seq"),
        (raw(1, 18, {"after_seq": 1.5, "limit": 1}), "after_seq"),
        (raw(1, 18, {"after_seq": 0, "limit": 0}), "limit"),
        (raw(1, 18, {"after_seq": 0, "limit": MAX_BATCH_ITEMS + 1}), "limit"),
        (raw(1, 18, {"after_seq": 2**64 - 1, "limit": 1}), "after_seq"),
        (raw(1, 23, {"seq": 1, "record_id": "r", "update": "text"}), "update"),
        (raw(1, 23, {"seq": 1, "record_id": "r", "update": b""}), "update"),
        (raw(1, 23, {"seq": 1, "record_id": b"r", "update": b"u"}), "record_id"),
        (raw(1, 23, {"seq": 1, "record_id": "", "update": b"u"}), "record_id"),
        (raw(1, 23, {"seq": 1, "record_id": "a\nb", "update": b"u"}), "record_id"),
        (raw(1, 23, {"seq": 1, "record_id": "r" * 129, "update": b"u"}), "record_id"),
        (raw(1, 23, {"seq": 1, "record_id": None, "update": b"u"}), "record_id"),
        (raw(1, 20, {"items": []}), "non-empty"),
        (raw(1, 20, {"items": [[1, "r"]]}), "triple"),
        (raw(1, 20, {"items": [[1, "r", b"u", 4]]}), "triple"),
        (raw(1, 20, {"items": [{"local_seq": 1}]}), "triple"),
        (raw(1, 20, {"items": [[2, "r", b"u"], [2, "r", b"u"]]}), "local_seq"),
        (raw(1, 20, {"items": "abc"}), "a tuple"),
        (
            raw(
                1,
                126,
                {
                    "code": "Bad Code",
                    "message": "",
                    "fatal": True,
                    "detail": {},
                    "in_reply_to": None,
                },
            ),
            "code",
        ),
        (
            raw(
                1, 126, {"code": "x", "message": "", "fatal": 1, "detail": {}, "in_reply_to": None}
            ),
            "fatal",
        ),
        (
            raw(
                1,
                126,
                {
                    "code": "x",
                    "message": "",
                    "fatal": True,
                    "detail": {"k": [1]},
                    "in_reply_to": None,
                },
            ),
            "detail",
        ),
        (
            raw(
                1, 126, {"code": "x", "message": "", "fatal": True, "detail": {}, "in_reply_to": 2}
            ),
            "in_reply_to",
        ),
        (
            raw(
                1,
                126,
                {"code": "x", "message": "", "fatal": False, "detail": {}, "in_reply_to": None},
            ),
            "non-fatal",
        ),
        (
            raw(
                1,
                1,
                {
                    "protocol_versions": [],
                    "max_frame_bytes": 65536,
                    "replica_id": None,
                    "server_id_expected": None,
                    "organisation": None,
                },
            ),
            "protocol_versions",
        ),
        (
            raw(
                1,
                1,
                {
                    "protocol_versions": [1, 1],
                    "max_frame_bytes": 65536,
                    "replica_id": None,
                    "server_id_expected": None,
                    "organisation": None,
                },
            ),
            "distinct",
        ),
        (
            raw(
                1,
                1,
                {
                    "protocol_versions": [1],
                    "max_frame_bytes": 10,
                    "replica_id": None,
                    "server_id_expected": None,
                    "organisation": None,
                },
            ),
            "max_frame_bytes",
        ),
        (
            raw(
                1,
                1,
                {
                    "protocol_versions": [1],
                    "max_frame_bytes": 65536,
                    "replica_id": "r",
                    "server_id_expected": None,
                    "organisation": None,
                },
            ),
            "go together",
        ),
        (b"\x93\x01\x12\x82\xa9after_seq\x00\xa9after_seq\x01", "duplicate key"),
        (b"\xd4\x01\x00", "not a valid msgpack"),  # fixext 1
        (b"\xc7\x00\x05", "not a valid msgpack"),  # ext 8, zero length
        (bytes([0xD6, 0xFF, 0, 0, 0, 0]), "not a valid msgpack"),  # timestamp ext
        (b"\xa2\xff\xfe", "not a valid msgpack"),  # invalid UTF-8
        (b"\x93\x01\x12\x81\x01\x02", "not a valid msgpack"),  # int map key
        ("a text frame", "text frame"),
    ],
)
def test_malformed_frames_are_remote_protocol_errors(data: bytes | str, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_frame(data)


def test_oversize_frame_is_refused_before_parsing() -> None:
    data = encode_frame(LiveUpdate(1, "r", b"x" * 70_000))
    assert decode_frame(data)[1] == LiveUpdate(1, "r", b"x" * 70_000)
    with pytest.raises(FrameTooLargeError, match="exceeds the maximum of 65536"):
        decode_frame(data, max_frame_bytes=MIN_MAX_FRAME_BYTES)
    with pytest.raises(FrameTooLargeError):
        decode_frame(b"\xc1" * (DEFAULT_MAX_FRAME_BYTES + 1))


def test_a_huge_declared_length_in_a_tiny_frame() -> None:
    # bin 32 claiming 4 GiB, array 32 claiming 4 billion items: refused, nothing allocated
    for data in (b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"):
        with pytest.raises(RemoteProtocolError):
            decode_frame(data)


def test_decode_of_a_non_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        decode_frame(12)  # type: ignore[arg-type]


def test_encode_refuses_non_messages_bad_versions_and_oversize() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame("hello")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_frame(Goodbye(), version=0)
    with pytest.raises(LocalProtocolError, match="exceeds the peer's maximum"):
        encode_frame(LiveUpdate(1, "r", b"x" * 70_000), max_frame_bytes=MIN_MAX_FRAME_BYTES)


def test_batch_sizing_rule_holds() -> None:
    """sum(item_wire_size) + BATCH_OVERHEAD_BYTES <= limit always fits (worst-case ids)."""
    limit = MIN_MAX_FRAME_BYTES
    budget = limit - BATCH_OVERHEAD_BYTES
    items: list[FeedItem] = []
    seq = MAX_SEQ - 10_000
    record_id = "\U0001f600" * MAX_ID_LENGTH  # 4 UTF-8 bytes a character
    while True:
        update = b"u" * 300
        cost = item_wire_size(record_id, update)
        if cost > budget:
            break
        budget -= cost
        seq += 1
        items.append(FeedItem(seq, record_id, update))
    batch = PullBatch(tuple(items), MAX_SEQ, MAX_SEQ)
    assert len(encode_frame(batch, max_frame_bytes=limit)) <= limit
    many = [FeedItem(MAX_SEQ - 100_000 + i, "r", b"u") for i in range(1, 1000)]
    cost = sum(item_wire_size(i.record_id, i.update) for i in many) + BATCH_OVERHEAD_BYTES
    assert len(encode_frame(PullBatch(tuple(many), MAX_SEQ, MAX_SEQ))) <= cost
    copy = CopyBatch(
        tuple(CopyRecord(f"r{i:05d}", b"u") for i in range(1000)),
        MAX_SEQ,
        MAX_SEQ,
        MAX_SEQ,
        MAX_SEQ,
        "r00999",
        MAX_SEQ,
        False,
    )
    cost = sum(item_wire_size(r.record_id, r.update) for r in copy.records) + BATCH_OVERHEAD_BYTES
    assert len(encode_frame(copy)) <= cost


# ------------------------------------------------------------ local validation


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hello(()),
        lambda: Hello((0,)),
        lambda: Hello((1,), replica_id="r"),
        lambda: Hello((1,), replica_id="r", server_id_expected="s"),
        lambda: Hello((1,), max_frame_bytes=2**31),
        lambda: Welcome(1, ""),
        lambda: Welcome(1, "s", 100),
        lambda: Authenticate("", "pw", "org"),
        lambda: Authenticate("ann", "", "org"),
        lambda: Authenticate("ann", "pw\ud800", "org"),  # not encodable
        lambda: Enrol("\x00"),
        lambda: CopyRequest(batch_records=0),
        lambda: CopyRequest(after_record_id=""),
        lambda: CopyBatch((), 0, 0, 0, 0, None, 0, False),  # not final, no records
        lambda: CopyBatch((("b", b"u"), ("a", b"u")), 2, 2, 2, 2, "a", 0, True),  # order
        lambda: CopyBatch((("a", b"u"),), 1, 1, 1, 1, "z", 0, True),  # last_record_id
        lambda: CopyBatch((("a", b"u"),), 0, 1, 1, 1, "a", 0, True),  # done < len
        lambda: CopyBatch((("a", b"u"),), 2, 1, 1, 1, "a", 0, True),  # done > total
        lambda: CopyBatch((("a", b"u"),), 1, 1, 2, 1, "a", 0, True),  # bytes
        lambda: CopyBatch((("a", b"u"),), 1, 1, 1, 1, "a", 0, 1),  # final not bool
        lambda: CopyBatch((("a", b"u", 3),), 1, 1, 1, 1, "a", 0, True),
        lambda: PullBatch(((2, "a", b"u"), (1, "b", b"u")), 2, 2),
        lambda: PullBatch(((0, "a", b"u"),), 2, 2),
        lambda: PullBatch(((5, "a", b"u"),), 4, 5),  # checkpoint before last item
        lambda: PullBatch((), 5, 4),  # head before checkpoint
        lambda: PushBatch(()),
        lambda: PushBatch(((0, "a", b"u"),)),
        lambda: PushBatch(((1, "a", bytearray(b"u")),)),
        lambda: PushBatch(tuple((i, "a", b"u") for i in range(1, MAX_BATCH_ITEMS + 2))),
        lambda: PushAck(0),
        lambda: Subscribe(-1),
        lambda: LiveUpdate(0, "a", b"u"),
        lambda: Error("x", "m", detail={str(i): i for i in range(17)}),
        lambda: Error("x", "m", detail={"k": 2**70}),
        lambda: Error("x", "m", detail={"": 1}),
        lambda: Error("x", "m" * 5000),
        lambda: Goodbye(None),  # type: ignore[arg-type]
    ],
)
def test_bad_local_values_are_local_protocol_errors(build: Any) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_plain_tuples_become_named_items() -> None:
    batch = PushBatch([(1, "a", b"u")])  # type: ignore[arg-type]
    assert batch.items == (PushItem(1, "a", b"u"),)
    assert type(batch.items[0]) is PushItem
    assert batch.items[0].record_id == "a"
    assert Hello([1]).protocol_versions == (1,)  # type: ignore[arg-type]


def test_messages_are_frozen_slotted_and_hashable() -> None:
    message = PullRequest(1, 2)
    with pytest.raises(AttributeError):
        message.limit = 3  # type: ignore[misc]
    assert not hasattr(message, "__dict__")
    error = Error(ErrorCode.WRONG_SERVER, "m", detail={"a": 1})
    assert type(error.code) is str
    assert hash(error) == hash(Error("wrong_server", "m", detail={"a": 1}))
    with pytest.raises(TypeError):
        error.detail["b"] = 2  # type: ignore[index]
    assert PullBatch((), 3, 5).more
    assert not PullBatch((), 5, 5).more


# ---------------------------------------------------------------- error codes


def test_every_code_maps_to_one_caresync_exception() -> None:
    expected = {
        "unsupported_version": SyncRefusedError,
        "wrong_server": WrongServerError,
        "wrong_organisation": WrongOrganisationError,
        "bad_credentials": AuthenticationError,
        "session_expired": AuthenticationError,
        "throttled": AuthenticationError,
        "revoked": ReplicaRevokedError,
        "not_enrolled": NotEnrolledError,
        "forbidden": SyncRefusedError,
        "bad_message": ProtocolError,
        "too_large": ProtocolError,
        "busy": ConnectionLostError,
        "going_away": ConnectionLostError,
        "internal": ConnectionLostError,
        "client_too_old": ClientTooOldError,
        "feed_diverged": FeedDivergedError,
    }
    assert dict(ERROR_CLASSES) == expected
    assert {code.value for code in ErrorCode} == set(expected)
    for code, cls in expected.items():
        exc = error_for(code, "why")
        assert type(exc) is cls
        assert str(exc) == f"{code}: why"
        Error(code, "why")  # every code is a valid wire code
    unknown = error_for("from_the_future", "")
    assert type(unknown) is SyncRefusedError
    assert isinstance(unknown, CaresyncError)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ((True, "a", b"u"), r"items\[\]\.seq"),
        ((MAX_SEQ + 1, "a", b"u"), r"items\[\]\.seq"),
        ((2.0, "a", b"u"), r"items\[\]\.seq"),
        ((1, "a", b"u"), r"items\[\]\.seq"),  # not after the item before it
        ((3, "", b"u"), r"items\[\]\.record_id"),
        ((3, "x" * (MAX_ID_LENGTH + 1), b"u"), r"items\[\]\.record_id"),
        ((3, "a\nb", b"u"), r"items\[\]\.record_id"),
        ((3, b"a", b"u"), r"items\[\]\.record_id"),
        ((3, "a", b""), r"items\[\]\.update"),
        ((3, "a", bytearray(b"u")), r"items\[\]\.update"),
        ((3, "a", "u"), r"items\[\]\.update"),
    ],
)
def test_every_field_of_every_numbered_item_is_checked(item: tuple[Any, ...], match: str) -> None:
    """A batch's items pass one quick check in the usual case; each way an item can be
    wrong is still refused, naming the field."""
    with pytest.raises(LocalProtocolError, match=match):
        PullBatch(((1, "first", b"u"), item), MAX_SEQ, MAX_SEQ)  # type: ignore[arg-type]
    assert PullBatch(((1, "first", b"u"), (3, "a", b"u")), 3, 3).items[1] == (3, "a", b"u")
