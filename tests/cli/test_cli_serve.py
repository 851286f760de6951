"""`caresync serve` as a process: TLS, clean shutdown on signals, and admin work between runs."""

from __future__ import annotations

import json
import logging
import signal
import urllib.request
from pathlib import Path

import trustme
from tests.cli.clitools import ServerProcess, files_at, inproc, sh

NEW_PASSWORD = "a brand new passphrase"


def test_serve_over_tls_and_stop_on_sigint(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, trusted = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(trusted))
    db = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=db).ok()

    server = ServerProcess(
        db, "--tls-cert", str(cert), "--tls-key", str(key), "--login-sync-delay", "0.5"
    )
    try:
        assert server.url.startswith("wss://127.0.0.1:")
        laptop = tmp_path / "laptop.db"
        enrol = "enrol --db {db} --server {url} --org clinic --username dr.a"
        untrusted = inproc(enrol, db=laptop, url=server.url)
        assert untrusted.code == 6  # the certificate is not trusted: no connection
        assert "certificate" in untrusted.error_line().lower()
        assert files_at(laptop) == []
        sh(enrol + " --cafile {ca} --json", db=laptop, url=server.url, ca=trusted).ok()
        inproc("record new --db {db}", db=laptop).ok()
        synced = inproc("sync --db {db} --cafile {ca} --json", db=laptop, ca=trusted).ok()
        assert synced.json()["uploaded"] == 1
    finally:
        code, err = server.stop(signal.SIGINT)
    assert code == 0, err
    assert "caresync server stopped" in err
    assert "Traceback" not in err
    # The database was closed cleanly: a writer can open it now.
    listed = inproc("replicas --db {db} --json", db=db).ok().json()
    assert len(listed["replicas"]) == 1
    inproc("user passwd --db {db} --org clinic --username dr.a", db=db).ok()


def test_serve_refusals(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    missing = tmp_path / "missing.pem"
    bad_tls = inproc("serve --db {db} --tls-cert {f} --tls-key {f}", db=db, f=missing)
    assert bad_tls.code == 2
    assert "cannot load" in bad_tls.error_line()
    assert files_at(db) == []
    for bad in ("-1", "61", "soon"):
        delay = inproc("serve --db {db} --login-sync-delay {d}", db=db, d=bad)
        assert delay.code == 2
        assert "login sync delay" in delay.error_line() or "seconds" in delay.error_line()
    assert files_at(db) == []
    server = ServerProcess(db)
    try:
        taken = sh("serve --db {db} --port {port}", db=tmp_path / "second.db", port=server.port)
        assert taken.code == 6
        assert "cannot listen" in taken.error_line()
        twice = sh("serve --db {db} --port 0", db=db)
        assert twice.code == 4
        assert "in use" in twice.error_line()
    finally:
        code, err = server.stop()
    assert code == 0, err


def test_revoked_laptop_locks_and_keeps_its_work(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=db).ok()
    laptop = tmp_path / "laptop.db"
    server = ServerProcess(db)
    try:
        enrol = "enrol --db {db} --server {url} --org clinic --username dr.a"
        inproc(enrol, db=laptop, url=server.url).ok()
        me = inproc("status --db {db} --json", db=laptop).ok().json()["replica_id"]
        inproc("record new --db {db}", db=laptop).ok()
    finally:
        code, _ = server.stop()
    assert code == 0

    # Between runs, with the database to itself: revoke the laptop, change the password.
    revoked = sh("replica revoke --db {db} {r} --json", db=db, r=me).ok().json()
    assert revoked == {"replica_id": me, "revoked": True, "already": False}
    assert inproc("replica revoke --db {db} {r} --json", db=db, r=me).ok().json()["already"]
    sh("user passwd --db {db} --org clinic --username dr.a", db=db, password=NEW_PASSWORD).ok()

    server = ServerProcess(db)
    try:
        # Restarted on another port: the same server, reached at its new URL.
        locked = sh("sync --db {db} --server {url} --json", db=laptop, url=server.url)
        assert locked.code == 5
        assert "revoked" in locked.error_line()
        mine = inproc("status --db {db} --json", db=laptop).ok().json()
        assert mine["state"] == "locked"
        assert mine["pending"] == 1  # its unsynced work is kept...
        kept = inproc("export --db {db} --out {f} --json", db=laptop, f=tmp_path / "kept.jsonl")
        assert kept.ok().json()["exported"] == 1  # ...and can be taken away
        refused_again = inproc("sync --db {db} --server {url}", db=laptop, url=server.url)
        assert refused_again.code == 5

        other = tmp_path / "other.db"
        old_password = inproc(enrol, db=other, url=server.url)
        assert old_password.code == 5
        assert files_at(other) == []
        inproc(enrol, db=other, url=server.url, password=NEW_PASSWORD).ok()
        listed = inproc("replicas --db {db} --json", db=db).ok().json()
        rows = {row["replica_id"]: row for row in listed["replicas"]}
        assert rows[me]["revoked"] is True
        assert rows[me]["stale"] is False
    finally:
        code, err = server.stop()
    assert code == 0, err


def test_serve_logs_json_lines_and_answers_health_checks(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    inproc("user add --db {db} --org clinic --username dr.a", db=db).ok()
    server = ServerProcess(db, "--log-format", "json")
    try:
        http_url = server.url.replace("ws://", "http://")
        with urllib.request.urlopen(f"{http_url}/healthz", timeout=10) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        laptop = tmp_path / "laptop.db"
        enrol = "enrol --db {db} --server {url} --org clinic --username dr.a --device-name desk-7"
        inproc(enrol, db=laptop, url=server.url).ok()
        wrong = inproc(enrol, db=tmp_path / "other.db", url=server.url, password="Tr0ub4dor-guess")
        assert wrong.code != 0
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as answer:
            exposed = answer.read().decode()
        assert "caresync_enrolments_total 1.0" in exposed
        assert 'caresync_logins_total{outcome="failed"} 1.0' in exposed
    finally:
        code, err = server.stop()
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line JSON
    by_event = {line.get("event"): line for line in lines}
    enrolled = by_event["enrolment"]
    assert enrolled["device_name"] == "desk-7"
    assert enrolled["user"] == "dr.a"
    assert enrolled["level"] == "info"
    assert by_event["login"]["organisation"] == "clinic"
    assert by_event["first_copy"]["final"] is True
    assert by_event["login_failed"]["level"] == "warning"
    assert "Tr0ub4dor-guess" not in err  # never a password
    assert {"time", "logger", "message"} <= set(enrolled)


def test_serve_logging_covers_websockets_warnings_and_is_put_back() -> None:
    from caresync.cli.serve import _configure_logging
    from caresync.observe import JsonLogFormatter

    ours, library = logging.getLogger("caresync"), logging.getLogger("websockets")
    before = [(list(lg.handlers), lg.level, lg.propagate) for lg in (ours, library)]
    restore = _configure_logging("json", "debug")
    try:
        [handler] = library.handlers
        assert ours.handlers == [handler]
        assert isinstance(handler.formatter, JsonLogFormatter)
        assert (ours.level, library.level) == (logging.DEBUG, logging.WARNING)
    finally:
        restore()
    assert [(list(lg.handlers), lg.level, lg.propagate) for lg in (ours, library)] == before
