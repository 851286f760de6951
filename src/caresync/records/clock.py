"""Hybrid logical clock: wall-clock milliseconds plus a counter.

Times from it never go backwards on one replica and always move past any time the
replica has seen from another, so "written after" is consistent with causality
even when laptop clocks disagree. It orders revisions for display; it never
decides which value wins.

A time read from a peer moves the clock only within bounds: a revision dated
more than :data:`MAX_CLOCK_AHEAD_MS` ahead of this machine's own clock (a laptop
whose clock was set years ahead, or a hostile peer) is kept and shown, but the
clock does not jump to it, or every later write of this replica would carry
the bogus date too. The server refuses such revisions in the first place
(:mod:`caresync.records.admission` shares the bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from caresync.exceptions import InvalidValueError

__all__ = ["COUNTER_LIMIT", "MAX_CLOCK_AHEAD_MS", "HybridLogicalClock", "Timestamp"]

MAX_CLOCK_AHEAD_MS = 24 * 60 * 60 * 1000
"""How far ahead of a machine's own clock a time read from a peer may be: 24 hours.

Wide enough for any honest laptop (a wrong time zone is at most 14 hours off,
a clock a few minutes fast is common), narrow enough that one bad clock cannot
move every replica's clock days or centuries ahead.
"""

COUNTER_LIMIT = 2**31
"""Counters are below this (a clock ticks far fewer times in one millisecond).

A larger counter read from a peer is ignored as a jump: it would otherwise
carry into this replica's own timestamps, which servers refuse.
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Timestamp(NamedTuple):
    """A point of a hybrid logical clock: ``wall_ms`` then ``counter``; ordered as a tuple."""

    wall_ms: int
    counter: int = 0

    def to_datetime(self) -> datetime:
        """The wall-clock part as an aware UTC datetime.

        Raises InvalidValueError for a time outside the years 1 to 9999 (a
        datetime cannot hold it): a revision from a peer may carry any integer,
        and a clamped date would show a time nobody wrote. :meth:`isoformat`
        never raises.
        """
        try:
            return _EPOCH + timedelta(milliseconds=self.wall_ms)
        except OverflowError:
            raise InvalidValueError(
                f"time {self.wall_ms} ms since 1970-01-01 is outside the years 1 to 9999"
            ) from None

    def isoformat(self) -> str:
        """ISO 8601 with milliseconds, e.g. ``2026-11-22T10:24:09.123Z``.

        A time outside the years 1 to 9999 reads
        ``<wall_ms> ms since 1970-01-01 UTC (out of date range)`` instead.
        """
        try:
            moment = _EPOCH + timedelta(milliseconds=self.wall_ms)
        except OverflowError:
            return f"{self.wall_ms} ms since 1970-01-01 UTC (out of date range)"
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HybridLogicalClock:
    """A replica's clock. ``now`` gives wall-clock milliseconds (injectable for tests).

    ``max_ahead_ms`` bounds how far ahead of ``now()`` an observed time may
    move it (see :meth:`observe`).
    """

    __slots__ = ("_counter", "_last", "_max_ahead", "_now")

    def __init__(
        self, now: Callable[[], int] = _wall_ms, *, max_ahead_ms: int = MAX_CLOCK_AHEAD_MS
    ) -> None:
        self._now = now
        self._max_ahead = max_ahead_ms
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

    def horizon_ms(self) -> int:
        """The latest wall time this clock would move to now (``now() + max_ahead_ms``)."""
        return self._now() + self._max_ahead

    def observe(self, wall_ms: int, counter: int) -> None:
        """Move past a timestamp seen in a revision from another replica.

        A time more than ``max_ahead_ms`` ahead of this clock's ``now()``, or
        a counter outside ``[0, COUNTER_LIMIT)``, is ignored: the clock never
        jumps on reading. (Such a revision still orders after everything this
        clock gives until the wall clock catches up; times order display only.)
        """
        if (wall_ms, counter) > (self._last, self._counter):
            if not 0 <= counter < COUNTER_LIMIT:
                return
            # Reading the wall clock only when the time would move the clock
            # forward keeps loading a record (an observe per revision) cheap.
            if wall_ms > self._last and wall_ms - self._now() > self._max_ahead:
                return
            self._last, self._counter = wall_ms, counter
