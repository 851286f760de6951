"""The first copy's progress bar (rich, on standard error; none with ``--json``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from caresync.cli.output import Output
from caresync.replica import CopyProgress, ProgressCallback

__all__ = ["copy_progress"]


@contextmanager
def copy_progress(
    out: Output, description: str = "first copy"
) -> Iterator[ProgressCallback | None]:
    """A callback for ``Replica.enrol/sync(progress=...)`` drawing a bar, or None with --json."""
    if out.json:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        console=out.err,
    )
    task = bar.add_task(description, total=None)
    started = False

    def update(p: CopyProgress) -> None:
        nonlocal started
        if not started:  # drawn only once a copy batch arrives (not when none is due)
            bar.start()
            started = True
        bar.update(task, total=max(p.total_records, p.done_records), completed=p.done_records)

    try:
        yield update
    finally:
        if started:
            bar.stop()
