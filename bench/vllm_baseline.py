"""vLLM's own Triton fused_moe kernel with vLLM's shipped H100 config, as a baseline.

vLLM cannot be installed on the GPU machine and its code is not ours to ship, so the
runner lives in an uncommitted ``.vllm_ref/`` folder (its README says how it was built
from vLLM's sources) and is carried to the GPU with ``carry=[".vllm_ref"]``. Without it
this module raises ImportError and the benchmark records the baseline as not run.

Timed as vLLM launches it: the GEMM kernel alone, inside a CUDA graph, with
``moe_align_block_size`` done outside the timed region (vLLM's CUDA op costs about
20 us per call on top) and, for w13, without the separate silu_and_mul kernel.
Both omissions favour vLLM.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ramp.kernels.cuda_timing import time_graph
from ramp.kernels.workload import make_call, make_weights, weight_copies
from ramp.problem import MoEProblem

REF = Path(__file__).resolve().parent.parent / ".vllm_ref"
if not (REF / "runner.py").exists():
    raise ImportError(f"{REF} is absent: vLLM's kernel is not shipped with RaMP")
sys.path.insert(0, str(REF))
import runner as vllm  # noqa: E402


def vllm_shape(problem: MoEProblem) -> tuple[int, int, int, int]:
    """(E, N, K, topk) as vLLM names them: N = intermediate per shard, K = hidden."""
    if problem.gemm == "w13":
        return problem.num_experts, problem.n // 2, problem.k, problem.top_k
    return problem.num_experts, problem.k, problem.n, problem.top_k


def vllm_times(problem: MoEProblem, hists: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """Per histogram: time, the config vLLM picks for T tokens, its source file, and the
    relative error of its output vs float32 (a baseline is checked like our kernels)."""
    weights = make_weights(problem, weight_copies(problem), seed=seed)
    out = []
    for hist in hists:
        call = make_call(problem, weights, hist, seed=seed)
        tokens = call.topk_ids.shape[0]
        cfg, source = vllm.pick_config(vllm_shape(problem), tokens, return_source=True)
        ids = call.topk_ids.to(torch.int32)
        tw = call.topk_weights.float().contiguous()
        prep = vllm.prepare(ids, cfg["BLOCK_SIZE_M"], problem.num_experts)
        result = torch.full((tokens * problem.top_k, problem.n), float("nan"),
                            dtype=weights[0].dtype, device="cuda")
        vllm.vllm_gemm(problem.gemm, call.activations, weights[0], ids, tw,
                       problem.num_experts, cfg, result, prep)
        err = _rel_err(problem, call, weights[0], result)
        us = time_graph(lambda i, call=call, ids=ids, tw=tw, cfg=cfg, prep=prep, r=result:
                        vllm.vllm_gemm(problem.gemm, call.activations,
                                       weights[i % len(weights)], ids, tw,
                                       problem.num_experts, cfg, r, prep))
        out.append({"us": us, "config": cfg, "source": Path(source).name, "rel_err": err})
    return out


def _rel_err(problem: MoEProblem, call, w: torch.Tensor, result: torch.Tensor) -> float:
    """vLLM writes slot order: w13 pre-activation [T*k, 2N]; w2 weight-scaled [T*k, H]."""
    ids = call.topk_ids.reshape(-1)
    slots = torch.arange(ids.numel(), device=ids.device)
    a = call.activations.float()
    a = a[slots // problem.top_k] if problem.gemm == "w13" else a
    ref = torch.empty(result.shape, dtype=torch.float32, device=a.device)
    for e in torch.unique(ids).tolist():
        rows = ids == e
        ref[rows] = a[rows] @ w[e].float().T
    if problem.gemm == "w2":
        ref *= call.topk_weights.reshape(-1, 1).float()
    return float((result.float() - ref).norm() / ref.norm())
