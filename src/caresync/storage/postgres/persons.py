"""The person index in PostgreSQL: cards, blocking keys and pairs, kept with each write.

The same tables as the SQLite store's (a key kept as a 64-bit hash of its
organisation and text, beside the record's rk), and the same pairing rule
(:func:`~caresync.storage._writes.pair_persons`)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

from caresync.exceptions import CorruptDatabaseError, InvalidInputError
from caresync.records.persons import PersonCard, PersonPair
from caresync.storage._writes import PersonWrite, pair_persons
from caresync.storage.postgres._sql import Conn

__all__: list[str] = []  # the store's own helpers; nothing public

_NO_ORGANISATION = ""
"""How a record of no organisation is keyed in the person tables (an organisation is
never empty)."""


def org_column(organisation: str | None) -> str:
    return _NO_ORGANISATION if organisation is None else organisation


def key_hash(organisation_column: str, key: str) -> int:
    """How a blocking key is stored: 64 bits of BLAKE2b of its organisation and text."""
    digest = hashlib.blake2b(f"{organisation_column}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def parse_card(record_id: str, data: bytes) -> PersonCard:
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


def parse_pair(first: str, second: str, state: str, data: bytes) -> PersonPair:
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


def read_cards(raw: Conn, ids: Sequence[str]) -> dict[str, PersonCard]:
    """The stored cards of these records (none: absent)."""
    return {
        record_id: parse_card(record_id, bytes(data))
        for record_id, data in raw.execute(
            "SELECT record_id, card FROM person_cards WHERE record_id = ANY(%s)", (list(ids),)
        )
    }


def _key_holders(
    raw: Conn,
    organisation: str | None,
    keys: Collection[str],
    hashed: dict[tuple[str, str], int],
) -> list[tuple[str, str]]:
    """(key, record id) of every stored card holding one of ``keys`` in the organisation."""
    column = org_column(organisation)
    by_hash: dict[int, list[str]] = {}
    for key in keys:
        value = hashed.get((column, key))
        if value is None:
            value = hashed[column, key] = key_hash(column, key)
        by_hash.setdefault(value, []).append(key)
    holders: list[tuple[str, str]] = []
    for value, record_id in raw.execute(
        "SELECT k.hash, r.record_id FROM person_keys k JOIN records r ON r.rk = k.rk"
        " WHERE k.hash = ANY(%s)",
        (sorted(by_hash),),
    ):
        holders.extend((key, record_id) for key in by_hash[value])
    return holders


def store_persons(raw: Conn, written: Mapping[str, PersonWrite]) -> None:
    """Replace the cards of ``written``, their keys and every pair of their records."""
    hashed: dict[tuple[str, str], int] = {}
    pairs = pair_persons(
        written,
        lambda organisation, keys: _key_holders(raw, organisation, keys, hashed),
        lambda ids: read_cards(raw, list(ids)),
    )
    rks: dict[str, int] = {
        record_id: int(rk)
        for record_id, rk in raw.execute(
            "SELECT record_id, rk FROM records WHERE record_id = ANY(%s)", (list(written),)
        )
    }
    old = [record_id for record_id, w in written.items() if not w.new]
    if old:
        raw.execute(
            "DELETE FROM person_pairs WHERE first = ANY(%s) OR second = ANY(%s)", (old, old)
        )
        raw.execute("DELETE FROM person_keys WHERE rk = ANY(%s)", ([rks[i] for i in old],))
    with raw.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO person_cards (record_id, organisation, card) VALUES (%s, %s, %s)"
            " ON CONFLICT (record_id) DO UPDATE SET organisation = excluded.organisation,"
            " card = excluded.card",
            [
                (record_id, org_column(w.organisation), w.card.to_bytes())
                for record_id, w in written.items()
            ],
        )
        keys = sorted(
            {
                (hashed[org_column(w.organisation), key], rks[record_id])
                for record_id, w in written.items()
                for key in w.keys
            }
        )
        if keys:
            cursor.executemany(
                "INSERT INTO person_keys (hash, rk) VALUES (%s, %s) ON CONFLICT DO NOTHING", keys
            )
        rows = [
            (
                pair.first.record_id,
                pair.second.record_id,
                # Both records are of one organisation: a card is only compared within it.
                org_column(
                    (
                        written.get(pair.first.record_id) or written[pair.second.record_id]
                    ).organisation
                ),
                pair.state.value,
                pair.to_bytes(),
            )
            for pair in pairs
        ]
        if rows:
            cursor.executemany(
                "INSERT INTO person_pairs (first, second, organisation, state, payload)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (first, second) DO UPDATE SET"
                " organisation = excluded.organisation, state = excluded.state,"
                " payload = excluded.payload",
                rows,
            )
