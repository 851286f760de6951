"""The person index in SQLite: cards, blocking keys and pairs, kept with each write."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from itertools import chain, repeat

from caresync.exceptions import CorruptDatabaseError, InvalidInputError
from caresync.records.persons import PersonCard, PersonCards, PersonPair
from caresync.storage._writes import PersonWrite, pair_persons, pairs_named
from caresync.storage.base import card_digest
from caresync.storage.sqlite._sql import _chunks, _marks

__all__: list[str] = []  # the store's own helpers; nothing public


_NO_ORGANISATION = ""
"""How a record of no organisation is keyed in the person tables (an organisation is
never empty, and a primary key column of a WITHOUT ROWID table cannot be NULL)."""


def _org_column(organisation: str | None) -> str:
    return _NO_ORGANISATION if organisation is None else organisation


def _key_hash(organisation_column: str, key: str) -> int:
    """How a blocking key is stored: 64 bits of BLAKE2b of its organisation and text."""
    digest = hashlib.blake2b(f"{organisation_column}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _own_key(record_id: str) -> str:
    """A card's key of its own record id (``r:<id>``): not stored since schema version
    16, as the record's card is found by its id (:func:`_key_holders`); a quarter of
    a first copy's key rows otherwise. A database of before may still hold some."""
    return "r:" + record_id


def _stored_keys(record_id: str, keys: Iterable[str]) -> list[str]:
    """The keys of a record's card that are stored as key rows (all but its own)."""
    own = _own_key(record_id)
    return [key for key in keys if key != own]


def _record_keys(raw: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
    """The rk of each of these stored records."""
    found: dict[str, int] = {}
    for chunk in _chunks(list(ids)):
        found.update(
            raw.execute(
                f"SELECT record_id, rk FROM records WHERE record_id IN ({_marks(len(chunk))})",
                chunk,
            )
        )
    return found


def _parse_card(record_id: str, data: bytes) -> PersonCard:
    """A stored card; CorruptDatabaseError naming the record for bytes that are not one."""
    try:
        card = PersonCard.from_bytes(data)
    except InvalidInputError as exc:
        raise CorruptDatabaseError(
            f"the stored person card of record {record_id} is damaged ({exc}); re-index it"
        ) from None
    if card.record_id != record_id:
        raise CorruptDatabaseError(
            f"the stored person card of record {record_id} is record {card.record_id}'s; "
            "re-index it"
        )
    return card


def _parse_pair(first: str, second: str, state: str, data: bytes) -> PersonPair:
    """A stored pair; CorruptDatabaseError naming its records for bytes that are not it."""
    try:
        pair = PersonPair.from_bytes(data)
    except InvalidInputError as exc:
        raise CorruptDatabaseError(
            f"the stored person pair of records {first} and {second} is damaged ({exc}); "
            "re-index them"
        ) from None
    if pair.record_ids != (first, second) or pair.state.value != state:
        raise CorruptDatabaseError(
            f"the stored person pair of records {first} and {second} does not match its row; "
            "re-index them"
        )
    return pair


def _read_cards(raw: sqlite3.Connection, ids: Sequence[str]) -> dict[str, PersonCard]:
    """The stored cards of these records (an ``IN`` list per 500 ids); none: absent."""
    found: dict[str, PersonCard] = {}
    wanted = list(ids)
    for chunk in _chunks(wanted):
        for record_id, data in raw.execute(
            f"SELECT record_id, card FROM person_cards WHERE record_id IN ({_marks(len(chunk))})",
            chunk,
        ):
            found[record_id] = _parse_card(record_id, bytes(data))
    return found


def _hash_keys(
    organisation: str | None, keys: Iterable[str], hashed: dict[str, dict[str, int]]
) -> dict[str, int]:
    """Each key's stored hash (:func:`_key_hash`), kept in ``hashed`` per organisation
    column (returned: that column's hashes)."""
    column = _org_column(organisation)
    known = hashed.setdefault(column, {})
    # _key_hash for each key, from one hasher of the organisation copied per key
    # (the same digest for less than half the cost: a copy is 100,000s of keys).
    prefix = hashlib.blake2b(f"{column}\x00".encode(), digest_size=8)
    for key in keys:
        if key not in known:
            hasher = prefix.copy()
            hasher.update(key.encode())
            known[key] = int.from_bytes(hasher.digest(), "big", signed=True)
    return known


def _read_cards_in(
    raw: sqlite3.Connection, ids: Collection[str]
) -> dict[str, tuple[str | None, PersonCard]]:
    """The stored cards of these records with their organisations; none: absent."""
    found: dict[str, tuple[str | None, PersonCard]] = {}
    for chunk in _chunks(list(ids)):
        for record_id, column, data in raw.execute(
            "SELECT record_id, organisation, card FROM person_cards"
            f" WHERE record_id IN ({_marks(len(chunk))})",
            chunk,
        ):
            organisation = None if column == _NO_ORGANISATION else column
            found[record_id] = (organisation, _parse_card(record_id, bytes(data)))
    return found


def _key_holders(
    raw: sqlite3.Connection,
    organisation: str | None,
    keys: Collection[str],
    hashed: dict[str, dict[str, int]],
) -> list[tuple[str, str]]:
    """(key, record id) of every stored card holding one of ``keys`` in the organisation.

    Keys are stored hashed: a stored record whose key only hashes alike is
    named too, which costs a comparison and changes no pair. ``hashed``
    remembers each key's hash, per organisation column, for the writes that follow.
    """
    known = _hash_keys(organisation, keys, hashed)
    by_hash: dict[int, list[str]] = {}
    for key in keys:
        value = known[key]
        found = by_hash.get(value)
        if found is None:
            by_hash[value] = [key]
        else:
            found.append(key)  # two keys of one hash: both are named
    holders: list[tuple[str, str]] = []
    for chunk in _chunks(sorted(by_hash)):
        for value, record_id in raw.execute(
            "SELECT k.hash, r.record_id FROM person_keys k JOIN records r ON r.rk = k.rk"
            f" WHERE k.hash IN ({_marks(len(chunk))})",
            chunk,
        ):
            holders.extend((key, record_id) for key in by_hash[value])
    # A card's own key (r:<its id>) has no row: the record an r: key names holds it if
    # its card is stored in the organisation. (A row of it kept from before version 16
    # names it again, which pair_persons takes once.)
    named = {key[2:]: key for key in keys if key.startswith("r:")}
    column = _org_column(organisation)
    for part in _chunks(sorted(named)):
        for (record_id,) in raw.execute(
            "SELECT record_id FROM person_cards"
            f" WHERE record_id IN ({_marks(len(part))}) AND organisation = ?",
            [*part, column],
        ):
            holders.append((named[record_id], record_id))
    return holders


def _copied_key_rows(
    organisation: str | None, rks: Iterable[int], keys: Sequence[Collection[str]]
) -> Iterator[tuple[int, int]]:
    """(hash, rk) of each key of ``keys`` (one collection per rk of ``rks``, in turn):
    the key rows of one organisation's cards (each card's keys but its own, each
    once), :func:`_key_hash` of each from one hasher of the organisation copied per
    key. Made as they are read: a first copy's batch is thousands of rows, which
    ``executemany`` takes one at a time (no list of them for the collector to walk)."""
    copy = hashlib.blake2b(f"{_org_column(organisation)}\x00".encode(), digest_size=8).copy
    digests: list[bytes] = []
    add = digests.append
    for key in chain.from_iterable(keys):
        hasher = copy()
        hasher.update(key.encode())
        add(hasher.digest())
    # Each digest read as a signed big-endian 64-bit number (_key_hash), all in one call.
    hashes = struct.unpack(f">{len(digests)}q", b"".join(digests))
    owners = chain.from_iterable(map(repeat, rks, map(len, keys)))
    return zip(hashes, owners, strict=True)


def _store_copied_persons(
    raw: sqlite3.Connection,
    organisation: str | None,
    persons: Mapping[str, PersonCard],
    cards: Mapping[str, bytes],
    rks: Mapping[str, int],
    named: Collection[tuple[str, str]],
) -> None:
    """A first copy's cards of records new here, with the pairs the server named
    (``named``, see ``CopiedRecords.pairs``): what :func:`_store_persons` writes for
    them, with their key rows set aside in ``person_keys_copied`` (schema version 17),
    to be moved into ``person_keys`` at once by :func:`_merge_copied_keys`.

    ``cards``: each card's bytes, as stored; ``rks``: each record's rk. Only the cards
    a pair names are made (``persons[record_id]``) and compared: the others' keys come
    from :meth:`PersonCards.row_keys_of` when ``persons`` is one (no card made), else
    from the card. The digests are on the records' rows already (written with them).
    """
    in_pairs = {rid for pair in named for rid in pair if rid in persons}
    written = {rid: PersonWrite(organisation, persons[rid], True) for rid in in_pairs}
    pairs = pairs_named(written, named, lambda ids: _read_cards_in(raw, ids))
    column = _org_column(organisation)
    raw.executemany(
        "INSERT OR REPLACE INTO person_cards (record_id, organisation, card) VALUES (?, ?, ?)",
        # Made as executemany reads them (zip hands it one tuple it reuses), not a list.
        zip(persons, repeat(column), map(cards.__getitem__, persons), strict=False),
    )
    keys: list[Collection[str]]
    if isinstance(persons, PersonCards):
        keys = persons.row_keys_of(persons)
    else:
        keys = [_stored_keys(rid, persons[rid].blocking_keys()) for rid in persons]
    raw.executemany(
        "INSERT INTO person_keys_copied (hash, rk) VALUES (?, ?)",
        _copied_key_rows(organisation, map(rks.__getitem__, persons), keys),
    )
    _write_pairs(raw, pairs, {rid: organisation for rid in written})


def _merge_copied_keys(raw: sqlite3.Connection) -> None:
    """Move the key rows a first copy set aside (``person_keys_copied``) into
    ``person_keys``, in the caller's transaction: each page of the index is then
    written once, where each batch's rows at random places of it rewrote most of its
    pages at every commit.

    In the order set aside (by rk): the index by record (``person_keys_by_record``)
    grows at its end; the rows land at random places of the primary key, in pages
    the transaction holds (sorting them by hash instead costs a sort and moves the
    random places to the other index: 0.57 s against 0.35 s of CPU for 300,000 rows).
    """
    # Asked of every write with cards: the rowid B-tree's last entry, read at once.
    if raw.execute("SELECT max(rowid) FROM person_keys_copied").fetchone()[0] is None:
        return
    raw.execute(
        "INSERT OR IGNORE INTO person_keys (hash, rk) SELECT hash, rk FROM person_keys_copied"
    )
    raw.execute("DELETE FROM person_keys_copied")


def _unchanged_cards(
    raw: sqlite3.Connection, written: Mapping[str, PersonWrite], cards: Mapping[str, bytes]
) -> tuple[set[str], list[tuple[bytes, str]]]:
    """The records of ``written`` whose stored card (and organisation) is the one written;
    and of them, (digest, record id) of those whose row lacks that card's digest (none
    kept yet, or a wrong one): to be set, so that a later pull need not read the card."""
    column = {record_id: _org_column(w.organisation) for record_id, w in written.items()}
    same: set[str] = set()
    stale: list[tuple[bytes, str]] = []
    for chunk in _chunks([record_id for record_id, w in written.items() if not w.new]):
        for record_id, organisation, data, digest in raw.execute(
            "SELECT c.record_id, c.organisation, c.card, r.card_digest FROM person_cards c"
            " LEFT JOIN records r ON r.record_id = c.record_id"
            f" WHERE c.record_id IN ({_marks(len(chunk))})",
            chunk,
        ):
            if organisation == column[record_id] and bytes(data) == cards[record_id]:
                same.add(record_id)
                wanted = card_digest(cards[record_id])
                if digest is None or bytes(digest) != wanted:
                    stale.append((wanted, record_id))
    return same, stale


def _store_persons(
    raw: sqlite3.Connection,
    written: Mapping[str, PersonWrite],
    *,
    reindex: bool = False,
    sent: Mapping[str, bytes] | None = None,
    keys_of: Mapping[str, int] | None = None,
    digests_written: bool = False,
) -> None:
    """Replace the cards of ``written``, their keys and every pair of their records.

    Each card written has its digest (``card_digest``) set on its record's row, here,
    unless ``digests_written``: the caller wrote them with the rows (a first copy).

    A record whose stored card (and organisation) is the one written keeps its keys
    and pairs as they are, unless ``reindex`` (a re-index rewrites them all: it is
    also how damaged keys or pairs are repaired).

    ``sent``: the bytes some cards were read from (``PersonCard.from_bytes``), stored
    as they are instead of written out again (a first copy's cards, as the server
    stored them). ``keys_of``: the rk of each record of ``written``, when the caller
    has just given them (else they are read).

    The key rows a first copy set aside (:func:`_store_copied_persons`) are moved into
    ``person_keys`` first, so that what this write looks up or deletes is there.

    The pairs are worked out first (reads only), then written in a few
    statements for the whole batch: a write's share is indexed lookups of its
    keys' holders and of their cards, never a scan.
    """
    sent = sent or {}
    cards = {
        record_id: sent.get(record_id) or w.card.to_bytes() for record_id, w in written.items()
    }
    unchanged, stale = (set(), []) if reindex else _unchanged_cards(raw, written, cards)
    if stale:
        raw.executemany("UPDATE records SET card_digest = ? WHERE record_id = ?", stale)
    if unchanged:
        # The same card, in the same organisation: its keys and its pairs stand as stored
        # (a pair changes only with one of its cards, and a changed one is re-paired
        # from its own side). Most edits touch no identifying field.
        written = {rid: w for rid, w in written.items() if rid not in unchanged}
        if not written:
            return
    # What follows looks keys up and replaces them: in person_keys only.
    _merge_copied_keys(raw)
    # The keys each card has rows of (all but its own), worked out once.
    row_keys = {record_id: _stored_keys(record_id, w.keys) for record_id, w in written.items()}
    hashed: dict[str, dict[str, int]] = {}
    pairs = pair_persons(
        written,
        lambda organisation, keys: _key_holders(raw, organisation, keys, hashed),
        lambda ids: _read_cards(raw, list(ids)),
    )
    # A record new in this write has nothing indexed to delete. (Only a damaged
    # file could hold keys or pairs of it: OR REPLACE below keeps them from
    # failing the write, and check() names them.)
    rks = (
        keys_of
        if keys_of is not None and written.keys() <= keys_of.keys()
        else _record_keys(raw, list(written))
    )
    ids = [(record_id,) for record_id, w in written.items() if not w.new]
    if ids:
        raw.executemany("DELETE FROM person_pairs WHERE first = ?", ids)
        raw.executemany("DELETE FROM person_pairs WHERE second = ?", ids)
        raw.executemany("DELETE FROM person_keys WHERE rk = ?", [(rks[i],) for (i,) in ids])
    raw.executemany(
        "INSERT OR REPLACE INTO person_cards (record_id, organisation, card) VALUES (?, ?, ?)",
        [
            (record_id, _org_column(w.organisation), cards[record_id])
            for record_id, w in written.items()
        ],
    )
    if not digests_written:
        # The card's digest on its record's row, in the same transaction (version 15):
        # what a pull compares a card reference with, read with the state vector.
        raw.executemany(
            "UPDATE records SET card_digest = ? WHERE record_id = ?",
            [(card_digest(cards[rid]), rid) for rid in sorted(written)],
        )
    key_rows: list[tuple[int, int]] = []
    for record_id, w in written.items():
        known = hashed[_org_column(w.organisation)]
        key_rows += zip(map(known.__getitem__, row_keys[record_id]), repeat(rks[record_id]))
    raw.executemany(
        "INSERT OR REPLACE INTO person_keys (hash, rk) VALUES (?, ?)", sorted(set(key_rows))
    )
    _write_pairs(raw, pairs, {rid: w.organisation for rid, w in written.items()})


def _write_pairs(
    raw: sqlite3.Connection, pairs: Iterable[PersonPair], organisation: Mapping[str, str | None]
) -> None:
    """Upsert these pairs; ``organisation``: that of (at least) one record of each."""
    raw.executemany(
        # Upserted, not replaced: a REPLACE deletes without firing the delete trigger
        # that keeps the pair counts (schema version 12).
        "INSERT INTO person_pairs (first, second, organisation, state, payload)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (first, second) DO UPDATE SET"
        " organisation = excluded.organisation, state = excluded.state,"
        " payload = excluded.payload",
        [
            (
                pair.first.record_id,
                pair.second.record_id,
                # Both records are of one organisation: a card is only compared within it.
                _org_column(
                    organisation[pair.first.record_id]
                    if pair.first.record_id in organisation
                    else organisation[pair.second.record_id]
                ),
                pair.state.value,
                pair.to_bytes(),
            )
            for pair in pairs
        ],
    )
