"""Sync beside the peer (pycrdt-websocket 0.16 with pycrdt-store's SQLite store), one run.

Each server runs in a process of its own (``benchmarks/sync_peer.py``); the laptops
run in this process, so the server and its clients have a core each. Every case:

* **first copy**, persisted on the laptop: caresync ``Replica.enrol`` into a new
  SQLite file, timed from the end of the login to the last batch committed (the
  login, an argon2id check, is reported apart); the peer: a new ``Doc`` joins the
  room holding every record, timed until it is synced and its state written to
  the laptop's own ``SQLiteYStore``;
* **incremental sync** with 1% of the records changed by another client (these two
  cases run :data:`ROUNDS` times, each with a new laptop and new changes; the
  median is reported, every run beside it): caresync
  ``Replica.sync`` (log in with the session, push nothing, pull, commit); the
  peer: the laptop's ``Doc`` reconnects and exchanges state vectors, then writes
  what it received;
* **the raw limit** of the first copy and the incremental sync: the same bytes
  written by SQLite alone (WAL, ``synchronous = FULL``, the copy's batches), and,
  for the sync, each update also applied to its record's document; caresync's
  ratio to it is given run by run, beside its ratio to the peer;
* **sync with nothing to do**: the last round's laptop syncs again, :data:`ROUNDS`
  times; the peer reconnects and writes only if something came;
* **fsyncs per sync**: one more no-op sync and one more incremental sync on each
  side, not timed, with the laptop process's ``fsync``/``fdatasync`` calls counted
  (``strace``; "not counted" where there is none);
* **latency to 50 laptops**: one client writes, 50 subscribed laptops receive —
  caresync's are real ``Replica`` laptops in live mode that commit each update to
  their SQLite file before they count it received (WAL; on disk within
  ``SyncLimits.live_durable_delay_s``, 1 s, as a laptop does); the peer's are ``Doc`` clients
  applying it in memory; each delivery is a sample (edit sent → update received),
  and the time until the last of the 50 has it; :data:`ROUNDS` rounds;
* **sustained edits/s with 50 laptops writing at once**: each laptop makes edits
  at a fixed rate and every laptop receives everyone's; caresync laptops push all
  edits made since their last acknowledgement in one batch, like ``Replica`` does;
  then the server is stopped while the laptops are still writing, and its
  database is counted: every acknowledged edit must be there;
* **server memory** (resident, now and peak) after the first copy of 100,000.

Every case that runs :data:`ROUNDS` times reports the median with min and max, and
(caresync) its ratio to the peer's run by run. Writers and the throughput case's
laptops are protocol clients with edits prepared beforehand
(caresync: ``ClientProtocol`` over a websocket; the peer: ``Doc`` + ``Provider``),
so the numbers are the servers' and the protocols', not 50 laptop databases'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, Provider

from benchmarks.common import RESULTS_DIR, FsyncCount, counting_fsyncs, write_results
from benchmarks.sync_peer import connect_peer, peer_store
from caresync import Record
from caresync.conflicts import DEFAULT_RULEBOOK
from caresync.credentials import verify_server_signature
from caresync.protocol import (
    Authenticated,
    ClientProtocol,
    Enrolled,
    LiveUpdate,
    PushAck,
    ServerProof,
    Welcome,
    server_proof_payload,
)
from caresync.records.persons import PersonCard, person_card
from caresync.replica import Replica, ReplicaState
from caresync.replication.pool import conflict_rows
from caresync.server import SyncServer
from caresync.storage import ConflictRow, IncomingUpdate
from caresync.transport import Channel, connect_websocket

ORG = "clinic"
USER = "dr.bench"
PASSWORD = "a long benchmark passphrase"
LIMIT_S = 600.0  # no wait in this benchmark may exceed this
PEER_QUIET_S = 15.0
"""How long the peer's clients may receive nothing before the updates still awaited
are counted as dropped (:meth:`Counted.wait_until_or_quiet`)."""
ROUNDS = 5
RAW_BATCH_RECORDS = 500
"""Records per transaction of the raw limit's first copy: fixed, so that the limit stays
the same yardstick whatever batches caresync's copy asks for."""
"""Runs of the first copy and the incremental sync (a new laptop and new changes each);
the median is reported, with every run beside it."""


# --------------------------------------------------------------------------- data


GIVEN_NAMES = (
    "Awa",
    "Fatou",
    "Aminata",
    "Mariama",
    "Khady",
    "Ndeye",
    "Aissatou",
    "Coumba",
    "Rokhaya",
    "Astou",
    "Seynabou",
    "Bineta",
    "Adama",
    "Marie",
    "Sophie",
    "Anna",
    "Claire",
    "Maria",
    "Elena",
    "Grace",
    "Amina",
    "Zeynab",
    "Leila",
    "Nadia",
    "Ines",
    "Moussa",
    "Mamadou",
    "Ibrahima",
    "Ousmane",
    "Cheikh",
    "Abdoulaye",
    "Modou",
    "Babacar",
    "Serigne",
    "Pape",
    "Lamine",
    "Alioune",
    "Omar",
    "Jean",
    "Pierre",
    "Paul",
    "Louis",
    "Daniel",
    "David",
    "Samuel",
    "Youssef",
    "Karim",
    "Ali",
    "Malick",
    "Boubacar",
)
FAMILY_NAMES = (
    "Ndiaye",
    "Diop",
    "Fall",
    "Sow",
    "Ba",
    "Gueye",
    "Sy",
    "Diallo",
    "Faye",
    "Mbaye",
    "Sarr",
    "Ndour",
    "Cisse",
    "Toure",
    "Kane",
    "Thiam",
    "Seck",
    "Diouf",
    "Niang",
    "Camara",
    "Sall",
    "Dieng",
    "Wade",
    "Mbengue",
    "Ly",
    "Sene",
    "Ndao",
    "Badji",
    "Diatta",
    "Coly",
    "Sagna",
    "Mendy",
    "Gomis",
    "Lo",
    "Sambou",
    "Tall",
    "Barry",
    "Bah",
    "Balde",
    "Konate",
    "Traore",
    "Keita",
    "Coulibaly",
    "Kone",
    "Dembele",
    "Martin",
    "Bernard",
    "Dubois",
    "Moreau",
    "Laurent",
    "Garcia",
    "Silva",
    "Santos",
    "Okafor",
    "Mensah",
    "Owusu",
    "Kamara",
    "Conteh",
    "Sesay",
    "Bangura",
)
BIRTH_DAYS = 365 * 85
"""Birth dates are spread over 85 years (1935 to 2019), one a day."""


def patient_fields(i: int) -> tuple[str, str, str]:
    """Patient ``i``'s name, birth date and gender: varied and deterministic.

    Names drawn from fixed lists of 50 given and 60 family names (3,000 full names,
    as many as a clinic of 100,000 meets), birth dates over 85 years; so the person
    index sees what a real clinic's would: a few cards sharing each blocking key.
    """
    rng = random.Random(i)
    given = rng.randrange(len(GIVEN_NAMES))
    family = rng.choice(FAMILY_NAMES)
    born = datetime.date(1935, 1, 1) + datetime.timedelta(days=rng.randrange(BIRTH_DAYS))
    gender = "female" if given < len(GIVEN_NAMES) // 2 else "male"  # the list's halves
    return f"{GIVEN_NAMES[given]} {family}", born.isoformat(), gender


def patient(i: int) -> tuple[str, bytes]:
    """One patient record as caresync stores it (5 fields and an allergy: 8 revisions)."""
    record_id, update, _rows, _card = checked_patient(i)
    return record_id, update


def checked_patient(i: int) -> tuple[str, bytes, tuple[ConflictRow, ...], PersonCard]:
    """One patient record, with the conflict rows and person card a server stores with it
    (what it computed when the record was first pushed)."""
    name, born, gender = patient_fields(i)
    record = Record.create(replica="clinic-import")
    record.set("name", name, author="import")
    record.set("birthDate", born, author="import")
    record.set("gender", gender, author="import")
    record.set("address/city", "Dakar", author="import")
    record.add_entry(
        "allergies", {"substance": "penicillin", "criticality": "high"}, author="import"
    )
    rows = conflict_rows(record, DEFAULT_RULEBOOK)
    return record.record_id, record.update_since(), rows, person_card(record)


def peer_record(records: Map[Any], rid: str, i: int) -> None:
    """The same patient in the peer's one document: a map of fields per record."""
    name, born, gender = patient_fields(i)
    records[rid] = Map(
        {
            "name": name,
            "birthDate": born,
            "gender": gender,
            "city": "Dakar",
            "allergy": "penicillin/high",
        }
    )


async def build_caresync_server(
    db: Path,
    records: list[tuple[str, bytes]],
    checks: dict[str, tuple[tuple[ConflictRow, ...], PersonCard]] | None = None,
) -> None:
    """A server database holding ``records``, each with its conflict rows and person
    card from ``checks`` as a server stores them when a record is pushed (its person
    index paired in the same transactions); without ``checks``, none."""
    server = await SyncServer.open(db)
    await server.add_user(ORG, USER, PASSWORD)
    checks = checks or {}
    for start in range(0, len(records), 2000):
        items = []
        for rid, data in records[start : start + 2000]:
            rows, card = checks.get(rid, ((), None))
            items.append(IncomingUpdate(rid, data, rows, ORG, card))
        await server.store.write_remote(items, to_feed=True)
    await server.close()


async def build_peer_server(db: Path, ids: list[str]) -> None:
    doc: Doc = Doc()
    records = doc.get("records", type=Map)
    with doc.transaction():
        for i, rid in enumerate(ids):
            peer_record(records, rid, i)
    async with peer_store(db) as store:
        await store.write(doc.get_update())


class Counted:
    """Counts calls and wakes waiters on each: wait for an event, never for the clock."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self, _event: object) -> None:
        self.count += 1
        self._event.set()

    async def wait_until(self, done: Any) -> None:
        async with asyncio.timeout(LIMIT_S):
            while True:
                self._event.clear()
                if done():
                    return
                await self._event.wait()

    async def wait_for(self, count: int) -> None:
        await self.wait_until(lambda: self.count >= count)

    async def wait_until_or_quiet(self, done: Any, quiet_s: float = PEER_QUIET_S) -> bool:
        """Wait until ``done()``; False if nothing is counted for ``quiet_s`` before.

        For the peer only, whose room can drop an update on its way to a connected
        client (pycrdt-websocket 0.16: a failed send to a client that just left
        fails the room's task group, and the updates it was relaying to the others
        never arrive; no error reaches them). No event says so: a quiet spell is
        the only sign. caresync's waits stay strict (:meth:`wait_until`).
        """
        async with asyncio.timeout(LIMIT_S):
            while True:
                self._event.clear()
                if done():
                    return True
                try:
                    async with asyncio.timeout(quiet_s):
                        await self._event.wait()
                except TimeoutError:
                    return bool(done())


# ------------------------------------------------------------------------ servers


class ServerProcess:
    """A server in a process of its own (see benchmarks/sync_peer.py)."""

    def __init__(self, kind: str, db: str | Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sync_peer", kind, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        self.port = int(self._line()["port"])
        self.url = f"ws://127.0.0.1:{self.port}"

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark server exited early")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return await asyncio.to_thread(self._line)

    async def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        final = await asyncio.to_thread(self._line)
        await asyncio.to_thread(self.proc.wait, 60)
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.asynccontextmanager
async def running(kind: str, db: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(kind, db)
    try:
        yield server
    finally:
        server.kill()


# ---------------------------------------------------------------- caresync clients


@dataclass
class RawLaptop:
    """A caresync laptop as a bare protocol client: push prepared edits, receive live ones."""

    channel: Channel
    protocol: ClientProtocol
    events: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    received: list[float] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    on_live: Counted | None = None
    replica_id: str = ""
    undecoded: list[bytes] = field(default_factory=list)
    """Frames timed and kept as they came (:meth:`keep`), to be decoded by
    :meth:`decode_kept` (see ``fanout_clients``)."""
    live_seqs: list[int] = field(default_factory=list)
    """The seq of each live update :meth:`decode_kept` decoded, in order."""

    @classmethod
    async def join(cls, url: str) -> RawLaptop:
        """Connect, check the server's proof, log in with the password, enrol a new replica.

        (Enrolment needs a password login: a resumed session may not enrol.)
        """
        laptop = cls(await connect_websocket(url), ClientProtocol())
        laptop.reader = asyncio.create_task(laptop._read())
        laptop.protocol.send_hello()
        await laptop.expect(Welcome)
        nonce = os.urandom(32)
        laptop.protocol.prove_server(nonce)
        proof = await laptop.expect(ServerProof)
        payload = server_proof_payload(nonce, laptop.protocol.server_id or "", None, None)
        if not verify_server_signature(proof.server_key, payload, proof.signature):
            raise RuntimeError("the server's proof does not verify")
        laptop.protocol.confirm_server()
        laptop.protocol.authenticate(USER, PASSWORD, ORG)
        await laptop.expect(Authenticated)
        laptop.protocol.enrol("bench")
        enrolled = await laptop.expect(Enrolled)
        laptop.replica_id = enrolled.replica_id  # what its revisions name as their replica
        return laptop

    async def flush(self) -> None:
        for frame in self.protocol.data_to_send():
            await self.channel.send(frame)

    def keep(self, frame: bytes) -> None:
        """Time ``frame``, a live update's, as received now, and keep it undecoded
        until :meth:`decode_kept` (the reader is then not :meth:`_read`)."""
        self.received.append(time.perf_counter())
        self.undecoded.append(frame)
        if self.on_live is not None:
            self.on_live(None)

    def decode_kept(self) -> None:
        """Decode the frames kept since the last call, every check of the protocol
        made; each must be one live update (else RuntimeError: the figures would count
        something else), its seq appended to :attr:`live_seqs`."""
        frames, self.undecoded = self.undecoded, []
        for frame in frames:
            self.protocol.receive_data(frame)
            events = self.protocol.events_received()
            if len(events) != 1 or not isinstance(events[0], LiveUpdate):
                raise RuntimeError(f"a laptop expected one live update, got {events!r}")
            self.live_seqs.append(events[0].seq)

    async def _read(self) -> None:
        while True:
            frame = await self.channel.recv()
            self.protocol.receive_data(frame)
            for event in self.protocol.events_received():
                if isinstance(event, LiveUpdate):
                    self.received.append(time.perf_counter())
                    if self.on_live is not None:
                        self.on_live(event)
                else:
                    self.events.put_nowait(event)

    async def expect(self, kind: type[Any]) -> Any:
        await self.flush()
        async with asyncio.timeout(LIMIT_S):
            event = await self.events.get()
        if not isinstance(event, kind):
            raise RuntimeError(f"expected {kind.__name__}, got {event!r}")
        return event

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        await self.channel.close()


async def raw_laptops(url: str, count: int) -> list[RawLaptop]:
    return [await RawLaptop.join(url) for _ in range(count)]


class EditMaker:
    """Prepared edits of one record: each a caresync update of one field."""

    def __init__(self, replica: str) -> None:
        self.record = Record.create(replica=replica)
        self.updates = [self.record.update_since()]
        self.record.on_update(lambda update, local: self.updates.append(update))

    def make(self, count: int) -> list[tuple[str, bytes]]:
        for n in range(count):
            self.record.set("birthDate", f"edit {n}", author=USER)
        return [(self.record.record_id, u) for u in self.updates]


# ------------------------------------------------------------------ peer clients


async def peer_join(port: int, doc: Doc | None = None) -> tuple[Doc, Provider, asyncio.Task[None]]:
    """A peer client: a Doc joined to the room, synced once this returns."""
    doc = doc if doc is not None else Doc()
    provider = Provider(doc, await connect_peer(port))
    started = asyncio.Event()

    async def run() -> None:
        async with provider:
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(run())
    async with asyncio.timeout(LIMIT_S):
        await started.wait()
        await provider.synced.wait()
    return doc, provider, task


async def peer_leave(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def peer_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM yupdates").fetchone()[0])


# ----------------------------------------------------------------------- cases


def fsync_figure(count: FsyncCount) -> int | str:
    """The fsync count of one sync, or why it was not counted."""
    return count.calls if count.calls is not None else f"not counted: {count.why_not}"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timing_case(case: str, system: str, runs: list[float], **extra: Any) -> dict[str, Any]:
    """A case timed in several runs: the median, min and max, and every run."""
    return {
        "case": case,
        "system": system,
        "seconds": round(statistics.median(runs), 4),
        "min_s": round(min(runs), 4),
        "max_s": round(max(runs), 4),
        "runs": [round(r, 4) for r in runs],
        **extra,
    }


def with_ratios(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each caresync case with ``runs`` its ratio to the peer's and to the raw
    limit's, run by run.

    Run ``i`` of one side is compared with run ``i`` of the other (same data,
    same round); the median, min and max of those ratios are added.
    """
    for other, key in (("peer", "ratio_to_peer"), ("raw limit", "ratio_to_raw_limit")):
        baseline = {c["case"]: c for c in cases if c.get("system") == other and "runs" in c}
        for case in cases:
            theirs = baseline.get(case["case"])
            if case.get("system") != "caresync" or theirs is None or "runs" not in case:
                continue
            # A run of None (a peer round that lost every delivery) has no time: its pair
            # is left out, the others stay paired round by round.
            ratios = [
                a / b
                for a, b in zip(case["runs"], theirs["runs"], strict=False)
                if a is not None and b is not None and b > 0
            ]
            if ratios:
                case[key] = {
                    "median": round(statistics.median(ratios), 2),
                    "min": round(min(ratios), 2),
                    "max": round(max(ratios), 2),
                }
    return cases


def missing_edits(doc: Doc, edits: list[tuple[str, str]]) -> int:
    """How many of ``edits`` (record id, city) a peer document does not show."""
    records = doc.get("records", type=Map)
    return sum(1 for rid, city in edits if records[rid]["city"] != city)


def one_percent_edits(
    ids_data: list[tuple[str, bytes]], changed: int, round_no: int
) -> list[tuple[str, str]]:
    """Which records a round changes, and the city each gets (new in every round)."""
    chosen = random.Random(len(ids_data) * 100 + round_no).sample(ids_data, changed)
    return [(rid, f"Thiès {round_no}") for rid, _data in chosen]


async def copy_cases(
    work: Path,
    n: int,
    changed: int,
    ids_data: list[tuple[str, bytes]],
    rounds: int,
    copy_only: bool = False,
    checks: dict[str, tuple[tuple[ConflictRow, ...], PersonCard]] | None = None,
    sync_only: bool = False,
) -> list[dict[str, Any]]:
    """First copy of ``n`` records, then an incremental sync with ``changed`` of them
    changed; each ``rounds`` times, with a new laptop and new changes every round.

    The server's records hold ``checks`` (their conflict rows and person cards) from
    the start, as a real server's do. ``copy_only``: the first copies alone (no sync,
    no no-op sync, no fsync count); each copy's CPU time is also given, of the
    laptop's process and of the server's. ``sync_only``: the incremental syncs alone,
    ``rounds`` of them by one laptop (its first copy made, not reported; no no-op
    sync), each sync's CPU time given likewise.
    """
    states = dict(ids_data)
    copies: list[float] = []
    laptop_cpu: list[float] = []
    server_cpu: list[float] = []
    logins: list[float] = []
    syncs: list[float] = []
    sync_laptop_cpu: list[float] = []
    sync_server_cpu: list[float] = []
    noops: list[float] = []
    memory: dict[str, Any] = {}
    # caresync
    sdb = work / f"cs-server-{n}.db"
    await build_caresync_server(sdb, ids_data, checks)
    async with running("caresync", sdb) as server:

        async def change_some(round_no: int) -> None:
            """1% changed by another client, pushed to the server."""
            editor = await RawLaptop.join(server.url)
            edits = []
            for rid, city in one_percent_edits(ids_data, changed, round_no):
                record = Record.from_update(rid, states[rid], replica=editor.replica_id)
                before = record.state_vector()
                record.set("address/city", city, author=USER)
                edits.append((rid, record.update_since(before)))
                states[rid] = record.update_since()
            for start_i in range(0, len(edits), 500):
                batch = edits[start_i : start_i + 500]
                editor.protocol.push(
                    [(start_i + k + 1, rid, u) for k, (rid, u) in enumerate(batch)]
                )
                await editor.expect(PushAck)
            await editor.close()

        laptop: Replica | None = None
        for round_no in range(rounds):
            if laptop is None or not sync_only:
                # (sync_only: one laptop syncs round after round, as a laptop does)
                laptop = await Replica.open(work / f"cs-laptop-{n}-{round_no}.db")
                marks: dict[str, float] = {}
                laptop.on_status(
                    lambda s, marks=marks: (
                        marks.setdefault("copy", time.perf_counter())
                        if s is ReplicaState.SYNCHRONISING
                        else None
                    )
                )
                server_before = (await server.stats())["cpu_s"]
                cpu_before = time.process_time()
                start = time.perf_counter()
                await laptop.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)
                end = time.perf_counter()
                laptop_cpu.append(time.process_time() - cpu_before)
                assert await laptop.store.count_records() == n
                copies.append(end - marks["copy"])
                logins.append(marks["copy"] - start)
                stats = await server.stats()
                server_cpu.append(stats["cpu_s"] - server_before)
                if round_no == 0:
                    memory = stats
                if copy_only:
                    await laptop.close()
                    continue
            await change_some(round_no)
            server_before = (await server.stats())["cpu_s"]
            cpu_before = time.process_time()
            t0 = time.perf_counter()
            report = await laptop.sync()
            syncs.append(time.perf_counter() - t0)
            sync_laptop_cpu.append(time.process_time() - cpu_before)
            sync_server_cpu.append((await server.stats())["cpu_s"] - server_before)
            assert report.downloaded == changed, report
            if round_no < rounds - 1 and not sync_only:
                await laptop.close()
        assert laptop is not None  # rounds >= 1
        # The last laptop: syncs with nothing to do, then one of each kind counted.
        for _ in range(0 if copy_only or sync_only else rounds):
            t0 = time.perf_counter()
            report = await laptop.sync()
            noops.append(time.perf_counter() - t0)
            assert report.downloaded == 0, report
            assert report.uploaded == 0, report
        if not copy_only:
            async with counting_fsyncs(os.getpid()) as noop_fsyncs:
                await laptop.sync()
            await change_some(rounds)
            async with counting_fsyncs(os.getpid()) as sync_fsyncs:
                await laptop.sync()
            await laptop.close()
        await server.stop()
    copy_case = timing_case(
        f"first copy of {n} records, persisted",
        "caresync",
        copies,
        login_seconds=round(statistics.median(logins), 3),
        bytes_per_record=round(sum(len(data) for _rid, data in ids_data) / n),
        server_rss_mb=round(memory["VmRSS"] / 1024, 1),
        server_peak_rss_mb=round(memory["VmHWM"] / 1024, 1),
        laptop_cpu_s=[round(c, 3) for c in laptop_cpu],
        server_cpu_s=[round(c, 3) for c in server_cpu],
        laptop_cpu_median_s=round(statistics.median(laptop_cpu), 3),
        server_cpu_median_s=round(statistics.median(server_cpu), 3),
    )
    if copy_only:
        return [copy_case, *await peer_copies(work, n, ids_data, rounds)]
    sync_case = timing_case(
        f"incremental sync, {changed} of {n} records changed",
        "caresync",
        syncs,
        laptop_fsyncs=fsync_figure(sync_fsyncs),
        laptop_cpu_s=[round(c, 4) for c in sync_laptop_cpu],
        server_cpu_s=[round(c, 4) for c in sync_server_cpu],
        laptop_cpu_median_s=round(statistics.median(sync_laptop_cpu), 4),
        server_cpu_median_s=round(statistics.median(sync_server_cpu), 4),
    )
    if sync_only:
        cases = [sync_case]
    else:
        noop_case = timing_case(
            f"sync with nothing to do, {n} records",
            "caresync",
            noops,
            laptop_fsyncs=fsync_figure(noop_fsyncs),
        )
        cases = [copy_case, sync_case, noop_case]
    # the peer
    copies, syncs, noops = [], [], []
    dropped: list[int] = []  # per change round: edits the room did not relay to the witness
    pdb = work / f"peer-server-{n}.db"
    await build_peer_server(pdb, [rid for rid, _ in ids_data])
    async with running("peer", pdb) as server:

        async def peer_change(round_no: int) -> list[tuple[str, str]]:
            """1% changed by another client while the laptop is away; a witness
            client receiving them all shows the room merged them. If the room drops
            some on their way to the witness (see :meth:`Counted.wait_until_or_quiet`),
            a client joining afterwards must find every one on the server, and the
            drops are counted (``witness_dropped``)."""
            editor_doc, _p, editor_task = await peer_join(server.port)
            witness_doc, _w, witness_task = await peer_join(server.port)
            seen = Counted()
            witness_doc.observe(seen)
            records = editor_doc.get("records", type=Map)
            edits = one_percent_edits(ids_data, changed, round_no)
            for rid, city in edits:
                records[rid]["city"] = city  # one transaction (one update) per edit
            if await seen.wait_until_or_quiet(lambda: seen.count >= changed):
                dropped.append(0)
            else:
                dropped.append(missing_edits(witness_doc, edits))
                fresh_doc, _f, fresh_task = await peer_join(server.port)
                on_server = changed - missing_edits(fresh_doc, edits)
                await peer_leave(fresh_task)
                if on_server != changed:
                    raise RuntimeError(
                        f"the peer's server holds {on_server} of the {changed} edits made"
                    )
            await peer_leave(editor_task)
            await peer_leave(witness_task)
            return edits

        async def peer_sync(doc: Doc, laptop_store: Any) -> None:
            """Reconnect, exchange state vectors, write what came (nothing if nothing did)."""
            before = doc.get_state()
            _doc, _provider, task = await peer_join(server.port, doc)
            update = doc.get_update(before)
            if doc.get_state() != before:  # the same work as caresync's: no commit for nothing
                await laptop_store.write(update)
            await peer_leave(task)

        for round_no in range(rounds):
            t0 = time.perf_counter()
            doc, _provider, task = await peer_join(server.port)
            laptop_store = peer_store(work / f"peer-laptop-{n}-{round_no}.db")
            async with laptop_store:
                state = doc.get_update()
                peer_bytes = len(state)
                await laptop_store.write(state)
                copies.append(time.perf_counter() - t0)
                await peer_leave(task)
                if round_no == 0:
                    memory = await server.stats()
                edits = await peer_change(round_no)
                t0 = time.perf_counter()
                await peer_sync(doc, laptop_store)
                syncs.append(time.perf_counter() - t0)
                got = doc.get("records", type=Map)
                assert all(got[rid]["city"] == city for rid, city in edits)
                if round_no < rounds - 1:
                    continue
                if sync_only:
                    break  # its fsyncs are counted by the whole benchmark
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    await peer_sync(doc, laptop_store)
                    noops.append(time.perf_counter() - t0)
                async with counting_fsyncs(os.getpid()) as noop_fsyncs:
                    await peer_sync(doc, laptop_store)
                await peer_change(rounds)
                async with counting_fsyncs(os.getpid()) as sync_fsyncs:
                    await peer_sync(doc, laptop_store)
                break
        await server.stop()
    peer_copy = timing_case(
        f"first copy of {n} records, persisted",
        "peer",
        copies,
        bytes_per_record=round(peer_bytes / n),
        server_rss_mb=round(memory["VmRSS"] / 1024, 1),
        server_peak_rss_mb=round(memory["VmHWM"] / 1024, 1),
    )
    if sync_only:
        return [
            *cases,
            timing_case(
                f"incremental sync, {changed} of {n} records changed",
                "peer",
                syncs,
                witness_dropped=dropped,
            ),
        ]
    peer_sync_case = timing_case(
        f"incremental sync, {changed} of {n} records changed",
        "peer",
        syncs,
        laptop_fsyncs=fsync_figure(sync_fsyncs),
        witness_dropped=dropped,
    )
    peer_noop = timing_case(
        f"sync with nothing to do, {n} records",
        "peer",
        noops,
        laptop_fsyncs=fsync_figure(noop_fsyncs),
    )
    return [*cases, peer_copy, peer_sync_case, peer_noop]


async def peer_copies(
    work: Path, n: int, ids_data: list[tuple[str, bytes]], rounds: int
) -> list[dict[str, Any]]:
    """The peer's first copies alone (``--only first-copy``), as in :func:`copy_cases`."""
    copies: list[float] = []
    pdb = work / f"peer-server-{n}.db"
    await build_peer_server(pdb, [rid for rid, _ in ids_data])
    peer_bytes = 0
    async with running("peer", pdb) as server:
        for round_no in range(rounds):
            t0 = time.perf_counter()
            doc, _provider, task = await peer_join(server.port)
            laptop_store = peer_store(work / f"peer-laptop-{n}-{round_no}.db")
            async with laptop_store:
                state = doc.get_update()
                peer_bytes = len(state)
                await laptop_store.write(state)
                copies.append(time.perf_counter() - t0)
                await peer_leave(task)
        await server.stop()
    return [
        timing_case(
            f"first copy of {n} records, persisted",
            "peer",
            copies,
            bytes_per_record=round(peer_bytes / n),
        )
    ]


async def noop_cases(
    work: Path,
    n: int,
    ids_data: list[tuple[str, bytes]],
    rounds: int,
    checks: dict[str, tuple[tuple[ConflictRow, ...], PersonCard]] | None = None,
) -> list[dict[str, Any]]:
    """The no-op sync alone (``--only noop``): a laptop holding the ``n`` records syncs
    ``rounds`` times with nothing to do, then once more with each side's fsyncs counted.

    Each sync's CPU time is given too, of the laptop's process and of the server's.
    """
    noops: list[float] = []
    laptop_cpu: list[float] = []
    server_cpu: list[float] = []
    sdb = work / f"cs-server-{n}.db"
    await build_caresync_server(sdb, ids_data, checks)
    async with running("caresync", sdb) as server:
        laptop = await Replica.open(work / f"cs-laptop-{n}-noop.db")
        await laptop.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)
        assert await laptop.store.count_records() == n
        await laptop.sync()  # the enrolment's own leftovers (its login's audit entry)
        for _ in range(rounds):
            server_before = (await server.stats())["cpu_s"]
            cpu_before = time.process_time()
            t0 = time.perf_counter()
            report = await laptop.sync()
            noops.append(time.perf_counter() - t0)
            laptop_cpu.append(time.process_time() - cpu_before)
            server_cpu.append((await server.stats())["cpu_s"] - server_before)
            assert report.downloaded == 0, report
            assert report.uploaded == 0, report
        # The server's strace first: one started later would be traced by the laptop's.
        async with (
            counting_fsyncs(server.proc.pid) as server_fsyncs,
            counting_fsyncs(os.getpid()) as noop_fsyncs,
        ):
            await laptop.sync()
        await laptop.close()
        await server.stop()
    return [
        timing_case(
            f"sync with nothing to do, {n} records",
            "caresync",
            noops,
            laptop_fsyncs=fsync_figure(noop_fsyncs),
            server_fsyncs=fsync_figure(server_fsyncs),
            laptop_cpu_s=[round(c, 5) for c in laptop_cpu],
            server_cpu_s=[round(c, 5) for c in server_cpu],
            laptop_cpu_median_s=round(statistics.median(laptop_cpu), 5),
            server_cpu_median_s=round(statistics.median(server_cpu), 5),
        )
    ]


def raw_limit_cases(
    work: Path,
    n: int,
    changed: int,
    ids_data: list[tuple[str, bytes]],
    rounds: int,
    *,
    sync_only: bool = False,
) -> list[dict[str, Any]]:
    """The physical limit for the same bytes: SQLite alone, WAL and ``synchronous = FULL``.

    First copy: every record's bytes inserted into a new file in batches of
    :data:`RAW_BATCH_RECORDS` (500), a transaction each (what a laptop's store must at
    least write, committed as often as a copy used to be). Incremental sync:
    ``changed`` updates of the size a pull brings, inserted in one transaction; and the
    same, each update also applied to its record's document built from the stored bytes
    (what merging costs at the least). ``rounds`` runs of each.
    """
    from pycrdt import Doc as RawDoc

    states = dict(ids_data)
    edits: list[tuple[str, bytes]] = []
    for rid, _city in one_percent_edits(ids_data, changed, 0):
        record = Record.from_update(rid, states[rid], replica="raw-limit")
        before = record.state_vector()
        record.set("address/city", "Thiès", author=USER)
        edits.append((rid, record.update_since(before)))

    def database(name: str) -> sqlite3.Connection:
        conn = sqlite3.connect(work / name, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS updates (record_id TEXT, data BLOB)")
        return conn

    copies: list[float] = []
    copy_cpu: list[float] = []
    stores: list[float] = []
    merges: list[float] = []
    batch = RAW_BATCH_RECORDS
    for round_no in range(rounds):
        with contextlib.closing(database(f"raw-{n}-{round_no}.db")) as conn:
            t0 = time.perf_counter()
            c0 = time.process_time()
            for start in range(0, n, batch):
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO updates VALUES (?, ?)", ids_data[start : start + batch]
                )
                conn.execute("COMMIT")
            copies.append(time.perf_counter() - t0)
            copy_cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO updates VALUES (?, ?)", edits)
            conn.execute("COMMIT")
            stores.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            merged = []
            for rid, update in edits:
                doc: RawDoc[Any] = RawDoc()
                doc.apply_update(states[rid])
                doc.apply_update(update)
                merged.append((rid, update))
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO updates VALUES (?, ?)", merged)
            conn.execute("COMMIT")
            merges.append(time.perf_counter() - t0)
    per_record = sum(len(data) for _rid, data in ids_data) / n
    copy_case = timing_case(
        f"first copy of {n} records, persisted",
        "raw limit",
        copies,
        bytes_per_record=round(per_record),
        cpu_s=[round(c, 3) for c in copy_cpu],
        cpu_median_s=round(statistics.median(copy_cpu), 3),
    )
    return [
        *([] if sync_only else [copy_case]),
        timing_case(f"incremental sync, {changed} of {n} records changed", "raw limit", stores),
        timing_case(
            f"incremental sync, {changed} of {n} records changed, each applied to its document",
            "raw limit",
            merges,
        ),
    ]


async def latency_cases(work: Path, laptops: int, edits: int) -> list[dict[str, Any]]:
    """One client writes ``edits`` edits one at a time; ``laptops`` laptops receive each.

    caresync's receivers are real laptops (``Replica`` in live mode, each update
    committed to its own SQLite file, in WAL mode, before the laptop says it received
    it; synced to disk within ``live_durable_delay_s``, 1 s, as a laptop does); the
    peer's are ``Doc`` clients that apply each update in memory and write nothing.
    :data:`ROUNDS` rounds of the edits.
    """
    cases: list[dict[str, Any]] = []
    per_round = max(1, edits // ROUNDS)
    sdb = work / "cs-latency.db"
    await build_caresync_server(sdb, [])
    async with running("caresync", sdb) as server:
        writer = await RawLaptop.join(server.url)
        stamps: list[list[float]] = [[] for _ in range(laptops)]
        arrived, online = Counted(), Counted()
        stop = asyncio.Event()
        replicas: list[Replica] = []
        live: list[asyncio.Task[None]] = []
        for k in range(laptops):
            replica = await Replica.open(work / f"cs-live-{k}.db")
            await replica.enrol(server.url, username=USER, password=PASSWORD, organisation=ORG)

            def received(_ids: object, k: int = k) -> None:
                stamps[k].append(time.perf_counter())
                arrived(None)

            replica.on_received(received)
            replica.on_status(lambda s: online(None) if s is ReplicaState.ONLINE else None)
            live.append(asyncio.create_task(replica.stay_connected(stop=stop)))
            replicas.append(replica)
        await online.wait_for(laptops)
        prepared = EditMaker(writer.replica_id).make(per_round * ROUNDS - 1)
        rounds: list[tuple[list[float], list[float]]] = []
        for round_no in range(ROUNDS):
            samples: list[float] = []
            last: list[float] = []
            for n in range(round_no * per_round, (round_no + 1) * per_round):
                rid, update = prepared[n]
                counts = [len(s) for s in stamps]
                t0 = time.perf_counter()
                writer.protocol.push([(n + 1, rid, update)])
                await writer.flush()
                await arrived.wait_until(
                    lambda counts=counts: all(
                        len(s) > c for s, c in zip(stamps, counts, strict=True)
                    )
                )
                await writer.expect(PushAck)
                arrivals = [s[c] - t0 for s, c in zip(stamps, counts, strict=True)]
                samples.extend(arrivals)
                last.append(max(arrivals))
            rounds.append((samples, last))
        stop.set()
        async with asyncio.timeout(LIMIT_S):
            await asyncio.gather(*live)
        for replica in replicas:
            await replica.close()
        await writer.close()
        await server.stop()
    cases.append(
        latency_case(
            "caresync",
            laptops,
            rounds,
            receivers=(
                "Replica in live mode: each update committed (WAL), synced to disk within 1 s"
                " (live_durable_delay_s)"
            ),
        )
    )
    # the peer
    pdb = work / "peer-latency.db"
    await build_peer_server(pdb, [])
    async with running("peer", pdb) as server:
        joined = [await peer_join(server.port) for _ in range(laptops + 1)]
        writer_doc = joined[0][0]
        peer_stamps: list[list[float]] = [[] for _ in range(laptops)]
        arrived = Counted()

        def stamp(k: int) -> None:
            peer_stamps[k].append(time.perf_counter())
            arrived(None)

        for k, (doc, _p, _t) in enumerate(joined[1:]):
            doc.observe(lambda _e, k=k: stamp(k))
        records = writer_doc.get("records", type=Map)
        rounds = []
        peer_dropped = 0  # deliveries the room never made (its receivers got nothing)
        for round_no in range(ROUNDS):
            samples, last = [], []
            for n in range(round_no * per_round, (round_no + 1) * per_round):
                counts = [len(s) for s in peer_stamps]
                t0 = time.perf_counter()
                records[f"r{n}"] = "edit"
                await arrived.wait_until_or_quiet(
                    lambda counts=counts: all(
                        len(s) > c for s, c in zip(peer_stamps, counts, strict=True)
                    )
                )
                arrivals = [
                    s[c] - t0 for s, c in zip(peer_stamps, counts, strict=True) if len(s) > c
                ]
                # A delivery the room dropped never comes: it is counted, not timed
                # (each edit's counts are read afresh, so the next is timed right).
                peer_dropped += laptops - len(arrivals)
                samples.extend(arrivals)
                if len(arrivals) == laptops:
                    last.append(max(arrivals))
            rounds.append((samples, last))
        for _doc, _p, task in joined:
            await peer_leave(task)
        await server.stop()
    peer_case = latency_case(
        "peer", laptops, rounds, receivers="Doc applying each update in memory, nothing written"
    )
    # Not in its samples: a dropped delivery has no time (caresync's waits allow none).
    peer_case["dropped_deliveries"] = peer_dropped
    cases.append(peer_case)
    return cases


def latency_case(
    system: str, laptops: int, rounds: list[tuple[list[float], list[float]]], receivers: str
) -> dict[str, Any]:
    """Per round: the deliveries' median and p99, the last laptop's median and p99 (ms).

    Each figure is the median over rounds with its min and max; ``runs`` holds
    each round's p99 (what :func:`with_ratios` compares with the peer's).
    """

    def over_rounds(figure: Any) -> dict[str, float | None]:
        # A round whose every edit lost a delivery (the peer's, see Counted) has no
        # last laptop: it is left out of that figure.
        values = [figure(samples, last) * 1000 for samples, last in rounds if samples and last]
        if not values:  # every round lost deliveries: no figure (dropped_deliveries says so)
            return {"median": None, "min": None, "max": None}
        return {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }

    return {
        "case": f"latency of an edit reaching {laptops} connected laptops",
        "system": system,
        "receivers": receivers,
        "median_ms": over_rounds(lambda samples, _last: statistics.median(samples)),
        "p99_ms": over_rounds(lambda samples, _last: pct(samples, 0.99)),
        "last_laptop_median_ms": over_rounds(lambda _samples, last: statistics.median(last)),
        "last_laptop_p99_ms": over_rounds(lambda _samples, last: pct(last, 0.99)),
        # Round by round, None for one that lost every delivery (kept, so that
        # with_ratios pairs each round with the same round of the other side).
        "runs": [round(pct(samples, 0.99), 5) if samples else None for samples, _last in rounds],
        "samples": sum(len(samples) for samples, _last in rounds),
    }


async def pace(rate: float, seconds: float, on_tick: Any) -> None:
    """Call ``on_tick(count)`` every 10 ms with the edits due since the last tick."""
    start = time.perf_counter()
    made = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate) - made
        if due > 0:
            await on_tick(due)
            made += due
        await asyncio.sleep(0.01)  # load generation at a fixed rate, not a wait for an event


async def throughput_cases(
    work: Path, laptops: int, rate: float, seconds: float
) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    per_laptop = int(rate * seconds * 1.5) + 10
    sdb = work / "cs-throughput.db"
    await build_caresync_server(sdb, [])
    async with running("caresync", sdb) as server:
        clients = await raw_laptops(server.url, laptops)
        for client in clients:
            client.protocol.subscribe(0)
            await client.flush()
        made = [0] * laptops
        acked = [0] * laptops
        wake = [asyncio.Event() for _ in range(laptops)]
        prepared = [EditMaker(clients[i].replica_id).make(per_laptop) for i in range(laptops)]

        async def pusher(i: int, stop: asyncio.Event) -> None:
            client = clients[i]
            while not stop.is_set():
                if made[i] > acked[i]:
                    batch = [(seq + 1, *prepared[i][seq]) for seq in range(acked[i], made[i])]
                    client.protocol.push(batch)
                    ack = await client.expect(PushAck)
                    acked[i] = ack.up_to_local_seq
                else:
                    wake[i].clear()
                    await wake[i].wait()  # set by the writer when it makes an edit

        async def writer(i: int) -> None:
            async def tick(due: int) -> None:
                made[i] = min(per_laptop, made[i] + due)
                wake[i].set()

            await pace(rate, seconds, tick)

        stop = asyncio.Event()
        pushers = [asyncio.create_task(pusher(i, stop)) for i in range(laptops)]
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(laptops)))
        # Stop the server while the laptops are still pushing.
        acked_at_stop = list(acked)
        elapsed = time.perf_counter() - t0
        await server.stop()
        stop.set()
        for event in wake:
            event.set()
        for task in pushers:
            task.cancel()
        await asyncio.gather(*pushers, return_exceptions=True)
        for client in clients:
            await client.close()
    received = sum(len(c.received) for c in clients)
    with contextlib.closing(sqlite3.connect(sdb)) as conn:
        stored = {bytes(r[0]) for r in conn.execute("SELECT data FROM feed")}
    acked_total = sum(acked)
    lost = sum(
        1 for i in range(laptops) for seq in range(acked[i]) if prepared[i][seq][1] not in stored
    )
    cases.append(
        {
            "case": f"sustained edits/s, {laptops} laptops writing at once",
            "system": "caresync",
            "offered_per_s": round(rate * laptops),
            "acknowledged_per_s": round(sum(acked_at_stop) / elapsed),
            "persisted_per_s": round(sum(acked_at_stop) / elapsed),
            "delivered_live_per_s": round(received / elapsed),
            "made": sum(made),
            "acknowledged": acked_total,
            "acknowledged_then_lost_at_stop": lost,
            "unacknowledged_kept_in_outboxes": sum(made) - acked_total,
        }
    )
    # the peer
    pdb = work / "peer-throughput.db"
    await build_peer_server(pdb, [])
    async with running("peer", pdb) as server:
        joined = [await peer_join(server.port) for _ in range(laptops)]
        base_rows = peer_rows(pdb)
        got = [0] * laptops
        for k, (doc, _p, _t) in enumerate(joined):
            doc.observe(lambda _e, k=k: got.__setitem__(k, got[k] + 1))
        made = [0] * laptops

        async def peer_writer(i: int) -> None:
            records = joined[i][0].get("records", type=Map)

            async def tick(due: int) -> None:
                for _ in range(due):
                    made[i] += 1
                    records[f"l{i}-{made[i] % 50}"] = made[i]  # one update per edit

            await pace(rate, seconds, tick)

        t0 = time.perf_counter()
        await asyncio.gather(*(peer_writer(i) for i in range(laptops)))
        elapsed = time.perf_counter() - t0
        final = await server.stop()
        for _doc, _p, task in joined:
            await peer_leave(task)
    persisted = peer_rows(pdb) - base_rows
    own = sum(made)
    cases.append(
        {
            "case": f"sustained edits/s, {laptops} laptops writing at once",
            "system": "peer",
            "offered_per_s": round(rate * laptops),
            "merged_by_server_per_s": round(final["merged"] / elapsed),
            "persisted_per_s": round(persisted / elapsed),
            "delivered_live_per_s": round((sum(got) - own) / elapsed),
            "made": own,
            "merged_by_server": final["merged"],
            "persisted": persisted,
            "merged_then_lost_at_stop": final["merged"] - persisted,
        }
    )
    return cases


async def run(
    tiny: bool, only: str | None = None, rounds: int = ROUNDS, bare: bool = False
) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        sizes = [(20, 2), (50, 5)] if tiny else [(10_000, 100), (100_000, 1_000)]
        if only in ("first-copy", "noop", "incremental"):
            sizes = sizes[-1:]
        largest = max(n for n, _ in sizes)
        made = [checked_patient(i) for i in range(largest)]
        data = [(rid, update) for rid, update, _rows, _card in made]
        # What the server stored with each record when it was pushed: its rows and card.
        checks: dict[str, tuple[tuple[ConflictRow, ...], PersonCard]] | None = {
            rid: (rows, card) for rid, _update, rows, card in made
        }
        if bare:  # as before 6 December: a server that holds no cards, a laptop pairing none
            checks = None
        del made
        # The prepared records are the benchmark's, not the laptop's: frozen out of
        # the garbage collector, so that its full passes cost what the measured code
        # allocates (unfrozen, each pass walked them: ~25 ms in a 0.2 s sync).
        gc.collect()
        gc.freeze()
        cases: list[dict[str, Any]] = []
        copy_only = only == "first-copy"
        sync_only = only == "incremental"
        runs = 2 if tiny else rounds
        if only == "noop":
            n = sizes[-1][0]
            return await noop_cases(work, n, data[:n], runs, checks)
        for n, changed in sizes:
            cases.extend(
                await copy_cases(
                    work, n, changed, data[:n], runs, copy_only, checks=checks, sync_only=sync_only
                )
            )
            cases.extend(raw_limit_cases(work, n, changed, data[:n], runs, sync_only=sync_only))
        if copy_only or sync_only:
            return cases
        laptops = 3 if tiny else 50
        cases.extend(await latency_cases(work, laptops, 5 if tiny else 200))
        cases.extend(
            await throughput_cases(work, laptops, 20 if tiny else 100, 0.5 if tiny else 5.0)
        )
        return cases
    finally:
        gc.unfreeze()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sync")
    parser.add_argument("--tiny", action="store_true", help="every case once, tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help="where to write JSON results")
    parser.add_argument(
        "--only",
        choices=["first-copy", "noop", "incremental"],
        default=None,
        help="first-copy: only the first copy of the largest size: caresync (with each "
        "side's CPU time), the peer and the raw limit; written to sync_first_copy.json. "
        "noop: only caresync's sync with nothing to do at the largest size (each "
        "side's CPU time and fsyncs); written to sync_noop.json. "
        "incremental: only the incremental sync of the largest size, likewise (each "
        "sync's CPU time on each side); written to sync_incremental.json",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"rounds of the timed cases ({ROUNDS})"
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="the server's records without rows or person cards (the data of the runs "
        "before 6 December: nothing for the laptop to pair); results name end in _bare",
    )
    args = parser.parse_args(argv)
    name = "sync" if args.only is None else f"sync_{args.only.replace('-', '_')}"
    if args.bare:
        name += "_bare"
    if args.out is None and not args.tiny:
        args.out = RESULTS_DIR / f"{name}.json"
    cases = asyncio.run(run(args.tiny, args.only, max(1, args.rounds), args.bare))
    write_results(args.out, name, with_ratios(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
