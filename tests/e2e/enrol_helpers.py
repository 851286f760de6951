"""What the tests of an enrolment whose answer is lost share: a server that commits an
enrolment and then (once armed) drops its answer, and a server restored from a backup
taken before a laptop enrolled (it forgets the laptop) or after (it knows it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.live_helpers import enrolled, start_server
from tests.e2e.restore_helpers import back_up, port_of, put_back

from caresync.replica import Replica
from caresync.server import SyncServer

__all__ = ["EnrolCuttingServer", "Restores"]


class EnrolCuttingServer(SyncServer):
    """Enrols (commits the replica and its secret), then (once armed) closes the
    connection instead of sending Enrolled."""

    cut_next_enrol = False

    async def _on_enrol(self, conn: Any, enrol: Any) -> None:
        await super()._on_enrol(conn, enrol)
        if self.cut_next_enrol:
            self.cut_next_enrol = False
            conn.protocol.data_to_send()  # Enrolled, queued after the commit: dropped
            await conn.channel.close("cut between enrolment and its answer")


class Restores:
    """A server on one SQLite file and port, and two backups of it: ``old``, taken
    before the laptop ``late`` enrolled (a restore of it forgets the laptop), and
    ``new``, taken after the laptop synced (a restore of it knows the laptop)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "server.db"
        self.old = tmp_path / "old.db"
        self.new = tmp_path / "new.db"
        self.port = 0
        self.server: EnrolCuttingServer | None = None
        self.chart = ""
        """The record ``late`` wrote (its name, by dr.a) before ``new`` was taken."""

    async def start(self, tmp_path: Path) -> Replica:
        """Serve, take ``old``, enrol ``late`` (dr.a) and sync a chart, take ``new``."""
        server = await start_server(tmp_path, server_class=EnrolCuttingServer)
        assert isinstance(server, EnrolCuttingServer)
        self.server, self.port = server, port_of(server)
        await back_up(self.path, self.old)
        late = await enrolled(tmp_path, server, "late")
        self.chart = await late.create_record()
        await late.set(self.chart, "name", "Awa Diop", author="dr.a")
        await late.sync()
        await back_up(self.path, self.new)
        return late

    async def put_back(self, saved: Path) -> EnrolCuttingServer:
        """Stop the server, put ``saved`` in place of its database, serve it again."""
        assert self.server is not None
        await self.server.close()
        self.server = None
        await put_back(saved, self.path)
        server = await EnrolCuttingServer.open(self.path)
        await server.serve("127.0.0.1", self.port)
        assert isinstance(server, EnrolCuttingServer)
        self.server = server
        return server

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
