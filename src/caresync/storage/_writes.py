"""Rules both stores share, as pure functions: planning a batch of writes, rebinding checks,
and pairing person cards.

Planning is done before anything is written: it merges each record's new
updates into its current bytes (refusing bytes that are not an update, and a
record claimed by two organisations), so a batch either plans whole or
raises with nothing stored.

Pairing (:func:`pair_persons`) works out the pairs a batch of new person cards
makes, before anything is written: a pair is a function of its two cards only,
so replacing every pair of the records written, compared against the cards
that share a blocking key with theirs (in the same organisation), leaves
exactly the pairs that writing the cards one by one, in any order, would leave.
:func:`pairs_named` works out the same pairs when a sender says which records
they join (a first copy's, from the server's person index), without the look-ups.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from caresync.exceptions import (
    CorruptDatabaseError,
    InvalidInputError,
    WrongOrganisationError,
    WrongServerError,
)
from caresync.records.persons import PersonCard, PersonPair, pair_of
from caresync.records.spans import advance_clocks, decode_clocks, encode_clocks, simple_span
from caresync.storage._updates import (
    EMPTY_UPDATE,
    advance,
    covered_by,
    has_pending,
    merge,
    state_vector_of,
)
from caresync.storage.base import ConflictRow, Identity, IncomingUpdate, check_text
from caresync.storage.cache import CachedRecord
from caresync.storage.schema import RESERVED_META_PREFIX

__all__ = [
    "PersonWrite",
    "PlannedRecord",
    "Write",
    "WriteLike",
    "check_meta_key",
    "check_rebind",
    "local_writes",
    "pair_persons",
    "pairs_named",
    "plan_writes",
]


@dataclass(frozen=True, slots=True)
class Write:
    """One update to store: local or remote, with the conflict rows (and the person
    card) that go with it."""

    record_id: str
    update: bytes
    conflicts: tuple[ConflictRow, ...] | None
    organisation: str | None
    person: PersonCard | None = None
    state_vector: bytes | None = None  # see IncomingUpdate.state_vector
    advances: tuple[bytes, bytes] | None = None  # see IncomingUpdate.advances


@dataclass(slots=True)
class PlannedRecord:
    """What a batch does to one record."""

    record_id: str
    organisation: str | None
    state_vector: bytes
    pending: bool
    merged: bytes | None
    is_new: bool
    changed: bool
    appended: list[int]
    appended_bytes: int
    conflicts: tuple[ConflictRow, ...] | None
    organisation_set: bool
    clocks: dict[bytes, int] | None = None
    key: int | None = None
    """The record's integer key (the SQLite store gives a new record one)."""
    person: PersonCard | None = None
    """The record's new person card (the last a write of the batch carried), or None."""

    @property
    def cache_fields(
        self,
    ) -> tuple[
        bytes, str | None, bool, bytes | None, tuple[tuple[bytes, int], ...] | None, int | None
    ]:
        """:attr:`cached`'s fields as a plain tuple, in :class:`CachedRecord`'s order (what
        a store's cache keeps: a pull's write keeps a thousand, built once each)."""
        clocks = None if self.clocks is None else tuple(self.clocks.items())
        return (self.state_vector, self.organisation, self.pending, self.merged, clocks, self.key)

    @property
    def cached(self) -> CachedRecord:
        """The record as it will be once the batch commits."""
        return CachedRecord(*self.cache_fields)


class WriteLike(Protocol):
    """What planning reads of a write: a :class:`Write` or an ``IncomingUpdate``."""

    @property
    def record_id(self) -> str: ...
    @property
    def update(self) -> bytes: ...
    @property
    def conflicts(self) -> tuple[ConflictRow, ...] | None: ...
    @property
    def organisation(self) -> str | None: ...
    @property
    def person(self) -> PersonCard | None: ...
    @property
    def state_vector(self) -> bytes | None: ...
    @property
    def advances(self) -> tuple[bytes, bytes] | None: ...


def plan_writes(
    writes: Sequence[WriteLike],
    known: Mapping[str, CachedRecord],
    full: Callable[[str], bytes],
    *,
    skip_duplicates: bool,
) -> dict[str, PlannedRecord]:
    """Work out each record's new state vector from the updates, in the order given.

    ``known`` holds what is known of every stored record the writes touch (a
    record not in it is new); ``full`` returns a stored record's state merged
    with its log. The whole record is merged only when it holds waiting items;
    otherwise the cost follows the updates (see
    :func:`~caresync.storage._updates.advance`).

    ``appended`` lists the indexes (into ``writes``) to append to the log. With
    ``skip_duplicates``, a record that already held every part of its updates
    appends nothing (a resent batch is harmless and stored once).

    Most updates are simple (one client's edit that depends on nothing else,
    see :mod:`~caresync.records.spans`): for a record without waiting items,
    their client and clocks decide everything, read in Python without a pycrdt
    call. Any other update, or one that would wait, goes the general way.
    """
    groups: dict[str, list[int]] = {}
    for index, write in enumerate(writes):
        group = groups.get(write.record_id)
        if group is None:
            groups[write.record_id] = [index]
        else:
            group.append(index)
    planned: dict[str, PlannedRecord] = {}
    for record_id, indexes in groups.items():
        cur = known.get(record_id)
        if cur is None and len(indexes) == 1:
            write = writes[indexes[0]]
            given = write.state_vector
            if given is not None:
                # A new record whose caller read its state vector with pycrdt already
                # (a first copy's): what the general way below plans for it, directly.
                update = write.update
                planned[record_id] = PlannedRecord(
                    record_id,
                    write.organisation,
                    given,
                    has_pending(update, given),
                    update,
                    True,
                    True,
                    indexes,
                    len(update),
                    write.conflicts,
                    False,
                    None,
                    None,
                    write.person,
                )
                continue
        if (
            cur is not None
            and len(indexes) == 1
            and (
                (claimed := writes[indexes[0]].organisation) is None or claimed == cur.organisation
            )
        ):
            # What _organisation says of one write that claims nothing new, without a call.
            organisation, organisation_set = cur.organisation, False
        else:
            organisation, organisation_set = _organisation(record_id, cur, writes, indexes)
        if cur is not None and len(indexes) == 1 and not cur.pending:
            write = writes[indexes[0]]
            advances = write.advances
            if advances is not None and advances[0] == cur.state_vector:
                # The caller read the state vector after this update off its header,
                # from the one stored (see IncomingUpdate.advances): it adds to it.
                update = write.update
                planned[record_id] = PlannedRecord(
                    record_id,
                    organisation,
                    advances[1],
                    False,
                    None,
                    False,
                    True,
                    indexes,
                    len(update),
                    write.conflicts,
                    organisation_set,
                    None,
                    cur.key,
                    write.person,
                )
                continue
        updates = [writes[i].update for i in indexes]
        merged: bytes | None = None
        clocks: dict[bytes, int] | None = None
        given = writes[indexes[0]].state_vector if cur is None and len(indexes) == 1 else None
        simple = None
        if given is None and (cur is None or not cur.pending):
            simple = _advance_simply(cur, updates)
        if given is not None:
            # A new record whose caller read its state vector with pycrdt already.
            merged, vector, changed = updates[0], given, True
            pending = has_pending(merged, vector)
        elif simple is not None:
            clocks, changed = simple
            pending = False
            if cur is None or changed:
                vector = encode_clocks(clocks)
            else:
                vector, merged = cur.state_vector, cur.merged
        elif cur is None:
            merged = merge(updates, record_id=record_id)
            vector = state_vector_of(merged, record_id=record_id)
            pending, changed = has_pending(merged, vector), True
        elif not cur.pending:
            # Updates the record holds entirely change nothing: no state vector to work out.
            vector, pending, merged = cur.state_vector, False, cur.merged
            changed = not all(covered_by(u, vector) for u in updates)
            if changed:
                vector, pending = advance(vector, updates, record_id=record_id)
                merged = None
        else:
            before = cur.merged if cur.merged is not None else full(record_id)
            merged = merge([before, *updates], record_id=record_id)
            changed = merged != before
            if changed:
                vector = state_vector_of(merged, record_id=record_id)
                pending = has_pending(merged, vector)
            else:
                vector, pending = cur.state_vector, True
        conflicts: tuple[ConflictRow, ...] | None = None
        person: PersonCard | None = None
        for i in indexes:
            if writes[i].conflicts is not None:
                conflicts = writes[i].conflicts
            if writes[i].person is not None:
                person = writes[i].person
        appended = indexes if changed or not skip_duplicates else []
        if skip_duplicates and len(appended) > 1:
            # Of several updates of one record, each is stored only if it adds to what
            # the record and the batch's earlier ones hold: else a resent update sent
            # beside a new one (or an empty one) took a feed row every laptop pulls.
            appended = _adding(cur, writes, indexes)
        planned[record_id] = PlannedRecord(
            record_id,
            organisation,
            vector,
            pending,
            merged,
            cur is None,
            changed,
            appended,
            sum(len(writes[i].update) for i in appended),
            conflicts,
            organisation_set,
            clocks,
            None if cur is None else cur.key,
            person,
        )
    return planned


def _adding(cur: CachedRecord | None, writes: Sequence[WriteLike], indexes: list[int]) -> list[int]:
    """Which of one record's ``indexes`` add something, in order, to the record as
    stored (``cur``; None: new) and the updates of it before them.

    Decided only where it is certain: an empty update adds nothing, and a simple
    update (:func:`~caresync.records.spans.simple_span`) whose clocks the record or
    an earlier update holds adds nothing. Any other update is kept, as before.
    """
    clocks = _clocks_of(cur)
    if clocks is None:
        return indexes
    adding: list[int] = []
    for i in indexes:
        update = writes[i].update
        if update == EMPTY_UPDATE:
            continue
        span = simple_span(update)
        if span is not None:
            client, first, end = span
            have = clocks.get(client, 0)
            if end <= have:
                continue  # held already
            if first <= have:
                clocks[client] = end
        adding.append(i)
    return adding


def _clocks_of(cur: CachedRecord | None) -> dict[bytes, int] | None:
    """A copy of the stored record's clocks to advance ({} for a record new here); None
    when its state vector is not one :func:`decode_clocks` vouches for."""
    if cur is None:
        return {}
    if cur.clocks is not None:
        return dict(cur.clocks)
    return decode_clocks(cur.state_vector)


def _advance_simply(
    cur: CachedRecord | None, updates: Sequence[bytes]
) -> tuple[dict[bytes, int], bool] | None:
    """The record's clocks after simple updates, and whether they held anything new.

    None when any update is not simple, or would wait for one not yet held
    (it starts past its client's clock): the general way decides those.
    """
    clocks = _clocks_of(cur)
    if clocks is None:
        return None
    moved = advance_clocks(clocks, updates)
    if moved is None:
        return None
    return clocks, moved or cur is None


def _organisation(
    record_id: str, cur: CachedRecord | None, writes: Sequence[WriteLike], indexes: list[int]
) -> tuple[str | None, bool]:
    """The record's organisation after the writes, and whether they set it."""
    organisation = cur.organisation if cur is not None else None
    organisation_set = False
    if len(indexes) == 1 and writes[indexes[0]].organisation is None:
        return organisation, False
    for i in indexes:
        claimed = writes[i].organisation
        if claimed is None or claimed == organisation:
            continue
        if organisation is not None:
            raise InvalidInputError(
                f"record {record_id} belongs to organisation {organisation!r}, "
                f"not {claimed!r}; nothing was stored"
            )
        organisation = claimed
        organisation_set = cur is not None
    return organisation, organisation_set


@dataclass(frozen=True, slots=True)
class PersonWrite:
    """A person card to store, with its record's organisation (after the write).

    ``new``: the record is new in this write, so nothing of it is indexed yet
    (its keys and pairs need no deleting).
    """

    organisation: str | None
    card: PersonCard
    new: bool = False
    keys: frozenset[str] = field(init=False, compare=False)
    """The card's blocking keys, worked out once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", self.card.blocking_keys())


KeyHolders = Callable[[str | None, Collection[str]], Iterable[tuple[str, str]]]
"""``(organisation, keys) -> (key, record id)`` of every stored card holding one of the keys."""
StoredCards = Callable[[Collection[str]], Mapping[str, PersonCard]]
"""``record ids -> {record id: stored card}``."""


def pair_persons(
    written: Mapping[str, PersonWrite], holders: KeyHolders, cards: StoredCards
) -> list[PersonPair]:
    """The pairs the records of ``written`` make once their new cards are stored.

    ``holders`` looks up, in one organisation, the stored records holding some
    blocking keys (their stored keys; the keys stored for a record being
    written are stale and left out here); ``cards`` reads stored cards. Each
    written card is compared with every other card, written or stored, that
    shares a key with it in its organisation (None pairs only with None). A
    pair of two written records is compared once. Ordered by record ids.

    Raises CorruptDatabaseError when a stored key names a record with no card.
    """
    # One pass over the batch's keys builds its blocking index (key -> records of the
    # batch holding it), per organisation; the candidates are then pairs of ids, each
    # once: (a, b) with a < b for two written records, (written, stored) otherwise.
    # A set of pairs, not a set per record: most keys are held by one card only.
    keys_of: dict[str | None, dict[str, list[str]]] = {}
    for record_id, write in written.items():
        by_key = keys_of.setdefault(write.organisation, {})
        for key in write.keys:
            holding = by_key.get(key)
            if holding is None:
                by_key[key] = [record_id]
            else:
                holding.append(record_id)
    candidates: set[tuple[str, str]] = set()
    stored_wanted: set[str] = set()
    for organisation, by_key in keys_of.items():
        for ids in by_key.values():
            if len(ids) > 1:
                candidates.update((a, b) for a in ids for b in ids if a < b)
        for key, holder in holders(organisation, by_key):
            if holder in written:
                continue
            stored_wanted.add(holder)
            candidates.update((record_id, holder) for record_id in by_key.get(key, ()))
    stored = cards(stored_wanted) if stored_wanted else {}
    pairs: list[PersonPair] = []
    for record_id, other_id in candidates:
        card = written[record_id].card
        other = written[other_id].card if other_id in written else stored.get(other_id)
        if other is None:
            raise CorruptDatabaseError(
                f"the person index names record {other_id}, which has no person card; "
                "nothing was written (re-index the records)"
            )
        pair = pair_of(card, other)
        if pair is not None:
            pairs.append(pair)
    pairs.sort(key=lambda p: p.record_ids)
    return pairs


StoredCardsOf = Callable[[Collection[str]], Mapping[str, tuple[str | None, PersonCard]]]
"""``record ids -> {record id: (its organisation, its stored card)}``."""


def pairs_named(
    written: Mapping[str, PersonWrite],
    named: Iterable[tuple[str, str]],
    cards: StoredCardsOf,
) -> list[PersonPair]:
    """The pairs the records of ``written`` make, when ``named`` says which records they
    may join: ``(first, second)`` record ids, one of them (at least) written, the other
    written or stored with a card (``cards`` reads those).

    Each named pair is compared from the two cards held here (:func:`pair_of`), so a
    sender says only which pairs to look at, never what they are: a pair the cards do
    not make is not kept, and a link decision counts as the cards hold it. When
    ``named`` holds every pair :func:`pair_persons` would keep (a server's person
    index of the same cards), the two return the same pairs. Two records of different
    organisations are not compared (as there). Ordered by record ids.

    Raises InvalidInputError, naming it, for a record neither written nor stored with
    a card (nothing is written then).
    """
    wanted = list(dict.fromkeys(named))
    others = {rid for pair in wanted for rid in pair if rid not in written}
    stored = cards(others) if others else {}
    missing = sorted(others.difference(stored))
    if missing:
        raise InvalidInputError(
            f"a person pair names record {missing[0]}, which holds no person card here; "
            "nothing was written"
        )
    pairs: list[PersonPair] = []
    for first, second in wanted:
        one, other = written.get(first), written.get(second)
        if one is None and other is None:
            raise InvalidInputError(
                f"the person pair of {first} and {second} names no record of the batch; "
                "nothing was written"
            )
        x = (one.organisation, one.card) if one is not None else stored[first]
        y = (other.organisation, other.card) if other is not None else stored[second]
        if x[0] != y[0]:
            continue  # cards are compared only within an organisation
        pair = pair_of(x[1], y[1])
        if pair is not None:
            pairs.append(pair)
    pairs.sort(key=lambda p: p.record_ids)
    return pairs


def local_writes(edits: object) -> list[Write]:
    """The writes of ``write_local_many``: each an IncomingUpdate (checked when it was
    made), refused whole (InvalidInputError) if anything else is in the batch."""
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Sequence):
        raise InvalidInputError("edits must be a sequence of IncomingUpdate")
    writes = []
    for edit in edits:
        if not isinstance(edit, IncomingUpdate):
            raise InvalidInputError(
                f"each edit must be an IncomingUpdate, not {type(edit).__name__}"
            )
        writes.append(
            Write(
                edit.record_id,
                edit.update,
                None if edit.conflicts is None else tuple(edit.conflicts),
                edit.organisation,
                edit.person,
            )
        )
    return writes


def check_meta_key(key: object) -> str:
    """Refuse meta keys the store keeps for itself."""
    key = check_text(key, "meta key")
    if key.startswith(RESERVED_META_PREFIX):
        raise InvalidInputError(f"meta keys starting with {RESERVED_META_PREFIX!r} are reserved")
    return key


def check_rebind(old: Identity | None, new: Identity) -> None:
    """Refuse an identity change that would rebind this replica (promise 4).

    Allowed: the first identity; filling a field that was None; the same
    values again; a new ``server_url``. Refused: another replica id or role,
    and another (or no longer any) server id or organisation.
    """
    if not isinstance(new, Identity):
        raise InvalidInputError(f"identity must be an Identity, not {type(new).__name__}")
    if old is None:
        return
    if new.replica_id != old.replica_id or new.role != old.role:
        raise InvalidInputError(
            f"this store belongs to {old.role} {old.replica_id!r}; its replica id and role "
            "cannot change"
        )
    if old.server_id is not None and new.server_id != old.server_id:
        raise WrongServerError(
            f"this replica is enrolled to server {old.server_id!r}, not {new.server_id!r}"
        )
    if old.organisation is not None and new.organisation != old.organisation:
        raise WrongOrganisationError(
            f"this replica is enrolled to organisation {old.organisation!r}, "
            f"not {new.organisation!r}"
        )
