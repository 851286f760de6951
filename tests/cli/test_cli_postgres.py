"""The server-side commands on a PostgreSQL database: `user add` makes it, `serve` serves
it to laptops, and `status`, `record show`, `conflicts list`, `replicas` read it while
it runs; `backup` says that pg_dump backs it up. Needs PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.clitools import ServerProcess, inproc, run_main, sh
from tests.postgres import fresh_schema_sync


@pytest.fixture(scope="module")
def served(postgres_database: str) -> Iterator[tuple[str, ServerProcess]]:
    """A schema of this module's own, with accounts, served by `caresync serve`."""
    with fresh_schema_sync(postgres_database) as url:
        for org, user in (("clinic-a", "dr.a"), ("clinic-a", "dr.b")):
            made = run_main("user", "add", "--db", url, "--org", org, "--username", user, "--json")
            assert made.code == 0, made.stderr
        server = ServerProcess(url)  # type: ignore[arg-type]  # a URL where a path goes
        try:
            yield url, server
        finally:
            code, err = server.stop()
            assert code == 0, err


def enrol(tmp_path: Path, server: ServerProcess, name: str, user: str) -> Path:
    laptop = tmp_path / f"{name}.db"
    enrol_line = "enrol --db {db} --server {url} --org clinic-a --username {user} --json"
    inproc(enrol_line, db=laptop, url=server.url, user=user).ok()
    return laptop


def test_laptops_sync_through_a_postgres_server_and_its_commands_read_it(
    served: tuple[str, ServerProcess], tmp_path: Path
) -> None:
    url, server = served
    a, b = enrol(tmp_path, server, "a", "dr.a"), enrol(tmp_path, server, "b", "dr.b")
    record_id = inproc("record new --db {db} --json", db=a).ok().json()["record_id"]
    inproc("sync --db {db}", db=a).ok()
    inproc("sync --db {db}", db=b).ok()
    inproc("record set --db {db} {r} weightKg 71.5", db=a, r=record_id).ok()
    inproc("record set --db {db} {r} weightKg 75", db=b, r=record_id).ok()
    for laptop in (a, b, a):
        inproc("sync --db {db}", db=laptop).ok()

    on_a = inproc("conflicts list --db {db} --json", db=a).ok().json()
    on_server = sh("conflicts list --db {db} --json", db=url).ok().json()
    assert on_a["count"] == on_server["count"] == 1
    assert on_a["conflicts"][0]["id"] == on_server["conflicts"][0]["id"]

    shown = sh("record show --db {db} {r} --json", db=url, r=record_id).ok().json()
    assert len(shown["conflicts"]) == 1

    status = sh("status --db {db} --json", db=url).ok().json()
    assert status["role"] == "server"
    assert status["pending"] == 0
    assert status["records"] == 1
    assert status["replicas"] == 2
    assert status["server_id"] == inproc("status --db {db} --json", db=a).ok().json()["server_id"]

    listed = sh("replicas --db {db} --json", db=url).ok().json()
    assert len(listed["replicas"]) == 2
    records = inproc("record list --db {db} --json", db=url).ok().json()
    assert records["count"] == 1
    assert records["conflicts_open"] == 1
    key = inproc("server-key --db {db} --json", db=url).ok().json()
    assert key["server_id"] == status["server_id"]
    assert inproc("audit verify --db {db} --json", db=url).ok().json()["ok"] is True
    again = run_main(
        "user", "add", "--db", url, "--org", "clinic-a", "--username", "dr.a", "--exist-ok"
    )
    assert again.code == 0, again.stderr


def test_backup_of_a_postgres_server_is_pg_dumps_job(
    served: tuple[str, ServerProcess], tmp_path: Path
) -> None:
    url, _server = served
    result = inproc("backup --db {db} --out {out}", db=url, out=tmp_path / "copy.db")
    assert result.code == 2
    assert "pg_dump" in result.error_line()
    assert not (tmp_path / "copy.db").exists()


def test_a_url_with_no_server_behind_it_is_a_database_error(tmp_path: Path) -> None:
    result = inproc("status --db {db}", db="postgresql://caresync:hunter2@127.0.0.1:9/none")
    assert result.code == 4
    assert "check that the server runs" in result.error_line()
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        "sync --db {db}",
        "record new --db {db}",
        "enrol --db {db} --server ws://127.0.0.1:9 --org clinic-a --username dr.a",
    ],
)
def test_a_laptop_command_refuses_a_postgres_url(command: str) -> None:
    result = inproc(command, db="postgresql://caresync:hunter2@127.0.0.1:9/none")
    assert result.code == 4
    assert "only a server keeps" in result.error_line()
    assert "hunter2" not in result.stderr


def test_serve_encrypt_is_for_an_sqlite_file() -> None:
    result = inproc("serve --db {db} --port 0 --encrypt", db="postgresql://127.0.0.1:9/none")
    assert result.code == 2
    assert "PostgreSQL database is encrypted at rest by its server" in result.error_line()
