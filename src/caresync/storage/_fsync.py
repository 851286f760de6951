"""Syncing a file's bytes to the disk itself, on every operating system caresync runs on."""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: os.fsync flushes the drive's cache there
    fcntl = None  # type: ignore[assignment]

__all__ = ["sync_file"]


def sync_file(fd: int) -> None:
    """Return once the bytes written to ``fd`` are on the disk itself.

    ``os.fsync``, except on macOS: there fsync() leaves them in the drive's own cache
    (Apple's fsync(2)), and a power cut may lose a file that was "synced" and then
    renamed into place (a key file, a database rewritten encrypted). ``F_FULLFSYNC``
    flushes that cache; a file system that refuses it (some network ones) gets fsync,
    as SQLite does.
    """
    full = None if fcntl is None else getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
        except OSError:
            pass
        else:
            return
    os.fsync(fd)
