"""A laptop's sync state has one owner, which moves only as its table allows."""

from __future__ import annotations

import itertools

import pytest

from caresync.replication.status import MOVES, ReplicaState, StateMoveError, SyncStatus


def status_in(state: ReplicaState) -> SyncStatus:
    """A status brought to ``state`` by allowed moves only."""
    status = SyncStatus(locked=state is ReplicaState.LOCKED)
    path = {
        ReplicaState.OFFLINE: [],
        ReplicaState.LOCKED: [],
        ReplicaState.CONNECTING: [ReplicaState.CONNECTING],
        ReplicaState.SYNCHRONISING: [ReplicaState.CONNECTING, ReplicaState.SYNCHRONISING],
        ReplicaState.ONLINE: [
            ReplicaState.CONNECTING,
            ReplicaState.SYNCHRONISING,
            ReplicaState.ONLINE,
        ],
    }[state]
    for step in path:
        status.move(step)
    return status


@pytest.mark.parametrize(("start", "to"), list(itertools.product(ReplicaState, ReplicaState)))
def test_every_move_is_allowed_or_refused_as_the_table_says(
    start: ReplicaState, to: ReplicaState
) -> None:
    status = status_in(start)
    heard: list[ReplicaState] = []
    status.listen(heard.append)
    if to is start:
        status.move(to)
        assert heard == []  # staying put tells nobody
    elif to in MOVES[start]:
        status.move(to)
        assert heard == [to]
        assert status.state is to
    else:
        with pytest.raises(StateMoveError):
            status.move(to)
        assert heard == []
        assert status.state is start


def test_a_locked_replica_stays_locked_and_keeps_why_it_failed() -> None:
    status = status_in(ReplicaState.SYNCHRONISING)
    status.move(ReplicaState.LOCKED)
    status.failed("revoked by the administrator")
    assert status.state is ReplicaState.LOCKED
    assert status.last_error == "revoked by the administrator"
    assert MOVES[ReplicaState.LOCKED] == frozenset()


def test_a_failure_goes_offline_and_an_unsubscribed_listener_hears_nothing() -> None:
    status = status_in(ReplicaState.ONLINE)
    heard: list[ReplicaState] = []
    stop = status.listen(heard.append)
    status.failed("link dropped")
    stop()
    status.move(ReplicaState.CONNECTING)
    assert heard == [ReplicaState.OFFLINE]
    assert status.last_error == "link dropped"
