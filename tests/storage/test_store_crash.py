"""Crash safety, for real: a child process working on a store is killed with SIGKILL.

Each round starts the child (``store_crash_child.py``) on the same file, reads
its report lines from a pipe, and kills it at a random line: often just after
it announced a big pulled batch or a compaction, so the kill lands inside a
transaction. Then the file is reopened and must hold every edit whose call had
returned, every pulled batch up to its committed checkpoint and none after it,
an outbox with every unacknowledged edit, and pass the store's own check.

``CARESYNC_CRASH_KILLS`` sets the number of kills (20 by default; a soak run
uses hundreds).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from store_helpers import revision_ids

from caresync.storage import SQLiteStore

CHILD = Path(__file__).with_name("store_crash_child.py")
KILLS = int(os.environ.get("CARESYNC_CRASH_KILLS", "20"))


@dataclass
class Expected:
    """What the reports so far promise about the file."""

    local: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq -> (record, revision)
    acked_up_to: int = 0
    ack_intended_up_to: int = 0  # a kill between the commit and its report may have acked these
    present: set[tuple[str, str]] = field(default_factory=set)  # (record, revision)
    absent: set[tuple[str, str]] = field(default_factory=set)
    feed: set[int] = field(default_factory=set)  # feed numbers a returned pull gave out
    compactions: int = 0


def run_child(db: Path, seed: int, run: int, kill_after: int) -> list[str]:
    """Start the child, read ``kill_after`` lines, SIGKILL it; return every whole line."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), str(seed), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    while len(lines) < kill_after:
        raw = proc.stdout.readline()
        if not raw:
            break
        lines.append(raw.decode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rest = proc.stdout.read().decode()
    errors = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the child died on its own:\n{errors}"
    lines.extend(rest.splitlines(keepends=True))
    return [line.rstrip("\n") for line in lines if line.endswith("\n")]


def take_reports(expected: Expected, lines: list[str]) -> dict[int, list[tuple[str, str]]]:
    """Fold a round's reports into ``expected``; returns pull intents by number."""
    intents: dict[int, list[tuple[str, str]]] = {}
    for line in lines:
        kind, *args = line.split(" ")
        if kind == "L":
            expected.local[int(args[0])] = (args[1], args[2])
        elif kind == "AI":
            expected.ack_intended_up_to = max(expected.ack_intended_up_to, int(args[0]))
        elif kind == "A":
            expected.acked_up_to = max(expected.acked_up_to, int(args[0]))
        elif kind == "P":
            intents[int(args[0])] = [tuple(a.split(":", 1)) for a in args[1:]]  # type: ignore[misc]
        elif kind == "PA" and args[1] != "-":
            expected.feed.update(seq for seq in map(int, args[1].split(",")) if seq)
        elif kind == "C":
            expected.compactions += 1
    return intents


async def verify(db: Path, expected: Expected, intents: dict[int, list[tuple[str, str]]]) -> None:
    async with SQLiteStore.open(db, create=False) as store:
        assert await store.check() == []
        checkpoint = int(await store.get_meta("pull") or 0)
        for n, revs in intents.items():
            (expected.present if n <= checkpoint else expected.absent).update(revs)
        for record_id, rev_id in expected.local.values():
            expected.present.add((record_id, rev_id))
        by_record: dict[str, set[str]] = {}
        for record_id in {r for r, _ in expected.present | expected.absent}:
            loaded = await store.load(record_id)
            by_record[record_id] = set() if loaded is None else revision_ids(loaded, record_id)
        lost = {(r, rev) for r, rev in expected.present if rev not in by_record[r]}
        assert not lost, f"{len(lost)} acknowledged edits were lost"
        half = {(r, rev) for r, rev in expected.absent if rev in by_record[r]}
        assert not half, f"{len(half)} edits of an uncommitted batch were stored"
        pending = {item.seq for item in await store.pending(100_000)}
        unacked = {seq for seq in expected.local if seq > expected.ack_intended_up_to}
        assert unacked <= pending, "an unacknowledged edit left the outbox"
        assert all(seq > expected.acked_up_to for seq in pending)
        feed = {item.seq for item in await store.feed_since(0, limit=1_000_000)}
        assert expected.feed <= feed, "a returned pull's feed entries are missing"


async def test_killed_mid_work_the_store_keeps_every_returned_edit(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    rng = random.Random(20240611)
    expected = Expected()
    for run in range(KILLS):
        lines = run_child(db, seed=7, run=run, kill_after=rng.randint(1, 80))
        intents = take_reports(expected, lines)
        await verify(db, expected, intents)
    assert expected.local, "the children never reported an edit"
    assert expected.present, "nothing was ever checked"
