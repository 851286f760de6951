"""Administrators from the command line: `user add --admin`, `user admin --grant/--revoke`,
and `serve --stale-hours`, with the page itself asked over HTTP from a served process."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

from tests.cli.clitools import PASSWORD, ServerProcess, inproc

from caresync.cli.errors import ExitCode


def _status(url: str, user_id: str) -> tuple[int, str]:
    request = urllib.request.Request(url)
    token = base64.b64encode(f"{user_id}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_user_add_admin_and_user_admin_grant_and_revoke(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    added = inproc("user add --db {db} --org clinic --username boss --admin --json", db=db)
    assert added.ok().json()["admin"] is True
    inproc("user add --db {db} --org clinic --username dr.a", db=db).ok()
    granted = inproc("user admin --db {db} --org clinic --username dr.a --grant --json", db=db)
    assert granted.ok().json() == {"org": "clinic", "username": "dr.a", "admin": True}
    revoked = inproc("user admin --db {db} --org clinic --username boss --revoke --json", db=db)
    assert revoked.ok().json()["admin"] is False
    unknown = inproc("user admin --db {db} --org clinic --username nobody --grant", db=db)
    assert unknown.code == ExitCode.NOT_FOUND
    neither = inproc("user admin --db {db} --org clinic --username dr.a", db=db)
    assert neither.code != 0

    server = ServerProcess(db, "--stale-hours", "48")
    try:
        base = server.url.replace("ws://", "http://")
        status, raw = _status(base + "/admin/state.json", "dr.a@clinic")
        assert status == 200
        assert json.loads(raw)["stale_after_ms"] == 48 * 3_600_000
        # Revoked while the server runs: refused at the next request.
        inproc("user admin --db {db} --org clinic --username dr.a --revoke", db=db).ok()
        assert _status(base + "/admin", "dr.a@clinic")[0] == 403
        assert _status(base + "/admin", "boss@clinic")[0] == 403
    finally:
        server.stop()
    bad = inproc("serve --db {db} --stale-hours 0", db=db)
    assert bad.code != 0
