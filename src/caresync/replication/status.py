"""A laptop's sync state: its one owner, and the moves it may make.

The states and what moves them::

    OFFLINE ──connect──▶ CONNECTING ──logged in, round starts──▶ SYNCHRONISING
       ▲                     │                                      │
       │◀──failed, or done───┘                                      │ live: subscribed
       │◀────────────round done, or the link dropped────────────────┤
       │                                                            ▼
       └◀────────────────────the link dropped, or stopped────── ONLINE

    any state but LOCKED ──the server revoked this replica──▶ LOCKED (for good)

:class:`SyncStatus` is the only thing that changes the state; a move the table
does not allow is a bug in caresync and raises :class:`StateMoveError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

__all__ = ["MOVES", "ReplicaState", "StateMoveError", "StatusListener", "SyncStatus"]


class ReplicaState(enum.StrEnum):
    """Where a replica stands with its server."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    SYNCHRONISING = "synchronising"
    ONLINE = "online"
    LOCKED = "locked"


StatusListener = Callable[[ReplicaState], None]
"""Called with the new state on every state change."""

MOVES: Mapping[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.OFFLINE: frozenset({ReplicaState.CONNECTING, ReplicaState.LOCKED}),
    ReplicaState.CONNECTING: frozenset(
        {ReplicaState.SYNCHRONISING, ReplicaState.OFFLINE, ReplicaState.LOCKED}
    ),
    ReplicaState.SYNCHRONISING: frozenset(
        {ReplicaState.ONLINE, ReplicaState.OFFLINE, ReplicaState.LOCKED}
    ),
    ReplicaState.ONLINE: frozenset({ReplicaState.OFFLINE, ReplicaState.LOCKED}),
    ReplicaState.LOCKED: frozenset(),
}
"""From each state, the states it may move to (staying where it is is always allowed)."""


class StateMoveError(RuntimeError):
    """A move :data:`MOVES` does not allow: a bug in caresync, never the user's doing."""


class SyncStatus:
    """The one owner of a replica's state and of why its last connection ended badly."""

    def __init__(self, *, locked: bool = False) -> None:
        self._state = ReplicaState.LOCKED if locked else ReplicaState.OFFLINE
        self._listeners: list[StatusListener] = []
        self.last_error: str | None = None
        """Why the last connection ended badly (None once a round succeeds)."""
        self.last_sync_ms: int | None = None
        """When this process last finished a sync (the store's may be older:
        see :data:`caresync.replication.meta.LAST_SYNC_SAVE_MS`)."""

    @property
    def state(self) -> ReplicaState:
        return self._state

    def move(self, to: ReplicaState) -> None:
        """Move to ``to`` and tell every listener; staying put tells nobody."""
        if to is self._state:
            return
        if to not in MOVES[self._state]:
            raise StateMoveError(f"a replica cannot move from {self._state} to {to}")
        self._state = to
        for listener in list(self._listeners):
            listener(to)

    def failed(self, why: str) -> None:
        """Keep why the connection ended badly, and go OFFLINE (unless LOCKED)."""
        self.last_error = why
        if self._state is not ReplicaState.LOCKED:
            self.move(ReplicaState.OFFLINE)

    def listen(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(state)`` on every move; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None
