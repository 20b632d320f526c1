"""Whole MoE layers RaMP can run in an engine, one callable per path.

Each builder returns ``layer(hidden, w13, w2, topk_ids, topk_weights, out) -> out``:
``hidden`` [T, K], ``w13`` [E, 2I, K] (gate rows then up rows), ``w2`` [E, K, I],
``topk_ids``/``topk_weights`` [T, k]; ``out`` [T, K] receives the weighted top-k sum (a
new tensor when None). All route on the GPU and launch with grids that depend only on T
and the configuration, so every path is CUDA-graph capturable and reads nothing back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ramp.config import KernelConfig
from ramp.kernels.grouped_mm import grouped_mm_layer
from ramp.kernels.routing import route
from ramp.kernels.triton.fused_moe import moe_gemm
from ramp.kernels.triton.poly import PolyGemm

Layer = Callable[..., torch.Tensor]
# tokens -> (w13 config, w2 config, w13 occupancy, w2 occupancy)
ConfigsAt = Callable[[int], tuple[KernelConfig, KernelConfig, int, int]]


def top_k_sum(rows: torch.Tensor, top_k: int, out: torch.Tensor | None) -> torch.Tensor:
    return torch.sum(rows.view(rows.shape[0] // top_k, top_k, -1), dim=1, out=out)


def poly_layer(w13_gemm: PolyGemm, w2_gemm: PolyGemm, num_sms: int) -> Layer:
    """The sync-free path: both GEMMs pick their branch on the GPU from the histogram."""

    def layer(hidden, w13, w2, ids, weights, out=None):
        rows = ids.numel()
        routing = route(ids, weights, w13.shape[0])
        inter = hidden.new_empty(rows, w2.shape[2])
        w13_gemm(hidden, w13, routing, inter, gemm="w13", num_sms=num_sms)
        down = hidden.new_empty(rows, w2.shape[1])
        w2_gemm(inter, w2, routing, down, gemm="w2", num_sms=num_sms)
        return top_k_sum(down, ids.shape[1], out)

    return layer


def triton_layer(configs_at: ConfigsAt, num_sms: int) -> Layer:
    """RaMP's Triton family with one configuration per GEMM chosen from T (host-side)."""

    def layer(hidden, w13, w2, ids, weights, out=None):
        cfg13, cfg2, occ13, occ2 = configs_at(hidden.shape[0])
        rows = ids.numel()
        routing = route(ids, weights, w13.shape[0])
        inter = hidden.new_empty(rows, w2.shape[2])
        moe_gemm(hidden, w13, routing, cfg13, inter, gemm="w13", num_sms=num_sms,
                 occupancy=occ13)
        down = hidden.new_empty(rows, w2.shape[1])
        moe_gemm(inter, w2, routing, cfg2, down, gemm="w2", num_sms=num_sms, occupancy=occ2)
        return top_k_sum(down, ids.shape[1], out)

    return layer


def grouped_mm_path(hidden, w13, w2, ids, weights, out=None):
    """``torch._grouped_mm`` on RaMP's on-GPU routing."""
    return grouped_mm_layer(hidden, w13, w2, route(ids, weights, w13.shape[0]), out)
