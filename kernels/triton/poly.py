"""The sync-free path: one persistent launch that picks its tile shape on the GPU.

``PolyGemm`` wraps ``moe_gemm_poly_kernel``: up to four tile configurations sharing one
launch (warps, stages, a one-wave persistent grid), and the fitted wave cost model of
each branch as a device tensor. The host launches it with a grid that depends only on
the GPU, so the call is CUDA-graph capturable and never reads the histogram.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.costmodel import DEFAULT_FEATURES, WaveCostModel
from ramp.errors import InputError
from ramp.families import TimerOptions
from ramp.geometry import BASES, LINEAR_FEATURES, GeometryPlan
from ramp.hardware import detect_gpu
from ramp.kernels.cuda_timing import device_info, time_graph
from ramp.kernels.routing import Routing
from ramp.kernels.triton.fused_moe import launch_abi
from ramp.kernels.triton.moe_gemm import moe_gemm_poly_kernel
from ramp.kernels.workload import make_call, make_weights, weight_copies
from ramp.problem import MoEProblem

MAX_BRANCHES = 4


def poly_configs(branches: Sequence[KernelConfig]) -> list[KernelConfig]:
    """The branches as configurations of the polymorphic kernel (a family of its own)."""
    return [dataclasses.replace(c, variant="poly", persistent=True) for c in branches]


# The kernel's coefficient columns (constexprs of moe_gemm_poly_kernel) per basis of the
# core's feature table: the kernel evaluates every basis, so every linear feature runs on
# the GPU exactly as ramp.geometry defines it.
KERNEL_BASES = {"one": "B_ONE", "active_experts": "B_ACTIVE", "tiles": "B_TILES",
                "waves": "B_WAVES", "rows": "B_ROWS", "padded": "B_PADDED"}
if set(KERNEL_BASES) != set(BASES):
    raise ImportError(f"moe_gemm_poly_kernel evaluates bases {sorted(KERNEL_BASES)}, "
                      f"ramp.geometry defines {sorted(BASES)}")
BASIS_COLUMNS = {KERNEL_BASES[b]: i for i, b in enumerate(BASES)}


class PolyGemm:
    """A compiled-on-first-use polymorphic GEMM for one problem.

    ``params`` [branches, F] are the fitted parameters over ``features`` (any linear
    features of ``ramp.geometry.FEATURES``); at launch they are folded
    (``GeometryPlan.fold``, as ``RampDispatcher`` folds them) for the launch's shape and
    wave size into one coefficient per basis, the layout the kernel reads.
    """

    def __init__(self, branches: Sequence[KernelConfig], params: np.ndarray | None = None,
                 *, occupancy: int = 1, features: Sequence[str] = DEFAULT_FEATURES) -> None:
        if not 1 <= len(branches) <= MAX_BRANCHES:
            raise InputError(f"a polymorphic kernel has 1..{MAX_BRANCHES} branches")
        launch = {(c.num_warps, c.num_stages, c.group_m) for c in branches}
        if len(launch) != 1:
            raise InputError("branches must share num_warps, num_stages and group_m: "
                             f"got {sorted(launch)}")
        mixed = [c.name for c in branches if c.small_rows]
        if mixed:
            raise InputError(f"branches of the polymorphic kernel have one row-tile class: "
                             f"{mixed}")
        nonlinear = [f for f in features if f not in LINEAR_FEATURES]
        if nonlinear:
            raise InputError(f"the device-side model evaluates linear features only "
                             f"{LINEAR_FEATURES}, got {nonlinear}")
        self.branches = tuple(branches)
        self.occupancy = occupancy
        self.features = tuple(features)
        shape = (len(branches), len(self.features))
        self._params_host = (np.zeros(shape) if params is None
                             else np.asarray(params, dtype=np.float64))
        if self._params_host.shape != shape:
            raise InputError(f"params shape {self._params_host.shape} != (branches, "
                             f"features) {shape}")
        self._coef: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_model(cls, model: WaveCostModel) -> PolyGemm:
        occ = set(model.bank.occupancy)
        return cls(model.bank.configs, model.params, occupancy=min(occ),
                   features=model.features)

    def coefficients(self, problem: MoEProblem, num_sms: int) -> np.ndarray:
        """[branches, len(BASES)] folded coefficients for one shape and wave size."""
        bank = KernelBank.build(list(self.branches), self.occupancy)
        coef, _ = GeometryPlan(bank, problem, num_sms).fold(self.features, self._params_host)
        return coef

    def _launch(self, a, w, routing: Routing, out, gemm: str, num_sms: int, force: int,
                choice: torch.Tensor):
        key = (w.shape[1], w.shape[2], routing.num_experts, routing.top_k, gemm, num_sms,
               a.device)
        if key not in self._coef:
            problem = MoEProblem(routing.num_experts, w.shape[1], w.shape[2], routing.top_k,
                                 gemm=gemm)
            self._coef[key] = torch.as_tensor(self.coefficients(problem, num_sms),
                                              dtype=torch.float32, device=a.device).contiguous()
        padded = list(self.branches) + [self.branches[0]] * (MAX_BRANCHES - len(self.branches))
        tiles = {f"{p}{i}": getattr(c, f"block_{p[1].lower()}") for i, c in enumerate(padded)
                 for p in ("BM", "BN", "BK")}
        buffers, sizes, constexprs = launch_abi(a, w, routing, out, gemm, self.branches[0])
        args = (*buffers, self._coef[key], choice, force, *sizes)
        kwargs = dict(constexprs, NUM_BRANCHES=len(self.branches), **tiles,
                      EVEN_K=all(w.shape[2] % c.block_k == 0 for c in self.branches),
                      NUM_BASES=len(BASES), **BASIS_COLUMNS)
        return (num_sms * self.occupancy,), args, kwargs

    def __call__(self, a, w, routing: Routing, out, *, gemm: str, num_sms: int,
                 force: int = -1, choice: torch.Tensor | None = None) -> torch.Tensor:
        """Run the branch the device-side model picks (or ``force``); the picked branch
        index is written to ``choice`` (an int32 device scalar) when given."""
        if choice is None:
            choice = torch.empty(1, dtype=torch.int32, device=a.device)
        grid, args, kwargs = self._launch(a, w, routing, out, gemm, num_sms, force, choice)
        moe_gemm_poly_kernel[grid](*args, **kwargs)
        return out

    def compile(self, a, w, routing, out, *, gemm: str, num_sms: int) -> Any:
        choice = torch.empty(1, dtype=torch.int32, device=a.device)
        grid, args, kwargs = self._launch(a, w, routing, out, gemm, num_sms, 0, choice)
        kernel = moe_gemm_poly_kernel.warmup(*args, grid=grid, **kwargs)
        kernel._init_handles()
        return kernel


class PolyTimer:
    """``ramp.profiler.Timer`` for the branches of one polymorphic kernel (each forced)."""

    family = "triton-poly"

    def __init__(self, problem: MoEProblem, branches: Sequence[KernelConfig],
                 seed: int = 0) -> None:
        from ramp.kernels.triton.configs import FAMILY_VERSION

        self.family_version = FAMILY_VERSION
        self.problem = problem
        self.num_sms = torch.cuda.get_device_properties(0).multi_processor_count
        self.weights = make_weights(problem, weight_copies(problem), seed=seed)
        self.seed = seed
        configs = poly_configs(branches)
        poly = PolyGemm(configs)
        call = make_call(problem, self.weights, _probe_hist(problem), seed=seed)
        routing = call.routing()
        kernel = poly.compile(call.activations, self.weights[0], routing, call.out,
                              gemm=problem.gemm, num_sms=self.num_sms)
        occ = detect_gpu().occupancy(configs[0].num_warps, kernel.metadata.shared,
                                     kernel.n_regs)
        self.bank = KernelBank.build(configs, occ)
        self.poly = PolyGemm(configs, occupancy=occ)

    def time_all(self, hist: np.ndarray) -> np.ndarray:
        call, routing = self._call(hist)
        return np.array([self._time(call, routing, b) for b in range(len(self.bank))])

    def time_auto(self, poly: PolyGemm, hist: np.ndarray) -> tuple[float, int]:
        """Time of the self-selecting launch and the branch it chose."""
        call, routing = self._call(hist)
        choice = torch.empty(1, dtype=torch.int32, device="cuda")
        t = time_graph(lambda i: poly(call.activations, self.weights[i % len(self.weights)],
                                      routing, call.out, gemm=self.problem.gemm,
                                      num_sms=self.num_sms, choice=choice))
        return t, int(choice.item())

    def _call(self, hist):
        call = make_call(self.problem, self.weights, hist, seed=self.seed)
        return call, call.routing()

    def _time(self, call, routing, branch: int) -> float:
        copies = len(self.weights)
        return time_graph(lambda i: self.poly(call.activations, self.weights[i % copies],
                                              routing, call.out, gemm=self.problem.gemm,
                                              num_sms=self.num_sms, force=branch))

    def device_info(self) -> dict[str, Any]:
        return device_info()


def make_timer(problem: MoEProblem, configs: Sequence[KernelConfig] | None,
               options: TimerOptions) -> PolyTimer:
    """The family's registry entry (``ramp.families``): ``configs`` are the branches."""
    if not configs:
        raise InputError("the triton-poly family times given branches: pass them")
    return PolyTimer(problem, configs)


def _probe_hist(problem: MoEProblem) -> np.ndarray:
    from ramp.histograms import sample_histograms

    return sample_histograms("uniform", problem.num_experts, 64, problem.top_k)[0]
