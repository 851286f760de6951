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
from collections.abc import Iterable, Sequence

from caresync.exceptions import StorageError
from caresync.hub.model import HubSummary, is_enabled
from caresync.protocol.messages import MAX_HUB_REASON_LENGTH, HubItem
from caresync.replica import Replica
from caresync.replication import meta
from caresync.storage.base import HubSummaryRow, ReplicaStore

__all__ = [
    "REPORT_META",
    "hub_pending",
    "laptop_summaries",
    "report_items",
    "server_summaries",
    "store_report",
]

REPORT_META = meta.HUB_REPORT
"""The laptop's meta key holding the server's last HubReport (JSON)."""
_CHANGED_HERE = "changed on this laptop since its last sync: the hub cannot have it yet"
_PAGE = 1000


def report_items(rows: Iterable[HubSummaryRow]) -> list[HubItem]:
    """The outbox rows as a HubReport's items (reasons cut to what the protocol carries)."""
    return [
        HubItem(
            row.record_id,
            row.state,
            row.version,
            None if row.reason is None else row.reason[:MAX_HUB_REASON_LENGTH],
            row.last_attempt_ms,
        )
        for row in sorted(rows, key=lambda r: r.record_id)
    ]


def server_summaries(rows: Iterable[HubSummaryRow]) -> list[HubSummary]:
    """The outbox rows as ``hub status`` shows them, by record id."""
    return [
        HubSummary(row.record_id, row.state, row.version, row.reason, row.last_attempt_ms)
        for row in sorted(rows, key=lambda r: r.record_id)
    ]


async def store_report(store: ReplicaStore | meta.KnownMeta, items: Sequence[HubItem]) -> None:
    """Keep what the server said of the hub summaries (replacing what it said before)."""
    data = [list(item) for item in items]
    await meta.write_if_changed(store, REPORT_META, json.dumps(data, separators=(",", ":")))


async def _reported(store: ReplicaStore) -> dict[str, HubSummary]:
    text = await store.get_meta(REPORT_META)
    if not text:
        return {}
    try:
        items = [HubItem(*entry) for entry in json.loads(text)]
    except (ValueError, TypeError) as exc:  # written by store_report only: a damaged row
        raise StorageError(f"the stored hub report cannot be read ({exc})") from None
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
