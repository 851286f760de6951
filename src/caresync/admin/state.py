"""What the admin page shows, gathered from a server's store and its running process.

:func:`stale_reasons` is the rule ``caresync replicas`` applies (pure);
:func:`gather` reads the store (every laptop, the open conflicts of each
organisation, the hub outbox) into one :class:`AdminState`, which
:mod:`caresync.admin.page` renders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from caresync.conflicts.duplicates import pair_conflicts
from caresync.storage import ReplicaInfo, ServerStore

__all__ = ["HUB_COUNTED", "AdminState", "LaptopRow", "gather", "stale_reasons"]

HUB_COUNTED = ("pending", "held", "failed", "sent")
"""The hub outbox's states, in the order the page counts them."""

_PAGE = 1000  # conflict rows read per query


def stale_reasons(info: ReplicaInfo, *, now_ms: int, stale_ms: int) -> tuple[str, ...]:
    """Why a laptop is stale (none: it is not): ``not seen`` / ``never seen`` for
    longer than ``stale_ms`` (since enrolling, for one never seen), ``changes
    pending`` when its oldest unsynced change is older than that. Revoked laptops
    are never stale."""
    if info.revoked:
        return ()
    reasons: list[str] = []
    seen = info.last_seen_ms if info.last_seen_ms is not None else info.enrolled_ms
    if now_ms - seen > stale_ms:
        reasons.append("not seen" if info.last_seen_ms is not None else "never seen")
    oldest = info.oldest_pending_ms
    if info.pending and oldest is not None and now_ms - oldest > stale_ms:
        reasons.append("changes pending")
    return tuple(reasons)


@dataclass(frozen=True, slots=True)
class LaptopRow:
    """One enrolled laptop as the page lists it. Names are as stored: untrusted."""

    replica_id: str
    device_name: str | None
    organisation: str
    enrolled_by: str | None
    last_seen_ms: int | None
    revoked: bool
    pending: int | None
    oldest_pending_ms: int | None
    protocol_version: int | None
    """The protocol version of its latest login to this process (None: not since it started)."""
    client_version: str | None
    """The caresync version it said at that login (None: not said, or not seen)."""
    stale: tuple[str, ...]
    """Why it is stale (empty: it is not)."""


@dataclass(frozen=True, slots=True)
class AdminState:
    """Everything the page shows, read at one moment (``now_ms``)."""

    server_id: str
    now_ms: int
    stale_after_ms: int
    healthy: bool
    health: str
    """``ok``, or why the store does not answer."""
    connections_open: int
    feed_head: int | None
    records: int | None
    laptops: tuple[LaptopRow, ...]
    conflicts: tuple[tuple[str, int], ...]
    """Open conflicts per organisation (``(none)`` for records without one), by name."""
    hub: tuple[tuple[str, int], ...]
    """The hub outbox's rows per state, in :data:`HUB_COUNTED` order."""
    hub_sending: bool
    """True when this process sends summaries to a hub (``serve --hub``)."""


async def gather_laptops(
    store: ServerStore,
    *,
    now_ms: int,
    stale_ms: int,
    versions: Mapping[str, tuple[int | None, str | None]],
) -> tuple[LaptopRow, ...]:
    """Every enrolled laptop, stale ones first, then by organisation and device name."""
    rows = []
    for info in await store.replicas():
        protocol, client = versions.get(info.replica_id, (None, None))
        rows.append(
            LaptopRow(
                replica_id=info.replica_id,
                device_name=info.device_name,
                organisation=info.organisation,
                enrolled_by=info.enrolled_by,
                last_seen_ms=info.last_seen_ms,
                revoked=info.revoked,
                pending=info.pending,
                oldest_pending_ms=info.oldest_pending_ms,
                protocol_version=protocol,
                client_version=client,
                stale=stale_reasons(info, now_ms=now_ms, stale_ms=stale_ms),
            )
        )
    rows.sort(key=lambda r: (not r.stale, r.organisation, r.device_name or "", r.replica_id))
    return tuple(rows)


async def conflicts_by_organisation(store: ServerStore) -> tuple[tuple[str, int], ...]:
    """Open conflicts per organisation, from the indexes (as ``/metrics`` counts them):
    each record's conflict rows and its duplicate-person findings."""
    per_record: Counter[str] = Counter()
    after: tuple[str, str] | None = None
    while True:
        page = await store.conflicts(after=after, limit=_PAGE)
        per_record.update(row.record_id for row in page)
        if len(page) < _PAGE:
            break
        after = (page[-1].record_id, page[-1].id)
    for pair in await store.person_pairs():
        per_record[pair.first.record_id] += len(pair_conflicts(pair))
    organisations = await store.record_organisations(sorted(per_record))
    counts: Counter[str] = Counter()
    for record_id, count in per_record.items():
        if count:
            counts[organisations.get(record_id) or "(none)"] += count
    return tuple(sorted(counts.items()))


async def hub_counts(store: ServerStore) -> tuple[tuple[str, int], ...]:
    """The hub outbox's rows per state."""
    counts = await store.hub_state_counts()  # from an index, not the rows
    return tuple((state, counts.get(state, 0)) for state in HUB_COUNTED)


async def gather(
    store: ServerStore,
    *,
    server_id: str,
    now_ms: int,
    stale_ms: int,
    connections_open: int,
    versions: Mapping[str, tuple[int | None, str | None]],
    hub_sending: bool,
) -> AdminState:
    """Read the whole page's state from ``store`` (StorageError if it fails)."""
    return AdminState(
        server_id=server_id,
        now_ms=now_ms,
        stale_after_ms=stale_ms,
        healthy=True,
        health="ok",
        connections_open=connections_open,
        feed_head=await store.feed_head(),
        records=await store.count_records(),
        laptops=await gather_laptops(store, now_ms=now_ms, stale_ms=stale_ms, versions=versions),
        conflicts=await conflicts_by_organisation(store),
        hub=await hub_counts(store),
        hub_sending=hub_sending,
    )


def unhealthy(
    *, server_id: str, now_ms: int, stale_ms: int, reason: str, connections_open: int
) -> AdminState:
    """The page's state when the store does not answer: the reason, nothing else."""
    return AdminState(
        server_id=server_id,
        now_ms=now_ms,
        stale_after_ms=stale_ms,
        healthy=False,
        health=reason,
        connections_open=connections_open,
        feed_head=None,
        records=None,
        laptops=(),
        conflicts=(),
        hub=(),
        hub_sending=False,
    )
