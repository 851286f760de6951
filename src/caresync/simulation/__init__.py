"""Many offline laptops against one clinic server, seeded and repeatable, checked by an oracle.

From Python::

    import asyncio
    from caresync.simulation import SimulationConfig, run_simulation

    result = asyncio.run(run_simulation(SimulationConfig(laptops=10, patients=100, seed=1)))
    print(result.converged, result.lost_values)   # True 0: converged, nothing lost

From a shell: ``caresync simulate --laptops 20 --patients 200`` (or
``python -m caresync.simulation`` with the same options). See docs/simulation.md.
"""

from caresync.simulation.config import SimulationConfig, SimulationResult
from caresync.simulation.observer import NullObserver, SimulationObserver
from caresync.simulation.oracle import Oracle, OracleReport, ReplicaFile, ReplicaPrint, read_print
from caresync.simulation.present import RichObserver, result_table, run_simulate_command
from caresync.simulation.runner import run_simulation
from caresync.simulation.scenario import Edit, Patient, Round, Scenario, plan

__all__ = [
    "Edit",
    "NullObserver",
    "Oracle",
    "OracleReport",
    "Patient",
    "ReplicaFile",
    "ReplicaPrint",
    "RichObserver",
    "Round",
    "Scenario",
    "SimulationConfig",
    "SimulationObserver",
    "SimulationResult",
    "plan",
    "read_print",
    "result_table",
    "run_simulate_command",
    "run_simulation",
]
