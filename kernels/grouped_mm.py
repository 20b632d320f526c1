"""``torch._grouped_mm`` as an external, black-box kernel family.

PyTorch (>= 2.8) runs a CUTLASS pointer-array grouped GEMM for bf16 on sm90 with no host
sync: rows sorted by expert, ``offs`` the cumulative row count per expert (on the GPU).
RaMP does not see inside it. PyTorch's source (aten/src/ATen/native/cuda/GroupMM.cu)
documents two sm90 instantiations, both with a 2x1 cluster: a ping-pong 64x128x128 tile
when the *average* rows per expert or N is at most 128, else a cooperative 128x256x64
tile. The family registers those two configurations; each call's time belongs to the
one PyTorch's rule picks, so the wave cost model (fed only grid geometry) fits it like
any other family and RaMP can choose between it and its own families per call.

Timed as the GEMM alone on already expert-sorted rows: no gather, no SiLU*mul, no
weighting. That favours it against the Triton family, whose w13 time includes all three.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.families import TimerOptions
from ramp.kernels.cuda_timing import device_info, time_graph
from ramp.kernels.workload import make_weights, weight_copies
from ramp.problem import MoEProblem

FAMILY = "grouped_mm"
FAMILY_VERSION = f"torch-{torch.__version__.split('+')[0]}"
PINGPONG = KernelConfig(FAMILY, 64, 128, 128, num_warps=8, persistent=True, cluster_m=2,
                       variant="pingpong")
COOPERATIVE = KernelConfig(FAMILY, 128, 256, 64, num_warps=12, persistent=True, cluster_m=2,
                           variant="cooperative")


SMALL_ROWS = 128  # PyTorch's threshold on rows per expert (integer average) and on N


def grouped_mm_bank(problem: MoEProblem) -> KernelBank:
    """The two tiles, each applicable on its side of PyTorch's threshold.

    PyTorch compares the integer average ``rows // E`` with 128, i.e. mean rows < 129.
    """
    if problem.n <= SMALL_ROWS:
        return KernelBank.build([PINGPONG], applies=[(0.0, np.inf)])
    edge = SMALL_ROWS + 1 - 1e-9
    return KernelBank.build([PINGPONG, COOPERATIVE], applies=[(0.0, edge), (edge, np.inf)])


def grouped_mm_configs(dtype_bytes: int = 2) -> list[KernelConfig]:
    """The family's configuration space: PyTorch's two sm90 tiles (any dtype it runs)."""
    return [PINGPONG, COOPERATIVE]


def pytorch_tile_choice(rows: int, num_experts: int, n: int) -> int:
    """Index (0 ping-pong, 1 cooperative) of the tile PyTorch picks: its rule looks at
    the average rows per expert, not at the histogram."""
    return 0 if rows // num_experts <= SMALL_ROWS or n <= SMALL_ROWS else 1


def grouped_mm(a_sorted: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """[M, K] expert-sorted rows x w[E, N, K] -> [M, N]; ``offs`` [E] int32 on the GPU, the
    inclusive cumulative row count per expert (rows past ``offs[-1]`` are not written)."""
    return torch._grouped_mm(a_sorted, w.transpose(1, 2), offs=offs)


def expert_offsets(counts: torch.Tensor) -> torch.Tensor:
    """``offs`` for ``grouped_mm`` from the expert histogram, on the device."""
    return torch.cumsum(counts, 0, dtype=torch.int32)


class GroupedMMTimer:
    """Implements ``ramp.profiler.Timer`` for the grouped_mm family (its two tiles)."""

    family = FAMILY
    family_version = FAMILY_VERSION

    def __init__(self, problem: MoEProblem, seed: int = 0) -> None:
        self.problem = problem
        self.bank = grouped_mm_bank(problem)
        self.weights = make_weights(problem, weight_copies(problem), seed=seed)
        self.seed = seed

    def inputs(self, hist: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert-sorted rows [sum(h), K] and the device-side counts of one call."""
        rows = int(np.sum(hist))
        gen = torch.Generator(device="cuda").manual_seed(self.seed + 2)
        a_sorted = torch.randn(rows, self.problem.k, device="cuda", generator=gen).to(
            self.weights[0].dtype)
        counts = torch.as_tensor(hist, device="cuda", dtype=torch.int32)
        return a_sorted, counts

    def verify(self, hist: np.ndarray) -> float:
        """Relative error vs float32 per-expert matmuls."""
        a, counts = self.inputs(hist)
        out = grouped_mm(a, self.weights[0], expert_offsets(counts))
        ref = torch.cat([a[s:s + n].float() @ self.weights[0][e].float().T for e, (s, n) in
                         enumerate(zip(np.cumsum(hist) - hist, hist)) if n > 0])
        return float((out.float() - ref).norm() / ref.norm())

    def time_all(self, hist: np.ndarray) -> np.ndarray:
        """The call's time, in the slot of the tile PyTorch ran (the other stays NaN)."""
        a, counts = self.inputs(hist)
        times = np.full(len(self.bank), np.nan)
        chosen = pytorch_tile_choice(int(np.sum(hist)), self.problem.num_experts,
                                     self.problem.n)
        times[chosen] = time_graph(
            lambda i: grouped_mm(a, self.weights[i % len(self.weights)], expert_offsets(counts)))
        return times

    def device_info(self) -> dict[str, Any]:
        return device_info()


def make_timer(problem: MoEProblem, configs: list[KernelConfig] | None,
               options: TimerOptions) -> GroupedMMTimer:
    """The family's registry entry (``ramp.families``): PyTorch picks the tile, so the
    bank is always its two tiles."""
    if configs is not None and set(configs) - set(grouped_mm_configs()):
        raise InputError("grouped_mm's configurations are PyTorch's two tiles")
    return GroupedMMTimer(problem)
