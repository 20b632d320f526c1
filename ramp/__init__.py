"""RaMP: routing-aware dispatch of MoE grouped-GEMM kernel configurations.

The core is pure Python + numpy: it imports no GPU library at module load, so the
cost model, dispatchers, profiles and simulator all work on a CPU-only machine.
"""

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.costmodel import WaveCostModel
from ramp.dispatch import Dispatcher, OracleDispatcher, RampDispatcher, StaticDispatcher
from ramp.errors import InputError, ProfileMismatchError, RampError
from ramp.geometry import GridGeometry, grid_geometry
from ramp.problem import MoEProblem, validate_histogram
from ramp.profile import Profile, find_profile, load_profile
from ramp.regret import RegretReport, evaluate

__version__ = "0.1.0"

__all__ = [
    "Dispatcher",
    "GridGeometry",
    "InputError",
    "KernelBank",
    "KernelConfig",
    "MoEProblem",
    "OracleDispatcher",
    "Profile",
    "ProfileMismatchError",
    "RampDispatcher",
    "RampError",
    "RegretReport",
    "StaticDispatcher",
    "WaveCostModel",
    "evaluate",
    "find_profile",
    "grid_geometry",
    "load_profile",
    "validate_histogram",
]
