"""vLLM's own Triton fused_moe GEMM with the config vLLM picks, as a kernel-level baseline.

Runs the installed vLLM (the slim 0.26.0 pack on the H200: ``source bench/engine/env.sh``
after carrying it, ``docs/engine.md``); vLLM's code is never part of this repository.
Without vLLM, or with a vLLM whose fused_moe functions differ from 0.26's, importing this
module raises ImportError and the benchmarks record the baseline as not run.

Timed as vLLM launches one GEMM (``dispatch_fused_moe_kernel`` with the config
``try_get_optimal_moe_config`` returns for M = T: its tuned table for the GPU, else its
default), inside a CUDA graph, with its expert assignment (``expert_assignment``:
``moe_align_block_size``, or at T*k*4 <= E none, the kernel's naive path) outside the
timed region (vLLM prepares it once per layer, for both GEMMs) and, for w13, without
the separate silu_and_mul kernel that RaMP's w13 fuses. Both omissions favour vLLM.
Each output is checked against float32 (``rel_err``; ``MAX_REL_ERR``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ramp.errors import InputError
from ramp.kernels.cuda_timing import time_graph
from ramp.kernels.workload import make_call, make_weights, weight_copies
from ramp.problem import MoEProblem

try:
    import triton.language as tl
    from vllm.model_executor.layers.fused_moe import fused_moe as vllm_fused_moe
except ImportError as exc:  # no vLLM here: the caller records "not run"
    raise ImportError(f"vLLM is not importable here ({exc})") from exc

MAX_REL_ERR = 2e-2  # as the plan tool's check of every path

EXPECTED = ("A", "B", "C", "A_scale", "B_scale", "B_zp", "topk_weights", "sorted_token_ids",
            "expert_ids", "num_tokens_post_padded", "mul_routed_weight", "top_k", "config",
            "compute_type")
_params = tuple(inspect.signature(vllm_fused_moe.dispatch_fused_moe_kernel).parameters)
if _params[:len(EXPECTED)] != EXPECTED or not hasattr(vllm_fused_moe,
                                                      "_prepare_expert_assignment"):
    raise ImportError(f"vLLM's fused_moe is not 0.26's (dispatch_fused_moe_kernel takes "
                      f"{_params[:len(EXPECTED)]}; _prepare_expert_assignment is needed)")


def expert_assignment(topk_ids: torch.Tensor, cfg: dict[str, Any], num_experts: int
                      ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """What vLLM's fused_experts prepares before its GEMMs: ``moe_align_block_size``, or
    with few slots per expert (T*k*4 <= E) its naive assignment (no alignment kernel,
    ``sorted_token_ids`` None)."""
    tokens, top_k = topk_ids.shape
    return vllm_fused_moe._prepare_expert_assignment(topk_ids, cfg, tokens, top_k,
                                                     num_experts, None,
                                                     ignore_invalid_experts=True)


def vllm_weight_shapes(problem: MoEProblem) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(w1, w2) shapes of the layer ``problem`` is one GEMM of, as vLLM's config lookup
    takes them: w1 [E, 2I, H], w2 [E, H, I]."""
    e = problem.num_experts
    if problem.gemm == "w13":
        return (e, problem.n, problem.k), (e, problem.k, problem.n // 2)
    return (e, 2 * problem.k, problem.n), (e, problem.n, problem.k)


def vllm_config(problem: MoEProblem, tokens: int) -> dict[str, Any]:
    """The config vLLM runs a layer of ``tokens`` tokens with (bf16: no dtype selector)."""
    w1, w2 = vllm_weight_shapes(problem)
    return dict(vllm_fused_moe.try_get_optimal_moe_config(w1, w2, problem.top_k, None, tokens))


def vllm_gemm(problem: MoEProblem, acts: torch.Tensor, w: torch.Tensor,
              topk_weights: torch.Tensor, cfg: dict[str, Any], out: torch.Tensor,
              prep: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]) -> None:
    """One GEMM as fused_experts_impl launches it: w13 [T, H] -> [T, k, 2I] (a row per
    slot); w2, its rows the slots [T*k, I], as top-k 1 -> [T, k, H] scaled by the slot's
    routing weight."""
    sorted_ids, expert_ids, padded = prep
    w13 = problem.gemm == "w13"
    vllm_fused_moe.dispatch_fused_moe_kernel(
        acts, w, out, None, None, None, topk_weights, sorted_ids, expert_ids, padded,
        not w13, problem.top_k if w13 else 1, cfg, compute_type=tl.bfloat16
        if acts.dtype == torch.bfloat16 else tl.float16, use_fp8_w8a8=False,
        use_int8_w8a8=False, use_int8_w8a16=False, use_int4_w4a16=False,
        per_channel_quant=False)


def vllm_times(problem: MoEProblem, hists: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """Per histogram: time, the config vLLM picks for T tokens and the relative error of
    its output vs float32 (a baseline is checked like our kernels)."""
    weights = make_weights(problem, weight_copies(problem), seed=seed)
    source = Path(vllm_fused_moe.__file__).parent / "configs"
    out = []
    for hist in hists:
        call = make_call(problem, weights, hist, seed=seed)
        if call.expert_map is not None:
            raise InputError(f"vLLM's baseline times whole-token calls; histogram "
                             f"{hist.tolist()} is one EP rank's view (rows not a multiple "
                             f"of top_k={problem.top_k})")
        tokens = call.topk_ids.shape[0]
        cfg = vllm_config(problem, tokens)
        ids = call.topk_ids.to(torch.int32)
        tw = call.topk_weights.float().contiguous()
        prep = expert_assignment(ids, cfg, problem.num_experts)
        result = torch.full((tokens, problem.top_k, problem.n), float("nan"),
                            dtype=weights[0].dtype, device="cuda")
        vllm_gemm(problem, call.activations, weights[0], tw, cfg, result, prep)
        err = _rel_err(problem, call, weights[0], result.reshape(ids.numel(), problem.n))
        us = time_graph(lambda i, call=call, tw=tw, cfg=cfg, prep=prep, r=result:
                        vllm_gemm(problem, call.activations, weights[i % len(weights)], tw,
                                  cfg, r, prep))
        out.append({"us": us, "config": cfg, "rel_err": err,
                    "naive_assignment": prep[0] is None, "table": _table_name(problem, source)})
    return out


def _table_name(problem: MoEProblem, configs_dir: Path) -> str | None:
    """vLLM's tuned-table file for this layer on this GPU, or None (its default config)."""
    _, w2 = vllm_weight_shapes(problem)
    name = vllm_fused_moe.get_config_file_name(w2[0], w2[2], None)
    return name if (configs_dir / name).exists() else None


def _rel_err(problem: MoEProblem, call, w: torch.Tensor, result: torch.Tensor) -> float:
    """vLLM writes slot order: w13 pre-activation [T*k, 2I]; w2 weight-scaled [T*k, H]."""
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
