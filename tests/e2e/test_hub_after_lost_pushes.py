"""A laptop whose pushes a restored server lost, told so at the login while the pull it
sent with the login travelled: the hub report it held named a mark of the lost history,
and the recovery asks the report whole again; the pull's reply, read after, must not
bring that mark back.

Real parts: a server on an SQLite file and 127.0.0.1, a ``caresync backup`` copy put
back with the server stopped, laptops on SQLite files.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.live_helpers import enrolled, start_server
from tests.e2e.restore_helpers import back_up, port_of, put_back
from tests.hub.test_hub_changes import held, whole_list
from tests.hub.test_hub_outbox import marked_patient

from caresync.protocol import HubItem
from caresync.replica import Replica
from caresync.replication import meta
from caresync.server import SyncServer


async def test_the_hub_report_is_asked_whole_after_lost_pushes_though_a_pull_went_ahead(
    tmp_path: Path,
) -> None:
    """The laptop's hub report was of the lost history (an attempt's outcome the restored
    server never made, at a mark it reaches again with other changes). The pull sent
    with the login asked for changes since that mark; its reply, dropped once the login
    said the server lost pushes, must not bring back the mark the recovery set aside."""
    path, saved = tmp_path / "server.db", tmp_path / "backup.db"
    server = await start_server(tmp_path)
    port = port_of(server)
    laptop = await enrolled(tmp_path, server, "laptop")
    other = await enrolled(tmp_path, server, "other", user="dr.b")
    try:
        patient = await marked_patient(laptop)
        chart = await laptop.create_record()
        await laptop.set(chart, "name", "Moussa Sarr", author="dr.a")
        await laptop.sync()
        await back_up(path, saved)
        backed_up = (await server.store.hub_changes("clinic-a", 0, 10)).mark
        await laptop.set(chart, "birthDate", "1990-04-12", author="dr.a")
        assert (await laptop.sync(pull=False)).uploaded == 1  # lost to the restored server
        # What the laptop heard of the lost history: the hub refused the patient.
        [item] = await held(laptop)
        await laptop.close()
        lost = HubItem(patient, "failed", item.version, "lost history", 1)
        with sqlite3.connect(tmp_path / "laptop.db") as raw:
            raw.execute(
                "UPDATE meta SET value = ? WHERE key = ?",
                (json.dumps([list(lost)]), meta.HUB_REPORT),
            )
            raw.execute(
                "UPDATE meta SET value = ? WHERE key = ?", (str(backed_up + 1), meta.HUB_MARK)
            )
        laptop = await Replica.open(tmp_path / "laptop.db")

        await server.close()
        await put_back(saved, path)
        server = await SyncServer.open(path)
        await server.serve("127.0.0.1", port)
        for _patient in range(2):  # the restored server's marks pass the laptop's
            await marked_patient(other)
            await other.sync()
        assert (await server.store.hub_changes("clinic-a", 0, 10)).mark > backed_up + 1
        assert (await laptop.sync()).server_went_back
        assert await held(laptop) == await whole_list(server)
    finally:
        await laptop.close()
        await other.close()
        await server.close()
