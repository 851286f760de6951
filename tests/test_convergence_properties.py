"""Convergence and "nothing lost", as a stateful property test over 2-6 replicas.

Replicas edit fields, entries, notes and a count, and settle conflicts.
Updates are delivered partially, twice and out of order; replicas restart from
their own bytes. Invariants: replicas holding the same revisions agree on
values, histories and conflicts; every value ever written is reachable on every
replica that has received everything.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.convergence_model import (
    COLLECTIONS,
    DRUGS,
    PATHS,
    STATUSES,
    SUBSTANCES,
    VALUES,
    Network,
    reachable_values,
    revision_ids,
    snapshot,
)

from caresync import (
    DEFAULT_RULEBOOK,
    ConflictKind,
    InvalidResolutionError,
    Severity,
    canonical_json,
)

replica_index = st.integers(min_value=0, max_value=5)
STOCK = "stock/amoxicillin"  # a count: concurrent changes add up


class ReplicasConverge(RuleBasedStateMachine):
    net: Network

    @initialize(n=st.integers(min_value=2, max_value=6))
    def start(self, n: int) -> None:
        self.net = Network.start(n)

    def pick(self, i: int) -> int:
        return i % len(self.net.replicas)

    @rule(i=replica_index, path=st.sampled_from(PATHS), value=st.sampled_from(VALUES))
    def write_field(self, i: int, path: str, value: object) -> None:
        self.net.replicas[self.pick(i)].set(path, value, author=f"author-{i}")  # type: ignore[arg-type]
        self.net.note_written(path, value)

    @rule(i=replica_index, change=st.integers(-3, 3), recount=st.booleans())
    def count_stock(self, i: int, change: int, recount: bool) -> None:
        """Dispense or receive (a change), or enter a counted value (a recount)."""
        record = self.net.replicas[self.pick(i)]
        if recount:
            record.set(STOCK, change + 3, author=f"author-{i}")
        else:
            record.adjust(STOCK, change, author=f"author-{i}")

    @rule(
        i=replica_index,
        collection=st.sampled_from(COLLECTIONS),
        status=st.sampled_from(STATUSES),
        substance=st.sampled_from(SUBSTANCES),
        drug=st.sampled_from(DRUGS),
    )
    def add_entry(self, i: int, collection: str, status: str, substance: str, drug: str) -> None:
        fields: dict[str, object] = {"status": status}
        if collection == "allergies":
            fields["substance"] = substance
        elif collection == "medications":
            fields.update(drug=drug, dose="500mg")
        elif collection == "notes":
            fields["text"] = f"note by {i}"
        record = self.net.replicas[self.pick(i)]
        entry = record.add_entry(collection, fields, author=f"author-{i}")  # type: ignore[arg-type]
        for name, value in fields.items():
            self.net.note_written(f"{collection}/{entry}/{name}", value)

    @rule(
        i=replica_index,
        which=st.integers(0, 50),
        name=st.sampled_from(("status", "dose", "substance", "text")),
        value=st.sampled_from((*STATUSES, "250mg", "1g")),
    )
    def edit_entry(self, i: int, which: int, name: str, value: str) -> None:
        record = self.net.replicas[self.pick(i)]
        entries = [(c, e) for c in COLLECTIONS for e in record.entry_ids(c)]
        if not entries:
            return
        collection, entry = entries[which % len(entries)]
        note = collection == "notes" and record.entry(collection, entry).signed
        if note and name not in ("status",):
            return
        path = f"{collection}/{entry}/{name}"
        record.set(path, value, author=f"author-{i}")
        self.net.note_written(path, value)

    @rule(i=replica_index, which=st.integers(0, 50))
    def sign_note(self, i: int, which: int) -> None:
        record = self.net.replicas[self.pick(i)]
        notes = record.entry_ids("notes")
        if notes and not record.conflicted_paths():
            record.sign_note(notes[which % len(notes)], author=f"author-{i}")

    @rule(i=replica_index, which=st.integers(0, 20), choose=st.integers(0, 3))
    def resolve(self, i: int, which: int, choose: int) -> None:
        record = self.net.replicas[self.pick(i)]
        conflicts = DEFAULT_RULEBOOK.conflicts(record)
        if not conflicts:
            return
        conflict = conflicts[which % len(conflicts)]
        chosen = choose % len(conflict.candidates)
        if conflict.rule == "count-below-zero":  # settled by entering the counted value
            DEFAULT_RULEBOOK.resolve(record, conflict.id, value=choose, author=f"author-{i}")
            assert record.value(STOCK) == choose
        elif conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
            DEFAULT_RULEBOOK.resolve(record, conflict.id, choose=chosen, author=f"author-{i}")
            # A decision means what it says: the record now holds the chosen outcome.
            writes = conflict.outcomes[chosen].writes if conflict.outcomes else ()
            for path, value in writes:
                assert canonical_json(record.value(path)) == canonical_json(value), path
        else:
            DEFAULT_RULEBOOK.acknowledge(record, conflict.id, author=f"author-{i}")
        # Resolving the same conflict again must be refused, never duplicated.
        if conflict.id in {c.id for c in DEFAULT_RULEBOOK.conflicts(record)}:
            raise AssertionError(f"conflict {conflict.id} still open after resolving it")

    @rule(i=replica_index)
    def bad_resolution_changes_nothing(self, i: int) -> None:
        record = self.net.replicas[self.pick(i)]
        conflicts = DEFAULT_RULEBOOK.conflicts(record)
        if not conflicts:
            return
        before = record.update_since()
        try:
            DEFAULT_RULEBOOK.resolve(
                record, conflicts[0].id, choose=len(conflicts[0].candidates), author="x"
            )
        except InvalidResolutionError:
            pass
        else:
            raise AssertionError("an out-of-range choice was accepted")
        assert record.update_since() == before

    @precondition(lambda self: bool(self.net.pending))
    @rule(index=st.integers(0, 1_000), keep=st.booleans())
    def deliver_one(self, index: int, keep: bool) -> None:
        """Deliver one pending update, out of order; with keep, it is delivered again later."""
        self.net.deliver(index, keep)

    @rule(i=replica_index)
    def restart(self, i: int) -> None:
        self.net.restart(self.pick(i))

    @rule()
    def everyone_syncs(self) -> None:
        self.net.sync_all()
        states = {revision_ids(r) for r in self.net.replicas}
        assert len(states) == 1, "a full exchange must leave every replica with the same revisions"

    @invariant()
    def replicas_with_the_same_revisions_agree(self) -> None:
        if not hasattr(self, "net"):
            return
        groups: dict[frozenset[str], dict[str, object]] = {}
        for record in self.net.replicas:
            key = revision_ids(record)
            snap = snapshot(record)
            if key in groups:
                assert snap == groups[key], "replicas with the same revisions disagree"
            else:
                groups[key] = snap

    @invariant()
    def nothing_written_is_lost(self) -> None:
        if not hasattr(self, "net"):
            return
        everything = frozenset().union(*(revision_ids(r) for r in self.net.replicas))
        for record in self.net.replicas:
            if revision_ids(record) == everything:
                missing = self.net.written - reachable_values(record)
                assert not missing, f"values written but reachable nowhere: {missing}"

    def teardown(self) -> None:
        if hasattr(self, "net"):
            self.net.sync_all()
            self.replicas_with_the_same_revisions_agree()
            self.nothing_written_is_lost()


TestReplicasConverge = ReplicasConverge.TestCase
TestReplicasConverge.settings = settings(
    settings(), stateful_step_count=60, max_examples=2 * settings().max_examples
)
