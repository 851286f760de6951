"""What "in step" means for a laptop, measured on the databases themselves.

Two checks, both exact:

* :func:`lag` — the cheap one, run on every wake-up while waiting for quiescence: a
  laptop is in step when its outbox is empty (the server acknowledged every local
  change), the server still holds every push it acknowledged, and the laptop holds
  every entry of the server's change feed its organisation may see. "Holds" is decided
  on the update bytes, not on the laptop's checkpoint alone: a live laptop is not sent
  back its own pushes, so its checkpoint may stay behind entries it wrote itself. A
  server restored from an older backup breaks what an empty outbox and a checkpoint
  say (it forgot pushes it acknowledged, and gives feed numbers out again): both are
  checked against the server's push mark and feed epochs before they are trusted.
* :func:`snapshot` — the deep one: every record's revision ids, the open conflicts the
  replica shows (listed as its application lists them: from its conflict index, its
  person index and its linked records) and its conflict index rows, read from a store.
  Two replicas with equal snapshots show the same records, the same history and the
  same conflicts (promise 2). The conflicts are not derived afresh from the revisions:
  equal revisions would always give equal conflicts then, and a replica whose index
  went wrong would pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from caresync.conflicts import Rulebook
from caresync.listing import ConflictListing
from caresync.records import Record, crdt
from caresync.replica import Replica
from caresync.replication import meta
from caresync.replication.epochs import FeedPosition, epoch_at
from caresync.replication.pool import RecordPool
from caresync.server import SyncServer
from caresync.storage import ReplicaStore
from caresync.storage.base import ConflictRow, FeedEpoch

__all__ = ["Lag", "RecordSnapshot", "Snapshot", "describe_differences", "lag", "snapshot"]

CHECKPOINT_KEY = meta.CHECKPOINT
"""Where a laptop keeps how far it read the server's feed (only a starting point here)."""
_PAGE = 1000
_NOTHING_HELD = FeedPosition(0, None)


@dataclass(frozen=True, slots=True)
class Lag:
    """How far one laptop is from the server."""

    pending: int
    """Local changes the server has not acknowledged."""
    missing: int
    """Feed entries of the laptop's organisation it does not hold (at least 1 if any, when
    not all were counted)."""
    checkpoint: int
    verified: FeedPosition
    """Every feed entry up to this sequence number, under this feed epoch, is held: the
    next check starts here (if the server's feed still labels it so)."""
    head: int | None = None
    """The server's feed head (all organisations), read when the laptop lags."""
    lost_pushes: int = 0
    """Local changes the server acknowledged and no longer holds (a server restored from
    an older backup): the laptop sends them again at its next sync."""
    read_elsewhere: bool = False
    """The laptop's checkpoint names feed entries this server does not hold (a server
    restored from an older backup): its next sync reads the feed from the start."""

    @property
    def settled(self) -> bool:
        """True when the laptop holds what the server holds, and the server what it wrote."""
        return (
            self.pending == 0
            and self.missing == 0
            and self.lost_pushes == 0
            and not self.read_elsewhere
        )

    def describe(self) -> str:
        """One line a person can act on."""
        parts = []
        if self.pending:
            parts.append(f"{self.pending} local change(s) not acknowledged by the server")
        if self.lost_pushes:
            parts.append(
                f"{self.lost_pushes} change(s) the server acknowledged and no longer holds "
                "(it went back in time; the laptop's next sync sends them again)"
            )
        if self.read_elsewhere:
            parts.append(
                f"its checkpoint {self.checkpoint} names feed entries the server does not "
                "hold (it went back in time; the laptop's next sync reads the feed again)"
            )
        if self.missing:
            parts.append(
                f"{self.missing} server feed entr{'y' if self.missing == 1 else 'ies'} not "
                f"received (checkpoint {self.checkpoint}, feed head {self.head})"
            )
        return "; ".join(parts) or "in step"


async def lag(
    laptop: Replica,
    server: SyncServer,
    *,
    verified: FeedPosition = _NOTHING_HELD,
    count_all: bool = False,
) -> Lag:
    """How far ``laptop`` is from ``server`` (see :attr:`Lag.settled`).

    The feed is read from the laptop's checkpoint, or from ``verified`` (a
    :attr:`Lag.verified` of an earlier check) if further and still labelled so by the
    server's feed: holding an update is forever, but a restored server gives its feed
    numbers out again. Stops at the first missing entry unless ``count_all`` (for error
    messages).
    """
    pending = await laptop.store.pending_count()
    position = FeedPosition.parse(await laptop.store.get_meta(CHECKPOINT_KEY))
    head = await server.store.feed_head()
    epochs = await server.store.feed_epochs()
    read_elsewhere = not _still_held(position, head, epochs)
    lost_pushes = await _lost_pushes(laptop, server)
    if not _still_held(verified, head, epochs):
        verified = _NOTHING_HELD
    organisation = laptop.identity.organisation
    state_vectors: dict[str, bytes | None] = {}
    missing = 0
    start = verified.seq if read_elsewhere else max(position.seq, verified.seq)
    after = start
    while True:
        items = await server.store.feed_since(after, limit=_PAGE, organisation=organisation)
        for item in items:
            if item.record_id not in state_vectors:
                state_vectors[item.record_id] = await laptop.store.state_vector(item.record_id)
            state_vector = state_vectors[item.record_id]
            if state_vector is None or not _holds(state_vector, item.update):
                missing += 1
                if not count_all:
                    break
            elif not missing:
                start = item.seq
        if len(items) < _PAGE or (missing and not count_all):
            break
        after = items[-1].seq
    held = FeedPosition(start, epoch_at(epochs, start))
    lagging = pending or missing or lost_pushes or read_elsewhere
    return Lag(
        pending,
        missing,
        position.seq,
        held,
        head if lagging else None,
        lost_pushes,
        read_elsewhere,
    )


def _still_held(position: FeedPosition, head: int, epochs: list[FeedEpoch]) -> bool:
    """True if the server's feed still holds the entries up to ``position`` as they were
    read: it reaches that far, under the same epoch (as the server checks a pull)."""
    if position.seq == 0:
        return True
    if position.seq > head:
        return False
    return position.epoch is None or epoch_at(epochs, position.seq) == position.epoch


async def _lost_pushes(laptop: Replica, server: SyncServer) -> int:
    """How many of the laptop's acknowledged pushes the server no longer holds (its mark
    of them is below the laptop's last acknowledgement: it went back in time)."""
    acked = int(await laptop.store.get_meta(meta.ACKED) or 0)
    if acked == 0:
        return 0
    mark = int(await server.store.get_meta(meta.PUSHED_PREFIX + laptop.replica_id) or 0)
    return max(0, acked - mark)


def _holds(state_vector: bytes, update: bytes) -> bool:
    # What of ``update`` is not covered by the state vector; its first varint counts
    # the clients with items missing (caresync records never delete, so the delete
    # set that follows has nothing to add).
    rest = crdt.diff_update(update, state_vector)
    return not rest or rest[0] == 0


@dataclass(frozen=True, slots=True)
class RecordSnapshot:
    """What a replica holds of one record."""

    revisions: frozenset[str]
    conflicts: tuple[str, ...]
    """The ids of the open conflicts the replica shows on the record, sorted."""
    index: frozenset[ConflictRow] = frozenset()
    """The record's rows in the replica's conflict index (what its counts read)."""


Snapshot = dict[str, RecordSnapshot]
"""Record id → what is held of it."""


async def snapshot(
    store: ReplicaStore, rulebook: Rulebook, *, organisation: str | None = None
) -> Snapshot:
    """Every record of ``store`` (of one organisation, on a server) as revisions and conflicts."""
    record_ids = await store.record_ids(organisation)
    pool = RecordPool(store, replica="caresync-testing", rulebook=rulebook)
    shown: dict[str, list[str]] = {}
    for conflict in await ConflictListing(store, pool).all():
        shown.setdefault(conflict.record_id, []).append(conflict.id)
    index = await store.conflict_rows(record_ids)
    result: Snapshot = {}
    for record_id in record_ids:
        data = await store.load(record_id)
        if data is None:  # pragma: no cover - listed a moment ago; records are never deleted
            continue
        record = Record.from_update(record_id, data, replica="caresync-testing")
        result[record_id] = RecordSnapshot(
            frozenset(rev.id for rev in record.revisions()),
            tuple(sorted(shown.get(record_id, ()))),
            frozenset(index.get(record_id, ())),
        )
    return result


def describe_differences(expected: Snapshot, actual: Snapshot, *, limit: int = 5) -> list[str]:
    """How ``actual`` differs from ``expected``, one line per difference (at most ``limit``)."""
    lines: list[str] = []
    lacking = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if lacking:
        lines.append(f"lacks {len(lacking)} record(s): {', '.join(lacking[:limit])}")
    if extra:
        lines.append(f"has {len(extra)} record(s) the server lacks: {', '.join(extra[:limit])}")
    for record_id in sorted(expected.keys() & actual.keys()):
        want, got = expected[record_id], actual[record_id]
        if want.revisions != got.revisions:
            lines.append(
                f"record {record_id}: {len(want.revisions - got.revisions)} revision(s) missing, "
                f"{len(got.revisions - want.revisions)} the server lacks"
            )
        elif want.conflicts != got.conflicts:
            lines.append(
                f"record {record_id}: open conflicts {list(got.conflicts)}, "
                f"the server has {list(want.conflicts)}"
            )
        elif want.index != got.index:
            lines.append(
                f"record {record_id}: conflict index rows {_row_ids(got.index)}, "
                f"the server has {_row_ids(want.index)}"
            )
        if len(lines) >= limit:
            break
    return lines


def _row_ids(rows: frozenset[ConflictRow]) -> list[str]:
    return sorted(f"{row.id} ({row.kind}, {row.severity})" for row in rows)
