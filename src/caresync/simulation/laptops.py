"""A share of the simulation's laptops: each opened when it has work, closed when done.

A :class:`LaptopShare` plays the laptop side of the scenario for the laptops it
is given: create their databases, enrol them, make a round's edits, sync. The
runner uses one share for every laptop (one process), or each worker process
uses one for its laptops (:mod:`caresync.simulation.workers`); the share does
not know which.

Why open on demand: a laptop that stays open keeps its record pool and its
SQLite cache, about 15 MB, so 1,000 open laptops need 15 GB. A laptop is
opened for one step (enrol, a round's edits, one sync) and closed afterwards,
so memory grows with ``concurrency``, not with laptops. Opening costs a few
milliseconds: the login and the session are kept in its database.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher

from caresync.conflicts import (
    DEFAULT_RULEBOOK,
    Candidate,
    Conflict,
    ConflictKind,
    Rulebook,
    Severity,
)
from caresync.exceptions import ConnectionLostError, UnknownConflictError
from caresync.records import JSONValue, canonical_json
from caresync.replica import Replica
from caresync.simulation.config import SimulationConfig
from caresync.simulation.oracle import ReplicaPrint, read_print
from caresync.simulation.scenario import RESOLUTIONS_PER_RESOLVER, Edit, Scenario, plan
from caresync.transport import Connector

logger = logging.getLogger("caresync.simulation")

__all__ = [
    "ACCOUNT_HASHER",
    "ORGANISATION",
    "STEP_TIMEOUT_S",
    "SYNC_RETRY_DELAYS_S",
    "StepHungError",
    "EditReport",
    "LaptopShare",
    "clinician",
    "each",
    "laptop_file",
    "settling_order",
    "candidate_order",
]

ORGANISATION = "clinic"
STEP_TIMEOUT_S = 600.0
"""A laptop's enrolment, round of edits or sync that takes longer than this fails the run."""

SYNC_RETRY_DELAYS_S = (0.5, 2.0)
"""A laptop's sync whose link fails (a server too busy to finish a handshake within the
connector's timeout) is tried again after each of these delays, as a clinician presses
sync again; the run fails only if the last try fails too. Retries are counted in the
result (``sync_retries``), so a server that drops links does not pass unseen."""


class StepHungError(ConnectionLostError):
    """A laptop's step took more than :data:`STEP_TIMEOUT_S` (never tried again)."""


# The run's throwaway account: argon2id with small costs, since the server verifies one
# login per laptop enrolled (the hash records its own parameters) and each laptop hashes
# the password for offline login.
ACCOUNT_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

T = TypeVar("T")

# What differs from run to run of one seed: revision ids (random), and what derives from
# them (conflict and finding ids, and the ``_ack/<finding>`` paths decisions are written
# at), entry ids a laptop makes (random), replica ids and write times. A resolver's
# choices are made from everything else, so that a seed gives one outcome.
_RANDOM_ID = re.compile(r"\b(?:[0-9a-f]{32}|[cf]-[0-9a-f]{20})\b")


def _masked(path: str) -> str:
    return _RANDOM_ID.sub("*", path)


def _candidate_key(candidate: Candidate) -> tuple[str, str, str, str]:
    writes = canonical_json([[_masked(p), v] for p, v in candidate.writes])
    return (canonical_json(candidate.value), candidate.author, _masked(candidate.path), writes)


def settling_order(conflict: Conflict) -> tuple[object, ...]:
    """The order a resolver takes the conflicts it sees in: by record and subject, then
    by their candidates' values and authors, never by ids or times (which differ
    between runs of one seed)."""
    return (
        conflict.record_id,
        _masked(conflict.subject),
        conflict.kind.value,
        conflict.rule or "",
        tuple(sorted(_candidate_key(c) for c in conflict.candidates)),
    )


def candidate_order(conflict: Conflict) -> list[int]:
    """The indexes of ``conflict``'s candidates ordered by value, author and path (their
    own order is by write time, which differs between runs of one seed)."""
    keys = [_candidate_key(c) for c in conflict.candidates]
    return sorted(range(len(keys)), key=keys.__getitem__)


def clinician(index: int) -> str:
    """The account of the clinician who works on laptop ``index`` (and enrols it)."""
    return f"clinician-{index}"


def laptop_file(index: int) -> str:
    """The file name of laptop ``index``'s database."""
    return f"laptop-{index:04d}.db"


async def within(step: Awaitable[T], what: str) -> T:
    """Await ``step``; a step that hangs fails the run with a typed error instead."""
    try:
        return await asyncio.wait_for(step, STEP_TIMEOUT_S)
    except TimeoutError:
        raise StepHungError(f"{what} took more than {STEP_TIMEOUT_S:.0f} s") from None


async def each(
    items: Iterable[T], job: Callable[[T], Awaitable[None]], semaphore: asyncio.Semaphore
) -> None:
    """Run ``job`` on every item, as many at once as ``semaphore`` lets through.

    The first error cancels the rest and is raised as itself (not wrapped in
    an ExceptionGroup), so a caller sees caresync's typed error.
    """

    async def bounded(item: T) -> None:
        async with semaphore:
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


@dataclass
class EditReport:
    """What a round's edits on some laptops wrote: for the oracle, and the conflicts settled."""

    writes: list[tuple[str, str, JSONValue]] = field(default_factory=list)
    """(record id, path, value) per value written, each committed when it was logged."""
    decisions: list[tuple[str, str, str]] = field(default_factory=list)
    """(record id, revision id, conflict id) per decision made (a resolution or an
    acknowledgement: the revision its call returned), each committed when it was logged."""
    resolved: int = 0


class LaptopShare:
    """The laptops ``indices`` of a run, played from the scenario (see the module docstring)."""

    def __init__(
        self,
        config: SimulationConfig,
        workdir: Path,
        indices: Sequence[int],
        password: str,
        *,
        connector: Callable[[int], Connector | None] = lambda index: None,
        concurrency: int | None = None,
        rulebook: Rulebook = DEFAULT_RULEBOOK,
        scenario: Scenario | None = None,
        advance: Callable[[int], None] = lambda steps: None,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.indices = tuple(indices)
        self.password = password
        self.connector = connector
        self.rulebook = rulebook
        self.scenario = scenario if scenario is not None else plan(config)
        self.semaphore = asyncio.Semaphore(concurrency or config.concurrency)
        self.advance = advance
        self._checked: set[int] = set()
        """Laptops this share opened (and so checked) already: see :meth:`_open`."""

    async def _open(self, index: int) -> Replica:
        # The first open checks the file (SQLite's quick_check, which reads every page);
        # later ones reopen a file this share checked and closed itself, with nothing
        # else writing it in between, as a real laptop opens its database once. Checked
        # at each of a run's ten or so opens, it cost laptops x file size: the file holds
        # every laptop's edits, so that grew as laptops squared.
        checked = index in self._checked
        replica = await Replica.open(
            self.workdir / laptop_file(index),
            rulebook=self.rulebook,
            password_hasher=ACCOUNT_HASHER,
            # A laptop of a long run may go without an edit for longer than the
            # default idle limit; the simulation is about replication, not logins.
            login_idle_s=None,
            connector=self.connector(index),
            pool_size=self.config.pool_size,
            quick_check=not checked,
        )
        self._checked.add(index)
        return replica

    async def _with(self, index: int, step: Callable[[Replica], Awaitable[T]], what: str) -> T:
        """Open laptop ``index``, run ``step`` on it (within the step timeout), close it."""
        laptop = await self._open(index)
        try:
            return await within(step(laptop), f"{laptop.replica_id} {what}")
        finally:
            await laptop.close()

    async def create(self) -> None:
        """Create every laptop's database (closed again at once)."""

        async def create_one(index: int) -> None:
            await (await self._open(index)).close()
            self.advance(1)

        await each(self.indices, create_one, self.semaphore)

    async def enrol(self, url: str) -> None:
        """Enrol every laptop with the server at ``url`` (each makes its first copy)."""

        async def enrol_one(index: int) -> None:
            await self._with(
                index,
                lambda laptop: laptop.enrol(
                    url,
                    username=clinician(index),
                    password=self.password,
                    organisation=ORGANISATION,
                ),
                "enrolling",
            )
            self.advance(1)

        await each(self.indices, enrol_one, self.semaphore)

    async def edit(self, round_index: int) -> EditReport:
        """Every laptop's edits of round ``round_index`` (resolvers first settle conflicts)."""
        round_ = self.scenario.rounds[round_index]
        report = EditReport()

        async def edit_one(index: int) -> None:
            edits = round_.edits[index]
            resolves = index in round_.resolvers
            if not edits and not resolves:
                return
            rng = random.Random(f"{self.config.seed}/{round_index}")
            await self._with(
                index,
                lambda laptop: self._edit(laptop, index, edits, resolves, rng, report),
                "editing",
            )

        await each(self.indices, edit_one, self.semaphore)
        return report

    async def _edit(
        self,
        laptop: Replica,
        index: int,
        edits: Sequence[Edit],
        resolves: bool,
        rng: random.Random,
        report: EditReport,
    ) -> None:
        author = clinician(index)  # logged in on this laptop since its enrolment
        if resolves:
            # Awaited first, then added: ``report.resolved += await ...`` reads the count
            # before the await, and laptops editing side by side then lose each other's.
            decisions = await self._resolve(laptop, author, rng)
            report.decisions.extend(decisions)
            report.resolved += len(decisions)
        for edit in edits:
            rid = self.scenario.patients[edit.patient].record_id
            if edit.op == "set":
                await laptop.set(rid, edit.path, edit.value, author=author)
                report.writes.append((rid, edit.path, edit.value))
            elif edit.op == "status":
                collection, entry_id = edit.path.split("/")
                status = str(edit.value)
                await laptop.set_status(rid, collection, entry_id, status, author=author)
                report.writes.append((rid, f"{edit.path}/status", status))
            else:
                fields = dict(edit.fields)
                entry_id = await laptop.add_entry(rid, edit.path, fields, author=author)
                for name, value in fields.items():
                    report.writes.append((rid, f"{edit.path}/{entry_id}/{name}", value))
            self.advance(1)

    async def _resolve(
        self, laptop: Replica, author: str, rng: random.Random
    ) -> list[tuple[str, str, str]]:
        """Settle the first few conflicts this laptop sees, as a clinician would, offline;
        each decision as (record id, revision id, conflict id), for the oracle."""
        conflicts = sorted(await laptop.conflicts(), key=settling_order)
        decisions: list[tuple[str, str, str]] = []
        for conflict in conflicts[:RESOLUTIONS_PER_RESOLVER]:
            try:
                if conflict.kind is ConflictKind.FIELD or conflict.severity is Severity.BLOCK:
                    order = candidate_order(conflict)
                    choice = order[rng.randrange(len(order))]
                    made = await laptop.resolve(conflict.id, choose=choice, author=author)
                else:
                    made = await laptop.acknowledge(conflict.id, author=author)
            except UnknownConflictError:
                continue  # settling an earlier one settled this one too
            decisions.append((conflict.record_id, made.id, conflict.id))
        return decisions

    async def sync(self, indices: Iterable[int], pull: bool = True) -> tuple[int, int]:
        """One sync of each of this share's laptops among ``indices``, several at once
        (``pull=False``: a push only); how many updates they uploaded, and how many
        syncs were tried again after a failed link (see :data:`SYNC_RETRY_DELAYS_S`)."""
        wanted = set(indices)
        uploaded = retries = 0
        what = "syncing" if pull else "pushing"

        async def sync_one(index: int) -> None:
            nonlocal uploaded, retries
            for delay in (*SYNC_RETRY_DELAYS_S, None):
                try:
                    report = await self._with(index, lambda laptop: laptop.sync(pull=pull), what)
                    break
                except StepHungError:
                    raise
                except ConnectionLostError as exc:
                    if delay is None:
                        raise
                    logger.warning("laptop %d: %s; its sync is tried again", index, exc)
                    retries += 1
                    await asyncio.sleep(delay)  # a pause before trying again, not a wait
            uploaded += report.uploaded
            self.advance(1)

        await each([i for i in self.indices if i in wanted], sync_one, self.semaphore)
        return uploaded, retries

    async def prints(self) -> dict[int, ReplicaPrint]:
        """Each of this share's laptops' :class:`ReplicaPrint`, read from its closed file.

        Read here, in the process that plays the laptops, so that the oracle compares
        32 bytes per laptop rather than reading every laptop's state vectors and
        conflict rows in its own process (workers read theirs side by side).
        """
        found: dict[int, ReplicaPrint] = {}
        for index in self.indices:
            found[index] = await asyncio.to_thread(read_print, self.workdir / laptop_file(index))
        return found
