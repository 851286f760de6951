"""A first copy's page read through a store's ordinary methods (see
:meth:`~caresync.storage.base.ServerStore.copy_page`), for stores without a read of
their own."""

from __future__ import annotations

from typing import Protocol

from caresync.storage._arguments import check_record_page
from caresync.storage.base import ConflictRow, CopyPage, check_count

__all__ = ["copy_page_of"]


class _Readable(Protocol):
    async def record_ids(
        self, organisation: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[str]: ...

    async def load_many(self, record_ids: list[str]) -> dict[str, bytes]: ...

    async def conflict_rows(self, record_ids: list[str]) -> dict[str, tuple[ConflictRow, ...]]: ...

    async def person_card_bytes(self, record_ids: list[str]) -> dict[str, bytes]: ...


async def copy_page_of(
    store: _Readable,
    organisation: str | None,
    *,
    after: str | None,
    limit: int,
    rows: bool,
    persons: bool,
) -> CopyPage:
    """``copy_page`` from ``record_ids``, ``load_many``, ``conflict_rows`` and
    ``person_card_bytes``; the caller makes the reads one moment (the server reads a
    page under its commit lock)."""
    check_record_page(organisation, after, None)
    limit = check_count(limit, "limit")
    # One id more than asked says whether another page follows.
    ids = await store.record_ids(organisation, after=after, limit=limit + 1)
    more = len(ids) > limit
    del ids[limit:]
    loaded = await store.load_many(ids)
    found = await store.conflict_rows(ids) if rows and ids else {}
    cards = await store.person_card_bytes(ids) if persons and ids else {}
    return CopyPage(
        [(record_id, loaded[record_id]) for record_id in ids if record_id in loaded],
        more,
        {
            record_id: [(r.record_id, r.id, r.kind, r.subject, r.severity, r.payload) for r in got]
            for record_id, got in found.items()
        },
        cards,
    )
