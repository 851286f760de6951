"""The count rule: a count below zero, and writes a count could not read.

A count (``stock/...``, and whatever a schema declares with
``Schema.with_counts``) sums the changes of all its revisions, so concurrent
writes add up and never conflict (see :class:`~caresync.records.CountState`).
What can go wrong is the sum itself: two laptops each dispense the last box,
and the stock reads -1. No single write is wrong; a person must count again.

``count_below_zero`` is pure and deterministic: it reads each count's total and
heads (its latest writes, which no later write had seen), the same on every
replica holding the same revisions, so its findings have the same ids
everywhere. A finding names the count's heads: a person who recounts writes the
counted value (``Record.set``), a revision whose parents are every head, so
the heads change and, the count being no longer below zero, the finding
closes on every replica that receives the recount.
"""

from __future__ import annotations

from collections.abc import Iterator

from caresync.conflicts.fingerprint import versioned
from caresync.conflicts.model import Finding, Severity
from caresync.conflicts.view import RecordView
from caresync.records import CountState, Revision, count_change

__all__ = ["COUNT_BELOW_ZERO", "UNCOUNTED_WRITE", "count_below_zero"]

COUNT_BELOW_ZERO = "count-below-zero"
"""The rule name of a count below zero (``block``)."""
UNCOUNTED_WRITE = "uncounted-write"
"""The rule name of a latest write of a count that records no change (``flag``)."""

# Part of every rulebook's fingerprint: BUMP whenever the rule's behaviour
# changes (what it finds, its severity, message, key or revisions).
_COUNT_BELOW_ZERO_VERSION = 1
_STOCK_PREFIX = "stock/"


@versioned(_COUNT_BELOW_ZERO_VERSION)
def count_below_zero(view: RecordView) -> Iterator[Finding]:
    """A count whose total is below zero (block); a latest write it cannot count (flag).

    The ``block`` finding names the count's heads: the concurrent writes that
    no one has seen together yet (for two laptops that each dispensed the
    last box, both dispensings). It closes when someone writes the counted
    value. A revision whose value records no change (a malformed write from a
    peer, or a non-integer written before the path was a count) is left out of
    the total; while it is a head, a ``flag`` finding says so.
    """
    for path in _count_paths(view):
        state = view.get(path)
        if not isinstance(state, CountState) or not state.heads:
            continue
        if state.total < 0:
            yield Finding(
                rule=COUNT_BELOW_ZERO,
                severity=Severity.BLOCK,
                message=(
                    f"{_name(path)} is {state.total} {_after(path, state.heads)}: "
                    "recount it and enter the counted value"
                ),
                revisions=tuple(h.id for h in state.heads),
                key=path,
                value_path=path,
            )
        if not state.uncounted:
            continue
        heads = {h.id for h in state.heads}
        unread = [r for r in state.uncounted if r.id in heads]
        if unread:
            writes = ", ".join(f"{_who(r)} ({r.value!r:.60})" for r in unread)
            several = len(unread) > 1
            yield Finding(
                rule=UNCOUNTED_WRITE,
                severity=Severity.FLAG,
                message=(
                    f"{_name(path)}: {'writes' if several else 'a write'} by {writes} "
                    f"{'are' if several else 'is'} not a count and "
                    f"{'were' if several else 'was'} left out of its total ({state.total}): "
                    "recount it and enter the counted value"
                ),
                revisions=tuple(r.id for r in unread),
                key=path,
            )


def _count_paths(view: RecordView) -> list[str]:
    """The record's count paths, sorted.

    Read from the record itself: the view offers every path (``paths()``), but
    only the record's schema knows which are counts, and building the state
    of every path to find out would cost a rule run a state per field.
    """
    return view.count_paths()


def _name(path: str) -> str:
    if path.startswith(_STOCK_PREFIX):
        return f"stock of {path[len(_STOCK_PREFIX) :]}"
    return f"count {path}"


def _who(rev: Revision) -> str:
    return f"{rev.author} on {rev.replica}"


def _change(rev: Revision) -> str:
    change = count_change(rev.value)
    if change is not None:
        return f"{change:+d}"
    if type(rev.value) is int:
        return f"set to {rev.value}"
    return "not counted"


def _after(path: str, heads: tuple[Revision, ...]) -> str:
    """The latest writes, in words: "after 2 concurrent dispensings (ana on laptop-1: -1, ...)"."""
    changes = [count_change(h.value) for h in heads]
    dispensing = path.startswith(_STOCK_PREFIX) and all(c is not None and c < 0 for c in changes)
    noun = "dispensing" if dispensing else "change"
    writes = ", ".join(f"{_who(h)}: {_change(h)}" for h in heads)
    if len(heads) == 1:
        return f"after a {noun} by {writes}"
    return f"after {len(heads)} concurrent {noun}s ({writes})"
