"""Trace-driven simulator of an MoE serving engine (installed as ``ramp.sim``).

Replays routing traces through the wave cost model under a dispatch policy inside a
continuous-batching engine model, to predict what RaMP gains end to end (docs/sim.md).
Entry points: ``ramp-sim replay`` / ``ramp-sim whatif``, or ``run_study``.
"""

from ramp.sim.costs import Calibration, Layout, StepCoster, build_layout
from ramp.sim.engine import EngineConfig, RunResult, StepCosts, SwitchConfig, simulate
from ramp.sim.metrics import SLO, speedup, summarize
from ramp.sim.routing import RoutingPool, rebatch
from ramp.sim.runner import Report, SimConfig, load_pool, run_study, synthetic_pool
from ramp.sim.whatif import run_scenario
from ramp.sim.workload import LengthDist, SyntheticWorkload, load_arrivals

__all__ = [
    "SLO",
    "Calibration",
    "EngineConfig",
    "Layout",
    "LengthDist",
    "Report",
    "RoutingPool",
    "RunResult",
    "SimConfig",
    "StepCoster",
    "StepCosts",
    "SwitchConfig",
    "SyntheticWorkload",
    "build_layout",
    "load_arrivals",
    "load_pool",
    "rebatch",
    "run_scenario",
    "run_study",
    "simulate",
    "speedup",
    "summarize",
    "synthetic_pool",
]
