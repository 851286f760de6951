"""The trust-nothing commands and flags, through the command line against a real server.

`server-key` and `enrol --server-key` (pinning checked on the first connection),
`--insecure` for plain ws:// beyond this machine, `user disable`/`enable` and
`user passwd` ending sessions, what `status` and `conflicts list` show of a
laptop's pinned key and of updates it kept aside, and `serve --max-clock-ahead`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.cli.clitools import PASSWORD, ServerProcess, inproc, sh
from tests.cli.conftest import Clinic

OTHER_KEY = "SHA256:" + "A" * 43  # a well-formed fingerprint of some other key


def test_server_key_prints_the_fingerprint_laptops_pin(clinic: Clinic) -> None:
    shown = sh("server-key --db {db} --json", db=clinic.db).ok().json()
    assert shown["server_key"].startswith("SHA256:")
    text = inproc("server-key --db {db}", db=clinic.db).ok()
    assert text.stdout.strip() == shown["server_key"]
    laptop = clinic.dir / "pinned.db"
    enrolled = inproc(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a --server-key {key} --json",
        db=laptop,
        url=clinic.url,
        key=shown["server_key"],
    ).ok()
    assert enrolled.json()["server_key"] == shown["server_key"]
    status = inproc("status --db {db} --json", db=laptop).ok().json()
    assert status["server_key"] == shown["server_key"]
    assert status["quarantined"] == 0
    server = inproc("status --db {db} --json", db=clinic.db).ok().json()
    assert server["server_key"] == shown["server_key"]


def test_enrol_with_another_key_is_refused_and_makes_nothing(clinic: Clinic) -> None:
    laptop = clinic.dir / "wrong-key.db"
    result = inproc(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a --server-key {key}",
        db=laptop,
        url=clinic.url,
        key=OTHER_KEY,
    )
    assert result.code == 5, result.stderr  # refused
    assert "not the expected" in result.error_line()
    assert not laptop.exists()
    bad = inproc(
        "enrol --db {db} --server {url} --org clinic-a --username dr.a --server-key nonsense",
        db=laptop,
        url=clinic.url,
    )
    assert bad.code == 2
    assert "fingerprint" in bad.error_line()
    assert not laptop.exists()


def test_plain_ws_beyond_this_machine_needs_insecure(clinic: Clinic) -> None:
    laptop = clinic.dir / "far.db"
    result = inproc(
        "enrol --db {db} --server ws://192.0.2.10:8765 --org clinic-a --username dr.a",
        db=laptop,
    )
    assert result.code == 5, result.stderr
    assert "wss://" in result.error_line()
    assert "--insecure" in result.error_line()
    assert not laptop.exists()
    # With --insecure the URL is allowed (nothing listens there: the connection fails).
    allowed = inproc(
        "enrol --db {db} --server ws://127.0.0.1:1 --org clinic-a --username dr.a --insecure",
        db=laptop,
    )
    assert allowed.code == 6
    assert "cannot connect" in allowed.error_line()


def test_a_disabled_account_cannot_log_in_until_enabled(clinic: Clinic) -> None:
    laptop = clinic.enrol("disabled-user", username="dr.b")
    sh("user disable --db {db} --org clinic-a --username dr.b --json", db=clinic.db).ok()
    refused = inproc("sync --db {db} --json", db=laptop)
    assert refused.code != 0
    assert "log in again" in refused.error_line()  # its session ended
    again = inproc("sync --db {db} --username dr.b --json", db=laptop)
    assert again.code != 0
    assert "disabled" in again.error_line()
    inproc("user enable --db {db} --org clinic-a --username dr.b", db=clinic.db).ok()
    inproc("sync --db {db} --username dr.b --json", db=laptop).ok()
    missing = inproc("user disable --db {db} --org clinic-a --username nobody", db=clinic.db)
    assert missing.code == 3


def test_a_new_password_ends_the_session(clinic: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    laptop = clinic.enrol("new-password", username="dr.b")
    inproc("sync --db {db} --json", db=laptop).ok()
    inproc(
        "user passwd --db {db} --org clinic-a --username dr.b", db=clinic.db, password="changed"
    ).ok()
    assert inproc("sync --db {db} --json", db=laptop).code != 0
    # The laptop's database still opens with the old password, this once (--unlock).
    monkeypatch.setenv("CARESYNC_UNLOCK_PASSWORD", PASSWORD)
    login = "sync --db {db} --username dr.b --unlock --json"
    inproc(login, db=laptop, password="changed").ok()


def test_conflicts_list_has_a_place_for_what_a_laptop_kept_aside(clinic: Clinic) -> None:
    laptop = clinic.enrol("lists")
    listed = inproc("conflicts list --db {db} --json", db=laptop).ok().json()
    assert listed["quarantined"] == []
    on_server = inproc("conflicts list --db {db} --json", db=clinic.db).ok().json()
    assert on_server["quarantined"] == []


def test_serve_takes_a_clock_bound(tmp_path: Path) -> None:
    db = tmp_path / "clock.db"
    inproc("user add --db {db} --org c --username dr.a", db=db).ok()
    server = ServerProcess(db, "--max-clock-ahead", "48")
    code, err = server.stop()
    assert code == 0, err
    bad = inproc("serve --db {db} --max-clock-ahead -1", db=db)
    assert bad.code == 2
    assert "hours" in bad.error_line()


def test_a_terminal_escape_from_another_laptop_is_shown_escaped(clinic: Clinic) -> None:
    """A value synced from a peer never acts on the terminal of whoever reads it."""
    laptop = clinic.enrol("escapes")
    record = inproc("record new --db {db} --json", db=laptop).ok().json()
    hostile = '"\\u001b[2J\\u202eevil"'  # JSON: clear the screen, then a bidi override
    inproc(
        "record set --db {db} {rid} name {value}",
        db=laptop,
        rid=record["record_id"],
        value=hostile,
    ).ok()
    shown = inproc("record show --db {db} {rid} --history", db=laptop, rid=record["record_id"])
    assert "\x1b" not in shown.ok().stdout
    assert "\u202e" not in shown.stdout
    assert "\\x1b[2J" in shown.stdout
