"""Where ``caresync sync --live`` leaves its state for ``caresync status`` to read.

The live process writes ``{"state", "pid", "host"}`` to the laptop's meta on each
change of state, and clears it when it stops. A reader trusts the mark only while
that process still runs on this machine: one killed without stopping leaves a
stale mark, which then reads as not live.
"""

from __future__ import annotations

import json
import os
import socket

from caresync.replica import Replica, ReplicaState
from caresync.replication import meta

__all__ = ["LIVE_META", "live_state", "mark_live"]

LIVE_META = meta.LIVE_CLI


async def mark_live(replica: Replica, state: ReplicaState | None) -> None:
    """Record the live process's ``state`` (None: it stopped)."""
    if state is None:
        await replica.store.set_meta(LIVE_META, "")
        return
    mark = {"state": state.value, "pid": os.getpid(), "host": socket.gethostname()}
    await replica.store.set_meta(LIVE_META, json.dumps(mark))


async def live_state(replica: Replica) -> str | None:
    """The state of a ``sync --live`` running on this laptop now, or None."""
    text = await replica.store.get_meta(LIVE_META)
    if not text:
        return None
    try:
        mark = json.loads(text)
        state, pid, host = str(mark["state"]), int(mark["pid"]), str(mark["host"])
    except (ValueError, KeyError, TypeError):
        return None  # not ours to trust: read as not live
    if host != socket.gethostname() or state not in {s.value for s in ReplicaState}:
        return None
    try:
        os.kill(pid, 0)  # does that process still run? (signal 0 only checks)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it runs, as another user
    return state
