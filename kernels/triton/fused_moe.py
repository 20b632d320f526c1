"""Host side of the Triton fused-MoE family: one GEMM and the whole layer (routing is its
own stage, ``ramp.kernels.routing``).

Every function takes engine-style tensors (vLLM's fused_moe layout) and launches with
grids that depend only on T and the configuration, so a call never reads device data
on the host and can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton

from ramp.config import KernelConfig
from ramp.geometry import max_class_row_tiles
from ramp.kernels.routing import Routing, pow2, route
from ramp.kernels.triton.configs import TMA
from ramp.kernels.triton.moe_gemm import (
    moe_gemm_kernel,
    moe_gemm_tiles_kernel,
    moe_gemm_w13_routed_kernel,
)

# Calls of at most this many slots (T * top_k) may fuse the routing into w13: each of its
# CTAs scans every slot id, which costs little only while they are few (decode sizes).
FUSED_ROUTING_MAX_SLOTS = 1024
SLOT_BLOCK = 64  # slot ids one step of that scan reads


def launch_abi(a, w, routing: Routing, out, gemm: str, cfg: KernelConfig
               ) -> tuple[tuple, tuple, dict]:
    """What every MoE GEMM kernel of this family takes, in its argument order: the
    buffers, the sizes and strides, and the constexprs fixed by the call and launch
    (the one-configuration and the polymorphic kernels both build on this); the
    constexprs are the caller's to change."""
    buffers, sizes = launch_operands(a, w, routing, out)
    return buffers, sizes, dict(_call_constexprs(cfg, gemm, routing.num_experts,
                                                 routing.top_k))


def launch_operands(a, w, routing: Routing, out) -> tuple[tuple, tuple]:
    """The buffers, then the sizes and strides, every kernel of the family takes."""
    return ((a, w, out, routing.counts, routing.sorted_slots, routing.topk_weights),
            (w.shape[1], w.shape[2], *a.stride(), *w.stride(), *out.stride()))


@functools.lru_cache(maxsize=4096)
def _call_constexprs(cfg: KernelConfig, gemm: str, num_experts: int, top_k: int) -> dict:
    """The constexprs every kernel of the family takes, fixed by the configuration and
    the layer (shared: callers copy before changing them)."""
    silu = gemm == "w13"
    return dict(E=num_experts, E_POW2=pow2(num_experts), TOP_K=top_k, GROUP_M=cfg.group_m,
                GATHER_A=silu, SCATTER_C=not silu, SILU_MUL=silu, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)


def _max_tiles(cfg: KernelConfig, gemm: str, n: int, rows: int, num_experts: int) -> int:
    """Upper bound on the output tiles of a call of ``rows`` slots, from T and the
    configuration only: the one-tile-per-CTA grid."""
    out_cols, out_n = cfg.output_tiling(gemm, n)
    return max_class_row_tiles(rows, num_experts, cfg) * triton.cdiv(out_cols, out_n)


def tma_descriptors(a, w, cfg: KernelConfig, gemm: str) -> dict:
    """The ``TMA`` variant's operand descriptors (``_tile_body``): the weights as
    [E * N, K] in boxes of one tile's columns (made once per weight tensor, address
    and box), and for w2 (rows contiguous in expert-sorted order) the activations as
    [rows, K] in boxes of one row tile."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    n = w.shape[1]
    strides = w.stride()
    if strides[2] != 1 or strides[0] != n * strides[1]:
        raise ValueError(f"{cfg.name}: TMA needs the weights [E, N, K] contiguous, got "
                         f"strides {strides}")
    _, out_n = cfg.output_tiling(gemm, n)
    descs = dict(b_desc=_weight_descriptor(w, w.data_ptr(), tuple(w.shape), strides, out_n,
                                           cfg.block_k), TMA_B=True)
    if gemm == "w2":  # the descriptor checks that a's rows are contiguous
        descs.update(a_desc=TensorDescriptor(a, list(a.shape), list(a.stride()),
                                             [cfg.block_m, cfg.block_k]), TMA_A=True)
    return descs


@functools.lru_cache(maxsize=512)
def _weight_descriptor(w, data_ptr: int, shape: tuple, strides: tuple, out_n: int,
                       block_k: int):
    """The (contiguous) weights' descriptor, keyed by the tensor and its address, shape
    and strides (a weight whose storage moves gets a new one): an engine passes the same
    weight tensors every call, and each descriptor holds its tensor, as the engine does."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    num_experts, n, k = shape
    return TensorDescriptor(w, [num_experts * n, k], [strides[1], 1], [out_n, block_k])


@functools.lru_cache(maxsize=4096)
def _launch_plan(cfg: KernelConfig, gemm: str, n: int, k: int, rows: int,
                 num_experts: int, top_k: int, num_sms: int, occupancy: int
                 ) -> tuple[Any, int, dict]:
    """Kernel, grid and constexprs of a call, which follow from the configuration and
    the call's sizes alone: computed once per combination (an eager call pays each
    line of Python on the host). The keyword dict is shared: callers copy before
    adding to it."""
    tiles = _max_tiles(cfg, gemm, n, rows, num_experts)
    grid = min(tiles, num_sms * occupancy) if cfg.persistent else tiles
    kwargs = dict(_call_constexprs(cfg, gemm, num_experts, top_k), BLOCK_N=cfg.block_n,
                  BLOCK_K=cfg.block_k, PERSISTENT=cfg.persistent, EVEN_K=k % cfg.block_k == 0)
    if cfg.variant == TMA and cfg.small_rows:
        raise ValueError(f"{cfg.name}: the TMA variant takes one-class configurations")
    if cfg.small_rows:
        kwargs.update(SMALL_ROWS=cfg.small_rows, BM_SMALL=cfg.small_block_m,
                      BM_LARGE=cfg.block_m)
        return moe_gemm_tiles_kernel, grid, kwargs
    kwargs.update(BLOCK_M=cfg.block_m)
    return moe_gemm_kernel, grid, kwargs


def _launch(a, w, routing, cfg, out, gemm, num_sms, occupancy):
    """Kernel, grid, positional and keyword arguments of one call: ``moe_gemm_kernel``,
    or ``moe_gemm_tiles_kernel`` for a configuration with two row-tile classes."""
    kernel, grid, kwargs = _launch_plan(cfg, gemm, w.shape[1], w.shape[2],
                                        routing.sorted_slots.numel(), routing.num_experts,
                                        routing.top_k, num_sms, occupancy)
    buffers, sizes = launch_operands(a, w, routing, out)
    args = (*buffers, *sizes)
    if cfg.variant == TMA and grid > 0:  # no call launches at T = 0; a descriptor needs rows
        kwargs = dict(kwargs, **tma_descriptors(a, w, cfg, gemm))
    return kernel, grid, args, kwargs


def moe_gemm(
    a: torch.Tensor,
    w: torch.Tensor,
    routing: Routing,
    cfg: KernelConfig,
    out: torch.Tensor,
    *,
    gemm: str,
    num_sms: int,
    occupancy: int = 1,
) -> torch.Tensor:
    """One grouped GEMM of the layer.

    ``gemm="w13"``: a = hidden states [T, K] gathered by token, w = [E, 2I, K], out =
    [T*k, I] in expert-sorted order, SiLU(gate)*up fused. ``gemm="w2"``: a = that
    intermediate [T*k, I], w = [E, hidden, I], out = [T*k, hidden] scattered back to
    slot order and scaled by the routing weight (the top-k sum happens after).
    A configuration with ``small_rows`` > 0 runs its two row-tile classes in one launch.
    ``occupancy`` (CTAs per SM) sizes a persistent grid: one wave of CTAs.
    """
    kernel, grid, args, kwargs = _launch(a, w, routing, cfg, out, gemm, num_sms, occupancy)
    if grid > 0:
        kernel[(grid,)](*args, **kwargs)
    return out


def moe_gemm_w13_routed(a: torch.Tensor, w: torch.Tensor, topk_ids: torch.Tensor,
                        topk_weights: torch.Tensor, num_experts: int, cfg: KernelConfig,
                        out: torch.Tensor) -> Routing:
    """``moe_gemm(gemm="w13")`` with the routing stage fused in (no ``route`` launch
    before it): returns the routing it computed and wrote, which w2 then takes. For
    calls of at most ``FUSED_ROUTING_MAX_SLOTS`` slots; one tile per CTA (a persistent
    configuration's tile runs one-tile-per-CTA here), one-class configurations only."""
    if cfg.small_rows or cfg.variant == TMA:
        raise ValueError(f"{cfg.name}: the fused-routing w13 takes one-class pointer-load "
                         "configurations")
    tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1).to(torch.int32)
    if flat.numel() > FUSED_ROUTING_MAX_SLOTS:
        raise ValueError(f"{flat.numel()} slots: the fused routing takes at most "
                         f"{FUSED_ROUTING_MAX_SLOTS}")
    dev = flat.device
    routing = Routing(torch.empty(num_experts, dtype=torch.int32, device=dev),
                      torch.empty(flat.numel(), dtype=torch.int32, device=dev),
                      topk_weights.reshape(-1).float(), tokens, top_k, num_experts)
    k = w.shape[2]
    grid = _max_tiles(cfg, "w13", w.shape[1], flat.numel(), num_experts)
    _, sizes, constexprs = launch_abi(a, w, routing, out, "w13", cfg)
    for fixed in ("GATHER_A", "SCATTER_C", "SILU_MUL"):  # the kernel is w13's
        constexprs.pop(fixed)
    if grid > 0:
        moe_gemm_w13_routed_kernel[(grid,)](
            a, w, out, flat, flat.numel(), routing.counts, routing.sorted_slots,
            routing.topk_weights, *sizes, **constexprs, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SLOT_BLOCK=SLOT_BLOCK,
            EVEN_K=k % cfg.block_k == 0)
    return routing


def compile_gemm(a, w, routing, cfg, out, *, gemm: str, num_sms: int):
    """Compile (without running) and return Triton's compiled kernel: its register and
    shared-memory use give the occupancy the profiler records."""
    kernel, grid, args, kwargs = _launch(a, w, routing, cfg, out, gemm, num_sms, 1)
    return kernel.warmup(*args, grid=(max(grid, 1),), **kwargs)


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    cfg13: KernelConfig,
    cfg2: KernelConfig,
    *,
    num_sms: int | None = None,
) -> torch.Tensor:
    """The MoE layer: out[t] = sum_j w[t,j] * W2[e_tj] (SiLU(G[e_tj] x_t) * U[e_tj] x_t)."""
    tokens, _ = hidden.shape
    num_experts, two_i, _ = w13.shape
    if num_sms is None:
        num_sms = _num_sms(hidden.device)
    routing = route(topk_ids, topk_weights, num_experts)
    rows = tokens * topk_ids.shape[1]
    inter = torch.empty(rows, two_i // 2, dtype=hidden.dtype, device=hidden.device)
    moe_gemm(hidden, w13, routing, cfg13, inter, gemm="w13", num_sms=num_sms)
    slots = torch.empty(rows, w2.shape[1], dtype=hidden.dtype, device=hidden.device)
    moe_gemm(inter, w2, routing, cfg2, slots, gemm="w2", num_sms=num_sms)
    return slots.view(tokens, topk_ids.shape[1], w2.shape[1]).sum(dim=1)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the Triton interpreter: any small positive grid bound works
