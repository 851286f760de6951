"""A pull's feed entries, one per record: what protocol version 10 sends.

A laptop back from days offline pulls every edit made meanwhile; many name the
same records (a busy ward's charts are written all day). Sent entry by entry, it
takes them in batches of ``limit`` entries, and each batch checks, stores and
commits every record it touches once more. From version 10 the server merges a
record's edits into one update (a Yjs merge: bytes only, no record built), so a
batch names each record once and covers as many feed entries as its ``limit`` of
items and its frame allow: the laptop's work then follows the records changed, not
the edits made.

Only updates that add revisions merge: a simple update (:mod:`caresync.records.spans`)
whose every item writes a fresh key of the ``revisions`` map, which is what an edit
is. Anything else (a record's first update, which names it; a feed row written
before admission checked it) goes on its own, as before: a laptop keeps aside an
update that will not merge into the record, and must not keep others' edits aside
with it.

Pure: no I/O. The server reads the feed in chunks and gives each to
:meth:`Coalescer.take` until the coalescer is full or the feed has no more.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from caresync.exceptions import InvalidUpdateError
from caresync.protocol.codec import item_wire_size
from caresync.records.crdt import merge
from caresync.records.spans import simple_items
from caresync.storage import FeedItem

__all__ = ["Coalescer", "MergeVerdicts"]


_REVISIONS = "revisions"


def adds_revisions_only(update: bytes) -> bool:
    """True if ``update`` only adds revisions: safe to merge with others of its kind."""
    simple = simple_items(update)
    return simple is not None and all(
        item.root == _REVISIONS and item.key is not None for item in simple.items
    )


class MergeVerdicts:
    """:func:`adds_revisions_only` of updates seen before, remembered up to ``max_bytes``
    of updates (least recently used go first).

    Every laptop that pulls reads the same feed entries, so a server that classified
    each anew parsed every edit once per laptop: at 100 simulated laptops a third of
    the server's CPU. The verdict is a pure function of the bytes, so it is keyed by
    them (a lookup hashes and compares bytes, no parse); an update larger than
    ``max_bytes // 64`` is classified each time rather than evict many small ones.
    """

    __slots__ = ("_bytes", "_max_bytes", "_verdicts")

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._verdicts)

    def adds_revisions_only(self, update: bytes) -> bool:
        """:func:`adds_revisions_only` of ``update``, remembered."""
        verdict = self._verdicts.get(update)
        if verdict is not None:
            self._verdicts.move_to_end(update)
            return verdict
        verdict = adds_revisions_only(update)
        if len(update) <= self._max_bytes // 64:
            self._verdicts[update] = verdict
            self._bytes += len(update)
            while self._bytes > self._max_bytes:
                old, _ = self._verdicts.popitem(last=False)
                self._bytes -= len(old)
        return verdict


class Coalescer:
    """Feed entries taken in order, at most ``items`` entries to send and about
    ``budget`` bytes of updates; :meth:`entries` gives them, each record's edits merged.

    The first entry offered is always taken, whatever its size (a batch must move).

    Whether an entry only adds revisions is asked only when another entry of its
    record follows it in the batch (a parse of its bytes): a record changed once,
    the common case, goes as it is, and is never parsed here. ``verdicts`` remembers
    the answers across coalescers (None: none kept).
    """

    __slots__ = (
        "_adds_only",
        "_budget",
        "_full",
        "_groups",
        "_items",
        "_limit",
        "_mergeable",
        "_taken",
    )

    def __init__(self, *, items: int, budget: int, verdicts: MergeVerdicts | None = None) -> None:
        self._adds_only = adds_revisions_only if verdicts is None else verdicts.adds_revisions_only
        self._limit = items
        self._budget = budget
        # Per record, the group its next edit may join: the last group started for it,
        # unless an entry that goes alone came after (then none).
        self._groups: dict[str, list[FeedItem]] = {}
        # Whether each group's entries only add revisions (None: not asked yet; a
        # group of more than one entry is mergeable, else it would not have grown).
        self._mergeable: dict[int, bool] = {}
        self._items: list[list[FeedItem]] = []  # what goes: groups and lone entries
        self._taken: list[FeedItem] = []
        self._full = False

    @property
    def full(self) -> bool:
        """True once an entry was left out: one more item, or its bytes, would not fit."""
        return self._full

    @property
    def taken(self) -> Sequence[FeedItem]:
        """The feed entries taken, in feed order (a prefix of all those offered)."""
        return self._taken

    def _joins(self, item: FeedItem) -> tuple[list[FeedItem] | None, bool | None]:
        """The group ``item`` would join (None: it starts one), and whether it only adds
        revisions (None: not asked, as no earlier entry of its record could take it)."""
        group = self._groups.get(item.record_id)
        if group is None:
            return None, None
        mergeable = self._adds_only(item.update)
        if not mergeable:
            return None, False
        first = self._mergeable.get(id(group))
        if first is None:
            first = self._mergeable[id(group)] = self._adds_only(group[0].update)
        return (group, True) if first else (None, True)

    def take(self, items: Sequence[FeedItem]) -> int:
        """Take ``items`` (ascending seq, after those taken before) while they fit.

        Returns how many were taken; fewer than offered makes the coalescer full.
        """
        groups = self._groups
        for count, item in enumerate(items):
            size = item_wire_size(item.record_id, item.update)
            # What _joins says, without a call for the usual entry: the first of its
            # record here (then it joins nothing and nothing was asked).
            if item.record_id in groups:
                group, mergeable = self._joins(item)
            else:
                group, mergeable = None, None
            if self._taken and (
                size > self._budget or (group is None and len(self._items) >= self._limit)
            ):
                self._full = True
                return count
            self._budget -= size
            if group is not None:
                group.append(item)
            else:
                group = [item]
                self._items.append(group)
                if mergeable is False:
                    # Later edits go after it, in feed order: a laptop that keeps it
                    # aside takes them in one by one after it, as from older servers.
                    self._groups.pop(item.record_id, None)
                else:
                    # It may start a group of edits (asked when a next edit comes).
                    self._groups[item.record_id] = group
                    if mergeable:
                        self._mergeable[id(group)] = True
            self._taken.append(item)
        return len(items)

    def entries(self) -> list[tuple[int, str, bytes]] | None:
        """What goes: each record's edits merged into one entry with the seq of the last
        of them, and every other entry as it is; in ascending seq.

        None if some record's edits would not merge after all: the caller then sends
        the entries as they are.
        """
        out: list[tuple[int, str, bytes]] = []
        for group in self._items:
            last = group[-1]
            if len(group) == 1:
                out.append((last.seq, last.record_id, last.update))
                continue
            try:
                merged = merge([item.update for item in group], record_id=last.record_id)
            except InvalidUpdateError:
                return None
            out.append((last.seq, last.record_id, merged))
        out.sort()
        return out
