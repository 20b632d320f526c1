"""Kernel families by name: the one table the CLI, the benchmarks, the adapters and the
simulator look a family up in (no ``if family == ...`` chains).

An entry names each part of a family by import path (``"module:attribute"``), resolved
on first use, so the core imports no kernel code, and no GPU library, at module load.
Adding a family: implement ``ramp.profiler.Timer`` in ``kernels/<family>/`` (usually a
``ramp.kernels.bank_timer.BankTimer`` subclass), give it a ``make_timer(problem,
configs, options)`` factory and ``register`` an entry here (or from your own package):
``ramp profile --family NAME`` and ``bench/run_gpu.py --family NAME`` then profile it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ramp.errors import InputError

if TYPE_CHECKING:
    from ramp.bank import KernelBank
    from ramp.config import KernelConfig
    from ramp.problem import MoEProblem
    from ramp.profiler import Timer


@dataclass(frozen=True)
class TimerOptions:
    """How a timer may spend the machine: ``jobs`` compile processes (None: the family's
    default), ``progress`` bars on stderr."""

    jobs: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class KernelFamily:
    """One kernel family; every reference is ``"module:attribute"``.

    ``space``: ``(dtype_bytes) -> [KernelConfig]``, the configuration space (pure data;
    None where configurations are chosen from measurements, as the sync-free kernel's
    branches are). ``bank``: ``(dtype_bytes) -> KernelBank`` with estimated occupancy,
    what the simulator uses for a shape nobody profiled. ``timer``: ``(problem, configs
    or None, TimerOptions) -> Timer``. ``launcher``: the family's one-GEMM entry point.
    ``version``: its ``FAMILY_VERSION``; ``pinned`` False where the version follows the
    library that runs the kernel (grouped_mm: torch) and profiles are not checked
    against it. ``fields``: the typed view of a configuration's ``variant`` (the
    family's own configuration fields), or None where the family has none.
    """

    name: str
    space: str | None
    bank: str | None
    timer: str
    launcher: str
    version: str
    pinned: bool = True
    fields: str | None = None

    def make_timer(self, problem: MoEProblem, configs: Sequence[KernelConfig] | None = None,
                   options: TimerOptions = TimerOptions()) -> Timer:
        """A profiling timer over ``configs`` (default: the whole space). Needs a GPU."""
        return resolve(self.timer)(problem, None if configs is None else list(configs),
                                   options)

    def configs(self, dtype_bytes: int = 2) -> list[KernelConfig]:
        if self.space is None:
            raise InputError(f"kernel family {self.name!r} has no fixed configuration space")
        return resolve(self.space)(dtype_bytes=dtype_bytes)

    def default_bank(self, dtype_bytes: int = 2) -> KernelBank:
        if self.bank is None:
            raise InputError(f"kernel family {self.name!r} has no default bank")
        return resolve(self.bank)(dtype_bytes=dtype_bytes)

    def family_version(self) -> str:
        return resolve(self.version)


def resolve(ref: str) -> Any:
    """The object an import path ``"module:attribute"`` names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


FAMILIES: dict[str, KernelFamily] = {}


def register(family: KernelFamily) -> KernelFamily:
    """Add (or replace) a family under its name."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> KernelFamily:
    if name not in FAMILIES:
        raise InputError(f"kernel family {name!r} unknown; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def profilable_families() -> list[str]:
    """Families with a configuration space of their own (what ``ramp profile`` times)."""
    return [name for name, f in FAMILIES.items() if f.space is not None]


def installed_family_versions() -> dict[str, str]:
    """``{family: version}`` of the families whose profiles must match this RaMP."""
    return {name: f.family_version() for name, f in FAMILIES.items() if f.pinned}


_K = "ramp.kernels"
register(KernelFamily(
    "triton", f"{_K}.triton.configs:triton_configs", f"{_K}.triton.configs:triton_bank",
    f"{_K}.triton.timer:make_timer", f"{_K}.triton.fused_moe:moe_gemm",
    f"{_K}.triton.configs:FAMILY_VERSION"))
register(KernelFamily(  # two row-tile classes per launch: the same kernels' launcher
    "triton-tiles", f"{_K}.triton.configs:triton_tiles_configs",
    f"{_K}.triton.configs:triton_tiles_bank", f"{_K}.triton.timer:make_tiles_timer",
    f"{_K}.triton.fused_moe:moe_gemm", f"{_K}.triton.configs:TILES_FAMILY_VERSION"))
register(KernelFamily(  # the sync-free kernel: branches picked from Triton measurements
    "triton-poly", None, None, f"{_K}.triton.poly:make_timer", f"{_K}.triton.poly:PolyGemm",
    f"{_K}.triton.configs:FAMILY_VERSION"))
register(KernelFamily(
    "cute", f"{_K}.cute.configs:cute_configs", f"{_K}.cute.configs:cute_bank",
    f"{_K}.cute.timer:make_timer", f"{_K}.cute.launch:moe_gemm",
    f"{_K}.cute.configs:FAMILY_VERSION", fields=f"{_K}.cute.configs:CuteVariant"))
register(KernelFamily(
    "grouped_mm", f"{_K}.grouped_mm:grouped_mm_configs", None,
    f"{_K}.grouped_mm:make_timer", f"{_K}.grouped_mm:grouped_mm",
    f"{_K}.grouped_mm:FAMILY_VERSION", pinned=False))
