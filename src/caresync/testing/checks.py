"""What "in step" means for a laptop, measured on the databases themselves.

Two checks, both exact:

* :func:`lag` — the cheap one, run on every wake-up while waiting for quiescence: a
  laptop is in step when its outbox is empty (the server acknowledged every local
  change) and it holds every entry of the server's change feed its organisation may
  see. "Holds" is decided on the update bytes, not on the laptop's checkpoint alone:
  a live laptop is not sent back its own pushes, so its checkpoint may stay behind
  entries it wrote itself.
* :func:`snapshot` — the deep one: every record's revision ids and open conflict ids,
  read from a store. Two replicas with equal snapshots show the same records, the same
  history and the same conflicts (promise 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from caresync.conflicts import Rulebook
from caresync.records import Record, crdt
from caresync.replica import Replica
from caresync.replication import meta
from caresync.replication.epochs import FeedPosition
from caresync.server import SyncServer
from caresync.storage import ReplicaStore

__all__ = ["Lag", "RecordSnapshot", "Snapshot", "describe_differences", "lag", "snapshot"]

CHECKPOINT_KEY = meta.CHECKPOINT
"""Where a laptop keeps how far it read the server's feed (only a starting point here)."""
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Lag:
    """How far one laptop is from the server."""

    pending: int
    """Local changes the server has not acknowledged."""
    missing: int
    """Feed entries of the laptop's organisation it does not hold (at least 1 if any, when
    not all were counted)."""
    checkpoint: int
    verified: int
    """Every feed entry up to this sequence number is held: the next check starts here."""
    head: int | None = None
    """The server's feed head (all organisations), read when the laptop lags."""

    @property
    def settled(self) -> bool:
        """True when the laptop holds what the server holds, and the server what it wrote."""
        return self.pending == 0 and self.missing == 0

    def describe(self) -> str:
        """One line a person can act on."""
        parts = []
        if self.pending:
            parts.append(f"{self.pending} local change(s) not acknowledged by the server")
        if self.missing:
            parts.append(
                f"{self.missing} server feed entr{'y' if self.missing == 1 else 'ies'} not "
                f"received (checkpoint {self.checkpoint}, feed head {self.head})"
            )
        return "; ".join(parts) or "in step"


async def lag(
    laptop: Replica, server: SyncServer, *, verified: int = 0, count_all: bool = False
) -> Lag:
    """How far ``laptop`` is from ``server`` (see :attr:`Lag.settled`).

    The feed is read from the laptop's checkpoint, or from ``verified`` (a
    :attr:`Lag.verified` of an earlier check) if further: holding an update is forever.
    Stops at the first missing entry unless ``count_all`` (for error messages).
    """
    pending = await laptop.store.pending_count()
    checkpoint = FeedPosition.parse(await laptop.store.get_meta(CHECKPOINT_KEY)).seq
    organisation = laptop.identity.organisation
    state_vectors: dict[str, bytes | None] = {}
    missing = 0
    after = verified = max(checkpoint, verified)
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
                verified = item.seq
        if len(items) < _PAGE or (missing and not count_all):
            break
        after = items[-1].seq
    head = None if pending == 0 and missing == 0 else await server.store.feed_head()
    return Lag(pending, missing, checkpoint, verified, head)


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


Snapshot = dict[str, RecordSnapshot]
"""Record id → what is held of it."""


async def snapshot(
    store: ReplicaStore, rulebook: Rulebook, *, organisation: str | None = None
) -> Snapshot:
    """Every record of ``store`` (of one organisation, on a server) as revisions and conflicts."""
    result: Snapshot = {}
    for record_id in await store.record_ids(organisation):
        data = await store.load(record_id)
        if data is None:  # pragma: no cover - listed a moment ago; records are never deleted
            continue
        record = Record.from_update(record_id, data, replica="caresync-testing")
        result[record_id] = RecordSnapshot(
            frozenset(rev.id for rev in record.revisions()),
            tuple(sorted(c.id for c in rulebook.conflicts(record))),
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
        if len(lines) >= limit:
            break
    return lines
