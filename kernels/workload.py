"""GPU inputs of one MoE GEMM call that realise a given expert histogram.

Profiling and benchmarks time configurations on chosen histograms, so they need routing
(top-k ids) that produces exactly that histogram, plus random weights and activations
(never zeros: they hide unwritten outputs and can run faster than real data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ramp.errors import InputError
from ramp.problem import MoEProblem

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
    """
    hist = np.asarray(hist, dtype=np.int64)
    total = int(hist.sum())
    if total % top_k:
        raise InputError(f"histogram sums to {total}, not a multiple of top_k={top_k}")
    tokens = total // top_k
    if hist.max(initial=0) > tokens:
        raise InputError(f"an expert has {hist.max()} rows but there are only {tokens} tokens")
    flat = np.repeat(np.arange(hist.size), hist)
    ids = flat.reshape(top_k, tokens).T
    return ids[np.random.default_rng(seed).permutation(tokens)]


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
    """Activations, routing and output buffer for one histogram."""
    return make_call_for_ids(problem, weights, topk_ids_for_histogram(hist, problem.top_k, seed),
                             device, seed)


def make_call_for_ids(problem: MoEProblem, weights: list[torch.Tensor], ids: np.ndarray,
                      device: str = "cuda", seed: int = 0) -> GemmWorkload:
    """Activations and output buffer for given top-k ids [T, top_k] (e.g. a recorded
    batch; under expert parallelism global ids that the caller routes with an expert
    map, ``ramp.kernels.layers.local_routing``)."""
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
