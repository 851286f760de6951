"""How a running simulation reports its progress: phases of a known number of steps."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullObserver", "SimulationObserver"]


class SimulationObserver(Protocol):
    """Told of each phase as it starts, and of each step done (a laptop enrolled, ...)."""

    def phase(self, name: str, total: int) -> None:
        """A phase called ``name`` starts; it has ``total`` steps (the previous one is over)."""
        ...

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps of the current phase are done."""
        ...


class NullObserver:
    """An observer that ignores everything (the default)."""

    def phase(self, name: str, total: int) -> None:
        """Ignore the phase."""

    def advance(self, steps: int = 1) -> None:
        """Ignore the steps."""
