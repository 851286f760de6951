"""Damaged caresync updates, fed to every pure entry point: each is taken or refused cleanly.

The valid updates come from ``benchmarks/fuzz_updates.py`` (three writers of one
record: fields, entries, a signed note, a conflict and its resolution); the
same mutations run there at scale. Here hypothesis damages them — bit flips,
truncation, splices of two updates, byte insertion and deletion, varuints
re-encoded longer or set to boundary values, runs of ``0xff .. 0x7f`` — and
each entry point must take the bytes or raise InvalidUpdateError (a store: any
CaresyncError), never anything else. What refused must be as it was, or (a
record whose document pycrdt may have half-changed) refuse further use.
Falsifying examples print the damaged bytes, which reproduce the failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from benchmarks.fuzz_updates import (
    OTHER_RECORD_ID,
    RECORD_ID,
    VARUINT,
    build_corpus,
    encode_varuint,
    inflated,
    seeded_store,
    store_snapshot,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from caresync import CaresyncError, InvalidUpdateError, Record, RecordMismatchError
from caresync.storage import IncomingUpdate, MemoryStore, _updates

CORPUS = build_corpus()
BASE_VECTOR = _updates.state_vector_of(CORPUS.base, record_id=RECORD_ID)
# Scaled from the profile's budget (HYPOTHESIS_PROFILE): dev 120, ci 240, soak 8000.
EXAMPLES = settings(max_examples=settings.default.max_examples * 4)


def _header_varuints(update: bytes) -> list[bytes]:
    return [m.group() for m in VARUINT.finditer(update)][:4]


# The base state with its first client's struct count set to 0: pycrdt panics when
# a document that knows the client applies it (yrs BlockSet::exclude). Pinned, so
# every run meets a panic whatever hypothesis draws.
_clients, _structs, _client, _clock = _header_varuints(CORPUS.base)
ZERO_STRUCTS = _clients + b"\x00" + _client + _clock + b"\x00"


# ------------------------------------------------------------------- mutations

Draw = Callable[[st.SearchStrategy[Any]], Any]


def _index(draw: Draw, data: bytes, *, end: bool = False) -> int:
    top = len(data) if end else len(data) - 1
    return int(draw(st.integers(0, max(top, 0))))


def bit_flip(draw: Draw, data: bytes) -> bytes:
    if not data:
        return data
    i = _index(draw, data)
    return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]


def truncate(draw: Draw, data: bytes) -> bytes:
    return data[: _index(draw, data)]


def splice(draw: Draw, data: bytes) -> bytes:
    other: bytes = draw(st.sampled_from(CORPUS.updates))
    return data[: _index(draw, data, end=True)] + other[_index(draw, other, end=True) :]


def insert_bytes(draw: Draw, data: bytes) -> bytes:
    i = _index(draw, data, end=True)
    return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]


def delete_bytes(draw: Draw, data: bytes) -> bytes:
    i = _index(draw, data)
    return data[:i] + data[i + draw(st.integers(1, 4)) :]


def inflate_varint(draw: Draw, data: bytes) -> bytes:
    """A varuint re-encoded with more bytes than it needs (the same value)."""
    tokens = list(VARUINT.finditer(data))
    if not tokens:
        return data
    token = draw(st.sampled_from(tokens))
    longer = inflated(token.group(), draw(st.integers(1, 9)))
    return data[: token.start()] + longer + data[token.end() :]


def set_varint(draw: Draw, data: bytes) -> bytes:
    """A varuint (a count, length, client or clock) set to a boundary value."""
    tokens = list(VARUINT.finditer(data))
    if not tokens:
        return data
    token = draw(st.sampled_from(tokens))
    value = draw(st.sampled_from([0, 1, 2, 127, 128, 2**31, 2**53 - 1, 2**64 - 1]))
    return data[: token.start()] + encode_varuint(value) + data[token.end() :]


def insert_run(draw: Draw, data: bytes) -> bytes:
    """``0xff`` bytes ended by ``0x7f``: a varuint far too large for anything."""
    i = _index(draw, data, end=True)
    return data[:i] + b"\xff" * draw(st.integers(1, 12)) + b"\x7f" + data[i:]


MUTATIONS: dict[str, Callable[[Draw, bytes], bytes]] = {
    "bit_flip": bit_flip,
    "truncate": truncate,
    "splice": splice,
    "insert_bytes": insert_bytes,
    "delete_bytes": delete_bytes,
    "inflate_varint": inflate_varint,
    "set_varint": set_varint,
    "insert_run": insert_run,
}


@st.composite
def damaged_updates(draw: Draw) -> bytes:
    """A valid caresync update with one to three mutations."""
    data: bytes = draw(st.sampled_from(CORPUS.updates))
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3)):
        data = MUTATIONS[name](draw, data)
    return data


# --------------------------------------------------------------------- checks


def taken(fn: Callable[[], object], refusals: tuple[type[BaseException], ...]) -> bool:
    """True if ``fn`` succeeded, False if it refused; anything else fails the test."""
    try:
        fn()
    except refusals:
        return False
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise AssertionError(f"escaped the boundary: {type(exc).__name__}: {exc}") from exc
    return True


def assert_as_before_or_refusing(record: Record, vector: bytes, revision_ids: set[str]) -> None:
    """A record that refused an update is as it was, or refuses any further use."""
    try:
        now = record.state_vector()
    except InvalidUpdateError:
        for use in (
            record.state_vector,
            lambda: record.set("heightCm", 1, author="dr.t"),
            lambda: record.apply_update(CORPUS.base),
        ):
            with pytest.raises(InvalidUpdateError, match="no longer usable"):
                use()
        return
    assert _updates.same_state_vector(now, vector)
    assert {r.id for r in record.revisions()} == revision_ids


def assert_index_matches_a_fresh_load(record: Record) -> None:
    """Revisions indexed from change events are those a one-pass load of the same bytes finds."""
    reloaded = Record(RECORD_ID, replica="laptop-reload")
    reloaded.apply_update(record.update_since())
    assert {r.id for r in reloaded.revisions()} == {r.id for r in record.revisions()}
    assert reloaded.invalid_revision_ids == record.invalid_revision_ids


# ---------------------------------------------------------------------- tests


@EXAMPLES
@given(damaged_updates())
@example(ZERO_STRUCTS)
def test_records_take_or_refuse_damaged_updates(update: bytes) -> None:
    fresh = Record(RECORD_ID, replica="laptop-fresh")
    if not taken(lambda: fresh.apply_update(update), (InvalidUpdateError,)):
        assert_as_before_or_refusing(fresh, b"\x00", set())

    populated = Record.from_update(RECORD_ID, CORPUS.base, replica="laptop-populated")
    before = {r.id for r in populated.revisions()}
    if taken(lambda: populated.apply_update(update), (InvalidUpdateError,)):
        # Not "only added": damaged bytes can make a valid delete set. The index
        # must follow the document either way.
        assert_index_matches_a_fresh_load(populated)
    else:
        assert_as_before_or_refusing(populated, BASE_VECTOR, before)

    # Loading checks the record's id, which a damaged update may have changed.
    loading = (InvalidUpdateError, RecordMismatchError)
    taken(lambda: Record.from_updates(RECORD_ID, [CORPUS.base, update], replica="l"), loading)
    taken(lambda: Record.from_updates(RECORD_ID, [update], replica="l"), loading)


def test_the_pinned_example_does_meet_a_panic() -> None:
    populated = Record.from_update(RECORD_ID, CORPUS.base, replica="laptop-populated")
    with pytest.raises(InvalidUpdateError) as error:
        populated.apply_update(ZERO_STRUCTS)
    assert type(error.value.__cause__).__name__ == "PanicException"
    assert_as_before_or_refusing(populated, BASE_VECTOR, set())  # it refuses further use


@EXAMPLES
@given(damaged_updates())
@example(ZERO_STRUCTS)
def test_storage_byte_helpers_take_or_refuse_damaged_updates(update: bytes) -> None:
    refusals = (InvalidUpdateError,)
    taken(lambda: _updates.merge([CORPUS.base, update], record_id=RECORD_ID), refusals)
    if taken(lambda: _updates.state_vector_of(update, record_id=RECORD_ID), refusals):
        # Readable bytes may still merge into bytes pycrdt cannot read back (found by
        # this test: a panic in update.rs); either way only InvalidUpdateError comes out.
        merged = _updates.merge([update], record_id=RECORD_ID)
        if taken(lambda: _updates.state_vector_of(merged, record_id=RECORD_ID), refusals):
            vector = _updates.state_vector_of(merged, record_id=RECORD_ID)
            assert isinstance(_updates.has_pending(merged, vector), bool)
    taken(lambda: _updates.has_pending(update, BASE_VECTOR), refusals)
    taken(lambda: _updates.covered_by(update, BASE_VECTOR), refusals)
    taken(lambda: _updates.covered_by(CORPUS.base, update), refusals)  # bytes as a vector
    taken(lambda: _updates.advance(BASE_VECTOR, [update], record_id=RECORD_ID), refusals)
    taken(lambda: _updates.decode_state_vector(update), refusals)
    taken(lambda: _updates.same_state_vector(update, BASE_VECTOR), refusals)
    # A compaction check reports what it cannot decode; it never raises.
    found = _updates.verify_compaction(CORPUS.base, [update], CORPUS.base, BASE_VECTOR)
    assert found is None or isinstance(found, str)


async def _write_to_fresh_store(
    write: Callable[[MemoryStore], Any],
) -> tuple[bool, tuple[object, ...], tuple[object, ...], list[str]]:
    store = await seeded_store(CORPUS)
    before = await store_snapshot(store)
    try:
        await write(store)
        took = True
    except CaresyncError:
        took = False
    return took, before, await store_snapshot(store), await store.check()


@EXAMPLES
@given(damaged_updates())
@example(ZERO_STRUCTS)
def test_a_memory_store_takes_or_refuses_damaged_updates_and_stays_sound(update: bytes) -> None:
    writes: list[Callable[[MemoryStore], Any]] = [
        lambda s: s.write_local(RECORD_ID, update, conflicts=None),
        lambda s: s.write_remote(
            [IncomingUpdate(RECORD_ID, update, None)], checkpoint=("pull", "2"), to_feed=True
        ),
        lambda s: s.write_remote(
            [IncomingUpdate(OTHER_RECORD_ID, update, None)], checkpoint=("pull", "2")
        ),
    ]
    for write in writes:
        try:
            took, before, after, problems = asyncio.run(_write_to_fresh_store(write))
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise AssertionError(f"escaped the store: {type(exc).__name__}: {exc}") from exc
        if not took:
            assert after == before  # a refused write stored nothing, anywhere
        assert problems == []
