"""Hybrid logical clock: wall-clock milliseconds plus a counter.

Times from it never go backwards on one replica and always move past any time the
replica has seen from another, so "written after" is consistent with causality
even when laptop clocks disagree. It orders revisions for display; it never
decides which value wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

__all__ = ["HybridLogicalClock", "Timestamp"]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Timestamp(NamedTuple):
    """A point of a hybrid logical clock: ``wall_ms`` then ``counter``; ordered as a tuple."""

    wall_ms: int
    counter: int = 0

    def to_datetime(self) -> datetime:
        """The wall-clock part as an aware UTC datetime."""
        return datetime.fromtimestamp(self.wall_ms / 1000, tz=UTC)

    def isoformat(self) -> str:
        """ISO 8601 with milliseconds, e.g. ``2026-11-22T10:24:09.123Z``."""
        return self.to_datetime().isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HybridLogicalClock:
    """A replica's clock. ``now`` gives wall-clock milliseconds (injectable for tests)."""

    __slots__ = ("_counter", "_last", "_now")

    def __init__(self, now: Callable[[], int] = _wall_ms) -> None:
        self._now = now
        self._last = 0
        self._counter = 0

    def tick(self) -> Timestamp:
        """A new timestamp, later than every one this clock gave or observed."""
        wall = self._now()
        if wall > self._last:
            self._last, self._counter = wall, 0
        else:
            self._counter += 1
        return Timestamp(self._last, self._counter)

    def observe(self, wall_ms: int, counter: int) -> None:
        """Move past a timestamp seen in a revision from another replica."""
        if (wall_ms, counter) > (self._last, self._counter):
            self._last, self._counter = wall_ms, counter
