"""Feed epochs and what a laptop sends again to a server that went back in time
(caresync.replication.epochs): the pure parts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caresync.exceptions import CorruptDatabaseError
from caresync.records import Admission
from caresync.records.crdt import Doc, Map, merge
from caresync.records.record import Record
from caresync.records.spans import items_by_client, simple_items, simple_pieces
from caresync.replication.epochs import FeedPosition, epoch_at, own_items
from caresync.storage import FeedEpoch


def test_a_number_takes_the_epoch_begun_last_at_or_before_it() -> None:
    epochs = [FeedEpoch(1, 11), FeedEpoch(5, 55), FeedEpoch(9, 99)]
    assert [epoch_at(epochs, seq) for seq in range(12)] == [
        0,
        11,
        11,
        11,
        11,
        55,
        55,
        55,
        55,
        99,
        99,
        99,
    ]
    assert epoch_at([], 7) == 0
    assert epoch_at([FeedEpoch(3, 33)], 2) == 0  # numbers before the first epoch


@given(
    st.lists(st.integers(1, 50), unique=True).map(sorted),
    st.integers(0, 60),
)
def test_epoch_at_is_the_last_epoch_at_or_before_the_number(firsts: list[int], seq: int) -> None:
    epochs = [FeedEpoch(first, first * 1000 + 7) for first in firsts]
    expected = 0
    for epoch in epochs:  # the plain reading of the rule
        if epoch.first_seq <= seq:
            expected = epoch.epoch
    assert epoch_at(epochs, seq) == expected


@pytest.mark.parametrize(
    ("value", "position"),
    [
        (None, FeedPosition(0, None)),
        ("0", FeedPosition(0, None)),
        ("42", FeedPosition(42, None)),
        ("42:7", FeedPosition(42, 7)),
        ("42:0", FeedPosition(42, 0)),
        (f"3:{2**63 - 1}", FeedPosition(3, 2**63 - 1)),
    ],
)
def test_a_checkpoint_reads_back_as_written(value: str | None, position: FeedPosition) -> None:
    assert FeedPosition.parse(value) == position
    if value is not None:
        assert position.to_meta() == value


@pytest.mark.parametrize(
    "damaged",
    ["", "x", "-1", "4:", "4:-2", ":5", "4:5:6", "4.5", f"{2**63}", f"4:{2**63}"],
)
def test_a_damaged_checkpoint_is_named_not_read_as_zero(damaged: str) -> None:
    with pytest.raises(CorruptDatabaseError, match="sync checkpoint"):
        FeedPosition.parse(damaged)


def _revision_writers(record_id: str, updates: list[bytes]) -> list[str]:
    record = Record.from_update(record_id, merge(updates), replica="reader")
    return sorted(revision.replica for revision in record.revisions())


def test_own_items_are_every_entry_a_replica_wrote_under_each_of_its_clients() -> None:
    first = Record.create(replica="laptop-a")
    first.set("name", "Awa Diop", author="dr.a")
    # Another session of laptop a (a new Yjs client), then laptop b on a's bytes.
    rid = first.record_id
    again = Record.from_update(rid, first.update_since(), replica="laptop-a")
    again.set("birthDate", "1990-04-12", author="dr.a")
    other = Record.from_update(rid, again.update_since(), replica="laptop-b")
    other.set("note", "seen", author="dr.b")
    whole = other.update_since()

    mine = own_items(whole, "laptop-a")
    # One update per client: a server admits only updates of one client each.
    assert len(mine) == 2
    assert all(simple_items(update) is not None for update in mine)
    assert _revision_writers(rid, mine) == ["laptop-a", "laptop-a"]  # the name, the date
    back = Record.from_update(rid, merge(mine), replica="reader")
    assert back.value("name") == "Awa Diop"
    assert back.value("birthDate") == "1990-04-12"
    assert back.value("note") is None

    theirs = own_items(whole, "laptop-b")
    assert len(theirs) == 1
    assert _revision_writers(rid, theirs) == ["laptop-b"]
    assert own_items(whole, "laptop-c") == []  # wrote nothing there


def test_own_items_of_one_client_go_in_pieces_a_server_admits() -> None:
    record = Record.create(replica="laptop-a")
    for n in range(2500):
        record.set("weightKg", n, author="dr.a")
    whole = record.update_since()
    pieces = own_items(whole, "laptop-a")
    assert len(pieces) == 3  # 2,501 items (meta/id and each weight), 1,000 at most each
    admitted = Admission(record.record_id)
    for piece in pieces:
        assert admitted.admit(piece)  # each in turn: simple, and continuing the last
    back = Record.from_update(record.record_id, merge(pieces), replica="reader")
    assert back.value("weightKg") == 2499
    assert merge(pieces) == merge([whole])


def test_bytes_that_are_not_entries_only_are_left_to_their_writers() -> None:
    doc: Doc[Map[str]] = Doc()
    revisions: Map[str] = doc.get("revisions", type=Map)
    revisions["k1"] = "x"
    del revisions["k1"]  # a deletion: no honest record holds one
    assert own_items(doc.get_update(), "laptop-a") == []
    assert own_items(b"not an update", "laptop-a") == []


@given(
    st.lists(
        st.tuples(st.sampled_from(["laptop-a", "laptop-b"]), st.integers(1, 40)),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 7),
)
def test_pieces_of_every_client_make_the_record_again(
    sessions: list[tuple[str, int]], max_items: int
) -> None:
    """Sessions of two laptops, each a new Yjs client writing some entries: every
    client's pieces, each simple and at most ``max_items`` items, together are the
    record's whole state."""
    record = Record.create(replica=sessions[0][0])
    rid = record.record_id
    for replica, count in sessions:
        record = Record.from_update(rid, record.update_since(), replica=replica)
        for n in range(count):
            record.set("weightKg", n, author="dr.x")
    whole = record.update_since()
    clients = items_by_client(whole)
    assert clients is not None
    pieces = simple_pieces(whole, set(clients), max_items=max_items, max_bytes=1 << 20)
    assert pieces is not None
    for piece in pieces:
        read = simple_items(piece)
        assert read is not None
        assert len(read.items) <= max_items
    assert merge(pieces) == merge([whole])
    assert simple_pieces(whole, set(), max_items=max_items, max_bytes=1) == []
    # Past the byte bound after one item: one item each.
    one_each = simple_pieces(whole, set(clients), max_items=1000, max_bytes=1)
    assert one_each is not None
    assert len(one_each) == sum(len(items) for items in clients.values())
    assert merge(one_each) == merge([whole])
