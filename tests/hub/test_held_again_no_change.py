"""The hub sender looking at a held summary again changes nothing a laptop is told.

Found in review (failed before the fix): a held summary found held again was rewritten
as it was, and every such write took a new hub mark, so the next change report to every
laptop of the organisation carried every held summary again, though none changed. The
stores' side is in the conformance suite
(``test_a_hub_outcome_that_changes_nothing_takes_no_mark``).
"""

from __future__ import annotations

from pathlib import Path

from tests.hub.test_hub_due import NOW, Counting, Hub, sender_for
from tests.hub.test_hub_outbox import Clock

from caresync.hub.sender import HubSnapshot
from caresync.storage import HubMark, HubOutcome, IncomingUpdate, SQLiteStore
from caresync.storage.base import ServerStore
from caresync.testing.store_data import Patient, whole


async def _marked(store: ServerStore, n: int) -> list[Patient]:
    patients = [Patient("laptop-b") for _ in range(n)]
    await store.write_remote(
        [IncomingUpdate(p.id, whole(p), None, "org-1") for p in patients],
        to_feed=True,
        hub={p.id: HubMark(True) for p in patients},
    )
    return patients


async def test_a_held_summary_rewritten_unchanged_by_a_sender_round_is_no_hub_change(
    tmp_path: Path,
) -> None:
    async with SQLiteStore.open(tmp_path / "server.db") as store:
        (p,) = await _marked(store, 1)
        row = await store.hub_summary(p.id)
        assert row is not None
        held = HubOutcome("held", "an open conflict", 0, 0)
        assert await store.record_hub_outcome(p.id, row.version, held)
        mark = (await store.hub_changes("org-1", 0, 10)).mark
        before = await store.hub_summary(p.id)

        # One sender round: the held row is due whenever, its snapshot still held.
        hub, clock = Hub(), Clock()
        clock.ms = NOW
        counting = Counting(store)
        sender = sender_for(counting, hub, clock)

        async def still_held(record_id: str) -> HubSnapshot | None:
            got = await store.hub_summary(record_id)
            assert got is not None
            return HubSnapshot(got.version, got.attempts, "an open conflict", None)

        sender._snapshot = still_held  # type: ignore[method-assign]
        try:
            await sender.run_once()
        finally:
            await sender.close()
            await hub.client.aclose()
        assert hub.paths == []
        assert await store.hub_summary(p.id) == before  # nothing of the row changed
        # ... so a laptop at ``mark`` has nothing new to be told.
        changes = await store.hub_changes("org-1", mark, 10)
        assert changes.rows == (), "an unchanged held row is sent again in every change report"
