"""Laptops in worker processes: both cores, while the server stays in the runner's process.

Theory of operation
-------------------
The runner keeps the server, the oracle and the clock; ``workers`` processes
(``python -m caresync.simulation.worker``, fresh interpreters: none inherits
the runner's event loop or database threads, and unlike multiprocessing's
``spawn`` none re-imports the caller's main script) each play a
:class:`~caresync.simulation.laptops.LaptopShare` of
laptops ``w, w + workers, w + 2 * workers, ...``, talking to the server over
websockets on 127.0.0.1. Each worker plans the scenario from the same config,
so it needs only its config, the working directory and the run's password.

A worker's first message is its share (config, working directory, laptop
indices, password). Commands then go down a socket pair as ``(method, args,
kwargs)`` and every worker answers each with ``("ok", value)`` or
``("error", exception)``; the runner sends a command to all workers, then
waits for all answers, so a phase ends only when every laptop has done its
part (the barrier the scenario needs). ``stop`` ends a worker; it answers
with its peak resident memory and its CPU time.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import resource
import socket
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from caresync.exceptions import CaresyncError, ConnectionLostError
from caresync.simulation.config import WORKER_GC_THRESHOLDS, SimulationConfig
from caresync.simulation.laptops import LaptopShare

__all__ = ["COMMAND_TIMEOUT_S", "LaptopWorkers", "cpu_s", "peak_rss_mb"]

COMMAND_TIMEOUT_S = 3600.0
"""A worker that neither answers nor gets a command for this long gives up (bounded waits)."""
MAX_COMMANDS = 10_000
"""A worker serves at most this many commands (a run sends a few dozen)."""
_METHODS = ("create", "enrol", "edit", "sync", "prints")


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """This process's CPU time so far (user and system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str]) -> int:
    """A worker process's body: ``argv[0]`` is the file descriptor of its end of the pipe."""
    conn = Connection(int(argv[0]))
    try:
        if not conn.poll(COMMAND_TIMEOUT_S):
            return 1
        config, workdir, indices, password = conn.recv()
        # Raised thresholds, as in the runner's process: with the defaults the collector
        # took about a third of a worker's CPU at 100 laptops, rescanning objects that
        # live as long as a laptop is open, and found little (the cycles made die young,
        # found by the first generation's passes). A 100-laptop worker peaked at 220 MB
        # either way. (Once, before records were freed without cycles, raised thresholds
        # took a 100-laptop run to 2.1 GB.)
        gc.set_threshold(*WORKER_GC_THRESHOLDS)
        asyncio.run(_serve(conn, config, workdir, indices, password))
    except (EOFError, OSError):
        return 1  # the runner went away: nothing to answer
    finally:
        conn.close()
    return 0


async def _serve(
    conn: Connection, config: SimulationConfig, workdir: Path, indices: list[int], password: str
) -> None:
    share = LaptopShare(config, workdir, indices, password, concurrency=_share_concurrency(config))
    loop = asyncio.get_running_loop()
    for _ in range(MAX_COMMANDS):
        if not await asyncio.to_thread(conn.poll, COMMAND_TIMEOUT_S):
            return  # the runner is gone or stuck: stop rather than wait forever
        method, args, kwargs = conn.recv()
        if method == "stop":
            conn.send(("ok", (peak_rss_mb(), cpu_s())))
            return
        # The runner sends nothing while a command runs: the pipe becoming readable
        # then means the runner is gone, and the worker stops at once.
        gone = asyncio.Event()
        loop.add_reader(conn.fileno(), gone.set)
        try:
            work = asyncio.ensure_future(_run(share, method, args, kwargs))
            ended = asyncio.ensure_future(gone.wait())
            await asyncio.wait((work, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(conn.fileno())
        ended.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return
        conn.send(work.result())


async def _run(share: LaptopShare, method: str, args: Any, kwargs: Any) -> tuple[str, Any]:
    """Run one command on ``share``: ``("ok", value)`` or ``("error", exception)``."""
    try:
        if method not in _METHODS:
            raise ConnectionLostError(f"a simulation worker got an unknown command {method!r}")
        value = await getattr(share, method)(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed to the runner, which raises it
        return ("error", _picklable(exc))
    return ("ok", value)


def _share_concurrency(config: SimulationConfig) -> int:
    """Each worker's share of ``config.concurrency`` (at least one)."""
    return max(1, -(-config.concurrency // max(1, config.workers or 1)))


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives the pipe, else a CaresyncError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling failure: send a description instead
        return CaresyncError(f"a simulation worker failed: {exc!r}")
    return exc


class LaptopWorkers:
    """``count`` worker processes, each with its share of the laptops (see the module)."""

    def __init__(
        self, processes: Sequence[subprocess.Popen[bytes]], pipes: Sequence[Connection]
    ) -> None:
        self._processes = list(processes)
        self._pipes = list(pipes)
        self.peaks_mb: list[float] = []
        """Each worker's peak resident memory, known after :meth:`stop`."""
        self.cpu_s: list[float] = []
        """Each worker's CPU seconds, known after :meth:`stop`."""

    @classmethod
    def start(
        cls, config: SimulationConfig, workdir: Path, password: str, count: int
    ) -> LaptopWorkers:
        """Start ``count`` workers for ``config.laptops`` laptops, split round-robin."""
        processes: list[subprocess.Popen[bytes]] = []
        pipes: list[Connection] = []
        for w in range(count):
            ours, theirs = socket.socketpair()  # a local pair: no port, no network
            process = subprocess.Popen(
                [sys.executable, "-m", "caresync.simulation.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            pipe = Connection(ours.detach())
            pipe.send((config, workdir, list(range(w, config.laptops, count)), password))
            processes.append(process)
            pipes.append(pipe)
        return cls(processes, pipes)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``method`` on every worker's share at once; their answers, in worker order.

        Raises the first worker's error as itself (a caresync error) once all answered.
        """
        for pipe in self._pipes:
            pipe.send((method, args, kwargs))
        answers = await asyncio.gather(*(self._answer(pipe) for pipe in self._pipes))
        for status, value in answers:
            if status == "error":
                raise value
        return [value for _, value in answers]

    async def _answer(self, pipe: Connection) -> tuple[str, Any]:
        try:
            if not await asyncio.to_thread(pipe.poll, COMMAND_TIMEOUT_S):
                raise ConnectionLostError(
                    f"a simulation worker did not answer in {COMMAND_TIMEOUT_S:.0f} s"
                )
            answer: tuple[str, Any] = pipe.recv()
        except (EOFError, OSError):
            raise ConnectionLostError("a simulation worker died") from None
        return answer

    async def stop(self) -> None:
        """Stop every worker (after its answer, or by force if it is gone); keep their peaks."""
        with_peaks = True
        try:
            answers = await self.call("stop")
            self.peaks_mb = [float(peak) for peak, _ in answers]
            self.cpu_s = [float(cpu) for _, cpu in answers]
        except CaresyncError:
            with_peaks = False
        finally:
            for process, pipe in zip(self._processes, self._pipes, strict=True):
                pipe.close()  # a worker still waiting for a command sees the end and exits
                try:
                    await asyncio.to_thread(process.wait, 10.0 if with_peaks else 1.0)
                except subprocess.TimeoutExpired:
                    process.kill()  # one of ours, by its own handle
                    await asyncio.to_thread(process.wait, 10.0)
