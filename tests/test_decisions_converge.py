"""Decisions that reopen, made again and made concurrently, as a stateful property test.

Three replicas of one chart (a high-criticality penicillin allergy, Augmentin prescribed)
stop, restart and re-dose the drug, decide whatever is open, and exchange updates one at
a time, out of order and twice. A second allergy (amoxicillin) makes a second finding on
the same drug, so "continue" on one and "stop" on the other can be decided concurrently;
allergies are refuted and confirmed (also as "Refuted" and a list, which refute nothing);
the drug is rewritten as a coded value. Invariants: replicas holding the same revisions
list the same open conflicts; a "stop" decision never covers the allergy finding while
the drug is active (it is open again, or another decision covers it, or decisions
disagree).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.convergence_model import Network, revision_ids

from caresync import DEFAULT_RULEBOOK, ConflictKind, Record, Severity, UnknownConflictError

rules = DEFAULT_RULEBOOK
replica_index = st.integers(min_value=0, max_value=2)


def _allergy_findings(record: Record) -> list[str]:
    return [fid for fid, f in rules.findings(record) if f.rule == "allergy-vs-prescription"]


class DecisionsConverge(RuleBasedStateMachine):
    net: Network
    med: str
    allergies: tuple[str, str]

    @initialize()
    def start(self) -> None:
        self.net = Network.start(3)
        first = self.net.replicas[0]
        self.allergies = tuple(  # type: ignore[assignment]
            first.add_entry(
                "allergies",
                {"substance": substance, "status": "active", "criticality": "high"},
                author="dr.a",
            )
            for substance in ("penicillin", "amoxicillin")
        )
        self.med = first.add_entry(
            "medications",
            {"drug": "Augmentin 625 mg", "dose": "5 mg", "status": "active"},
            author="dr.a",
        )
        self.net.sync_all()

    @rule(i=replica_index, status=st.sampled_from(("active", "stopped", "completed")))
    def set_status(self, i: int, status: str) -> None:
        self.net.replicas[i].set(f"medications/{self.med}/status", status, author=f"a{i}")

    @rule(i=replica_index, dose=st.sampled_from(("5 mg", "7.5 mg")))
    def set_dose(self, i: int, dose: str) -> None:
        self.net.replicas[i].set(f"medications/{self.med}/dose", dose, author=f"a{i}")

    @rule(
        i=replica_index,
        which=st.integers(0, 1),
        verification=st.sampled_from(("confirmed", "refuted", "Refuted", ["refuted"])),
    )
    def set_verification(self, i: int, which: int, verification: str | list[str]) -> None:
        path = f"allergies/{self.allergies[which]}/verification"
        self.net.replicas[i].set(path, verification, author=f"a{i}")

    @rule(
        i=replica_index,
        drug=st.sampled_from(("Augmentin 625 mg", {"text": "Augmentin 625 mg"}, "paracetamol")),
    )
    def set_drug(self, i: int, drug: str | dict[str, str]) -> None:
        self.net.replicas[i].set(f"medications/{self.med}/drug", drug, author=f"a{i}")

    @rule(i=replica_index, which=st.integers(0, 10), choose=st.integers(0, 3))
    def decide(self, i: int, which: int, choose: int) -> None:
        record = self.net.replicas[i]
        listed = rules.conflicts(record)
        if not listed:
            return
        conflict = listed[which % len(listed)]
        try:
            if conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
                chosen = choose % len(conflict.candidates)
                rules.resolve(record, conflict.id, choose=chosen, author=f"a{i}")
            else:
                rules.acknowledge(record, conflict.id, author=f"a{i}")
        except UnknownConflictError:
            return  # a field it would write holds a value it does not show: settle that first
        assert conflict.id not in {c.id for c in rules.conflicts(record)}

    @precondition(lambda self: bool(self.net.pending))
    @rule(index=st.integers(0, 1_000), keep=st.booleans())
    def deliver_one(self, index: int, keep: bool) -> None:
        self.net.deliver(index, keep)

    @rule()
    def everyone_syncs(self) -> None:
        self.net.sync_all()

    @invariant()
    def the_same_revisions_list_the_same_conflicts(self) -> None:
        seen: dict[frozenset[str], list[dict[str, object]]] = {}
        for record in self.net.replicas:
            listed = [c.as_dict() for c in rules.conflicts(record)]
            assert seen.setdefault(revision_ids(record), listed) == listed

    @invariant()
    def a_stop_decision_covers_nothing_while_the_drug_is_active(self) -> None:
        for record in self.net.replicas:
            state = record.get(f"medications/{self.med}/status")
            if state.in_conflict or state.value != "active":
                continue
            open_ids = {c.id for c in rules.conflicts(record)}
            for fid in _allergy_findings(record):
                ack = record.acknowledgement(fid)
                if fid in open_ids or ack.in_conflict:
                    continue
                decision = ack.heads[0].value if ack.exists else None
                assert isinstance(decision, dict), (fid, decision)
                assert str(decision.get("decision", "")).startswith("continue"), decision

    def teardown(self) -> None:
        if hasattr(self, "net"):
            self.net.sync_all()
            self.the_same_revisions_list_the_same_conflicts()
            listed = {repr([c.as_dict() for c in rules.conflicts(r)]) for r in self.net.replicas}
            assert len(listed) == 1


TestDecisionsConverge = DecisionsConverge.TestCase
TestDecisionsConverge.settings = settings(
    settings(), stateful_step_count=40, max_examples=150, deadline=None
)
