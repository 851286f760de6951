"""Telling a server that went back in time from the one a laptop read.

Theory of operation
-------------------
A laptop pulls the server's change feed from its checkpoint, the feed number it read
up to, and never asks again for what lies before it; it also drops from its outbox
what the server acknowledged. A server restored from an older backup breaks both:
it has forgotten entries numbered up to the laptop's checkpoint (and gives those
numbers out again to new entries, which the laptop would then skip), and it has
forgotten edits it acknowledged (which the laptop will never send again).

Every opening of a server's database for writing (a server process starting, a
command run on its machine) begins a **feed epoch**: a random id that
labels the feed numbers from its head + 1 on (:class:`~caresync.storage.base.FeedEpoch`;
numbers before the first epoch are labelled 0). A backup holds the epochs begun
before it was taken; a server started on it begins a new epoch where its restored
feed ends, before anything is written. So a number the restored server gives out
again carries a label no laptop read it under, while every number up to the backup
keeps its label, and its entry.

The server sends the epoch with every feed position it gives (protocol version 14);
the laptop keeps it with its checkpoint (:class:`FeedPosition`, one meta value) and
names it in every pull. A server refuses a pull from a position its feed does not
reach, or labels with another epoch (``feed_diverged``). A laptop that pushed after the
backup but never read past it is told otherwise: the server's mark of its pushes, said
at every login (``Authenticated.pushed_up_to``), is below the last one it acknowledged
(meta ``sync.acked``). The laptop then queues again
everything it wrote (:func:`own_items`: the items of every Yjs client whose entries
name this replica as their writer; the server keeps what it holds once and stores the
rest), pushes it, and pulls from the feed's start, taking in what it lacks.

What this cannot bring back: an entry the server lost whose writer never syncs again
(another laptop holds it, but a server takes a replica's entries only from that
replica). Pure: no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

from caresync.exceptions import CorruptDatabaseError
from caresync.protocol.messages import MAX_SEQ
from caresync.records.revision import decode_revision
from caresync.records.spans import Client, SimpleItem, items_by_client, simple_pieces
from caresync.storage.base import FeedEpoch

__all__ = ["FeedPosition", "epoch_at", "own_items", "pieces_of", "writers_of"]


def epoch_at(epochs: Sequence[FeedEpoch], seq: int) -> int:
    """The epoch that labels feed number ``seq``: that of the last epoch begun at or
    before it (``epochs`` by ascending ``first_seq``), 0 if none was."""
    index = bisect.bisect_right(epochs, seq, key=lambda epoch: epoch.first_seq)
    return epochs[index - 1].epoch if index else 0


class FeedPosition(NamedTuple):
    """How far a laptop read its server's feed: a feed number and its epoch (None when
    the server gave none: an older server, or a checkpoint kept before version 14)."""

    seq: int
    epoch: int | None

    @classmethod
    def parse(cls, value: str | None) -> FeedPosition:
        """The position a meta value holds (``"seq"`` or ``"seq:epoch"``; None: 0)."""
        if value is None:
            return cls(0, None)
        seq, colon, epoch = value.partition(":")
        try:
            position = cls(int(seq), int(epoch) if colon else None)
        except ValueError:
            position = cls(-1, None)
        if not 0 <= position.seq <= MAX_SEQ or not 0 <= (position.epoch or 0) <= MAX_SEQ:
            raise CorruptDatabaseError(
                f"the sync checkpoint {value!r} is not one caresync wrote; run check()"
            )
        return position

    def to_meta(self) -> str:
        """The meta value that :meth:`parse` reads back."""
        return str(self.seq) if self.epoch is None else f"{self.seq}:{self.epoch}"


_PIECE_ITEMS = 1000
"""Items in one update sent again: far below what a server admits in one
(:class:`~caresync.records.admission.AdmissionLimits`)."""

_PIECE_BYTES = 1 << 20
"""Bytes an update sent again grows to before the next begins (one item may be more)."""


def own_items(update: bytes, replica_id: str) -> list[bytes]:
    """What of a record's ``update`` (its whole state) this replica wrote, as updates a
    server can take: every item of each Yjs client that wrote an entry naming
    ``replica_id`` as its writer, from the client's first clock, as simple updates (one
    client each, in clock order, each of at most :data:`_PIECE_ITEMS` items: a server
    admits nothing else). Empty when it wrote nothing there, or when the bytes are not
    a record of entries only (which an honest record always is; such a record is left
    to be sent by its writers).

    Every entry a client wrote is a revision naming one replica (``meta.id`` is
    written with the record's first revision): a client is one replica's. Each
    opening of a record on a laptop writes as a new client, so a record holds several
    of one replica's clients, which go as several updates.
    """
    found = items_by_client(update)
    if found is None:
        return []
    own = {client for client, names in writers_of(found).items() if replica_id in names}
    if not own:
        return []
    return pieces_of(update, own) or []


def pieces_of(update: bytes, clients: Collection[Client]) -> list[bytes] | None:
    """The items of ``clients`` in ``update`` (a record of entries only) as updates a
    server admits: simple, one client each, in clock order, of at most
    :data:`_PIECE_ITEMS` items; None for bytes that are not entries only."""
    return simple_pieces(update, clients, max_items=_PIECE_ITEMS, max_bytes=_PIECE_BYTES)


def writers_of(found: Mapping[Client, Sequence[SimpleItem]]) -> dict[Client, frozenset[str]]:
    """The replicas each client's revisions name as their writer (``found``: a record's
    items by client, :func:`~caresync.records.spans.items_by_client`); an honest client
    names one, a client that wrote no revision none."""
    named: dict[Client, frozenset[str]] = {}
    for client, items in found.items():
        replicas = set()
        for item in items:
            if item.root == "revisions" and item.key is not None and len(item.strings) == 1:
                revision = decode_revision(item.key, item.strings[0])
                if revision is not None:
                    replicas.add(revision.replica)
        named[client] = frozenset(replicas)
    return named
