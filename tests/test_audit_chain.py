"""The audit chain's pure core: linking, verifying, and the FHIR AuditEvent form.

Properties over generated chains: an untouched chain verifies, in a file too; any
change to one field of one entry, any removal and any swap of two entries is found,
at the first entry it breaks.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caresync import AuditError
from caresync.audit import (
    ACTIONS,
    GENESIS,
    AuditEntry,
    AuditEvent,
    attempted_name,
    link,
    verify_chain,
    verify_trail,
)
from caresync.audit.fhir_events import read_lines, to_audit_event, to_lines

_text = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")), min_size=1, max_size=40
).filter(str.isprintable)
_events = st.builds(
    AuditEvent,
    actor=_text,
    action=st.sampled_from(sorted(ACTIONS)),
    record_id=st.none() | _text,
    detail=st.none() | _text,
)


def _chain(events: list[AuditEvent], replica_id: str = "laptop-1") -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    seq, previous = 0, GENESIS
    for number, event in enumerate(events):
        entry = link(
            event,
            replica_id=replica_id,
            seq=seq + 1,
            at_ms=1_700_000_000_123 + number,
            prev_hash=previous,
        )
        entries.append(entry)
        seq, previous = entry.seq, entry.hash
    return entries


@given(st.lists(_events, min_size=1, max_size=12))
def test_an_untouched_chain_verifies_and_survives_its_fhir_form(events: list[AuditEvent]) -> None:
    entries = _chain(events)
    assert verify_chain(entries, replica_id="laptop-1").ok
    parsed = [entry for _line, entry in read_lines(to_lines(entries))]
    assert parsed == entries
    assert verify_trail(parsed).ok


@given(
    st.lists(_events, min_size=2, max_size=10),
    st.data(),
)
def test_any_change_removal_or_swap_is_found_where_it_breaks(
    events: list[AuditEvent], data: st.DataObject
) -> None:
    entries = _chain(events)
    at = data.draw(st.integers(0, len(entries) - 1))
    how = data.draw(st.sampled_from(["actor", "action", "record_id", "at_ms", "remove", "swap"]))
    tampered = list(entries)
    if how == "remove":
        if at == len(entries) - 1:
            at -= 1  # the last entry's removal shows only against the heads
        del tampered[at]
    elif how == "swap":
        at = min(at, len(entries) - 2)
        tampered[at], tampered[at + 1] = tampered[at + 1], tampered[at]
    else:
        tampered[at] = _changed(entries[at], how)
    verdict = verify_chain(tampered)
    assert not verdict.ok
    assert verdict.first_bad == at
    assert not verify_trail(tampered).ok


def _changed(entry: AuditEntry, field: str) -> AuditEntry:
    if field == "actor":
        return replace(entry, actor=entry.actor + "x")
    if field == "action":
        return replace(entry, action="read" if entry.action != "read" else "write")
    if field == "record_id":
        return replace(entry, record_id=(entry.record_id or "") + "y")
    return replace(entry, at_ms=entry.at_ms + 1)


def test_a_chain_cut_at_its_end_shows_in_its_heads() -> None:
    entries = _chain([AuditEvent("dr.a", "read", "r")] * 3)
    full, cut = verify_trail(entries), verify_trail(entries[:-1])
    assert full.ok
    assert cut.ok
    assert full.heads != cut.heads


def test_a_later_line_must_start_from_an_entry_of_an_earlier_one() -> None:
    first = _chain([AuditEvent("dr.a", "read", "r")] * 3)
    fork = link(
        AuditEvent("dr.b", "write", "r"),
        replica_id="laptop-1",
        seq=2,
        at_ms=5,
        prev_hash=first[0].hash,
    )
    assert verify_trail([*first, replace(fork, line=1)]).ok
    stray = link(
        AuditEvent("dr.b", "write", "r"),
        replica_id="laptop-1",
        seq=2,
        at_ms=5,
        prev_hash=bytes(range(32)),
    )
    verdict = verify_trail([*first, replace(stray, line=1)])
    assert not verdict.ok
    assert "follows no entry" in (verdict.reason or "")


def test_malformed_entries_are_refused_with_audit_errors() -> None:
    with pytest.raises(AuditError, match="unknown audit action"):
        link(AuditEvent("dr.a", "delete", "r"), replica_id="x", seq=1, at_ms=1, prev_hash=GENESIS)  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="printable"):
        link(AuditEvent("dr.a\n", "read"), replica_id="x", seq=1, at_ms=1, prev_hash=GENESIS)
    with pytest.raises(AuditError, match="list of 9"):
        AuditEntry.from_wire({"seq": 1})
    with pytest.raises(AuditError, match="line 1"):
        list(read_lines(["not json\n"]))
    assert attempted_name("") == "(empty)"
    assert attempted_name("a\x00b" + "c" * 100) == "a?b" + "c" * 61


def test_each_action_is_a_valid_fhir_r4_audit_event() -> None:
    models = pytest.importorskip("fhir.resources.R4B", reason="the fhir extra is not installed")
    entries = _chain([AuditEvent("dr.a", action, "rec-1", "d") for action in sorted(ACTIONS)])
    model = models.get_fhir_model_class("AuditEvent")
    for entry in entries:
        resource = to_audit_event(entry)
        checked = model.model_validate(resource)
        assert checked.recorded is not None
        assert resource["entity"][0]["what"]["identifier"]["value"] == "rec-1"


def test_an_action_that_is_not_text_is_a_typed_error_not_a_crash() -> None:
    entry = link(AuditEvent("dr.a", "read"), replica_id="x", seq=1, at_ms=1, prev_hash=GENESIS)
    wire = entry.to_wire()
    wire[4] = {"not": "hashable as a set member"}
    with pytest.raises(AuditError, match="unknown audit action"):
        AuditEntry.from_wire(wire)
