"""A first copy through a store's ordinary methods, for stores without a way of their
own: its page read (:meth:`~caresync.storage.base.ServerStore.copy_page`) and its
batch written (:meth:`~caresync.storage.base.ReplicaStore.write_copy`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from caresync.storage._arguments import check_record_page
from caresync.storage.base import (
    ConflictRow,
    CopiedRecords,
    CopyPage,
    IncomingUpdate,
    QuarantinedUpdate,
    check_count,
)

__all__ = ["copy_page_of", "copied_items", "write_copy_of"]


class _Readable(Protocol):
    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]: ...

    async def load_many(self, record_ids: list[str]) -> dict[str, bytes]: ...

    async def conflict_rows(self, record_ids: list[str]) -> dict[str, tuple[ConflictRow, ...]]: ...

    async def person_card_bytes(self, record_ids: list[str]) -> dict[str, bytes]: ...

    async def person_pairs_ending(self, record_ids: list[str]) -> list[tuple[str, str]]: ...


async def copy_page_of(
    store: _Readable,
    organisation: str | None,
    *,
    after: str | None,
    limit: int,
    rows: bool,
    persons: bool,
    pairs: bool = False,
) -> CopyPage:
    """``copy_page`` from ``record_ids``, ``load_many``, ``conflict_rows``,
    ``person_card_bytes`` and ``person_pairs_ending``; the caller makes the reads one
    moment (the server reads a page under its commit lock)."""
    check_record_page(organisation, after, None)
    limit = check_count(limit, "limit")
    # One id more than asked says whether another page follows.
    ids = await store.record_ids(organisation, after=after, limit=limit + 1)
    more = len(ids) > limit
    del ids[limit:]
    loaded = await store.load_many(ids)
    found = await store.conflict_rows(ids) if rows and ids else {}
    cards = await store.person_card_bytes(ids) if persons and ids else {}
    found_pairs = await store.person_pairs_ending(ids) if pairs and ids else []
    return CopyPage(
        [(record_id, loaded[record_id]) for record_id in ids if record_id in loaded],
        more,
        {
            record_id: [(r.record_id, r.id, r.kind, r.subject, r.severity, r.payload) for r in got]
            for record_id, got in found.items()
        },
        cards,
        found_pairs,
    )


class _Writable(Protocol):
    async def write_remote(
        self,
        items: Sequence[IncomingUpdate],
        *,
        checkpoint: tuple[str, str] | None = None,
        quarantine: Sequence[QuarantinedUpdate] = (),
        durable: bool = True,
    ) -> list[int]: ...


def copied_items(records: CopiedRecords) -> list[IncomingUpdate]:
    """The batch as ``write_remote`` takes it: one item per record."""
    rows, persons, organisation = records.conflicts, records.persons, records.organisation
    return [
        IncomingUpdate(rid, update, rows.get(rid, ()), organisation, persons.get(rid), vector)
        for rid, update, vector in zip(
            records.record_ids, records.updates, records.state_vectors, strict=True
        )
    ]


async def write_copy_of(
    store: _Writable,
    records: CopiedRecords,
    *,
    checkpoint: tuple[str, str] | None,
    quarantine: Sequence[QuarantinedUpdate],
    durable: bool = True,
) -> None:
    """``write_copy`` as ``write_remote`` of one item per record."""
    await store.write_remote(
        copied_items(records), checkpoint=checkpoint, quarantine=quarantine, durable=durable
    )
