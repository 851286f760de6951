"""What a simulation is asked to do, and what it found.

:class:`SimulationConfig` is validated when built (bad values raise
:class:`~caresync.exceptions.InvalidValueError` naming the option and the
allowed range; ``pool_size``, :class:`~caresync.exceptions.InvalidOptionError`,
as ``Replica.open`` does), so a CLI or a harness can hand user input straight to it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caresync.exceptions import InvalidValueError
from caresync.replication.pool import DEFAULT_POOL_SIZE, check_pool_size

__all__ = [
    "AUTO_WORKERS_FROM",
    "GC_THRESHOLDS",
    "WORKER_GC_THRESHOLDS",
    "MAX_LAPTOPS",
    "MAX_PATIENTS",
    "MAX_WORKERS",
    "TRANSPORTS",
    "SimulationConfig",
    "SimulationResult",
]

MAX_LAPTOPS = 1000
"""The largest run the benchmarks measure (see docs/performance.md#simulation)."""
MAX_PATIENTS = 1_000_000
MAX_EDITS_PER_LAPTOP = 100_000
MAX_ROUNDS = 100
MAX_WORKERS = 16
"""Laptop worker processes at most (the machine the benchmarks run on has two cores)."""
AUTO_WORKERS_FROM = 50
"""With ``workers=None``, runs of this many laptops or more (on websockets) use two workers."""
GC_THRESHOLDS = (100_000, 50, 100)
"""The garbage collector's thresholds in the runner's process while a simulation runs
(restored afterwards)."""
WORKER_GC_THRESHOLDS = (100_000, 20, 50)
"""The garbage collector's thresholds in a worker process (see caresync.simulation.workers)."""
TRANSPORTS = ("websocket", "memory")
"""What laptops and server talk over: websockets on 127.0.0.1, or the in-memory channel."""


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidValueError(
            f"{name} must be a whole number from {low} to {high}, not {value!r}"
        )


@dataclass(frozen=True)
class SimulationConfig:
    """A simulation: ``laptops`` replicas against one clinic server, ``patients`` records.

    ``edits_per_laptop`` edits are made on each laptop over ``rounds`` rounds of
    work; a share ``conflict_rate`` of them are aimed at fields that other
    laptops edit in the same round (concurrent edits of the same field). The same
    ``seed`` gives the same edits. ``workdir`` keeps the SQLite files there;
    None uses a temporary directory, removed afterwards.
    """

    laptops: int
    patients: int
    edits_per_laptop: int = 20
    conflict_rate: float = 0.1
    seed: int = 0
    workdir: Path | None = None
    rounds: int = 3
    """Rounds of offline work; in each, every laptop is online (syncs) or offline at random."""
    online_rate: float = 0.5
    """Chance that a laptop syncs at the end of a round of work."""
    concurrency: int = 16
    """How many laptops enrol, edit or sync at the same moment."""
    deep_checks: int = 3
    """How many laptops (a seeded sample) the oracle loads record by record."""
    transport: str = "websocket"
    """``websocket`` (a socket per sync on 127.0.0.1) or ``memory`` (in-memory channels:
    the same protocol and stores, no sockets)."""
    pool_size: int = DEFAULT_POOL_SIZE
    """Records each laptop and the server keep loaded (their record pools): what most of
    a laptop's memory grows with. A bad value raises InvalidOptionError."""
    edits_total: int | None = None
    """When given, this many ordinary edits in all, spread evenly over the laptops (the
    first ``edits_total % laptops`` laptops make one more), instead of
    ``edits_per_laptop`` each: the total work then stays the same as laptops grow (see
    docs/performance.md#simulation). None (the default): ``edits_per_laptop`` each."""
    workers: int | None = None
    """Worker processes that play the laptops (the server stays in the caller's process):
    0 plays everything in one process; None (the default) picks 2 for runs of
    ``AUTO_WORKERS_FROM`` laptops or more on websockets, else 0. Workers talk to the
    server over websockets, so ``transport="memory"`` needs 0."""

    def edits_of(self, laptop: int) -> int:
        """How many ordinary edits laptop ``laptop`` makes (see ``edits_total``)."""
        if self.edits_total is None:
            return self.edits_per_laptop
        base, extra = divmod(self.edits_total, self.laptops)
        return base + (laptop < extra)

    @property
    def laptop_workers(self) -> int:
        """How many worker processes this run uses (``workers``, or what None picks)."""
        if self.workers is not None:
            return self.workers
        if self.transport == "websocket" and self.laptops >= AUTO_WORKERS_FROM:
            return min(2, self.laptops)
        return 0

    def __post_init__(self) -> None:
        _check_int("laptops", self.laptops, 1, MAX_LAPTOPS)
        _check_int("patients", self.patients, 1, MAX_PATIENTS)
        _check_int("edits_per_laptop", self.edits_per_laptop, 0, MAX_EDITS_PER_LAPTOP)
        if self.edits_total is not None:
            _check_int("edits_total", self.edits_total, 0, MAX_EDITS_PER_LAPTOP * MAX_LAPTOPS)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("rounds", self.rounds, 1, MAX_ROUNDS)
        _check_int("concurrency", self.concurrency, 1, MAX_LAPTOPS)
        _check_int("deep_checks", self.deep_checks, 0, MAX_LAPTOPS)
        for name in ("conflict_rate", "online_rate"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not 0.0 <= value <= 1.0
            ):
                raise InvalidValueError(f"{name} must be a number from 0 to 1, not {value!r}")
        if self.transport not in TRANSPORTS:
            raise InvalidValueError(
                f"transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}"
            )
        check_pool_size(self.pool_size)
        if self.workers is not None:
            _check_int("workers", self.workers, 0, MAX_WORKERS)
            if self.workers > self.laptops:
                raise InvalidValueError(
                    f"workers must be at most laptops ({self.laptops}), not {self.workers}"
                )
            if self.workers and self.transport == "memory":
                raise InvalidValueError(
                    "workers must be 0 with transport memory: the in-memory channel does not "
                    "cross processes (use transport websocket for worker processes)"
                )
        if self.workdir is not None and not isinstance(self.workdir, Path):
            raise InvalidValueError(f"workdir must be a pathlib.Path or None, not {self.workdir!r}")


@dataclass
class SimulationResult:
    """What a simulation found. ``ok`` when every replica converged and nothing was lost.

    Times are wall seconds; bytes are frame payloads on the websockets, counted
    at the server (``bytes_up``: laptops to server, ``bytes_down``: server to
    laptops).
    """

    converged: bool
    lost_values: int
    conflicts_open: int
    duration_s: float
    first_copy_s: float
    final_sync_s: float
    bytes_up: int
    bytes_down: int
    laptops: int = 0
    patients: int = 0
    seed: int = 0
    edits: int = 0
    """Edits made on laptops (each one write committed locally)."""
    values_logged: int = 0
    """Distinct (record, path, value) the oracle saw written (patients' seeds included)."""
    concurrent_groups: int = 0
    """Fields that several laptops were made to edit in the same round."""
    clinical_cases: int = 0
    conflicts_seen: int = 0
    """Most open conflicts seen on any laptop during the offline rounds."""
    conflicts_resolved: int = 0
    """Conflicts settled on laptops during the rounds (each an ordinary, replicated write)."""
    sync_rounds: int = 0
    """Sync rounds the laptops ran (enrolment excluded)."""
    sync_retries: int = 0
    """Laptop syncs tried again after their link failed (a server too busy to finish a
    handshake in time, say); 0 on a run where every link held."""
    setup_s: float = 0.0
    """Server database created, patients imported, laptops' databases created."""
    edit_s: float = 0.0
    check_s: float = 0.0
    replicas_checked: int = 0
    replicas_checked_in_depth: int = 0
    workers: int = 0
    """Worker processes that played the laptops (0: all in one process)."""
    peak_rss_mb: float = 0.0
    """Peak resident memory of the run's process plus each worker's peak, in MB (a bound:
    the peaks need not have coincided)."""
    cpu_s: list[float] = field(default_factory=list)
    """CPU seconds (user and system) of the run's process (server, oracle; first) and of
    each worker (laptops), from the start of the run to the oracle's end."""
    details: list[str] = field(default_factory=list)
    """Why ``converged`` is false or ``lost_values`` is not zero (at most a few lines each)."""
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    """A few of the open conflicts at the end, as ``Conflict.as_dict()`` (blocks first)."""

    @property
    def ok(self) -> bool:
        """True when every replica and the server agree and no written value is lost."""
        return self.converged and self.lost_values == 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every field (times rounded to the millisecond)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 3)
        data["ok"] = self.ok
        return data
