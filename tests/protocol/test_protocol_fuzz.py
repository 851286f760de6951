"""Property tests: whatever arrives, only a typed protocol error (or a valid message) comes out."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.protocol.session import SAMPLES, client_in, server_in

from caresync.exceptions import (
    CaresyncError,
    LocalProtocolError,
    RemoteProtocolError,
)
from caresync.protocol import (
    MAX_ID_LENGTH,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    ClientProtocol,
    ClientState,
    CopyBatch,
    CopyRecord,
    Error,
    FeedItem,
    Message,
    PullBatch,
    PushBatch,
    PushItem,
    ServerProtocol,
    ServerState,
    decode_frame,
    encode_frame,
)

FUZZ = settings(
    max_examples=max(400, settings.default.max_examples),  # the soak profile goes further
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_FRAMES = [encode_frame(message) for message in SAMPLES.values()]


def decode_or_refuse(data: bytes) -> Message | None:
    """Decode ``data``; a RemoteProtocolError is fine, any other exception fails the test."""
    try:
        return decode_frame(data)[1]
    except RemoteProtocolError:
        return None


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            data.extend(draw(st.binary(min_size=1, max_size=4)))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0xC0, 0xC1, 0xC2, 0xC3, 0xCC, 0xDD, 0xFF]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def structured_frames(draw: st.DrawFn) -> bytes:
    """Well-formed msgpack in the envelope's shape, with fields of any type."""
    code = draw(st.sampled_from(sorted(MESSAGE_TYPES)) | st.integers(-5, 300))
    cls = MESSAGE_TYPES.get(code)
    names: tuple[str, ...] = cls.__slots__ if cls else ()  # type: ignore[assignment]
    body = {name: draw(msgpack_values) for name in names}
    if draw(st.booleans()):
        body.update(draw(st.dictionaries(st.text(max_size=12), msgpack_values, max_size=2)))
    if names and draw(st.booleans()):
        body.pop(draw(st.sampled_from(names)), None)
    version = draw(st.sampled_from([1, 1, 1, 0, 2, -1, 70000]))
    return msgpack.packb([version, code, body], use_bin_type=True)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(mutated_frames())
def test_mutated_and_truncated_frames(data: bytes) -> None:
    message = decode_or_refuse(data)
    if message is not None:  # what survives mutation is a valid message, re-encodable
        assert decode_frame(encode_frame(message, version=decode_frame(data)[0]))[1] == message


@FUZZ
@given(structured_frames())
def test_well_formed_msgpack_with_wrong_fields(data: bytes) -> None:
    decode_or_refuse(data)


def _open_end(kind: str) -> ClientProtocol | ServerProtocol:
    return {
        "client-hello-sent": lambda: client_in(ClientState.HELLO_SENT),
        "client-authenticating": lambda: client_in(ClientState.AUTHENTICATING),
        "client-ready": lambda: client_in(ClientState.READY),
        "server-awaiting-hello": lambda: server_in(ServerState.AWAITING_HELLO),
        "server-welcomed": lambda: server_in(ServerState.WELCOMED),
        "server-ready": lambda: server_in(ServerState.READY),
    }[kind]()


ENDS = st.sampled_from(
    [
        "client-hello-sent",
        "client-authenticating",
        "client-ready",
        "server-awaiting-hello",
        "server-welcomed",
        "server-ready",
    ]
)


@FUZZ
@given(ENDS, st.lists(mutated_frames() | structured_frames() | st.binary(max_size=64), max_size=4))
def test_protocol_ends_only_raise_typed_errors(kind: str, frames: list[bytes]) -> None:
    """Fed garbage, an end raises a CaresyncError (never a local one), then stays over."""
    end = _open_end(kind)
    for data in frames:
        was_over = end.close_expected
        raised: CaresyncError | None = None
        try:
            end.receive_data(data)
        except LocalProtocolError as exc:  # our own bug, never the peer's input
            raise AssertionError(f"receive_data raised a local error: {exc!r}") from exc
        except CaresyncError as exc:
            raised = exc
        if raised is not None:
            assert not was_over
            assert end.close_expected
            assert end.failure is raised
        else:
            assert was_over or end.failure is None
        for reply in end.data_to_send():  # whatever it queued is a valid frame
            decode_frame(reply)
        end.events_received()
    if isinstance(end.failure, RemoteProtocolError):
        assert end.peer_error is None


# ------------------------------------------------------------------- round trip

ids = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]),
    min_size=1,
    max_size=MAX_ID_LENGTH,
).filter(str.isprintable)
updates = st.binary(min_size=1, max_size=64)
seqs = st.integers(1, 2**63 - 1)


@st.composite
def valid_messages(draw: st.DrawFn) -> Message:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        record_ids = sorted(draw(st.sets(ids, max_size=8)))
        records = tuple(CopyRecord(rid, draw(updates)) for rid in record_ids)
        done = draw(st.integers(len(records), 10**6))
        final = draw(st.booleans()) or not records
        last = records[-1].record_id if records else draw(st.none() | ids)
        return CopyBatch(records, done, done + 5, 10, 20, last, draw(seqs), final)
    if choice == 1:
        numbers = sorted(draw(st.sets(seqs, max_size=8)))
        items = tuple(FeedItem(n, draw(ids), draw(updates)) for n in numbers)
        checkpoint = draw(st.integers(numbers[-1] if numbers else 0, 2**63 - 1))
        return PullBatch(items, checkpoint, draw(st.integers(checkpoint, 2**63 - 1)))
    if choice == 2:
        numbers = sorted(draw(st.sets(seqs, min_size=1, max_size=8)))
        return PushBatch(tuple(PushItem(n, draw(ids), draw(updates)) for n in numbers))
    if choice == 3:
        detail = draw(
            st.dictionaries(
                st.text(min_size=1, max_size=10).filter(str.isprintable),
                st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
                max_size=5,
            )
        )
        return Error(
            draw(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)), "m", True, detail
        )
    return draw(st.sampled_from(list(SAMPLES.values())))


@FUZZ
@given(valid_messages())
def test_round_trip_of_generated_messages(message: Message) -> None:
    assert decode_frame(encode_frame(message)) == (PROTOCOL_VERSION, message)


def test_structured_strategy_reaches_every_type() -> None:
    """A guard that the fuzz corpus covers every message type's fields."""
    assert all(cls.__slots__ for cls in MESSAGE_TYPES.values())
    assert {type(decode_frame(f)[1]) for f in VALID_FRAMES} == set(MESSAGE_TYPES.values())


def test_a_few_known_nasty_inputs() -> None:
    nasty: list[Any] = [
        b"\x93\x01\x01\x80",  # Hello with an empty body
        b"\x93\x01\x7e\xc0",  # Error with a nil body
        b"\xdc\x00\x03\x01\x01\x80",  # array 16 envelope
        msgpack.packb([1, 20, {"items": [[1, "r", b"u"]] * 3}]),  # equal local_seqs
        msgpack.packb(
            [
                1,
                17,
                {
                    "records": [["a", b"u"]],
                    "done_records": 1,
                    "total_records": 1,
                    "done_bytes": 0,
                    "total_bytes": 0,
                    "last_record_id": None,
                    "feed_checkpoint": 0,
                    "final": True,
                },
            ]
        ),
    ]
    for data in nasty:
        assert decode_or_refuse(data) is None
