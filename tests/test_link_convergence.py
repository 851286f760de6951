"""Links between records converge: two records of one person, each on 2-5 replicas.

Replicas register, edit and decide (link, unlink, different people, or by
resolving the possible-duplicate finding) offline; updates are delivered out of
order, twice, and replicas restart. Invariants: replicas holding the same
revisions of both records see the same pair and the same findings, with the
same ids; every decision written stays in the history; once everyone has
everything, everyone agrees.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.convergence_model import Network, revision_ids

from caresync import canonical_json
from caresync.conflicts.duplicates import pair_conflicts, paired_record
from caresync.records import Record
from caresync.records.persons import (
    DIFFERENT_PEOPLE,
    SAME_PERSON,
    UNLINKED,
    PairState,
    link_path,
    pair_of,
    person_card,
)

replica_index = st.integers(min_value=0, max_value=4)
NAMES = ("Awa Ndiaye", "Awa N'Diaye", "Moussa Diop")
BIRTHS = ("1990-04-12", "1990-12-04", "1950-01-01")
DECISIONS = (SAME_PERSON, DIFFERENT_PEOPLE, UNLINKED)


def view(a: Record, b: Record) -> tuple[object, ...]:
    """What a person sees of the two records as one pair: its state and its findings."""
    pair = pair_of(person_card(a), person_card(b))
    if pair is None:
        return (None,)
    findings = canonical_json([c.as_dict() for c in pair_conflicts(pair)])
    return (pair.state, pair.score, pair.reasons, pair.id, findings)


class LinksConverge(RuleBasedStateMachine):
    a: Network
    b: Network

    @initialize(n=st.integers(min_value=2, max_value=5))
    def start(self, n: int) -> None:
        self.a = Network.start(n, "rec-a")
        self.b = Network.start(n, "rec-b")
        self.decided: set[tuple[str, str]] = set()  # (record, decision) ever written
        for net in (self.a, self.b):
            first = net.replicas[0]
            with first.batch():
                first.set("name", "Awa Ndiaye", author="registrar")
                first.set("birthDate", "1990-04-12", author="registrar")

    def pick(self, i: int) -> int:
        return i % len(self.a.replicas)

    def records(self, i: int) -> tuple[Record, Record]:
        return self.a.replicas[self.pick(i)], self.b.replicas[self.pick(i)]

    @rule(
        i=replica_index,
        on_a=st.booleans(),
        name=st.sampled_from(NAMES),
        birth=st.sampled_from(BIRTHS),
    )
    def register(self, i: int, on_a: bool, name: str, birth: str) -> None:
        record = self.records(i)[0 if on_a else 1]
        record.set("name", name, author=f"author-{i}")
        record.set("birthDate", birth, author=f"author-{i}")

    @rule(i=replica_index, on_a=st.booleans(), decision=st.sampled_from(DECISIONS))
    def decide_on_one_record(self, i: int, on_a: bool, decision: str) -> None:
        a, b = self.records(i)
        record, other = (a, b) if on_a else (b, a)
        record.set(link_path(other.record_id), decision, author=f"author-{i}")
        self.decided.add((record.record_id, decision))

    @rule(i=replica_index, choose=st.integers(0, 1))
    def resolve_the_finding(self, i: int, choose: int) -> None:
        """As Replica does: the chosen decision written to both records."""
        a, b = self.records(i)
        pair = pair_of(person_card(a), person_card(b))
        if pair is None or pair.state is PairState.LINKED:
            return
        finding = pair_conflicts(pair)[0]
        assert paired_record(finding) in (a.record_id, b.record_id)
        decision = SAME_PERSON if choose == 0 else DIFFERENT_PEOPLE
        a.set(link_path(b.record_id), decision, author=f"author-{i}")
        b.set(link_path(a.record_id), decision, author=f"author-{i}")
        self.decided.update({(a.record_id, decision), (b.record_id, decision)})
        after = pair_of(person_card(a), person_card(b))
        if decision == DIFFERENT_PEOPLE:
            assert after is None, "different people: no finding here any more"
        else:
            assert after is not None
            assert after.state is PairState.LINKED

    @precondition(lambda self: bool(self.a.pending or self.b.pending))
    @rule(on_a=st.booleans(), index=st.integers(0, 1_000), keep=st.booleans())
    def deliver_one(self, on_a: bool, index: int, keep: bool) -> None:
        net = self.a if on_a else self.b
        if net.pending:
            net.deliver(index, keep)

    @rule(i=replica_index)
    def restart(self, i: int) -> None:
        self.a.restart(self.pick(i))
        self.b.restart(self.pick(i))

    @rule()
    def everyone_syncs(self) -> None:
        self.a.sync_all()
        self.b.sync_all()
        pairs = zip(self.a.replicas, self.b.replicas, strict=True)
        assert len({view(a, b) for a, b in pairs}) == 1, "everyone has everything, not one pair"

    @invariant()
    def the_same_revisions_make_the_same_pair(self) -> None:
        if not hasattr(self, "a"):
            return
        seen: dict[tuple[frozenset[str], frozenset[str]], tuple[object, ...]] = {}
        for a, b in zip(self.a.replicas, self.b.replicas, strict=True):
            key = (revision_ids(a), revision_ids(b))
            now = view(a, b)
            assert seen.setdefault(key, now) == now, "the same revisions, another pair"
            assert now == view(b, a) or now[0] is None, "a pair depends on the order"

    @invariant()
    def no_decision_is_lost(self) -> None:
        if not hasattr(self, "a"):
            return
        for net in (self.a, self.b):
            everything = frozenset().union(*(revision_ids(r) for r in net.replicas))
            for record in net.replicas:
                if revision_ids(record) == everything:
                    written = {
                        (record.record_id, r.value)
                        for r in record.revisions()
                        if r.path.startswith("links/")
                    }
                    mine = {d for d in self.decided if d[0] == record.record_id}
                    assert mine <= written, f"decisions written but lost: {mine - written}"

    def teardown(self) -> None:
        if hasattr(self, "a"):
            self.everyone_syncs()


TestLinksConverge = LinksConverge.TestCase
TestLinksConverge.settings = settings(
    settings(), stateful_step_count=40, max_examples=2 * settings().max_examples
)
