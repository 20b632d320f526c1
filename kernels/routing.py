"""The routing stage of an MoE layer: histogram, counting sort and offsets, on the GPU.

Every GEMM path (the Triton and CuTe families, ``torch._grouped_mm``) and the shared
profiling timer consume one ``Routing``; none of them routes for itself, as vLLM keeps
prepare/finalize apart from the experts. The interface:

- input: ``topk_ids`` [T, k] (any integer dtype, ids in ``0..E-1``) and ``topk_weights``
  [T, k] of one call, on the GPU;
- output (``Routing``, all on the same device, nothing read back to the host):
  ``counts`` [E] int32, the expert histogram ``h``; ``sorted_slots`` [T*k] int32, the
  flat slots ``token * k + j`` ordered by expert, so the rows of expert ``e`` are
  positions ``offsets[e] .. offsets[e] + counts[e]`` with ``offsets`` the exclusive
  cumulative sum of ``counts`` (consumers derive it on the device: a cumulative sum
  over E in registers, or ``torch.cumsum``); ``topk_weights`` [T*k] float32, flat.

Up to ``ROUTE_BLOCK`` slots one launch of one CTA (``moe_route_kernel``); more slots
two launches over ``cdiv(slots, ROUTE_SPLIT_BLOCK)`` CTAs (per-CTA histograms, then
each CTA's scatter from their prefix sums), because the single CTA's two loops grew
with the slots: on the H200 it took 3.1 us at 96 slots, 10.8 us at 1,536 and 27 us at
4,096 (Qwen3-30B-A3B, T = 512), where vLLM's ``moe_align_block_size`` took 5-6 us
(``bench/results/H200/H200_*_layer-parts.json``). No host sync, and a grid that depends
on T alone: capturable in a CUDA graph. Order within an expert is whatever the atomics
give; no consumer depends on it (each row is independent).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ramp.kernels.triton.moe_gemm import (
    moe_route_count_kernel,
    moe_route_kernel,
    moe_route_scatter_kernel,
)

ROUTE_BLOCK = 1024  # slots one loop step of the single routing CTA reads; above, split
ROUTE_SPLIT_BLOCK = 256  # slots per CTA of the split routing
ROUTE_PARTIAL_ROWS = 16  # per-CTA histograms each scatter CTA loads at once (T*k / 256 rows)


@dataclass(frozen=True)
class Routing:
    """Device-side routing of one call: the histogram and the expert-sorted slots."""

    counts: torch.Tensor        # [E] int32, the expert histogram h
    sorted_slots: torch.Tensor  # [T*k] int32, flat (token*k + j) slots sorted by expert
    topk_weights: torch.Tensor  # [T*k] float32, flat routing weights
    num_tokens: int
    top_k: int
    num_experts: int


def pow2(x: int) -> int:
    """The smallest power of two >= x (register vectors over E are padded to it)."""
    return 1 << max(0, (x - 1).bit_length())


def route(topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int) -> Routing:
    """Count and counting-sort the token-expert slots on the GPU (no sync)."""
    tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1).to(torch.int32)
    slots, e_pow2, dev = flat.numel(), pow2(num_experts), topk_ids.device
    counts = torch.empty(num_experts, dtype=torch.int32, device=dev)
    sorted_slots = torch.empty(slots, dtype=torch.int32, device=dev)
    if slots <= ROUTE_BLOCK:
        cursor = torch.empty(num_experts, dtype=torch.int32, device=dev)
        moe_route_kernel[(1,)](flat, counts, cursor, sorted_slots, slots, E=num_experts,
                               E_POW2=e_pow2, BLOCK=ROUTE_BLOCK)
    else:
        ctas = -(-slots // ROUTE_SPLIT_BLOCK)
        partial = torch.empty(ctas, e_pow2, dtype=torch.int32, device=dev)
        cursor = torch.empty(ctas, e_pow2, dtype=torch.int32, device=dev)
        moe_route_count_kernel[(ctas,)](flat, partial, slots, E_POW2=e_pow2,
                                        BLOCK=ROUTE_SPLIT_BLOCK)
        moe_route_scatter_kernel[(ctas,)](flat, partial, counts, cursor, sorted_slots, slots,
                                          ctas, E=num_experts, E_POW2=e_pow2,
                                          BLOCK=ROUTE_SPLIT_BLOCK, ROWS=ROUTE_PARTIAL_ROWS)
    return Routing(counts, sorted_slots, topk_weights.reshape(-1).float(), tokens, top_k,
                   num_experts)


def local_routing(ids: torch.Tensor, weights: torch.Tensor, num_experts: int,
                  expert_map: torch.Tensor | None) -> Routing:
    """The routing of this rank's experts.

    Without ``expert_map`` every id is local. With it, ids are mapped and other ranks'
    slots go to a spare bin ``num_experts`` that sorts after every local expert; the
    returned routing counts only the local experts, so the GEMMs (which walk expert row
    ranges from the counts) never touch those slots, and they stay out of the sum.
    """
    if expert_map is None:
        return route(ids, weights, num_experts)
    mapped = expert_map.index_select(0, ids.reshape(-1).long()).view(ids.shape)
    spare = torch.full_like(mapped, num_experts)
    full = route(torch.where(mapped >= 0, mapped, spare), weights, num_experts + 1)
    return dataclasses.replace(full, counts=full.counts[:num_experts],
                               num_experts=num_experts)
