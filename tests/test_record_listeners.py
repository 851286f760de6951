"""``Record.on_update``: listeners get every transaction, and leave nothing behind."""

from __future__ import annotations

import gc
import weakref

from caresync import Record


def _freed_after_del() -> bool:
    """Whether a record that had listeners, all unsubscribed, is freed once dropped."""
    record = Record.create(replica="laptop-a")
    seen: list[bytes] = []
    first = record.on_update(lambda update, local: seen.append(update))
    second = record.on_update(lambda update, local: seen.append(update))
    record.set("birthDate", "1990-01-01", author="dr.a")
    assert len(seen) == 2
    first()
    second()
    ref = weakref.ref(record)
    del record, first, second  # an unsubscribe callable holds its record
    gc.collect()
    return ref() is None


def test_a_listener_gets_local_and_applied_updates() -> None:
    north = Record.create(replica="north")
    south = Record.from_update(north.record_id, north.update_since(), replica="south")
    got: list[tuple[bytes, bool]] = []
    unsubscribe = south.on_update(lambda update, local: got.append((update, local)))
    south.set("birthDate", "1990-01-01", author="dr.a")
    north.set("gender", "female", author="dr.b")
    south.apply_update(north.update_since(south.state_vector()))
    assert [local for _, local in got] == [True, False]
    # What the listener got is what a peer needs: replayed, it gives the same record.
    copy = Record.from_update(north.record_id, north.update_since(), replica="copy")
    copy.apply_update(got[0][0])
    assert copy.value("birthDate") == "1990-01-01"
    unsubscribe()
    south.set("birthDate", "1991-01-01", author="dr.a")
    assert len(got) == 2


def test_a_record_whose_listeners_all_left_is_freed() -> None:
    assert _freed_after_del()


def test_subscribing_again_after_all_left_works() -> None:
    record = Record.create(replica="laptop-a")
    got: list[bytes] = []
    record.on_update(lambda update, local: got.append(update))()
    record.set("birthDate", "1990-01-01", author="dr.a")
    assert got == []
    unsubscribe = record.on_update(lambda update, local: got.append(update))
    record.set("birthDate", "1991-01-01", author="dr.a")
    assert len(got) == 1
    unsubscribe()
    record.set("birthDate", "1992-01-01", author="dr.a")
    assert len(got) == 1


def test_unsubscribing_twice_removes_only_its_own_subscription() -> None:
    record = Record.create(replica="laptop-a")
    got: list[bytes] = []

    def listener(update: bytes, local: bool) -> None:
        got.append(update)

    first = record.on_update(listener)
    record.on_update(listener)  # the same function, subscribed twice
    first()
    first()  # harmless: the second subscription stays
    record.set("birthDate", "1990-01-01", author="dr.a")
    assert len(got) == 1


def test_a_listener_may_unsubscribe_itself_or_another_while_called() -> None:
    record = Record.create(replica="laptop-a")
    calls: list[str] = []

    def once(update: bytes, local: bool) -> None:
        calls.append("once")
        unsubscribe_once()
        unsubscribe_later()  # removed before its turn: not called for this update

    def later(update: bytes, local: bool) -> None:
        calls.append("later")

    unsubscribe_once = record.on_update(once)
    unsubscribe_later = record.on_update(later)
    record.set("birthDate", "1990-01-01", author="dr.a")
    record.set("birthDate", "1991-01-01", author="dr.a")
    assert calls == ["once"]
    # Both gone from within a callback: the record is no longer observed, and
    # observing it again works.
    again: list[bytes] = []
    record.on_update(lambda update, local: again.append(update))
    record.set("birthDate", "1992-01-01", author="dr.a")
    assert len(again) == 1
