"""What the trust-nothing work added to the stores, where it is SQLite's own.

The rest (sessions hashed and ended by revocation, a new password or a disabled
account; replica secrets; Yjs client owners; record organisations; the outbox
summary; renumbering after a restore; updates kept aside) is in the conformance
suite, :mod:`caresync.testing.store_suite`, run against every store.
"""

from __future__ import annotations

import pytest
from store_helpers import Patient
from tests.sqlite_trace import traced

from caresync.storage import SQLiteStore, Store


async def test_the_outbox_summary_is_one_read(store: Store) -> None:
    """Why 9: two reads let an acknowledgement slip between the count and the oldest time."""
    if not isinstance(store, SQLiteStore):
        pytest.skip("SQLite's trace shows the statements; the in-memory store reads at once")
    patient = Patient()
    await store.write_local(patient.id, patient.edit(), conflicts=None)
    async with traced(store) as statements:
        await store.outbox_summary()
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) == 1
