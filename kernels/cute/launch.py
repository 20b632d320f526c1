"""Host side of the CuTe family: compile configurations lazily, launch one MoE GEMM.

Compiled kernels are cached for the life of the process (nvidia-cutlass-dsl 4.3's file
cache is keyed by the traced IR, so it would not skip the tracing that dominates compile
time); every shape is dynamic, so one compilation per (configuration, GEMM,
dtype) serves every token count, routing and model. Launches read nothing back from
the GPU: the grid is a persistent wave sized from T alone, so calls can be captured in
CUDA graphs.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.utils
import torch
from cutlass.cute.runtime import from_dlpack

from ramp.config import KernelConfig
from ramp.kernels.cute.configs import CuteVariant, check_shapes, epilogue_cols, launch_grid
from ramp.kernels.cute.moe_gemm import MoEGemmSm90
from ramp.kernels.routing import Routing


@dataclass
class Compiled:
    """A compiled configuration and what compiling it cost."""

    fn: object
    seconds: float


_CACHE: dict[tuple, Compiled] = {}


def _tensor(t: torch.Tensor, leading_dim: int | None = None):
    return from_dlpack(t, assumed_align=16).mark_layout_dynamic(leading_dim=leading_dim)


def _rows(t: torch.Tensor):
    """A row-major matrix whose row pitch is a multiple of 16 bytes, as the kernel
    assumes for its 16-byte stores (``check_shapes`` enforces it)."""
    return _tensor(t, 1).mark_compact_shape_dynamic(mode=1, divisibility=8)


def _operands(a_sorted, w, routing: Routing, out):
    """CuTe views: A [M, K], B [N, K, E] (the weights' expert mode last), out, routing."""
    return (_rows(a_sorted), _tensor(w.permute(1, 2, 0), 1), _rows(out),
            _tensor(routing.counts), _tensor(routing.sorted_slots),
            _tensor(routing.topk_weights))


def compiled_gemm(cfg: KernelConfig, gemm: str, a_sorted, w, routing: Routing, out
                  ) -> Compiled:
    """The compiled kernel of ``cfg`` for this GEMM and dtype (compiled on first use)."""
    key = (cfg, gemm, a_sorted.dtype)
    if key not in _CACHE:
        start = time.perf_counter()
        fn = compile_gemm(cfg, gemm, a_sorted, w, routing, out,
                          cuda.CUstream(torch.cuda.current_stream().cuda_stream))
        _CACHE[key] = Compiled(fn, time.perf_counter() - start)
    return _CACHE[key]


def compile_gemm(cfg: KernelConfig, gemm: str, a_sorted, w, routing: Routing, out, stream):
    """Compile (uncached) ``cfg``'s kernel for these operands' dtypes. Runs without a GPU
    when ``CUTE_DSL_ARCH`` names the target (bench/compile_cute.py)."""
    op = MoEGemmSm90(cfg.block_m, cfg.block_n, cfg.num_stages, CuteVariant.of(cfg),
                     silu_mul=gemm == "w13", cluster_m=cfg.cluster_m,
                     epi_cols=epilogue_cols(cfg, gemm))
    return cute.compile(op, *_operands(a_sorted, w, routing, out), cutlass.Int32(1), stream)


@functools.cache
def max_active_clusters(cluster_size: int) -> int:
    """Clusters of ``cluster_size`` CTAs (one per SM) the GPU runs at once."""
    return cutlass.utils.HardwareInfo().get_max_active_clusters(cluster_size)


def gather_rows(hidden: torch.Tensor, routing: Routing) -> torch.Tensor:
    """w13's A operand: token rows in expert-sorted slot order (TMA cannot gather)."""
    return hidden.index_select(0, routing.sorted_slots // routing.top_k)


def moe_gemm(a: torch.Tensor, w: torch.Tensor, routing: Routing, cfg: KernelConfig,
             out: torch.Tensor, *, gemm: str, num_sms: int, occupancy: int = 1
             ) -> torch.Tensor:
    """One grouped GEMM with the Triton family's contract (``ramp.kernels.triton.
    fused_moe.moe_gemm``): w13 gathers token rows, fuses SiLU(gate)*up and writes
    expert-sorted rows; w2 reads expert-sorted rows, scales by the routing weight and
    scatters to slot order."""
    n, k = w.shape[1], w.shape[2]
    check_shapes(cfg, gemm, n, k, routing.num_experts)
    a_sorted = gather_rows(a, routing) if gemm == "w13" else a
    slots = num_sms * occupancy
    if cfg.cluster_m > 1:  # GPCs may not fit num_sms / cluster_m clusters at once
        slots = min(slots, max_active_clusters(cfg.cluster_m) * cfg.cluster_m)
    grid = launch_grid(cfg, gemm, n, routing.sorted_slots.numel(), routing.num_experts, slots)
    if grid > 0:
        kernel = compiled_gemm(cfg, gemm, a_sorted, w, routing, out).fn
        kernel(*_operands(a_sorted, w, routing, out), cutlass.Int32(grid),
               cuda.CUstream(torch.cuda.current_stream().cuda_stream))
    return out
