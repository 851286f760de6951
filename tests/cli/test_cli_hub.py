"""`caresync hub` and `caresync serve --hub` as real processes, with a test FHIR hub.

The server is killed with SIGKILL while the hub holds its PUT: the outbox row,
committed with the push, survives, and the restarted server sends the same
summary again. Laptop and server show where the summary stands.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from tests.cli.clitools import ServerProcess, cli, inproc, run_main
from tests.hub.fhirhub import FhirHub

from caresync.hub.summary import summary_id


def hub_status(db: Path) -> list[dict[str, object]]:
    data = inproc("hub status --db {db} --json", db=db).ok().json()
    summaries = data["summaries"]
    assert isinstance(summaries, list)
    return summaries


def test_a_summary_marked_offline_survives_a_sigkill_mid_send_and_lands_once(
    tmp_path: Path,
) -> None:
    server_db, laptop = tmp_path / "server.db", tmp_path / "laptop.db"
    cli("user", "add", "--db", server_db, "--org", "clinic-a", "--username", "dr.a").ok()
    with FhirHub() as hub:
        hub.answer("slow")  # the first PUT is held: the server dies while it waits
        server = ServerProcess(server_db, "--hub", hub.url, "--log-format", "json")
        try:
            run_main(
                "enrol", "--db", laptop, "--server", server.url, "--org", "clinic-a",
                "--username", "dr.a", "--json",
            ).ok()  # fmt: skip
            record_id = inproc("record new --db {db} --json", db=laptop).ok().json()["record_id"]
            inproc("record set --db {db} {r} name 'Awa Diop'", db=laptop, r=record_id).ok()
            marked = inproc("hub enable --db {db} {r} --json", db=laptop, r=record_id).ok().json()
            assert marked["enabled"] is True
            assert marked["author"] == "dr.a"
            [offline] = hub_status(laptop)
            assert (offline["record_id"], offline["state"]) == (record_id, "pending")
            assert offline["version"] is None
            assert offline["last_attempt"] is None
            assert inproc("status --db {db} --json", db=laptop).ok().json()["hub_pending"] == 1

            inproc("sync --db {db} --json", db=laptop).ok()
            hub.wait_arrived(1)  # the server is sending; the hub holds the answer
            [on_server] = hub_status(server_db)  # read while the server runs
            assert on_server["state"] == "pending"
            assert on_server["last_attempt"] is not None
            assert inproc("status --db {db} --json", db=server_db).ok().json()["hub_pending"] == 1
            port = server.port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as page:
                metrics = page.read().decode()
            assert "caresync_hub_summaries_pending 1.0" in metrics

            server.proc.send_signal(signal.SIGKILL)  # mid-send: no answer, no outcome stored
        finally:
            server.kill()
        hub.release()  # the held request ends (its connection is gone)
        [held] = hub.wait_for(1, answered=True)
        restarted = ServerProcess(server_db, "--hub", hub.url, "--log-format", "json")
        try:
            restarted.wait_log('"state": "sent"')  # the sender's log line of the outcome
            requests = hub.wait_for(2, answered=True)
            assert [r.answered for r in requests] == [200, 200]
            assert requests[1].body == held.body  # the same version, sent again whole
            assert requests[1].problem is None
            [sent] = hub_status(server_db)
            assert sent["state"] == "sent"
            assert sent["version"] == on_server["version"]
            # The laptop learns it at its next sync.
            inproc("sync --db {db} --json --server {url}", db=laptop, url=restarted.url).ok()
            [known] = hub_status(laptop)
            assert (known["state"], known["version"]) == ("sent", sent["version"])
            assert inproc("status --db {db} --json", db=laptop).ok().json()["hub_pending"] == 0
            # The hub's copy is the record's.
            copy = json.loads(hub.copies[summary_id(record_id)])
            shown = inproc("record show --db {db} {r} --json", db=laptop, r=record_id).ok()
            assert copy["entry"][1]["resource"]["name"][0]["text"] == shown.json()["fields"]["name"]
            assert copy["identifier"]["value"] == record_id
        finally:
            code, _log = restarted.stop()
        assert code == 0
        assert len(hub.received) == 2  # nothing sent a third time


def test_serve_hub_refuses_a_bad_url_before_opening_anything(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    result = run_main("serve", "--db", db, "--port", "0", "--hub", "ftp://hub.example")
    assert result.code == 2
    assert "not a hub URL" in result.error_line()
    assert not db.exists()
    timeout_alone = run_main("serve", "--db", db, "--port", "0", "--hub-timeout", "5")
    assert "--hub-timeout needs --hub" in timeout_alone.error_line()


def test_serve_with_a_hub_token_file_sends_what_the_file_holds_now(tmp_path: Path) -> None:
    """`caresync serve --hub URL --hub-token-file FILE`, a real process: the token is the
    file's content (its line break dropped), read again before each request."""
    server_db, laptop = tmp_path / "server.db", tmp_path / "laptop.db"
    token_file = tmp_path / "hub.token"
    token_file.write_text("first-token\n")
    cli("user", "add", "--db", server_db, "--org", "clinic-a", "--username", "dr.a").ok()
    with FhirHub(token="first-token") as hub:
        server = ServerProcess(
            server_db, "--hub", hub.url, "--hub-token-file", token_file, "--log-format", "json"
        )
        try:
            run_main(
                "enrol", "--db", laptop, "--server", server.url, "--org", "clinic-a",
                "--username", "dr.a", "--json",
            ).ok()  # fmt: skip
            for sent, name in enumerate(("Awa", "Moussa"), start=1):
                record_id = (
                    inproc("record new --db {db} --json", db=laptop).ok().json()["record_id"]
                )
                inproc("record set --db {db} {r} name {n}", db=laptop, r=record_id, n=name).ok()
                inproc("hub enable --db {db} {r} --json", db=laptop, r=record_id).ok()
                inproc("sync --db {db} --json", db=laptop).ok()
                received = hub.wait_for(sent, answered=True)[-1]
                assert received.answered == 200
                hub.token = "renewed-token"  # the hub rotates; so does the file
                token_file.write_text("renewed-token\n")
            assert hub.authorizations == ["Bearer first-token", "Bearer renewed-token"]
        finally:
            code, _log = server.stop()
        assert code == 0
