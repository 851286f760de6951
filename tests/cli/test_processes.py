"""Issue 4's run with separate processes: a server and two laptops, each its own SQLite file.

Every change is made by a `caresync` subprocess: the server is `caresync
serve`, each laptop is driven by `caresync enrol/record/sync/conflicts`.
Nothing is shared but the websocket on 127.0.0.1 and the files each process
owns. The checks read the files from this process, through the same command
line (`inproc`, read-only), to keep the run short.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from tests.cli.clitools import ServerProcess, inproc, sh

AUTHORS = {"a": "dr.a", "b": "dr.b"}


def status(db: Path) -> dict[str, Any]:
    result = inproc("status --db {db} --json", db=db).ok().json()
    assert isinstance(result, dict)
    return result


class Site:
    """The server process and the two laptop files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server_db = root / "server.db"
        self.laptops = {name: root / f"laptop-{name}.db" for name in AUTHORS}
        for user in AUTHORS.values():
            sh("user add --db {db} --org clinic --username {u}", db=self.server_db, u=user).ok()
        self.server = ServerProcess(self.server_db)

    def run(self, template: str, laptop: str, **values: object) -> dict[str, Any]:
        """A command on one laptop's database, with --json; its result."""
        result = sh(template + " --json", db=self.laptops[laptop], **values).ok().json()
        assert isinstance(result, dict)
        return result

    def sync(self, laptop: str) -> dict[str, Any]:
        return self.run("sync --db {db} --server {url}", laptop, url=self.server.url)

    def show(self, db: Path, record_id: str) -> dict[str, Any]:
        shown = inproc("record show --db {db} {r} --history --json", db=db, r=record_id)
        shown = shown.ok().json()
        assert isinstance(shown, dict)
        return shown

    def conflicts(self, db: Path) -> list[dict[str, Any]]:
        listed = inproc("conflicts list --db {db} --json", db=db).ok().json()["conflicts"]
        assert isinstance(listed, list)
        return listed

    def every_db(self) -> list[Path]:
        return [*self.laptops.values(), self.server_db]


@pytest.fixture
def site(tmp_path: Path) -> Any:
    made = Site(tmp_path)
    try:
        yield made
    finally:
        made.server.kill()


def test_two_laptop_processes_see_one_conflict_resolve_it_and_converge(site: Site) -> None:
    for name, user in AUTHORS.items():
        enrolled = site.run(
            "enrol --db {db} --server {url} --org clinic --username {u}",
            name,
            url=site.server.url,
            u=user,
        )
        assert enrolled["org"] == "clinic"
    record_id = site.run("record new --db {db}", "a")["record_id"]
    site.run("record set --db {db} {r} name Awa", "a", r=record_id)
    site.sync("a")
    assert site.sync("b")["downloaded"] >= 2

    # Offline, both laptops change the date of birth.
    site.run("record set --db {db} {r} birthDate 1988-04-21", "a", r=record_id)
    site.run("record set --db {db} {r} birthDate 1988-12-04", "b", r=record_id)
    assert site.sync("a")["conflicts_open"] == 0  # the server has not seen b's value yet
    assert site.sync("b")["conflicts_open"] == 1
    assert site.sync("a")["conflicts_open"] == 1

    # The same conflict (same id, same candidates in the same order) on both laptops and
    # on the server's database, read while the server runs.
    seen = [site.conflicts(db) for db in site.every_db()]
    assert seen[0] == seen[1] == seen[2]
    assert len(seen[0]) == 1
    conflict = seen[0][0]
    assert conflict["record_id"] == record_id
    assert conflict["path"] == "birthDate"
    assert conflict["kind"] == "field"
    candidates = conflict["candidates"]
    assert {(c["value"], c["author"]) for c in candidates} == {
        ("1988-04-21", "dr.a"),
        ("1988-12-04", "dr.b"),
    }
    for db in site.every_db():
        field = site.show(db, record_id)["fields"]["birthDate"]
        assert field == {"conflict": conflict["id"], "candidates": candidates}

    # Resolve on b by position in the list: candidate 1, whatever it is.
    chosen = candidates[1]["value"]
    resolved = site.run("conflicts resolve --db {db} {c} --choose 1", "b", c=conflict["id"])
    assert resolved["value"] == chosen
    site.sync("b")
    site.sync("a")
    shows = [site.show(db, record_id) for db in site.every_db()]
    for shown in shows:
        assert shown == shows[0]  # fields, conflicts and history identical everywhere
        assert shown["fields"] == {"birthDate": chosen, "name": "Awa"}
        assert shown["conflicts"] == []
        values = [rev["value"] for rev in shown["history"]["birthDate"]]
        assert sorted(values[:2]) == ["1988-04-21", "1988-12-04"]  # nothing lost
        assert values[2:] == [chosen]
    for db in site.every_db():
        assert site.conflicts(db) == []


def test_server_killed_and_restarted_while_a_laptop_holds_unsynced_edits(site: Site) -> None:
    for name, user in AUTHORS.items():
        site.run(
            "enrol --db {db} --server {url} --org clinic --username {u}",
            name,
            url=site.server.url,
            u=user,
        )
    record_id = site.run("record new --db {db}", "a")["record_id"]
    site.sync("a")
    site.sync("b")
    # b's edit is acknowledged, so committed on the server, just before the server dies.
    site.run("record set --db {db} {r} allergyNote latex", "b", r=record_id)
    assert site.sync("b")["uploaded"] == 1
    # a works offline: three edits, none of them synced.
    edits = {"weightKg": "71.5", "heightCm": "168", "bloodType": "O+"}
    for path, value in edits.items():
        site.run("record set --db {db} {r} {p} {v}", "a", r=record_id, p=path, v=value)
    assert status(site.laptops["a"])["pending"] == 3
    feed_before = inproc("status --db {db} --json", db=site.server_db).ok().json()["feed_head"]

    site.server.proc.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint
    site.server.kill()
    down = sh("sync --db {db} --server {url}", db=site.laptops["a"], url=site.server.url)
    assert down.code == 6
    assert "cannot connect" in down.error_line()
    assert status(site.laptops["a"])["pending"] == 3  # kept for the next try

    site.server = ServerProcess(site.server_db)  # the same database, a new port
    first = site.sync("a")
    assert first["uploaded"] == 3
    assert first["pending"] == 0
    assert site.sync("b")["downloaded"] >= 3
    again = site.sync("a")
    assert again["uploaded"] == 0  # nothing left to send twice

    # Nothing lost: b's acknowledged edit survived the kill; a's three arrived once.
    expected = {"allergyNote": "latex", "weightKg": 71.5, "heightCm": 168, "bloodType": "O+"}
    shows = [site.show(db, record_id) for db in site.every_db()]
    for shown in shows:
        assert shown == shows[0]
        assert shown["fields"] == expected
        for path in expected:
            assert len(shown["history"][path]) == 1, path  # written once, stored once
    server = status(site.server_db)
    assert server["feed_head"] == feed_before + 3  # each pushed update in the feed once
    assert server["records"] == 1
