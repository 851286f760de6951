"""Conformance of what the trust-nothing work added to every store (SQLite and in-memory).

Sessions (hashed, ended by revocation, a new password or a disabled account),
replica secrets, Yjs client owners, record organisations, the outbox summary
read at once, renumbering after a restore, and updates kept aside.
"""

from __future__ import annotations

import pytest
from store_helpers import Patient
from tests.sqlite_trace import traced

from caresync import InvalidInputError
from caresync.storage import (
    IncomingUpdate,
    QuarantinedUpdate,
    SessionRow,
    SQLiteStore,
    Store,
)


def _session(token: str, *, replica: str | None = "r1", user: str = "dr.a") -> SessionRow:
    return SessionRow(f"hash-{token}", "clinic", user, replica, 1_000, 5_000)


async def test_sessions_are_stored_by_hash_bound_and_ended(store: Store) -> None:
    await store.add_user("clinic", "dr.a", "argon-hash")
    await store.enrol_replica("r1", "clinic", enrolled_by="dr.a", secret_hash="s1")
    await store.add_session(_session("a"))
    await store.add_session(_session("b", replica=None))
    with pytest.raises(InvalidInputError, match="stored already"):
        await store.add_session(_session("a"))
    assert await store.get_session("hash-a") == _session("a")
    await store.bind_session("hash-b", "r1")
    with pytest.raises(InvalidInputError, match="no unbound session"):
        await store.bind_session("hash-b", "r2")  # bound once, for good
    assert (await store.get_session("hash-b")) == _session("b")
    generation = await store.accounts_generation()
    assert await store.end_sessions(expired_at_ms=4_999) == 0
    assert await store.accounts_generation() == generation  # expiry ends nothing early
    await store.revoke_replica("r1")
    assert await store.get_session("hash-a") is None
    assert await store.get_session("hash-b") is None
    assert await store.accounts_generation() > generation


async def test_a_new_password_and_a_disabled_account_end_the_users_sessions(
    store: Store,
) -> None:
    await store.add_user("clinic", "dr.a", "argon-hash")
    await store.add_user("clinic", "dr.b", "argon-hash")
    await store.add_session(_session("a"))
    await store.add_session(_session("b", user="dr.b"))
    await store.set_password_hash("clinic", "dr.a", "rehash", end_sessions=False)
    assert await store.get_session("hash-a") is not None
    await store.set_password_hash("clinic", "dr.a", "new password's hash")
    assert await store.get_session("hash-a") is None
    assert await store.get_session("hash-b") is not None
    await store.set_user_disabled("clinic", "dr.b", True)
    assert await store.get_session("hash-b") is None
    account = await store.get_user("clinic", "dr.b")
    assert account is not None
    assert account.disabled
    await store.set_user_disabled("clinic", "dr.b", False)
    account = await store.get_user("clinic", "dr.b")
    assert account is not None
    assert not account.disabled
    with pytest.raises(InvalidInputError, match="no user"):
        await store.set_user_disabled("clinic", "nobody", True)


async def test_end_sessions_takes_exactly_one_way_of_choosing(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="exactly one"):
        await store.end_sessions()
    with pytest.raises(InvalidInputError, match="exactly one"):
        await store.end_sessions(replica_id="r1", expired_at_ms=5)
    await store.add_session(_session("a"))
    assert await store.end_sessions(token_hash="hash-a") == 1


async def test_replica_secrets_are_given_once(store: Store) -> None:
    await store.enrol_replica("r1", "clinic", device_name="ward laptop 3", secret_hash="s1")
    await store.enrol_replica("r2", "clinic")  # enrolled before secrets existed
    assert await store.replica_secret_hash("r1") == "s1"
    assert await store.replica_secret_hash("r2") is None
    with pytest.raises(InvalidInputError, match="has a secret already"):
        await store.set_replica_secret_hash("r1", "s1-again")
    await store.set_replica_secret_hash("r2", "s2")
    assert await store.replica_secret_hash("r2") == "s2"
    info = await store.get_replica("r1")
    assert info is not None
    assert info.device_name == "ward laptop 3"


async def test_yjs_clients_keep_their_first_owner(store: Store) -> None:
    patient = Patient()
    item = IncomingUpdate(patient.id, patient.created, None, "clinic")
    await store.write_remote([item], to_feed=True, claim_clients={7: "r1", 2**52: "r1"})
    await store.write_remote([item], to_feed=True, claim_clients={7: "r2", 9: "r2"})
    assert await store.client_owners([7, 9, 2**52, 11]) == {7: "r1", 9: "r2", 2**52: "r1"}
    with pytest.raises(InvalidInputError, match="Yjs client id"):
        await store.client_owners([2**53])


async def test_record_organisations(store: Store) -> None:
    a, b = Patient(), Patient()
    await store.write_remote([IncomingUpdate(a.id, a.created, None, "clinic")])
    await store.write_remote([IncomingUpdate(b.id, b.created, None, "other")])
    found = await store.record_organisations([a.id, b.id, "nope"])
    assert found == {a.id: "clinic", b.id: "other"}


async def test_the_outbox_summary_agrees_with_itself(store: Store) -> None:
    patient = Patient()
    empty = await store.outbox_summary()
    assert (empty.pending, empty.oldest_pending_ms, empty.first_seq, empty.last_seq) == (
        0,
        None,
        None,
        0,
    )
    for _ in range(3):
        await store.write_local(patient.id, patient.edit(), conflicts=None)
    summary = await store.outbox_summary()
    assert (summary.pending, summary.first_seq, summary.last_seq) == (3, 1, 3)
    assert summary.acknowledged_up_to == 0
    await store.acknowledge(2)
    summary = await store.outbox_summary()
    assert (summary.pending, summary.first_seq, summary.acknowledged_up_to) == (1, 3, 2)
    await store.acknowledge(3)
    assert (await store.outbox_summary()).acknowledged_up_to == 3


async def test_the_outbox_summary_is_one_read(store: Store) -> None:
    """Why 9: two reads let an acknowledgement slip between the count and the oldest time."""
    if not isinstance(store, SQLiteStore):
        pytest.skip("SQLite's trace shows the statements; the in-memory store reads at once")
    patient = Patient()
    await store.write_local(patient.id, patient.edit(), conflicts=None)
    async with traced(store) as statements:
        await store.outbox_summary()
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


async def test_renumbering_moves_waiting_updates_past_the_servers_mark(store: Store) -> None:
    patient = Patient()
    for _ in range(3):
        await store.write_local(patient.id, patient.edit(), conflicts=None)
    await store.acknowledge(1)
    waiting = [(i.record_id, i.update) for i in await store.pending()]
    assert await store.renumber_outbox(10, checkpoint=("pull.include_own", "1")) == 2
    after = await store.pending()
    assert [i.seq for i in after] == [11, 12]
    assert [(i.record_id, i.update) for i in after] == waiting  # the same, in order
    assert await store.get_meta("pull.include_own") == "1"
    seq = await store.write_local(patient.id, patient.edit(), conflicts=None)
    assert seq == 13  # later writes follow
    # A mark below what this replica gave out renumbers after its own last number.
    assert await store.renumber_outbox(0) == 3
    assert [i.seq for i in await store.pending()] == [14, 15, 16]


async def test_updates_kept_aside_are_stored_with_the_batch(store: Store) -> None:
    patient = Patient()
    kept = QuarantinedUpdate(patient.id, b"\x01\x02 not an update", "not a valid update")
    await store.write_remote(
        [IncomingUpdate(patient.id, patient.created, None)],
        checkpoint=("sync.checkpoint", "7"),
        quarantine=[kept],
    )
    assert await store.count_quarantined() == 1
    [found] = await store.quarantined()
    assert (found.record_id, found.update, found.reason) == (
        patient.id,
        kept.update,
        kept.reason,
    )
    assert found.id >= 1
    assert await store.quarantined("another-record") == []
    assert await store.get_meta("sync.checkpoint") == "7"
