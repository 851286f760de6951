"""The simulation on a terminal: rich progress bars while it runs, a summary table after.

:func:`run_simulate_command` is what ``caresync simulate`` and
``python -m caresync.simulation`` call; with ``json_output`` it prints exactly
one JSON object on standard output and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from caresync.simulation.config import SimulationConfig, SimulationResult
from caresync.simulation.runner import run_simulation

__all__ = ["RichObserver", "conflicts_table", "result_table", "run_simulate_command"]


class RichObserver:
    """Shows each phase of a run as a rich progress bar (use as a context manager)."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichObserver:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish_task()
        self._progress.stop()

    def phase(self, name: str, total: int) -> None:
        """Start a new bar for the phase (the previous one is shown as complete)."""
        self._finish_task()
        self._task = self._progress.add_task(name, total=max(total, 1))
        if total == 0:
            self._progress.update(self._task, completed=1)

    def advance(self, steps: int = 1) -> None:
        """Move the current bar."""
        if self._task is not None:
            self._progress.advance(self._task, steps)

    def _finish_task(self) -> None:
        if self._task is not None:
            total = self._progress.tasks[-1].total
            self._progress.update(self._task, completed=total)
            self._task = None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def result_table(result: SimulationResult) -> Table:
    """The summary table of a run."""
    table = Table(title="Simulation outcome")
    table.add_column("what")
    table.add_column("result", justify="right")
    yes_no = {True: "[green]yes[/green]", False: "[red bold]NO[/red bold]"}
    table.add_row(
        "laptops x patients (seed)", f"{result.laptops} x {result.patients} ({result.seed})"
    )
    table.add_row("edits made offline", str(result.edits))
    table.add_row("fields edited concurrently by several laptops", str(result.concurrent_groups))
    table.add_row("clinical cases played", str(result.clinical_cases))
    table.add_row("every replica and the server identical", yes_no[result.converged])
    lost = (
        f"[green]{result.lost_values}[/green]"
        if not result.lost_values
        else (f"[red bold]{result.lost_values}[/red bold]")
    )
    table.add_row("values written but reachable nowhere", lost)
    table.add_row("values the oracle logged", str(result.values_logged))
    table.add_row("conflicts resolved on laptops while offline", str(result.conflicts_resolved))
    table.add_row("open conflicts, the same everywhere", str(result.conflicts_open))
    table.add_row(
        "replicas checked (in full)",
        f"{result.replicas_checked} ({result.replicas_checked_in_depth})",
    )
    table.add_row("set-up (server, patients, laptops' files)", f"{result.setup_s:.2f} s")
    table.add_row("first copy (all laptops enrolled)", f"{result.first_copy_s:.2f} s")
    table.add_row("offline rounds", f"{result.edit_s:.2f} s")
    table.add_row("final sync to quiescence", f"{result.final_sync_s:.2f} s")
    table.add_row("oracle's check", f"{result.check_s:.2f} s")
    table.add_row("total", f"{result.duration_s:.2f} s")
    table.add_row("bytes up / down", f"{_size(result.bytes_up)} / {_size(result.bytes_down)}")
    table.add_row(
        "peak memory (all processes)",
        f"{result.peak_rss_mb:.0f} MB"
        + (f", {result.workers} laptop workers" if result.workers else ""),
    )
    return table


def conflicts_table(result: SimulationResult) -> Table:
    """Some of the conflicts left open, as every replica shows them."""
    table = Table(title="Some open conflicts (the same on every replica and the server)")
    table.add_column("severity")
    table.add_column("what")
    table.add_column("candidates")
    for conflict in result.conflict_examples:
        candidates = "\n".join(
            f"[{i}] {c['value']!r} by {c['author']}" for i, c in enumerate(conflict["candidates"])
        )
        table.add_row(conflict["severity"], conflict["message"], candidates)
    return table


def run_simulate_command(
    config: SimulationConfig, *, json_output: bool, console: Console | None = None
) -> int:
    """Run a simulation for a command line; 0 when converged and nothing lost, else 1.

    Without ``json_output``: progress bars while it runs and a summary table at
    the end, on ``console`` (default: the terminal). With it: one JSON object on
    ``console``'s file (default: standard output) and nothing else.
    Errors (:class:`~caresync.exceptions.CaresyncError`) propagate to the caller.
    """
    if json_output:
        result = asyncio.run(run_simulation(config))
        out = console.file if console is not None else sys.stdout
        out.write(json.dumps(result.as_dict()) + "\n")
        out.flush()
        return 0 if result.ok else 1
    console = console or Console()
    console.print(
        f"[bold]caresync simulation[/bold]: a clinic server and {config.laptops} laptops, "
        f"{config.patients} patients, on SQLite over "
        + ("in-memory channels" if config.transport == "memory" else "websockets on 127.0.0.1")
        + (
            f", laptops in {config.laptop_workers} worker processes"
            if config.laptop_workers
            else ""
        )
    )
    with RichObserver(console) as observer:
        result = asyncio.run(run_simulation(config, observer=observer))
    if result.conflict_examples:
        console.print(conflicts_table(result))
    console.print(result_table(result))
    for line in result.details:
        console.print(f"[red]{line}[/red]", highlight=False)
    return 0 if result.ok else 1
