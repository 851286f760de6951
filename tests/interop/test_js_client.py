"""A client written in JavaScript with the real ``yjs`` cannot harm the server or a laptop.

The issue's promise: a client speaking the documented protocol from another
language cannot crash the server, store a revision the schema forbids, delete
anything, or make another laptop lose an edit. ``interop/js/attack.mjs`` is that
client (written from the protocol, with ``yjs``, ``ws`` and ``@msgpack/msgpack``
from npm): it enrols as its own replica with its own account, pulls the victim
record, and tries each attack in its own push, printing the server's answer as
one JSON line per attempt.

Real parts: a server on 127.0.0.1 with a SQLite file, two Python laptops with
SQLite files, and ``node`` in a subprocess. Nothing sleeps: the test waits on the
subprocess (bounded) and on the laptops' syncs.

Skipped when ``node`` or ``interop/js/node_modules`` is missing (``scripts/bootstrap``
installs it when npm is there), unless ``CARESYNC_REQUIRE_NODE=1`` (CI): then it fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from caresync import Record, Replica, Revision, SyncServer
from caresync.records.clock import MAX_CLOCK_AHEAD_MS

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "interop" / "js"
ATTACK_SCRIPT = JS_DIR / "attack.mjs"
JS_PACKAGES = ("yjs", "ws", "@msgpack/msgpack")
NODE_LIMIT_S = 120.0
"""Upper bound for one run of the attacker; a passing run takes a few seconds."""

ORGANISATION = "clinic-a"
PASSWORD = "correct horse battery staple"
ATTACKER = "mallory"
ATTACKER_PASSWORD = "mallory's own password"
RECORD_ROOTS = ("revisions", "meta")

# Each hostile push, and a phrase of the server's reason for refusing it: each is
# refused for its own reason, not for a side effect of an earlier attempt.
HOSTILE_PUSHES = {
    "a_delete_victim_revision": "deletes entries",
    "b_overwrite_victim_revision": "origin",
    "c_bare_collection_path": "is a collection",
    "d_status_not_a_string": "expected str",
    "e_far_future_time": "ahead",
    "f_value_of_12_mib": "the limit is",
    "g_truncated": "update refused",
    "g_flipped_info_byte": "update refused",
    "g_flipped_delete_set": "update refused",
    "h_y_text_value": "nested shared type",
    "h_nested_y_map_value": "nested shared type",
}
LOGINS_AS_VICTIM = {
    "i_victim_replica_no_secret": "bad_credentials",
    "i_victim_replica_random_secret": "bad_credentials",
    "i_victim_replica_own_secret": "bad_credentials",
    "i_resume_made_up_token": "session_expired",
    "i_resume_made_up_token_own_replica": "session_expired",
}


def node_or_skip() -> str:
    """The ``node`` executable; skip (fail under CARESYNC_REQUIRE_NODE=1) if it cannot run."""
    node = shutil.which("node")
    reason: str | None = None
    if node is None:
        reason = "node is not on PATH: the JavaScript interop client cannot run"
    else:
        missing = [p for p in JS_PACKAGES if not (JS_DIR / "node_modules" / p).is_dir()]
        if missing:
            reason = (
                f"interop/js/node_modules lacks {', '.join(missing)}: run scripts/bootstrap "
                "(npm ci --prefix interop/js) to install the JavaScript interop client"
            )
    if reason is None:
        assert node is not None
        return node
    if os.environ.get("CARESYNC_REQUIRE_NODE") == "1":
        pytest.fail(f"{reason} (CARESYNC_REQUIRE_NODE=1 requires it)")
    pytest.skip(reason)


@pytest.fixture
def node() -> str:
    return node_or_skip()


@dataclass
class Clinic:
    """A server, the victim laptop (which wrote an allergy) and a second laptop."""

    server: SyncServer
    victim: Replica
    other: Replica
    record_id: str
    entry: str
    """The victim allergy's path prefix, ``allergies/<entry-id>``."""
    revision: Revision
    """The victim revision: the allergy's substance, as the victim laptop wrote it."""

    def job(self, tries: str) -> dict[str, Any]:
        return {
            "url": self.server.url,
            "organisation": ORGANISATION,
            "username": ATTACKER,
            "password": ATTACKER_PASSWORD,
            "victim_record_id": self.record_id,
            "victim_revision_id": self.revision.id,
            "tries": tries,
            "timeout_ms": 20_000,
        }

    async def copies(self) -> dict[str, Record]:
        """The victim record as the server and each laptop store it, rebuilt from the bytes."""
        out: dict[str, Record] = {}
        stores = {
            "server": self.server.store,
            "victim laptop": self.victim.store,
            "other laptop": self.other.store,
        }
        for name, store in stores.items():
            stored = await store.load(self.record_id)
            assert stored is not None, f"the {name} lost the record"
            out[name] = Record.from_update(self.record_id, stored, replica="inspector")
        return out


@pytest.fixture
async def clinic(tmp_path: Path) -> AsyncIterator[Clinic]:
    server = await SyncServer.open(tmp_path / "server.db")
    await server.add_user(ORGANISATION, "dr.a", PASSWORD)
    await server.add_user(ORGANISATION, "dr.b", PASSWORD)
    await server.add_user(ORGANISATION, ATTACKER, ATTACKER_PASSWORD)
    await server.serve("127.0.0.1", 0)
    laptops: list[Replica] = []
    try:
        for name, user in (("victim", "dr.a"), ("other", "dr.b")):
            laptop = await Replica.open(tmp_path / f"{name}.db")
            laptops.append(laptop)
            await laptop.enrol(
                server.url, username=user, password=PASSWORD, organisation=ORGANISATION
            )
        victim, other = laptops
        record_id = await victim.create_record()
        await victim.set(record_id, "name", "Awa Diop", author="dr.a")
        entry_id = await victim.add_entry(
            record_id, "allergies", {"substance": "penicillin"}, author="dr.a"
        )
        entry = f"allergies/{entry_id}"
        [revision] = (await victim.record(record_id)).get(f"{entry}/substance").heads
        await victim.sync()
        await other.sync()
        assert (await other.record(record_id)).value(f"{entry}/substance") == "penicillin"
        yield Clinic(server, victim, other, record_id, entry, revision)
    finally:
        for laptop in laptops:
            await laptop.close()
        await server.close()


async def run_attacker(node: str, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run attack.mjs on ``job``; its lines by attempt name (it must finish cleanly)."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(ATTACK_SCRIPT),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(NODE_LIMIT_S):
            out, err = await process.communicate(json.dumps(job).encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"attack.mjs exited {process.returncode}: {err.decode()}"
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    attempts: dict[str, dict[str, Any]] = {}
    for line in lines:
        assert line["attempt"] not in attempts, f"attempt {line['attempt']} printed twice"
        attempts[line["attempt"]] = line
    assert attempts.get("enrol", {}).get("outcome") == "ack", lines
    assert attempts.get("setup", {}).get("outcome") == "ack", lines
    return attempts


def shown(line: dict[str, Any]) -> str:
    """An attempt's line for an assertion message, without its bulky parts."""
    return json.dumps({k: v for k, v in line.items() if k != "update_hex"})[:2000]


async def test_a_js_client_cannot_crash_the_server_store_a_forbidden_revision_or_delete(
    node: str, clinic: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="caresync")
    server = clinic.server
    head = await server.store.feed_head()
    before = {
        name: {r.id for r in rec.revisions()} for name, rec in (await clinic.copies()).items()
    }
    assert len({frozenset(ids) for ids in before.values()}) == 1, before

    attempts = await run_attacker(node, clinic.job("abcdefghij"))
    attacker_replica = attempts["enrol"]["replica_id"]
    victim_replica = clinic.revision.replica
    assert attacker_replica != victim_replica

    # (a)-(h): each refused, not fatal, naming the record; the feed head did not move.
    for name, reason in HOSTILE_PUSHES.items():
        line = attempts.get(name)
        assert line is not None, f"attack.mjs printed no line for {name}"
        assert line["outcome"] == "error", shown(line)
        assert line["code"] == "bad_message", shown(line)
        assert line["fatal"] is False, shown(line)
        assert line["in_reply_to"] == 20, shown(line)
        assert clinic.record_id in line["message"], shown(line)
        assert "nothing stored" in line["message"], shown(line)
        assert reason in line["message"], shown(line)
        assert line["connection_open"] is True, shown(line)
        assert line["head_before"] == line["head_after"] == head, shown(line)

    # (i): logging in as the victim laptop without its secret, or with a made-up
    # token, is refused and the connection closed; an Enrol proposing the victim's id
    # gets another id.
    for name, code in LOGINS_AS_VICTIM.items():
        line = attempts[name]
        assert line["outcome"] == "error", shown(line)
        assert line["code"] == code, shown(line)
        assert line["fatal"] is True, shown(line)
        assert line["step"] == "login", shown(line)
        assert line["closed_after"] is True, shown(line)
        assert "push_as_victim" not in line, shown(line)
    enrolment = attempts["i_enrol_proposing_victim_id"]
    assert enrolment["outcome"] == "ack", shown(enrolment)
    assert enrolment["replica_id"] not in (victim_replica, attacker_replica), shown(enrolment)

    # (j): the honest revision, written as documented, is the one thing stored.
    honest = attempts["j_honest_revision"]
    assert honest["outcome"] == "ack", shown(honest)
    assert honest["up_to_local_seq"] == honest["local_seq"], shown(honest)
    assert honest["head_before"] == head, shown(honest)
    assert honest["head_after"] == head + 1, shown(honest)
    assert await server.store.feed_head() == head + 1
    fed = await server.store.feed_since(head, limit=10)
    assert [(item.record_id, item.update) for item in fed] == [
        (clinic.record_id, bytes.fromhex(honest["update_hex"]))
    ]

    # The server still serves: both laptops sync, and the honest entry reaches them.
    await clinic.victim.sync()
    await clinic.other.sync()
    honest_entry = honest["entry"]
    created_id, substance_id = honest["revision_ids"]
    for laptop in (clinic.victim, clinic.other):
        fields = await laptop.fields(clinic.record_id)
        assert fields[f"{honest_entry}/substance"].value == "latex"
        assert fields[f"{clinic.entry}/substance"].value == "penicillin"
        view = await laptop.record(clinic.record_id)
        [written] = view.get(f"{honest_entry}/substance").heads
        assert (written.id, written.author, written.replica) == (
            substance_id,
            ATTACKER,
            attacker_replica,
        )
        assert written.at.wall_ms == honest["wall_ms"]
        assert written.seen == {f"{honest_entry}/_created": (created_id,)}
        entries = {e.id: e.value("substance") for e in view.entries("allergies")}
        assert entries == {
            clinic.entry.split("/")[1]: "penicillin",
            honest_entry.split("/")[1]: "latex",
        }

    # Everywhere: the victim revision as written, the honest ones added, nothing else.
    expected_ids = before["server"] | {created_id, substance_id}
    latest_ms = time.time_ns() // 1_000_000 + MAX_CLOCK_AHEAD_MS
    for name, record in (await clinic.copies()).items():
        assert {r.id for r in record.revisions()} == expected_ids, name
        assert record.invalid_revision_ids == frozenset(), name
        kept = record.revision(clinic.revision.id)
        assert kept is not None, f"the {name} lost the victim revision"
        assert kept.as_dict() == clinic.revision.as_dict(), name
        assert record.value(f"{clinic.entry}/substance") == "penicillin", name
        for revision in record.revisions():
            assert 0 < revision.at.wall_ms <= latest_ms, (name, revision)
            assert revision.path.count("/") == 2 or "/" not in revision.path, (name, revision)
            assert revision.path != "allergies", (name, revision)
            if revision.path.endswith("/status"):
                assert isinstance(revision.value, str), (name, revision)
        assert record.value("name") == "Awa Diop", name

    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


async def test_a_push_as_another_laptops_yjs_client_cannot_make_it_lose_an_edit(
    node: str, clinic: Clinic
) -> None:
    """The attacker writes as the Yjs client of the victim laptop, from its next clock.

    The victim laptop still has the record open, so its next edit takes that same
    client and clock. Whatever the server does with the attacker's push, the
    victim's next edit must reach the other laptop.
    """
    attempts = await run_attacker(node, clinic.job("k"))
    spoof = attempts["k_victim_yjs_client"]

    later = await clinic.victim.set(
        clinic.record_id, f"{clinic.entry}/criticality", "high", author="dr.a"
    )
    pushed = await clinic.victim.sync()
    assert pushed.uploaded == 1
    assert (await clinic.victim.status()).pending == 0  # the server acknowledged it
    await clinic.other.sync()

    copies = await clinic.copies()
    missing = [name for name, record in copies.items() if record.revision(later.id) is None]
    assert not missing, (
        f"the victim laptop's edit {later.id}, acknowledged by the server, is missing on "
        f"{missing}, after the attacker pushed as its Yjs client: {shown(spoof)}"
    )
    fields = await clinic.other.fields(clinic.record_id)
    assert fields[f"{clinic.entry}/criticality"].value == "high"
    ids = {name: {r.id for r in record.revisions()} for name, record in copies.items()}
    assert ids["server"] == ids["victim laptop"] == ids["other laptop"], ids
