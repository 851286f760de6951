"""Fixtures of the CLI tests: one clinic server process per test module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.cli.clitools import ServerProcess, cli, run_main


@dataclass
class Clinic:
    """A `caresync serve` process with accounts, and a directory for laptops."""

    server: ServerProcess
    dir: Path
    laptops: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def db(self) -> Path:
        return self.server.db

    def enrol(
        self, name: str, *, username: str = "dr.a", org: str = "clinic-a", encrypted: bool = False
    ) -> Path:
        """A laptop database enrolled through the CLI (in this process: `enrol` has its own
        subprocess tests).

        Plain unless ``encrypted``: an encrypted laptop costs an argon2id derivation at
        every command (a tenth of a second or more each), which tests of decisions,
        duplicates or counts do not need; the encryption tests ask for it, and the
        documents' shell sessions run encrypted, as a reader's would.
        """
        path = self.dir / f"{name}.db"
        run_main(
            "enrol",
            "--db",
            path,
            "--server",
            self.url,
            "--org",
            org,
            "--username",
            username,
            "--json",
            *(() if encrypted else ("--no-encrypt",)),
        ).ok()
        self.laptops[name] = path
        return path


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    """A server with dr.a and dr.b in clinic-a and dr.c in clinic-b, listening on 127.0.0.1."""
    directory = tmp_path_factory.mktemp("clinic")
    db = directory / "server.db"
    cli("user", "add", "--db", db, "--org", "clinic-a", "--username", "dr.a").ok()
    for org, user in (("clinic-a", "dr.b"), ("clinic-b", "dr.c")):
        run_main("user", "add", "--db", db, "--org", org, "--username", user).ok()
    server = ServerProcess(db)
    try:
        yield Clinic(server, directory)
    finally:
        code, err = server.stop()
        assert code == 0, err
