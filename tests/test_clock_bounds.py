"""A replica's clock never jumps on reading, and no timestamp breaks display."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Map

from caresync import InvalidValueError
from caresync.records import MAX_CLOCK_AHEAD_MS, HybridLogicalClock, Record, Revision, Timestamp
from caresync.records.clock import COUNTER_LIMIT
from caresync.records.revision import encode_revision

NOW = 1_763_800_000_000  # 2025-11-22
FIRST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def fixed_clock(now: int = NOW) -> HybridLogicalClock:
    return HybridLogicalClock(now=lambda: now)


# ------------------------------------------------------------------- observing


def test_observe_moves_to_a_time_within_the_bound() -> None:
    clock = fixed_clock()
    clock.observe(NOW + MAX_CLOCK_AHEAD_MS, 3)
    assert clock.tick() == Timestamp(NOW + MAX_CLOCK_AHEAD_MS, 4)


def test_observe_ignores_a_time_beyond_the_bound() -> None:
    clock = fixed_clock()
    clock.observe(NOW + MAX_CLOCK_AHEAD_MS + 1, 0)
    clock.observe(10**15, 0)  # the year 33658
    assert clock.tick() == Timestamp(NOW, 0)


def test_the_bound_follows_the_clocks_own_time() -> None:
    now = [NOW]
    clock = HybridLogicalClock(now=lambda: now[0])
    ahead = NOW + 2 * MAX_CLOCK_AHEAD_MS
    clock.observe(ahead, 0)
    assert clock.tick() == Timestamp(NOW, 0)
    now[0] = NOW + MAX_CLOCK_AHEAD_MS  # a day later the same time is within the bound
    clock.observe(ahead, 0)
    assert clock.tick() == Timestamp(ahead, 1)


def test_the_bound_is_configurable() -> None:
    clock = HybridLogicalClock(now=lambda: NOW, max_ahead_ms=1000)
    clock.observe(NOW + 1001, 0)
    assert clock.tick() == Timestamp(NOW, 0)
    clock.observe(NOW + 1000, 0)
    assert clock.tick() == Timestamp(NOW + 1000, 1)


@pytest.mark.parametrize("counter", [COUNTER_LIMIT, 2**62, -1])
def test_observe_ignores_a_counter_out_of_range(counter: int) -> None:
    clock = fixed_clock()
    clock.tick()
    clock.observe(NOW, counter)
    assert clock.tick() == Timestamp(NOW, 1)


def test_observe_still_moves_past_a_same_time_counter() -> None:
    clock = fixed_clock()
    clock.tick()
    clock.observe(NOW, 41)
    assert clock.tick() == Timestamp(NOW, 42)


timestamps = st.tuples(st.integers(-(2**70), 2**70), st.integers(-(2**40), 2**40))


@given(st.lists(timestamps, max_size=20))
def test_the_clock_never_goes_past_the_bound(seen: list[tuple[int, int]]) -> None:
    clock = fixed_clock()
    before = clock.tick()
    for wall, counter in seen:
        clock.observe(wall, counter)
        after = clock.tick()
        assert before < after
        assert after.wall_ms <= NOW + MAX_CLOCK_AHEAD_MS
        assert 0 <= after.counter < COUNTER_LIMIT + len(seen) + 1
        before = after


def test_loading_a_record_with_a_far_future_revision_leaves_the_clock_alone() -> None:
    writer = Record.create(replica="laptop", clock=fixed_clock())
    writer.set("birthDate", "1970-01-01", author="dr a")
    # A peer's revision dated 10**15 ms, written into the map with pycrdt.
    peer: Doc[Any] = Doc()
    peer.apply_update(writer.update_since())
    bogus = Revision("f" * 16, "weight", 70, (), "x", "y", Timestamp(10**15, 0))
    peer.get("revisions", type=Map)[bogus.id] = encode_revision(bogus)
    reader = Record.from_update(
        writer.record_id, peer.get_update(), replica="other", clock=fixed_clock()
    )
    assert reader.value("weight") == 70  # kept and shown
    assert reader.history("weight")[0].as_dict()["at"].endswith("(out of date range)")
    # Past the writer's sane revision (NOW, 0), as a hybrid clock must be; never 10**15.
    assert reader.set("height", 180, author="dr b").at == Timestamp(NOW, 1)


# -------------------------------------------------------------------- display


@pytest.mark.parametrize(
    ("wall_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (NOW + 123, "2025-11-22T08:26:40.123Z"),
        (FIRST_MS, "0001-01-01T00:00:00.000Z"),
        (LAST_MS, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_isoformat_in_range(wall_ms: int, text: str) -> None:
    assert Timestamp(wall_ms).isoformat() == text
    assert Timestamp(wall_ms).to_datetime().isoformat(timespec="milliseconds")[:23] == text[:23]


@pytest.mark.parametrize("wall_ms", [LAST_MS + 1, FIRST_MS - 1, 10**15, 10**40, -(10**40)])
def test_out_of_range_times_read_as_milliseconds(wall_ms: int) -> None:
    assert Timestamp(wall_ms).isoformat() == (
        f"{wall_ms} ms since 1970-01-01 UTC (out of date range)"
    )
    with pytest.raises(InvalidValueError, match="outside the years 1 to 9999"):
        Timestamp(wall_ms).to_datetime()


@given(st.integers())
def test_isoformat_never_raises(wall_ms: int) -> None:
    text = Timestamp(wall_ms).isoformat()
    assert text.endswith("Z") or text.endswith("(out of date range)")


@given(st.integers(FIRST_MS, LAST_MS))
def test_to_datetime_is_exact_to_the_millisecond(wall_ms: int) -> None:
    moment = Timestamp(wall_ms).to_datetime()
    assert moment.tzinfo is UTC
    back = moment - datetime(1970, 1, 1, tzinfo=UTC)
    assert back.days * 86_400_000 + back.seconds * 1000 + back.microseconds // 1000 == wall_ms
    assert back.microseconds % 1000 == 0
