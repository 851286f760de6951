"""A server that proves itself and then never answers does not hold a sync for ever.

A real server on 127.0.0.1 whose process hangs after the proof (its event handler
drops everything else): the laptop waits ``SyncLimits.reply_timeout_s`` for each reply,
then ends the session with ``ServerSilentError``, keeping its unsynced changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.live_helpers import enrolled, start_server

from caresync.exceptions import ConnectionLostError, InvalidInputError, ServerSilentError
from caresync.replication.session import SyncLimits
from caresync.server import SyncServer

_ANSWERED = {"Hello", "ProveServer"}


def _silence_after_proof(server: SyncServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on the server hears everything and answers only Hello and the proof."""
    heard: list[str] = []
    answer = server._on_event

    async def hangs(conn: object, event: object) -> None:
        heard.append(type(event).__name__)
        if type(event).__name__ in _ANSWERED:
            await answer(conn, event)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "_on_event", hangs)
    return heard


async def test_a_server_that_never_answers_ends_the_sync_and_keeps_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(tmp_path)
    laptop = await enrolled(tmp_path, server, "laptop", limits=SyncLimits(reply_timeout_s=0.5))
    try:
        record = await laptop.create_record()
        await laptop.set(record, "name", "Awa Diop", author="dr.a")
        heard = _silence_after_proof(server, monkeypatch)
        with pytest.raises(ServerSilentError, match=r"sent no reply for 0\.5 s") as caught:
            await laptop.sync()
        assert isinstance(caught.value, ConnectionLostError)  # retried as a lost link is
        assert heard[-1] not in _ANSWERED  # it was heard, and left unanswered
        status = await laptop.status()
        assert status.pending == 2
        assert "sent no reply" in (status.last_error or "")
        monkeypatch.undo()  # the server answers again
        await laptop.sync()
        assert (await laptop.status()).pending == 0
        assert await server.store.feed_head() == 2
    finally:
        await laptop.close()
        await server.close()


@pytest.mark.parametrize("bad", [0, -1, True, "60", 3601])
def test_a_reply_timeout_must_be_a_positive_number_of_seconds(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="reply_timeout_s"):
        SyncLimits(reply_timeout_s=bad)  # type: ignore[arg-type]
