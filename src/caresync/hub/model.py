"""The health-hub outbox's pure core: which records ask for it, held or due, retry timing.

A patient's summary is kept current on the hub when its record holds ``true``
at :data:`HUB_PATH` (``hub/summary``): a replicated revision like a link
decision, written by the account logged in, so it works offline. Two people
marking and unmarking it concurrently make an ordinary field conflict, which
holds the summary until someone chooses.

No I/O here: the server's shell (:mod:`caresync.hub.sender`) sends, the store
keeps the rows (:class:`~caresync.storage.HubSummaryRow`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from caresync.conflicts import RecordView
from caresync.records import Record
from caresync.storage.base import ConflictRow, HubMark

__all__ = [
    "HUB_PATH",
    "MAX_REASON_LENGTH",
    "RETRY_BASE_MS",
    "RETRY_MAX_MS",
    "HubSummary",
    "Verdict",
    "hold_reason",
    "hub_mark",
    "is_enabled",
    "retry_delay_ms",
    "short_reason",
    "verdict_of",
]

HUB_PATH = "hub/summary"
"""The field that asks for a patient's summary to be kept on the hub (``true``) or not."""

RETRY_BASE_MS = 1_000
"""The first retry waits about this long (then twice as long each time, jittered)."""
RETRY_MAX_MS = 300_000
"""No retry waits longer than this (5 minutes): a hub back up is used within that."""
MAX_REASON_LENGTH = 500
"""The longest reason kept (a hub's message is cut to fit)."""

Verdict = Literal["sent", "retry", "failed"]


def is_enabled(record: Record | RecordView) -> bool:
    """True if the record asks for its summary on the hub.

    A concurrent ``true`` and ``false`` count as asked: the field conflict then
    holds the summary until someone settles it (nothing is sent meanwhile).
    """
    state = record.get(HUB_PATH)
    if not state.exists:
        return False
    if state.in_conflict:
        return any(head.value is True for head in state.heads)
    return state.value is True


def hold_reason(conflicts: Iterable[tuple[str, str, str]]) -> str | None:
    """Why a summary must wait, from its record's open conflicts, or None.

    ``conflicts`` are (id, severity, subject) triples. A ``block`` finding or
    a field conflict (always ``block``) holds it: the hub must never receive a
    value a clinician has not settled. ``flag`` and ``info`` findings do not.
    """
    blocking = [(cid, subject) for cid, severity, subject in conflicts if severity == "block"]
    if not blocking:
        return None
    first_id, first_subject = sorted(blocking)[0]
    more = f" and {len(blocking) - 1} more" if len(blocking) > 1 else ""
    return short_reason(
        f"held: open conflict {first_id} ({first_subject}){more}; resolve it to send the summary"
    )


def hub_mark(record: Record, rows: Sequence[ConflictRow] | None) -> HubMark | None:
    """What a change to ``record`` makes of its hub summary (None: it never asked for one).

    ``rows`` are the record's conflict index rows after the change: the server
    decides held or pending from them when it commits (its sender checks again,
    across linked records too, before each attempt).
    """
    if not record.get(HUB_PATH).exists:
        return None
    if not is_enabled(record):
        return HubMark(False)
    held = hold_reason((row.id, row.severity, row.subject) for row in rows or ())
    return HubMark(True, held)


def verdict_of(status: int) -> Verdict:
    """What a hub's HTTP status means: 2xx sent; 408, 429 and 5xx retried; other 4xx failed."""
    if 200 <= status < 300:
        return "sent"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "failed"


def retry_delay_ms(
    attempts: int,
    random: Callable[[], float],
    *,
    base_ms: int = RETRY_BASE_MS,
    max_ms: int = RETRY_MAX_MS,
) -> int:
    """How long to wait after ``attempts`` failed attempts in a row (1 on).

    Doubling from ``base_ms``, capped at ``max_ms``, then jittered into its
    upper half (``random()`` in [0, 1)), so many summaries failing together do
    not come back together. Bounded: never above ``max_ms``.
    """
    exponent = min(max(attempts, 1) - 1, 32)  # 2**32 s is far past any cap
    ceiling = min(max_ms, base_ms * 2**exponent)
    fraction = min(max(random(), 0.0), 1.0)
    return max(1, int(ceiling * (0.5 + fraction / 2)))


def short_reason(text: str) -> str:
    """``text`` on one printable line of at most :data:`MAX_REASON_LENGTH` characters."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = " ".join(flat.split())
    if len(flat) > MAX_REASON_LENGTH:
        flat = flat[: MAX_REASON_LENGTH - 3] + "..."
    return flat or "(no message)"


@dataclass(frozen=True, slots=True)
class HubSummary:
    """One patient's summary as ``caresync hub status`` shows it."""

    record_id: str
    state: str
    """``pending`` (not on the hub yet), ``held``, ``sent`` or ``failed``."""
    version: int | None
    """The version of the record it is about (the server's feed seq); None: not known here."""
    reason: str | None
    """Why it is held or failed, or what the last retried attempt met; else None."""
    last_attempt_ms: int | None
    """When the server last sent it (ms since the epoch), or None."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of ``hub status --json``."""
        return {
            "record_id": self.record_id,
            "state": self.state,
            "version": self.version,
            "reason": self.reason,
            "last_attempt": iso_time(self.last_attempt_ms),
        }


def iso_time(ms: int | None) -> str | None:
    """ISO 8601 (UTC) of a time in ms since the epoch, or None."""
    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isoformat(
        timespec="milliseconds"
    )
