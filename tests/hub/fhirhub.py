"""A test health hub: a real HTTP/1.1 server on 127.0.0.1 that speaks just enough FHIR.

It takes ``PUT /Bundle/{id}`` with ``application/fhir+json``, validates the
Bundle with ``fhir.resources`` (R4B, the models caresync uses: every entry, a
``document`` whose first entry is a Composition, the id in the URL the Bundle's
own), keeps the last copy of each id, and answers with what the test chose:
``answers`` is a queue of statuses (then 200), ``"slow"`` holds the answer until
released, ``"drop"`` closes the connection without one; :meth:`stop` takes the
hub down (connections refused) and :meth:`start` brings it back on the same port.

It runs its own event loop in a thread, so a synchronous test (driving
``caresync serve`` in a subprocess) and an asyncio test use it alike; every
wait is bounded and wakes on the request it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

WAIT_S = 30.0


@dataclass(frozen=True)
class Received:
    """One request the hub read."""

    method: str
    path: str
    content_type: str | None
    body: bytes
    answered: int | None
    """The status it was answered with (None: it was not answered)."""
    problem: str | None
    """Why the hub found the Bundle invalid (it then answered 400), or None."""


class FhirHub:
    """See the module. Use as a context manager (started on enter, stopped on exit)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        """With a token, a request without ``Authorization: Bearer <token>`` gets 401."""
        self.authorizations: list[str | None] = []
        """Each request's Authorization header, as received (None: none)."""
        self.answers: deque[int | str] = deque()
        self.copies: dict[str, bytes] = {}
        self.received: list[Received] = []
        self.port = 0
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._release: asyncio.Event | None = None
        self._arrived = 0
        self._open: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------ control

    def __enter__(self) -> FhirHub:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=WAIT_S)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> None:
        """Listen (on the port of the last start, if any)."""
        self._call(self._start())

    def stop(self) -> None:
        """Stop listening and drop every open connection: the hub is down."""
        self._call(self._stop())

    def answer(self, *statuses: int | str) -> None:
        """Answer the next requests with these, in order (then 200)."""
        with self._changed:
            self.answers.extend(statuses)

    def release(self) -> None:
        """Let a request held by ``"slow"`` be answered (200)."""
        release = self._release
        if release is not None:
            self._loop.call_soon_threadsafe(release.set)

    def wait_for(self, count: int, *, answered: bool = False) -> list[Received]:
        """Wait until ``count`` requests were read (and answered, if asked); bounded."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: len(self._matching(answered)) >= count, timeout=WAIT_S
            )
            assert done, f"the hub got {len(self.received)} requests, not {count}"
            return list(self.received)

    def wait_arrived(self, count: int) -> None:
        """Wait until ``count`` requests arrived (answered or still held); bounded."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._arrived >= count, timeout=WAIT_S)
            assert done, f"{self._arrived} requests arrived, not {count}"

    def bundle(self, bundle_id: str) -> dict[str, Any]:
        """The hub's copy of a Bundle."""
        with self._changed:
            return dict(json.loads(self.copies[bundle_id]))

    def _matching(self, answered: bool) -> list[Received]:
        return [r for r in self.received if r.answered is not None or not answered]

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=WAIT_S)

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):  # held connections too: the hub is gone
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self._one(reader, writer)
        finally:
            self._open.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        with self._changed:
            self._arrived += 1
            plan = self.answers.popleft() if self.answers else 200
            self._changed.notify_all()
        problem = self._check(method, path, headers.get("content-type"), body)
        status: int | None
        given = headers.get("authorization")
        with self._changed:
            self.authorizations.append(given)
        if self.token is not None and given != f"Bearer {self.token}":
            status, text = 401, "this hub needs a valid bearer token"
            problem = problem or "unauthenticated"
        elif problem is not None:
            status, text = 400, problem
        elif plan == "slow":
            assert self._release is not None
            await self._release.wait()
            status, text = 200, "ok"
        elif plan == "drop":
            status, text = None, ""
        else:
            status, text = int(plan), f"test hub refuses: {plan}"
        if status is not None and 200 <= status < 300 and problem is None:
            with self._changed:
                self.copies[path.rsplit("/", 1)[1]] = body
        with self._changed:
            self.received.append(
                Received(method, path, headers.get("content-type"), body, status, problem)
            )
            self._changed.notify_all()
        if status is None:
            return  # dropped: the connection closes with no answer
        outcome = json.dumps(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
            }
        ).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(outcome)}\r\nConnection: close\r\n\r\n".encode()
            + outcome
        )
        await writer.drain()

    def _check(self, method: str, path: str, content_type: str | None, body: bytes) -> str | None:
        """Why the request is not a valid summary PUT, or None."""
        if method != "PUT" or not path.startswith("/fhir/Bundle/"):
            return f"only PUT /fhir/Bundle/{{id}}, not {method} {path}"
        if content_type != "application/fhir+json":
            return f"Content-Type must be application/fhir+json, not {content_type}"
        try:
            data = json.loads(body)
            get_fhir_model_class("Bundle").model_validate(data)
            for entry in data["entry"]:
                resource = entry["resource"]
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except (ValueError, KeyError, TypeError) as exc:
            return f"invalid Bundle: {str(exc)[:200]}"
        if data.get("id") != path.rsplit("/", 1)[1]:
            return "the Bundle's id is not the one in the URL"
        if data.get("type") != "document" or not data.get("identifier"):
            return "a summary is a document Bundle with an identifier"
        if data["entry"][0]["resource"]["resourceType"] != "Composition":
            return "a document starts with its Composition"
        return None
