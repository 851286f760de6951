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
   round sync once;
4. everyone comes online: sync rounds until one in which nobody uploaded
   anything (every earlier upload has then been pulled by everyone);
5. close everything and let the :class:`~caresync.simulation.oracle.Oracle`
   check the files.

Work on many laptops at once is bounded by ``config.concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher

from caresync.conflicts import DEFAULT_RULEBOOK, ConflictKind, Rulebook, Severity
from caresync.exceptions import ConnectionLostError, InvalidValueError, UnknownConflictError
from caresync.records import Record
from caresync.records.persons import person_card
from caresync.replica import Replica
from caresync.replication.pool import conflict_rows
from caresync.server import SyncServer
from caresync.simulation.config import SimulationConfig, SimulationResult
from caresync.simulation.observer import NullObserver, SimulationObserver
from caresync.simulation.oracle import Oracle, ReplicaFile
from caresync.simulation.scenario import RESOLUTIONS_PER_RESOLVER, Edit, Patient, Scenario, plan
from caresync.simulation.wire import WireCounter
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
    "laptop_file",
    "run_simulation",
]

ORGANISATION = "clinic"
USERNAME = "registrar"


def clinician(index: int) -> str:
    """The account of the clinician who works on laptop ``index`` (and enrols it)."""
    return f"clinician-{index}"


SERVER_FILE = "clinic-server.db"
IMPORT_BATCH = 500
"""Patients imported into the server per transaction."""
MAX_FINAL_ROUNDS = 4
"""Two rounds reach quiescence (one to push, one to pull); more means something is wrong."""
GC_THRESHOLDS = (100_000, 50, 100)
"""The garbage collector's thresholds while a simulation runs (restored afterwards)."""
STEP_TIMEOUT_S = 600.0
"""A laptop's enrolment or sync round that takes longer than this fails the run."""

# The run's throwaway account: argon2id with small costs, since the server verifies one
# login per laptop enrolled (the hash records its own parameters) and each laptop hashes
# the password for offline login.
T = TypeVar("T")

_ACCOUNT_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


async def _within(step: Awaitable[T], what: str) -> T:
    """Await ``step``; a step that hangs fails the run with a typed error instead."""
    try:
        return await asyncio.wait_for(step, STEP_TIMEOUT_S)
    except TimeoutError:
        raise ConnectionLostError(f"{what} took more than {STEP_TIMEOUT_S:.0f} s") from None


def laptop_file(index: int) -> str:
    """The file name of laptop ``index``'s database."""
    return f"laptop-{index:04d}.db"


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
    """One run: the server, the laptops, the oracle and the clock."""

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
        self.fleet: list[Replica] = []
        # In memory, each laptop gets its own link on one network; else websockets.
        self.network = MemoryNetwork() if config.transport == "memory" else None
        self.semaphore = asyncio.Semaphore(config.concurrency)
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
        )

    async def run(self) -> SimulationResult:
        started = time.perf_counter()
        result = self.result
        server = await SyncServer.open(
            self.workdir / SERVER_FILE,
            rulebook=self.rulebook,
            password_hasher=_ACCOUNT_HASHER,
            pool_size=self.config.pool_size,
        )
        listener: Listener | None = None
        try:
            await server.add_user(ORGANISATION, USERNAME, self.password)
            for index in range(self.config.laptops):  # each laptop, its clinician's account
                await server.add_user(ORGANISATION, clinician(index), self.password)
            if self.network is not None:
                listener = await server.listen(self.network.host("server"), wrap=self.wire.wrap)
            else:
                listener = await server.serve("127.0.0.1", 0, wrap=self.wire.wrap)
            await self._import_patients(server)
            await self._open_laptops()
            result.setup_s = time.perf_counter() - started

            clock = time.perf_counter()
            self.observer.phase("enrol laptops (first copy)", len(self.fleet))
            url = listener.url
            await self._each(range(len(self.fleet)), lambda index: self._enrol(index, url))
            result.first_copy_s = time.perf_counter() - clock

            clock = time.perf_counter()
            for round_ in self.scenario.rounds:
                self.observer.phase(
                    f"round {round_.index + 1}: offline edits", sum(map(len, round_.edits))
                )
                await self._each(
                    [
                        (i, edits, i in round_.resolvers, round_.index)
                        for i, edits in enumerate(round_.edits)
                    ],
                    lambda job: self._edit(*job),
                )
                online = [self.fleet[i] for i in sorted(round_.online)]
                self.observer.phase(f"round {round_.index + 1}: online laptops sync", len(online))
                await self._sync_all(online)
                for laptop in online:
                    seen = await laptop.store.count_conflicts()
                    result.conflicts_seen = max(result.conflicts_seen, seen)
            result.edit_s = time.perf_counter() - clock

            clock = time.perf_counter()
            for n in range(MAX_FINAL_ROUNDS):
                self.observer.phase(f"everyone online: sync round {n + 1}", len(self.fleet))
                if await self._sync_all(self.fleet) == 0:
                    break
            result.final_sync_s = time.perf_counter() - clock
        finally:
            for laptop in self.fleet:
                await laptop.close()
            if listener is not None:
                await listener.close()
            await server.close()
        result.bytes_up, result.bytes_down = self.wire.bytes_up, self.wire.bytes_down
        laptops = len(self.fleet)
        self.fleet.clear()  # let their loaded records go before the oracle loads its own

        clock = time.perf_counter()
        self.observer.phase("oracle: check every replica", 1)
        rng = random.Random(self.config.seed)
        deep = rng.sample(range(laptops), min(self.config.deep_checks, laptops))
        report = await self.oracle.check(
            ReplicaFile("server", self.workdir / SERVER_FILE),
            [ReplicaFile(f"laptop-{i}", self.workdir / laptop_file(i)) for i in range(laptops)],
            deep,
        )
        self.observer.advance()
        result.check_s = time.perf_counter() - clock
        result.converged = report.converged
        result.lost_values = report.lost_values
        result.conflicts_open = report.conflicts_open
        result.values_logged = report.values_logged
        result.replicas_checked = report.replicas_checked
        result.replicas_checked_in_depth = report.replicas_checked_in_depth
        result.details = report.details
        result.conflict_examples = report.conflict_examples
        result.duration_s = time.perf_counter() - started
        return result

    async def _each(self, items: Sequence[T], job: Callable[[T], Awaitable[None]]) -> None:
        """Run ``job`` on every item, at most ``concurrency`` at once.

        The first error cancels the rest and is raised as itself (not wrapped in
        an ExceptionGroup), so a caller sees caresync's typed error.
        """

        async def bounded(item: T) -> None:
            async with self.semaphore:
                await job(item)

        try:
            async with asyncio.TaskGroup() as group:
                for item in items:
                    group.create_task(bounded(item))
        except BaseExceptionGroup as failed:
            first: BaseException = failed
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

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

    async def _open_laptops(self) -> None:
        """Open (create) every laptop's database, a few at once; keep them in index order."""
        opened: dict[int, Replica] = {}
        self.observer.phase("create the laptops' databases", self.config.laptops)

        async def open_one(index: int) -> None:
            opened[index] = await Replica.open(
                self.workdir / laptop_file(index),
                rulebook=self.rulebook,
                password_hasher=_ACCOUNT_HASHER,
                connector=None if self.network is None else self.network.link(f"laptop-{index}"),
                pool_size=self.config.pool_size,
            )
            self.observer.advance()

        try:
            await self._each(range(self.config.laptops), open_one)
        finally:  # those opened are closed with the rest, even if one failed
            self.fleet.extend(opened[i] for i in sorted(opened))

    async def _enrol(self, index: int, url: str) -> None:
        laptop = self.fleet[index]
        await _within(
            laptop.enrol(
                url, username=clinician(index), password=self.password, organisation=ORGANISATION
            ),
            f"{laptop.replica_id} enrolling",
        )
        self.observer.advance()

    async def _edit(
        self, index: int, edits: Sequence[Edit], resolves: bool, round_index: int
    ) -> None:
        laptop = self.fleet[index]
        author = clinician(index)  # logged in on this laptop since its enrolment
        if resolves:
            await self._resolve(laptop, author, random.Random(f"{self.config.seed}/{round_index}"))
        for edit in edits:
            rid = self.scenario.patients[edit.patient].record_id
            if edit.op == "set":
                await laptop.set(rid, edit.path, edit.value, author=author)
                self.oracle.wrote(rid, edit.path, edit.value)
            elif edit.op == "status":
                collection, entry_id = edit.path.split("/")
                status = str(edit.value)
                await laptop.set_status(rid, collection, entry_id, status, author=author)
                self.oracle.wrote(rid, f"{edit.path}/status", status)
            else:
                fields = dict(edit.fields)
                entry_id = await laptop.add_entry(rid, edit.path, fields, author=author)
                for name, value in fields.items():
                    self.oracle.wrote(rid, f"{edit.path}/{entry_id}/{name}", value)
            self.observer.advance()

    async def _resolve(self, laptop: Replica, author: str, rng: random.Random) -> None:
        """Settle the first few conflicts this laptop sees, as a clinician would, offline."""
        conflicts = sorted(await laptop.conflicts(), key=lambda c: (c.record_id, c.subject, c.id))
        for conflict in conflicts[:RESOLUTIONS_PER_RESOLVER]:
            try:
                if conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
                    choice = rng.randrange(len(conflict.candidates))
                    await laptop.resolve(conflict.id, choose=choice, author=author)
                else:
                    await laptop.acknowledge(conflict.id, author=author)
            except UnknownConflictError:
                continue  # settling an earlier one settled this one too
            self.result.conflicts_resolved += 1

    async def _sync_all(self, laptops: Sequence[Replica]) -> int:
        """One sync round of ``laptops``, one after another in their order; returns how
        many updates went up.

        In order, not at once: what a laptop pulls would otherwise depend on which of
        the others happened to push first, and so would the conflicts it settles in the
        next round. In order, a seed gives one outcome, on a busy machine too.
        """
        uploaded = 0
        for laptop in laptops:
            report = await _within(laptop.sync(), f"{laptop.replica_id} syncing")
            uploaded += report.uploaded
            self.observer.advance()
        self.result.sync_rounds += 1
        return uploaded
