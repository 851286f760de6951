"""The oracle checks decisions too: a resolution or an acknowledgement whose call returned
must be held, as every value written must.

A decision picks a value that exists already (a candidate), so checking it by path and
value proves nothing: the candidate's own revision answers for it. The fault injected
here is a decision that returned without being committed anywhere (computed on a copy of
the record): every replica then agrees, every value is reachable, and only the revision
the call returned is missing. Real run: a server and laptops on SQLite files, in memory.
"""

from __future__ import annotations

from typing import Any

import pytest

from caresync.records import Record, Revision
from caresync.replica import Replica
from caresync.simulation import SimulationConfig, run_simulation

CONFIG: dict[str, Any] = dict(
    laptops=10,
    patients=4,
    edits_per_laptop=4,
    conflict_rate=0.5,
    seed=5,
    workers=0,
    transport="memory",
)


async def _on_a_copy(replica: Replica, conflict_id: str) -> tuple[Record, str]:
    """The conflict's record, loaded into a copy nothing stores."""
    conflict = await replica._listing.find(conflict_id)
    data = await replica.store.load(conflict.record_id)
    assert data is not None
    return Record.from_update(conflict.record_id, data, replica="nowhere"), conflict.record_id


async def test_a_decision_never_committed_is_counted_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolve(
        self: Replica, conflict_id: str, *, author: str | None = None, choose: int | None = None
    ) -> Revision:
        record, _ = await _on_a_copy(self, conflict_id)
        writer = await self.author_of(author)
        return self.rulebook.resolve(record, conflict_id, author=writer, choose=choose)

    async def acknowledge(
        self: Replica, conflict_id: str, *, author: str | None = None
    ) -> Revision:
        record, _ = await _on_a_copy(self, conflict_id)
        writer = await self.author_of(author)
        return self.rulebook.acknowledge(record, conflict_id, author=writer)

    monkeypatch.setattr(Replica, "resolve", resolve)
    monkeypatch.setattr(Replica, "acknowledge", acknowledge)
    result = await run_simulation(SimulationConfig(**CONFIG))
    assert result.conflicts_resolved > 0
    assert result.converged, result.details  # every replica agrees: nothing was written
    assert result.lost_values == result.conflicts_resolved
    assert not result.ok
    assert any(line.startswith("lost: record") and "decision" in line for line in result.details)


async def test_a_run_holds_every_decision_it_made() -> None:
    result = await run_simulation(SimulationConfig(**CONFIG))
    assert result.conflicts_resolved > 0
    assert result.ok, result.details
