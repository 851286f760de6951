"""The whole-sync state machine at a small size, on both stores (see tests/sync_machine.py).

Real parts: SyncServer and Replica objects on SQLite files (or on memory stores that
outlive their processes), over in-memory channels with faults the machine arms. The
full size runs from ``benchmarks/bench_sync_machine.py`` (opt-in, minutes).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from tests.sync_machine import MemorySyncMachine, SQLiteSyncMachine

_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]

TestMemorySync = MemorySyncMachine.TestCase
TestMemorySync.settings = settings(
    max_examples=10, stateful_step_count=25, deadline=None, suppress_health_check=_QUIET
)

TestSQLiteSync = SQLiteSyncMachine.TestCase
TestSQLiteSync.settings = settings(
    max_examples=5, stateful_step_count=20, deadline=None, suppress_health_check=_QUIET
)
