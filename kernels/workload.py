"""GPU inputs of one MoE GEMM call that realise a given expert histogram.

Profiling and benchmarks time configurations on chosen histograms, so they need routing
(top-k ids) that produces exactly that histogram, plus random weights and activations
(never zeros: they hide unwritten outputs and can run faster than real data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ramp.errors import InputError
from ramp.problem import MoEProblem

if TYPE_CHECKING:
    from ramp.kernels.routing import Routing

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_WEIGHT_COPIES = 16  # only tiny (test) shapes need more to cover 3x L2


def weight_copies(problem: MoEProblem, l2_bytes: int | None = None) -> int:
    """Copies of the expert weights a timing loop cycles through, so no replay finds its
    weights in L2: the smallest call (one token) reads ``top_k`` experts' weights, and
    enough copies make those exceed 3x the L2 (quack sizes its copies to 3x L2); at
    least 2, at most MAX_WEIGHT_COPIES. ``l2_bytes`` defaults to the live device's L2
    (a 50 MiB H100 or H200: 4 copies for Qwen3-30B-A3B's w13, 2 for Mixtral's)."""
    if l2_bytes is None:
        l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    touched = min(problem.top_k, problem.num_experts) * problem.expert_weight_bytes
    return min(MAX_WEIGHT_COPIES, max(2, 3 * l2_bytes // touched + 1))


def topk_ids_for_histogram(hist: np.ndarray, top_k: int, seed: int = 0) -> np.ndarray:
    """[T, top_k] expert ids, distinct per token, whose histogram is ``hist``.

    Lays the slots out expert-major in a [top_k, T] grid: each expert's run is at most T
    long, so it never lands twice in one column (token). Tokens are then shuffled.

    One EP rank's local histogram need not be whole tokens' worth of slots (its tokens
    also route to other ranks' experts): it gets the fewest tokens that hold it, their
    other slots on the spare id ``len(hist)`` (an expert of another rank), which
    ``spare_expert_map`` keeps out of the routing as the engine's expert map does.
    """
    hist = np.asarray(hist, dtype=np.int64)
    if (hist < 0).any():
        raise InputError(f"histogram has a negative count: {hist.tolist()}")
    total = int(hist.sum())
    tokens = max(-(-total // top_k), int(hist.max(initial=0)))
    spare = tokens * top_k - total
    flat = np.repeat(np.arange(hist.size + 1), np.append(hist, spare))
    ids = flat.reshape(top_k, tokens).T
    return ids[np.random.default_rng(seed).permutation(tokens)]


def spare_expert_map(num_experts: int, device: str = "cuda") -> torch.Tensor:
    """The expert map of ids from ``topk_ids_for_histogram`` with spare slots: local ids
    ``0..E-1`` map to themselves, the spare id ``E`` to -1 (another rank's)."""
    emap = torch.arange(num_experts + 1, device=device, dtype=torch.int32)
    emap[num_experts] = -1
    return emap


@dataclass
class GemmWorkload:
    """Weights (several copies, to defeat L2 reuse between timed calls) and one call's
    activations, routing and output buffer for one GEMM of ``problem``."""

    problem: MoEProblem
    weights: list[torch.Tensor]      # copies of [E, N, K]
    activations: torch.Tensor        # w13: [T, K] hidden; w2: [T*k, K] intermediate
    topk_ids: torch.Tensor           # [T, k]
    topk_weights: torch.Tensor       # [T, k]
    out: torch.Tensor                # w13: [T*k, N/2]; w2: [T*k, N]
    expert_map: torch.Tensor | None = None  # where ids name other ranks' experts

    def routing(self) -> Routing:
        """This call's ``Routing`` of its local experts (``local_routing``)."""
        from ramp.kernels.routing import local_routing

        return local_routing(self.topk_ids, self.topk_weights, self.problem.num_experts,
                             self.expert_map)


def make_weights(problem: MoEProblem, copies: int, device: str = "cuda",
                 seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = TORCH_DTYPES[problem.dtype]
    scale = problem.k ** -0.5
    return [
        torch.randn(problem.num_experts, problem.n, problem.k, device=device, generator=gen,
                    dtype=dtype).mul_(scale)
        for _ in range(copies)
    ]


def make_call(problem: MoEProblem, weights: list[torch.Tensor], hist: np.ndarray,
              device: str = "cuda", seed: int = 0) -> GemmWorkload:
    """Activations, routing and output buffer for one histogram (one EP rank's local
    view too: its other slots then name a spare expert the call's map sends away)."""
    if len(hist) != problem.num_experts:  # a shorter one would land its spare on an expert
        raise InputError(f"histogram of {len(hist)} experts for a problem of "
                         f"{problem.num_experts}")
    ids = topk_ids_for_histogram(hist, problem.top_k, seed)
    call = make_call_for_ids(problem, weights, ids, device, seed)
    if ids.max(initial=0) == problem.num_experts:
        call.expert_map = spare_expert_map(problem.num_experts, device)
    return call


def make_call_for_ids(problem: MoEProblem, weights: list[torch.Tensor], ids: np.ndarray,
                      device: str = "cuda", seed: int = 0) -> GemmWorkload:
    """Activations and output buffer for given top-k ids [T, top_k] (e.g. a recorded
    batch; under expert parallelism global ids that the caller routes with an expert
    map, ``ramp.kernels.routing.local_routing``)."""
    tokens = ids.shape[0]
    rows = tokens * problem.top_k
    dtype = TORCH_DTYPES[problem.dtype]
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    act_rows = tokens if problem.gemm == "w13" else rows
    acts = torch.randn(act_rows, problem.k, device=device, generator=gen).to(dtype)
    topk_weights = torch.rand(tokens, problem.top_k, device=device, generator=gen) + 0.1
    out_cols = problem.n // 2 if problem.gemm == "w13" else problem.n
    out = torch.empty(rows, out_cols, device=device, dtype=dtype)
    return GemmWorkload(problem, weights, acts, torch.as_tensor(ids, device=device),
                        topk_weights, out)
