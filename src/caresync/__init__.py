"""caresync: offline-first replication of clinical records.

No entry a clinician made is ever lost, and no disagreement between two
laptops is ever hidden.

Everything an application needs is exported here:

* records: :class:`Record`, its fields, history and collections (from ``caresync.records``);
* conflicts and clinical safety rules: :data:`DEFAULT_RULEBOOK`, :class:`Rulebook`,
  :class:`Conflict` (from ``caresync.conflicts``);
* a laptop: :class:`Replica` with :class:`ReplicaStatus`, :class:`SyncReport`,
  :class:`SyncLimits`, :class:`CopyProgress` and :func:`backoff_delays`
  (from ``caresync.replica``);
* a clinic server: :class:`SyncServer`, with :class:`ServerKey` (the key laptops pin),
  :class:`LoginThrottle` and :class:`RecoveryReport` (from ``caresync.server``);
* every error caresync raises, under :class:`CaresyncError` (from ``caresync.exceptions``).

Documented subpackages: ``caresync.testing`` (a clinic and laptops in a test, and the
pytest plugin), ``caresync.storage``, ``caresync.protocol``, ``caresync.transport``,
``caresync.simulation`` and ``caresync.cli``. The replica and the server load their
I/O libraries (sqlite3, websockets, argon2) on first use, so ``import caresync``
stays cheap for code that only needs records and rules; they are listed by ``dir()``
and ``help()`` all the same. See README.md, docs/ and the API reference
(``bash scripts/apidoc``).
"""

from typing import TYPE_CHECKING, Any

from caresync.conflicts import *  # noqa: F403
from caresync.conflicts import __all__ as _conflict_names
from caresync.exceptions import *  # noqa: F403
from caresync.exceptions import __all__ as _exception_names
from caresync.records import *  # noqa: F403
from caresync.records import __all__ as _record_names

__version__ = "0.1.0"

if TYPE_CHECKING:  # "X as X": re-exported (the names are in __all__ through _LAZY)
    from caresync.replica import AcknowledgedListener as AcknowledgedListener
    from caresync.replica import BackoffFactory as BackoffFactory
    from caresync.replica import CopyProgress as CopyProgress
    from caresync.replica import ProgressCallback as ProgressCallback
    from caresync.replica import ReceivedListener as ReceivedListener
    from caresync.replica import Replica as Replica
    from caresync.replica import ReplicaState as ReplicaState
    from caresync.replica import ReplicaStatus as ReplicaStatus
    from caresync.replica import StatusListener as StatusListener
    from caresync.replica import SyncLimits as SyncLimits
    from caresync.replica import SyncReport as SyncReport
    from caresync.replica import backoff_delays as backoff_delays
    from caresync.server import LoginThrottle as LoginThrottle
    from caresync.server import RecoveryReport as RecoveryReport
    from caresync.server import ServerKey as ServerKey
    from caresync.server import SyncServer as SyncServer
    from caresync.server import hash_password as hash_password

# The I/O shells (sqlite3, websockets, argon2) load on first use, so that
# `import caresync` stays cheap for code that only needs records and rules.
# Every name of caresync.replica's and caresync.server's __all__ (tests/test_exports.py).
_REPLICA_NAMES = (
    "AcknowledgedListener",
    "BackoffFactory",
    "CopyProgress",
    "ProgressCallback",
    "ReceivedListener",
    "Replica",
    "ReplicaState",
    "ReplicaStatus",
    "StatusListener",
    "SyncLimits",
    "SyncReport",
    "backoff_delays",
)
_SERVER_NAMES = ("LoginThrottle", "RecoveryReport", "ServerKey", "SyncServer", "hash_password")
_LAZY = {
    **dict.fromkeys(_REPLICA_NAMES, "caresync.replica"),
    **dict.fromkeys(_SERVER_NAMES, "caresync.server"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caresync' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazily loaded names too, so that dir(), help() and completion show them.
    return sorted({*globals(), *__all__})


__all__ = [
    *_exception_names,
    *_record_names,
    *_conflict_names,
    *_REPLICA_NAMES,
    *_SERVER_NAMES,
    "__version__",
]
