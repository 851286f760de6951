"""caresync: offline-first replication of clinical records.

No entry a clinician made is ever lost, and no disagreement between two
laptops is ever hidden. See README.md and docs/ for the guided tour.
"""

from typing import TYPE_CHECKING, Any

from caresync.conflicts import *  # noqa: F403
from caresync.conflicts import __all__ as _conflict_names
from caresync.exceptions import *  # noqa: F403
from caresync.exceptions import __all__ as _exception_names
from caresync.records import *  # noqa: F403
from caresync.records import __all__ as _record_names

__version__ = "0.1.0"

if TYPE_CHECKING:
    from caresync.replica import Replica, ReplicaState, ReplicaStatus, SyncReport
    from caresync.server import SyncServer

# The I/O shells (aiosqlite, websockets, argon2) load on first use, so that
# `import caresync` stays cheap for code that only needs records and rules.
_LAZY = {
    "Replica": "caresync.replica",
    "ReplicaState": "caresync.replica",
    "ReplicaStatus": "caresync.replica",
    "SyncReport": "caresync.replica",
    "SyncServer": "caresync.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caresync' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    *_exception_names,
    *_record_names,
    *_conflict_names,
    "Replica",
    "ReplicaState",
    "ReplicaStatus",
    "SyncReport",
    "SyncServer",
    "__version__",
]
