"""Play a scenario against a real clinic server and real laptop replicas, then ask the oracle.

Everything is real: the server keeps an SQLite database, each laptop its own
SQLite file and its own websocket connection to 127.0.0.1 for each sync (or, with
``transport="memory"``, its own link on a :class:`~caresync.transport.MemoryNetwork`:
the same protocol and databases, no sockets). The steps:

1. import the patients into the clinic's register (the server's database, in
   batches of one transaction each), as a clinic bringing its existing register;
2. enrol every laptop (each makes its first copy of every patient);
3. for each round of the scenario: every laptop makes its edits (all of them
   before anyone syncs, so edits of one round are concurrent; a few laptops
   first resolve conflicts they see), then the laptops that are online this
   round sync, twice (the second pass pulls what others pushed during the
   first: see ``_Run._sync_all``);
4. everyone comes online: sync rounds until one in which nobody uploaded
   anything (every earlier upload has then been pulled by everyone);
5. close everything and let the :class:`~caresync.simulation.oracle.Oracle`
   check the files.

The laptops are played by a :class:`~caresync.simulation.laptops.LaptopShare`,
in this process or in worker processes (:mod:`caresync.simulation.workers`,
``config.workers``); each laptop is opened only for the step it takes. Work on
many laptops at once is bounded by ``config.concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from caresync.conflicts import DEFAULT_RULEBOOK, Rulebook
from caresync.exceptions import InvalidValueError
from caresync.records import Record
from caresync.records.persons import person_card
from caresync.replication.pool import conflict_rows
from caresync.server import SyncServer
from caresync.simulation.config import GC_THRESHOLDS, SimulationConfig, SimulationResult
from caresync.simulation.laptops import (
    ACCOUNT_HASHER,
    ORGANISATION,
    STEP_TIMEOUT_S,
    LaptopShare,
    clinician,
    each,
    laptop_file,
)
from caresync.simulation.observer import NullObserver, SimulationObserver
from caresync.simulation.oracle import Oracle, ReplicaFile, ReplicaPrint
from caresync.simulation.scenario import Patient, Scenario, plan
from caresync.simulation.wire import WireCounter
from caresync.simulation.workers import LaptopWorkers, cpu_s, peak_rss_mb
from caresync.storage import IncomingUpdate
from caresync.transport import Listener, MemoryNetwork

__all__ = [
    "GC_THRESHOLDS",
    "IMPORT_BATCH",
    "MAX_FINAL_ROUNDS",
    "ORGANISATION",
    "SERVER_FILE",
    "STEP_TIMEOUT_S",
    "USERNAME",
    "clinician",
    "laptop_file",
    "run_simulation",
]

USERNAME = "registrar"
SERVER_FILE = "clinic-server.db"
IMPORT_BATCH = 500
"""Patients imported into the server per transaction."""
MAX_FINAL_ROUNDS = 4
"""Sync passes after everyone pushed: the first reaches quiescence (nobody uploads); more means
something is wrong."""

T = TypeVar("T")


async def run_simulation(
    config: SimulationConfig, *, observer: SimulationObserver | None = None
) -> SimulationResult:
    """Run the simulation ``config`` describes; returns what the oracle found.

    With ``config.workdir`` None the databases live in a temporary directory,
    removed afterwards; otherwise in ``workdir``, which must not hold a
    previous run's databases (InvalidValueError).
    """
    observer = observer or NullObserver()
    if config.workdir is None:
        with tempfile.TemporaryDirectory(prefix="caresync-simulation-") as tmp, _fewer_gc_passes():
            return await _Run(config, Path(tmp), observer).run()
    workdir = config.workdir
    if workdir.exists() and not workdir.is_dir():
        raise InvalidValueError(f"workdir {workdir} is a file, not a directory")
    if (workdir / SERVER_FILE).exists() or (workdir / laptop_file(0)).exists():
        raise InvalidValueError(
            f"workdir {workdir} already holds a simulation's databases; give an empty directory"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    with _fewer_gc_passes():
        return await _Run(config, workdir, observer).run()


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Raise the cyclic garbage collector's thresholds for the run, then restore them.

    A run keeps hundreds of thousands of long-lived objects (every laptop's loaded
    records); with the default thresholds the collector rescans them again and
    again, which costs about a quarter of a run. Nothing here makes cycles that
    need collecting promptly.
    """
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class _Run:
    """One run: the server, the laptops (here or in workers), the oracle and the clock."""

    def __init__(
        self,
        config: SimulationConfig,
        workdir: Path,
        observer: SimulationObserver,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.observer = observer
        self.rulebook = rulebook
        self.scenario: Scenario = plan(config)
        self.oracle = Oracle(rulebook)
        self.wire = WireCounter()
        self.password = secrets.token_urlsafe(16)
        # In memory, each laptop gets its own link on one network; else websockets.
        self.network = MemoryNetwork() if config.transport == "memory" else None
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.workers: LaptopWorkers | None = None
        self.share: LaptopShare | None = None
        self.result = SimulationResult(
            converged=False,
            lost_values=0,
            conflicts_open=0,
            duration_s=0.0,
            first_copy_s=0.0,
            final_sync_s=0.0,
            bytes_up=0,
            bytes_down=0,
            laptops=config.laptops,
            patients=config.patients,
            seed=config.seed,
            edits=self.scenario.edit_count,
            concurrent_groups=self.scenario.concurrent_groups,
            clinical_cases=self.scenario.clinical_cases,
            workers=config.laptop_workers,
        )

    async def run(self) -> SimulationResult:
        started = time.perf_counter()
        cpu_started = cpu_s()
        result = self.result
        server = await SyncServer.open(
            self.workdir / SERVER_FILE,
            rulebook=self.rulebook,
            password_hasher=ACCOUNT_HASHER,
            pool_size=self.config.pool_size,
            # A laptop shares its process with others (hundreds, in a worker) and the
            # machine with the rest of the run, so its login may wait behind their work
            # for longer than a real server's 10 s allows an idle socket.
            login_timeout_s=STEP_TIMEOUT_S,
        )
        listener: Listener | None = None
        try:
            await server.add_user(ORGANISATION, USERNAME, self.password)
            for index in range(self.config.laptops):  # each laptop, its clinician's account
                await server.add_user(ORGANISATION, clinician(index), self.password)
            # The register is imported before the server listens: written straight into
            # its store, it is the feed the server starts from, not commits to relay.
            await self._import_patients(server)
            if self.network is not None:
                listener = await server.listen(self.network.host("server"), wrap=self.wire.wrap)
            else:
                listener = await server.serve("127.0.0.1", 0, wrap=self.wire.wrap)
            self._start_laptops()
            self.observer.phase("create the laptops' databases", self.config.laptops)
            await self._laptops("create", self.config.laptops)
            result.setup_s = time.perf_counter() - started

            clock = time.perf_counter()
            self.observer.phase("enrol laptops (first copy)", self.config.laptops)
            await self._laptops("enrol", self.config.laptops, listener.url)
            result.first_copy_s = time.perf_counter() - clock

            clock = time.perf_counter()
            for round_ in self.scenario.rounds:
                self.observer.phase(
                    f"round {round_.index + 1}: offline edits", sum(map(len, round_.edits))
                )
                for report in await self._laptops("edit", None, round_.index):
                    for rid, path, value in report.writes:
                        self.oracle.wrote(rid, path, value)
                    for rid, revision_id, conflict_id in report.decisions:
                        self.oracle.decided(rid, revision_id, conflict_id)
                    result.conflicts_resolved += report.resolved
                online = sorted(round_.online)
                # The online laptops push, all of them, before any pulls: each then pulls
                # once, after the pass's barrier, and holds exactly what was pushed, whatever
                # order the pass ran in. What it holds decides what its next edits supersede
                # (an edit of a field replaces the values the laptop has seen, and conflicts
                # with the others) and which conflicts a resolver sees, so this is what makes
                # a seed give one outcome (see _sync_all). Each laptop takes in each record
                # once a round: a sync pass then a settling one took most records in twice.
                self.observer.phase(f"round {round_.index + 1}: online laptops push", len(online))
                await self._sync_all(online, pull=False)
                self.observer.phase(f"round {round_.index + 1}: online laptops sync", len(online))
                await self._sync_all(online)
                # What every online laptop now holds: the server's open conflicts.
                seen = await server.store.count_conflicts()
                result.conflicts_seen = max(result.conflicts_seen, seen)
            result.edit_s = time.perf_counter() - clock

            clock = time.perf_counter()
            everyone = range(self.config.laptops)
            # Everyone pushes first, so that the first sync pass takes everything in.
            self.observer.phase("everyone online: push", len(everyone))
            await self._sync_all(everyone, pull=False)
            for n in range(MAX_FINAL_ROUNDS):
                self.observer.phase(f"everyone online: sync round {n + 1}", len(everyone))
                if await self._sync_all(everyone) == 0:
                    break
            result.final_sync_s = time.perf_counter() - clock
            # The oracle's first layer, read where the laptops' files are (see Oracle.check).
            clock = time.perf_counter()
            self.observer.phase("oracle: fingerprint every laptop", 1)
            prints: dict[int, ReplicaPrint] = {}
            for share_prints in await self._laptops("prints", None):
                prints.update(share_prints)
            self.observer.advance()
            prints_s = time.perf_counter() - clock
        finally:
            try:
                if self.workers is not None:
                    await self.workers.stop()
            finally:
                if listener is not None:
                    await listener.close()
                await server.close()
        result.bytes_up, result.bytes_down = self.wire.bytes_up, self.wire.bytes_down
        result.peak_rss_mb = peak_rss_mb() + sum(
            self.workers.peaks_mb if self.workers is not None else ()
        )

        clock = time.perf_counter()
        self.observer.phase("oracle: check every replica", 1)
        laptops = self.config.laptops
        rng = random.Random(self.config.seed)
        deep = rng.sample(range(laptops), min(self.config.deep_checks, laptops))
        report = await self.oracle.check(
            ReplicaFile("server", self.workdir / SERVER_FILE),
            [ReplicaFile(f"laptop-{i}", self.workdir / laptop_file(i)) for i in range(laptops)],
            deep,
            prints,
        )
        self.observer.advance()
        result.check_s = prints_s + time.perf_counter() - clock
        result.converged = report.converged
        result.lost_values = report.lost_values
        result.conflicts_open = report.conflicts_open
        result.values_logged = report.values_logged
        result.replicas_checked = report.replicas_checked
        result.replicas_checked_in_depth = report.replicas_checked_in_depth
        result.details = report.details
        result.conflict_examples = report.conflict_examples
        result.duration_s = time.perf_counter() - started
        result.peak_rss_mb = round(max(result.peak_rss_mb, peak_rss_mb()), 1)
        workers_cpu = self.workers.cpu_s if self.workers is not None else []
        result.cpu_s = [round(cpu, 2) for cpu in (cpu_s() - cpu_started, *workers_cpu)]
        return result

    def _start_laptops(self) -> None:
        """The laptops' players: a share in this process, or worker processes."""
        count = self.config.laptop_workers
        if count:
            self.workers = LaptopWorkers.start(self.config, self.workdir, self.password, count)
            return
        network = self.network
        self.share = LaptopShare(
            self.config,
            self.workdir,
            range(self.config.laptops),
            self.password,
            connector=lambda index: None if network is None else network.link(f"laptop-{index}"),
            rulebook=self.rulebook,
            scenario=self.scenario,
            advance=self.observer.advance,
        )

    async def _laptops(
        self, method: str, steps: int | None, *args: Any, **kwargs: Any
    ) -> list[Any]:
        """Run a :class:`LaptopShare` method on every laptop (here, or in every worker).

        Workers report no progress as they go: their phase advances by ``steps`` when done.
        """
        if self.share is not None:
            return [await getattr(self.share, method)(*args, **kwargs)]
        assert self.workers is not None  # started by _start_laptops
        answers = await self.workers.call(method, *args, **kwargs)
        if steps:
            self.observer.advance(steps)
        return answers

    async def _each(self, items: Sequence[T], job: Callable[[T], Awaitable[None]]) -> None:
        """Run ``job`` on every item, at most ``concurrency`` at once (see :func:`each`)."""
        await each(items, job, self.semaphore)

    async def _import_patients(self, server: SyncServer) -> None:
        patients = self.scenario.patients
        self.observer.phase("import patients into the clinic's register", len(patients))
        for start in range(0, len(patients), IMPORT_BATCH):
            batch = [self._patient_record(p) for p in patients[start : start + IMPORT_BATCH]]
            await server.store.write_remote(
                [
                    IncomingUpdate(
                        rec.record_id,
                        rec.update_since(),
                        conflict_rows(rec, self.rulebook),
                        ORGANISATION,
                        person_card(rec),
                    )
                    for rec in batch
                ],
                to_feed=True,
            )
            self.observer.advance(len(batch))

    def _patient_record(self, patient: Patient) -> Record:
        record = Record.create(replica="clinic-register", record_id=patient.record_id)
        with record.batch():
            record.set("name", patient.name, author=USERNAME)
            record.set("birthDate", patient.birth_date, author=USERNAME)
            record.add_entry(
                "medications",
                {"drug": "metformin", "dose": "500 mg"},
                author=USERNAME,
                entry_id=patient.medication_id,
            )
        rid = patient.record_id
        self.oracle.wrote(rid, "name", patient.name)
        self.oracle.wrote(rid, "birthDate", patient.birth_date)
        self.oracle.wrote(rid, f"medications/{patient.medication_id}/drug", "metformin")
        self.oracle.wrote(rid, f"medications/{patient.medication_id}/dose", "500 mg")
        return record

    async def _sync_all(self, laptops: Iterable[int], pull: bool = True) -> int:
        """One sync of each of ``laptops`` (``pull=False``: a push only), up to
        ``concurrency`` at once; how many updates went up.

        A pass is a barrier: it ends when every laptop of it has synced. What a
        laptop would pull in a pass of syncs depends on which others happened to push
        before it (on a busy machine, in any number of worker processes), but a
        laptop that syncs after a pass in which everyone pushed holds exactly what
        was pushed: that is why the online laptops of a round push first (see
        :meth:`run`), and why a seed gives one outcome.
        """
        indices = list(laptops)
        answers = await self._laptops("sync", len(indices), indices, pull=pull)
        self.result.sync_rounds += 1
        self.result.sync_retries += sum(int(retried) for _uploaded, retried in answers)
        return sum(int(uploaded) for uploaded, _retried in answers)
