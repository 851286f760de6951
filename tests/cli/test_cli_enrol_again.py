"""`caresync enrol --again`: a laptop enrolled after the backup its server was restored
from, put back by the command line. Real `caresync serve` processes on 127.0.0.1, a
`caresync backup` copy put back with the server stopped."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cli.clitools import ServerProcess, run_main

from caresync.cli.errors import ExitCode


def _laptop(path: Path, url: str, username: str) -> None:
    run_main(
        "enrol", "--db", path, "--server", url, "--org", "clinic-a", "--username", username,
        "--no-encrypt", "--json",
    ).ok()  # fmt: skip


def test_enrol_again_brings_back_a_laptop_the_restored_server_forgot(tmp_path: Path) -> None:
    db, saved = tmp_path / "server.db", tmp_path / "backup.db"
    for user in ("dr.a", "dr.b"):
        run_main("user", "add", "--db", db, "--org", "clinic-a", "--username", user).ok()
    server = ServerProcess(db)
    try:
        old, late = tmp_path / "old.db", tmp_path / "late.db"
        _laptop(old, server.url, "dr.a")
        run_main("backup", "--db", db, "--out", saved, "--json").ok()
        _laptop(late, server.url, "dr.b")
        record_id = run_main("record", "new", "--db", late, "--json").ok().json()["record_id"]
        run_main("record", "set", "--db", late, record_id, "name", "Awa Diop").ok()
        assert run_main("sync", "--db", late, "--json").ok().json()["pending"] == 0
        code, err = server.stop()
        assert code == 0, err

        for side in ("-wal", "-shm"):
            Path(f"{db}{side}").unlink(missing_ok=True)
        shutil.copyfile(saved, db)
        server = ServerProcess(db)
        refused = run_main("sync", "--db", late, "--server", server.url)
        assert refused.code == ExitCode.REFUSED
        assert "not enrolled" in refused.error_line()
        again = run_main(
            "enrol", "--db", late, "--server", server.url, "--org", "clinic-a",
            "--username", "dr.b", "--again", "--json",
        ).ok().json()  # fmt: skip
        assert again["server_went_back"] is True
        assert (again["already"], again["pending"]) == (True, 0)
        run_main("sync", "--db", old, "--server", server.url).ok()
        shown = run_main("record", "show", "--db", old, record_id, "--json").ok().json()
        assert "Awa Diop" in str(shown)
        fresh = run_main(
            "enrol", "--db", tmp_path / "fresh.db", "--server", server.url, "--org",
            "clinic-a", "--username", "dr.a", "--again",
        )  # fmt: skip
        assert fresh.code == ExitCode.USAGE
        assert "without --again" in fresh.error_line()
        assert not (tmp_path / "fresh.db").exists()
    finally:
        code, err = server.stop()
        assert code == 0, err
