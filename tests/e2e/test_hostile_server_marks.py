"""Numbers a proven server says at login about this laptop's pushes, the server untrusted.

``Authenticated.pushed_up_to`` says how far the server holds this laptop's pushes;
above what the laptop knows, the laptop takes itself for a restored copy and
renumbers its outbox after that mark. A server (buggy, or compromised) that said a
mark near 2**63 made the renumbering fail with a bare OverflowError (2**63 - 1), or
pushed the outbox's numbering to its end (2**63 - 4): every later edit on the
laptop failed, for good, as "the disk is full". No laptop numbers that far: the
login is refused, and nothing of the outbox moves. Real parts: a server on
127.0.0.1 whose protocol is made to lie, and SQLite files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_helpers import enrolled, start_server

from caresync.exceptions import RemoteProtocolError
from caresync.protocol import ServerProtocol
from caresync.replication import meta
from caresync.storage import OUTBOX_SEQ_LIMIT

MAX_SEQ = 2**63 - 1


@pytest.mark.parametrize("mark", [MAX_SEQ, MAX_SEQ - 3, OUTBOX_SEQ_LIMIT + 1])
async def test_a_mark_no_laptop_could_reach_is_refused_and_the_outbox_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mark: int
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    accept = ServerProtocol.accept_authentication

    def lying(self: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        kwargs["pushed_up_to"] = mark
        accept(self, *args, **kwargs)

    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop")
        before = [(item.seq, item.update) for item in await laptop.store.pending()]
        acked = await laptop.store.get_meta(meta.ACKED)
        monkeypatch.setattr(ServerProtocol, "accept_authentication", lying)
        with pytest.raises(RemoteProtocolError, match="no laptop numbers"):
            await laptop.sync()
        assert [(item.seq, item.update) for item in await laptop.store.pending()] == before
        assert await laptop.store.get_meta(meta.ACKED) == acked
        assert await laptop.store.get_meta(meta.PULL_OWN) != "1"
        monkeypatch.undo()
        for index in range(3):  # edits still commit, numbered as before
            await laptop.set(record, "name", f"Awa Diop {index}")
        assert (await laptop.store.outbox_summary()).last_seq == before[-1][0] + 3
        await laptop.sync()  # the honest server takes it all
        assert (await laptop.status()).pending == 0
        assert (await laptop.record(record)).value("name") == "Awa Diop 2"
    finally:
        await laptop.close()
        await server.close()


async def test_a_mark_at_the_limit_renumbers_and_leaves_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the limit itself the laptop renumbers, as for a restored copy, and edits on."""
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop")
    accept = ServerProtocol.accept_authentication

    def restored(self: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        kwargs["pushed_up_to"] = OUTBOX_SEQ_LIMIT
        accept(self, *args, **kwargs)

    try:
        record = await laptop.create_record()
        monkeypatch.setattr(ServerProtocol, "accept_authentication", restored)
        await laptop.sync(pull=False)
        monkeypatch.undo()
        for index in range(3):
            await laptop.set(record, "name", f"Awa Diop {index}")
        assert [item.seq for item in await laptop.store.pending()] == [
            OUTBOX_SEQ_LIMIT + 2,  # + 1 went in that sync
            OUTBOX_SEQ_LIMIT + 3,
            OUTBOX_SEQ_LIMIT + 4,
        ]
    finally:
        await laptop.close()
        await server.close()
