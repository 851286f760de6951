"""Where each patient's hub summary stands: on the server (its outbox), on a laptop.

On the server, the outbox rows say it (:func:`server_summaries`). A laptop
learns them at each sync (the server's :class:`~caresync.protocol.HubReport`
after its pull, kept by :func:`store_report`) and adds what only it knows
(:func:`laptop_summaries`): a patient marked, or changed, on this laptop since
its last sync is ``pending`` — the server has not seen that change, so the hub
cannot have it — and one unmarked here is no longer listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from caresync.exceptions import RemoteProtocolError, StorageError
from caresync.hub.model import HubSummary, is_enabled
from caresync.protocol.messages import HUB_REMOVED, MAX_HUB_REASON_LENGTH, HubItem
from caresync.replica import Replica
from caresync.replication import meta
from caresync.storage.base import HubChanges, HubRemoved, HubSummaryRow, ReplicaStore

__all__ = [
    "REPORT_META",
    "HubMerge",
    "hub_pending",
    "hub_pending_counted",
    "laptop_summaries",
    "removed_item",
    "report_item",
    "report_items",
    "server_summaries",
    "store_report",
    "stored_mark",
]

REPORT_META = meta.HUB_REPORT
"""The laptop's meta key holding the server's last HubReport (JSON)."""
_CHANGED_HERE = "changed on this laptop since its last sync: the hub cannot have it yet"
_PAGE = 1000


def report_item(row: HubSummaryRow) -> HubItem:
    """An outbox row as a HubReport's item (its reason cut to what the protocol carries)."""
    return HubItem(
        row.record_id,
        row.state,
        row.version,
        None if row.reason is None else row.reason[:MAX_HUB_REASON_LENGTH],
        row.last_attempt_ms,
    )


def report_items(rows: Iterable[HubSummaryRow]) -> list[HubItem]:
    """The outbox rows as a HubReport's items, by record id."""
    return [report_item(row) for row in sorted(rows, key=lambda r: r.record_id)]


def server_summaries(rows: Iterable[HubSummaryRow]) -> list[HubSummary]:
    """The outbox rows as ``hub status`` shows them, by record id."""
    return [
        HubSummary(row.record_id, row.state, row.version, row.reason, row.last_attempt_ms)
        for row in sorted(rows, key=lambda r: r.record_id)
    ]


def removed_item(gone: HubRemoved) -> HubItem:
    """A patient no longer listed, as a change report's item (protocol version 13 on)."""
    return HubItem(gone.record_id, HUB_REMOVED, gone.version, None, None)


class HubMerge:
    """Pages of :class:`~caresync.storage.HubChanges` gathered into one change report's
    items (protocol version 13 on), a record's later change over its earlier one; a
    patient removed is an item in state ``removed``, for a laptop to drop."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[str, HubItem] = {}

    def add(self, changes: HubChanges) -> None:
        """Take one page (pages in the order they were read)."""
        for row in changes.rows:
            self._items[row.record_id] = report_item(row)
        for gone in changes.removed:
            self._items[gone.record_id] = removed_item(gone)

    def items(self) -> list[HubItem]:
        """The report's items, by record id."""
        return [self._items[record_id] for record_id in sorted(self._items)]


def _parse(text: str | None) -> list[HubItem]:
    if not text:
        return []
    try:
        return [HubItem(*entry) for entry in json.loads(text)]
    except (ValueError, TypeError) as exc:  # written by store_report only: a damaged row
        raise StorageError(f"the stored hub report cannot be read ({exc})") from None


async def stored_mark(store: ReplicaStore | meta.KnownMeta) -> int:
    """The server's hub mark of the report this laptop holds (0: none, or from a server
    older than protocol version 13)."""
    text = await store.get_meta(meta.HUB_MARK)
    return int(text) if text and text.isascii() and text.isdigit() else 0


async def store_report(
    store: ReplicaStore | meta.KnownMeta,
    items: Sequence[HubItem],
    *,
    mark: int | None = None,
    whole: bool = True,
    max_items: int | None = None,
) -> None:
    """Keep what the server said of the hub summaries.

    ``whole``: ``items`` replace what it said before; otherwise (a change report,
    protocol version 13 on) they are merged into it, an item ``removed`` dropping its
    patient. ``mark``: the server's hub mark the report brings this laptop to (None:
    a server older than version 13, which has none). Written only what changed (a
    report with nothing new writes nothing), the report before its mark: a mark left
    behind by a failed write only makes the next report repeat some changes.
    ``max_items``: the most summaries the report held may name once this one is merged
    into it (RemoteProtocolError past it, nothing written): change reports each within
    the bound could otherwise grow it without end.
    """
    if not whole and not items:
        # Nothing of this organisation changed (the mark counts every organisation's
        # changes): the mark held asks for exactly what the new one would, so a sync
        # with nothing to do writes nothing.
        return
    if whole:
        merged = [item for item in items if item.state != HUB_REMOVED]
    else:
        try:
            held = {item.record_id: item for item in _parse(await store.get_meta(REPORT_META))}
        except StorageError:
            # The report held is damaged: keep what this one says, at mark 0, so that
            # the next sync brings the whole list instead of failing at every sync.
            held, mark = {}, 0
        for item in items:
            if item.state == HUB_REMOVED:
                held.pop(item.record_id, None)
            else:
                held[item.record_id] = item
        merged = [held[record_id] for record_id in sorted(held)]
    if max_items is not None and len(merged) > max_items:
        raise RemoteProtocolError(f"a hub report that leaves more than {max_items} summaries")
    data = json.dumps([list(item) for item in merged], separators=(",", ":"))
    await meta.write_if_changed(store, REPORT_META, data)
    await meta.write_if_changed(store, meta.HUB_MARK, str(mark or 0))


async def _reported(store: ReplicaStore) -> dict[str, HubSummary]:
    items = _parse(await store.get_meta(REPORT_META))
    return {item.record_id: HubSummary(*item) for item in items}


async def laptop_summaries(replica: Replica) -> list[HubSummary]:
    """What a laptop shows: the server's last report, and ``pending`` for every patient
    marked (or changed) here since, by record id."""
    store = replica.store
    summaries = await _reported(store)
    changed: set[str] = set()
    after = 0
    while True:  # bounded: each page moves past its last seq
        page = await store.pending(_PAGE, after_seq=after)
        changed.update(item.record_id for item in page)
        if len(page) < _PAGE:
            break
        after = page[-1].seq
    for record_id in sorted(changed):
        view = await replica.record(record_id)
        if not is_enabled(view):
            summaries.pop(record_id, None)
            continue
        known = summaries.get(record_id)
        summaries[record_id] = HubSummary(
            record_id,
            "pending",
            None if known is None else known.version,
            _CHANGED_HERE,
            None if known is None else known.last_attempt_ms,
        )
    return [summaries[record_id] for record_id in sorted(summaries)]


def hub_pending(summaries: Iterable[HubSummary]) -> int:
    """How many summaries are not on the hub as they stand: pending, held or failed."""
    return sum(1 for summary in summaries if summary.state != "sent")


def hub_pending_counted(counts: Mapping[str, int]) -> int:
    """:func:`hub_pending` from a server's counts per state
    (:meth:`~caresync.storage.ServerStore.hub_state_counts`): all but ``sent``."""
    return sum(n for state, n in counts.items() if state != "sent")
