"""The findings a pair of person records makes, and the records linked as one person.

Pure: :func:`pair_conflicts` turns a stored :class:`~caresync.records.persons.PersonPair`
into one finding on each of its two records (the same id on both, and on every
replica); :func:`linked_group` follows link decisions to every record of one person.
"""

from __future__ import annotations

from collections.abc import Iterable

from caresync.conflicts.model import Candidate, Conflict, ConflictKind, Severity
from caresync.records.clock import Timestamp
from caresync.records.persons import (
    DISPUTED_RULE,
    DUPLICATE_RULE,
    LINKS_FIELD,
    PairState,
    PersonCard,
    PersonPair,
    Registration,
    link_path,
)

__all__ = ["linked_group", "pair_conflicts", "paired_record"]


def pair_conflicts(pair: PersonPair) -> tuple[Conflict, ...]:
    """The findings a pair makes, one on each record (none for a linked pair).

    Same id on both records. A possible duplicate is a ``flag`` whose candidates
    are the two decisions ("the same person: link them", "different people");
    disagreeing decisions are a ``block`` whose candidates are the same two.
    """
    if pair.state is PairState.LINKED:
        return ()
    return tuple(_pair_conflict(pair, card) for card in (pair.first, pair.second))


def _pair_conflict(pair: PersonPair, card: PersonCard) -> Conflict:
    other = pair.other(card.record_id)
    path = link_path(other.record_id)
    who = f"record {other.record_id}" + (f" ({other.display})" if other.display else "")
    if pair.state is PairState.DISPUTED:
        severity = Severity.BLOCK
        message = (
            f"this record and {who} hold different decisions on whether they are one "
            "person: choose one (it is written to both records)"
        )
    else:
        severity = Severity.FLAG
        why = ", ".join(pair.reasons) or "alike"
        message = (
            f"possibly the same person as {who}: {why} (score {pair.score:g}). Link the two "
            "records if they are one person, or mark them as different people; records "
            "are never merged automatically"
        )
    return Conflict(
        id=pair.id,
        record_id=card.record_id,
        kind=ConflictKind.RULE,
        severity=severity,
        subject=pair.rule,
        message=message,
        candidates=(
            _decision_candidate(
                path, f"the same person: link with record {other.record_id}", other
            ),
            _decision_candidate(path, "different people", card),
        ),
        rule=pair.rule,
        paths=(path,),
    )


def _decision_candidate(path: str, label: str, card: PersonCard) -> Candidate:
    """A decision as a candidate: who registered the chart it stands for, where, when."""
    reg = card.registration or Registration("", "", Timestamp(0), "")
    return Candidate(path, label, reg.author, reg.replica, reg.at, reg.revision)


def linked_group(record_id: str, pairs: Iterable[PersonPair], *, limit: int = 64) -> list[str]:
    """Every record linked to ``record_id``, directly or through others, sorted (not itself).

    ``pairs`` are linked pairs; at most ``limit`` records are followed.
    """
    neighbours: dict[str, set[str]] = {}
    for pair in pairs:
        if pair.state is PairState.LINKED:
            a, b = pair.record_ids
            neighbours.setdefault(a, set()).add(b)
            neighbours.setdefault(b, set()).add(a)
    seen = {record_id}
    todo = [record_id]
    while todo and len(seen) <= limit:
        for other in sorted(neighbours.get(todo.pop(), ())):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    seen.discard(record_id)
    return sorted(seen)


def paired_record(conflict: Conflict) -> str | None:
    """The other record of a pair's finding (None for any other conflict)."""
    if conflict.rule not in (DUPLICATE_RULE, DISPUTED_RULE) or not conflict.paths:
        return None
    head, _, other = conflict.paths[0].partition("/")
    return other if head == LINKS_FIELD and other else None
