"""Whole MoE layers RaMP can run in an engine, one callable per path.

Each builder returns ``layer(hidden, w13, w2, topk_ids, topk_weights, out=None,
expert_map=None) -> out``: ``hidden`` [T, K], ``w13`` [E, 2I, K] (gate rows then up
rows), ``w2`` [E, K, I], ``topk_ids``/``topk_weights`` [T, k]; ``out`` [T, K] receives the
weighted top-k sum (a new tensor when None). Under expert parallelism ``w13``/``w2`` hold
this rank's E local experts, ``topk_ids`` are global ids and ``expert_map`` [global E]
maps them to local ids or -1 (vLLM's convention): slots of other ranks' experts add
nothing here (the engine combines the ranks). All route on the GPU and launch with grids
that depend only on T and the configuration, so every path is CUDA-graph capturable and
reads nothing back.

``LAYER_PATHS`` is the one table of these paths by name (what a layer plan's ``paths``
name): the engine runtime builds the paths its plan chooses from it, and the plan tool
(``ramp.adapters.plan``) measures every path it lists.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ramp.config import KernelConfig
from ramp.kernels.grouped_mm import expert_offsets, grouped_mm
from ramp.kernels.routing import Routing, local_routing, pow2
from ramp.kernels.triton.configs import TMA
from ramp.kernels.triton.fused_moe import FUSED_ROUTING_MAX_SLOTS, moe_gemm, moe_gemm_w13_routed
from ramp.kernels.triton.moe_gemm import (
    moe_gather_rows_kernel,
    moe_silu_mul_kernel,
    moe_top_k_sum_kernel,
)
from ramp.kernels.triton.poly import PolyGemm

if TYPE_CHECKING:
    from ramp.costmodel import WaveCostModel

Layer = Callable[..., torch.Tensor]
# tokens -> (w13 config, w2 config, w13 occupancy, w2 occupancy), for the triton and
# cute paths
ConfigsAt = Callable[[int], tuple[KernelConfig, KernelConfig, int, int]]


REFERENCE_ROWS = 4096  # weight rows converted to float32 at a time by reference_layer


def reference_layer(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor,
                    weights: torch.Tensor, expert_map: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The layer's definition in float32, one expert at a time (under EP: this rank's
    experts' share), each weight converted a block of ``REFERENCE_ROWS`` rows at a time so
    that checking a Mixtral-sized expert inside a serving process needs ~64 MB, not 0.5 GB."""
    if expert_map is not None:
        local = expert_map[ids.long()]
        ids, weights = local.clamp(min=0), weights * (local >= 0)
    inter = w2.shape[2]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():
        tok, j = (ids == e).nonzero(as_tuple=True)
        h = _float32_matmul_t(x[tok], w13[e])
        a = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
        out.index_add_(0, tok, _float32_matmul_t(a, w2[e]) * weights[tok, j, None].float())
    return out


def _float32_matmul_t(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w.T`` in float32."""
    a = a.float()
    return torch.cat([a @ w[r:r + REFERENCE_ROWS].float().T
                      for r in range(0, w.shape[0], REFERENCE_ROWS)], dim=1)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``|got - ref| / |ref|`` (Frobenius); NaN anywhere in ``got`` gives NaN, and an
    all-zero reference compares absolutely."""
    diff = float((got.float() - ref).norm())
    scale = float(ref.norm())
    return diff / scale if scale > 0 else diff


REFERENCE_TOKENS = 1024  # tokens of the float32 reference computed at a time


def reference_error(got: torch.Tensor, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    ids: torch.Tensor, weights: torch.Tensor,
                    expert_map: torch.Tensor | None = None) -> float:
    """``relative_error(got, reference_layer(...))`` over the whole call, with the float32
    reference made ``REFERENCE_TOKENS`` tokens at a time: a check inside a serving process
    must not hold a float32 copy of a large call's activations (an engine sizes its KV
    cache from the peak memory of its first step, when RaMP checks its paths)."""
    diff = scale = 0.0
    for start in range(0, x.shape[0], REFERENCE_TOKENS):
        rows = slice(start, start + REFERENCE_TOKENS)
        ref = reference_layer(x[rows], w13, w2, ids[rows], weights[rows], expert_map)
        diff += float((got[rows].float() - ref).square().sum())
        scale += float(ref.square().sum())
    return (diff / scale) ** 0.5 if scale > 0 else diff ** 0.5


TOP_K_SUM_BLOCK = 1024  # columns one CTA of the top-k sum adds


def top_k_sum(rows: torch.Tensor, top_k: int, out: torch.Tensor | None,
              sorted_rows: SortedRows | None = None) -> torch.Tensor:
    """Each token's ``top_k`` rows of ``rows`` [T*k, K] added into ``out`` [T, K] (a new
    tensor when None; any row stride, any float dtype): one kernel, a grid of
    T x cdiv(K, 1024) that depends on T alone (capturable), float32 accumulation.

    Without ``sorted_rows`` a token's rows are consecutive (slot order) and already
    weighted; with it they are in expert order, unweighted, and the sum gathers and
    weights them (``SortedRows``)."""
    tokens, width = rows.shape[0] // top_k, rows.shape[1]
    if rows.shape[0] != tokens * top_k:
        raise ValueError(f"top_k_sum: {rows.shape[0]} rows are not a multiple of top_k {top_k}")
    if out is not None and tuple(out.shape) != (tokens, width):
        raise ValueError(f"top_k_sum: out is {tuple(out.shape)}, the sum is {(tokens, width)}")
    if out is None:
        out = rows.new_empty(tokens, width)
    dense = out if out.stride(1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    rows = rows.contiguous()
    gather = (sorted_rows.row_of, sorted_rows.weights, sorted_rows.valid_rows) \
        if sorted_rows is not None else (rows, rows, rows)
    if tokens:
        moe_top_k_sum_kernel[(tokens, -(-width // TOP_K_SUM_BLOCK))](
            rows, dense, width, dense.stride(0), *gather, TOP_K=top_k,
            BLOCK=TOP_K_SUM_BLOCK, GATHER=sorted_rows is not None)
    return out if dense is out else out.copy_(dense)


@dataclass(frozen=True)
class SortedRows:
    """Where each slot's row sits when a GEMM leaves its rows in expert order: slot
    ``t * k + j`` is row ``row_of[slot]`` and weighs ``weights[slot]``; rows from
    ``valid_rows`` (a one-element device tensor) on are other ranks' and add nothing."""

    row_of: torch.Tensor      # [T*k] int32, the inverse of the routing's sorted_slots
    weights: torch.Tensor     # [T*k] float32, the routing weights in slot order
    valid_rows: torch.Tensor  # [1] int32, the local rows (all T*k without expert parallelism)


GATHER_ROWS = 16  # rows per CTA of the gather
GATHER_COLS = 512  # columns per CTA of the gather
SILU_MUL_ELEMENTS = 8192  # outputs per CTA of the SiLU*mul pass


def gather_sorted(hidden: torch.Tensor, routing: Routing) -> tuple[torch.Tensor, torch.Tensor]:
    """The token rows in the routing's expert order [T*k, K] and each slot's row
    (``row_of``), one launch whose grid depends on T alone."""
    slots, width = routing.sorted_slots.numel(), hidden.shape[1]
    if hidden.stride(1) != 1:  # the kernel reads each row's columns contiguous
        hidden = hidden.contiguous()
    rows = hidden.new_empty(slots, width)
    row_of = torch.empty_like(routing.sorted_slots)
    if slots:
        grid = (-(-slots // GATHER_ROWS), -(-width // GATHER_COLS))
        moe_gather_rows_kernel[grid](hidden, hidden.stride(0), routing.sorted_slots, rows,
                                     row_of, slots, width, TOP_K=routing.top_k,
                                     BLOCK_R=GATHER_ROWS, BLOCK_C=GATHER_COLS)
    return rows, row_of


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up of w13's output [M, 2I] -> [M, I], one pass."""
    rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(rows, inter)
    block_c = min(pow2(inter), 1024)
    block_r = max(1, SILU_MUL_ELEMENTS // block_c)
    if rows:
        moe_silu_mul_kernel[(-(-rows // block_r), -(-inter // block_c))](
            gate_up.contiguous(), out, rows, inter, BLOCK_R=block_r, BLOCK_C=block_c)
    return out


def _rows(hidden: torch.Tensor, count: int, width: int, local_only: bool) -> torch.Tensor:
    """The w2 output in slot order: zeros where other ranks' slots are never written."""
    return (hidden.new_zeros if local_only else hidden.new_empty)(count, width)


def poly_layer(w13_gemm: PolyGemm, w2_gemm: PolyGemm, num_sms: int) -> Layer:
    """The sync-free path: both GEMMs pick their branch on the GPU from the histogram."""

    def layer(hidden, w13, w2, ids, weights, out=None, expert_map=None):
        rows = ids.numel()
        routing = local_routing(ids, weights, w13.shape[0], expert_map)
        inter = hidden.new_empty(rows, w2.shape[2])
        w13_gemm(hidden, w13, routing, inter, gemm="w13", num_sms=num_sms)
        down = _rows(hidden, rows, w2.shape[1], expert_map is not None)
        w2_gemm(inter, w2, routing, down, gemm="w2", num_sms=num_sms)
        return top_k_sum(down, ids.shape[1], out)

    return layer


def configured_layer(launch: Callable[..., torch.Tensor], configs_at: ConfigsAt,
                     num_sms: int) -> Layer:
    """A family's grouped GEMMs with one configuration per GEMM chosen from T (host-side).

    ``launch`` has the contract of ``ramp.kernels.triton.fused_moe.moe_gemm`` (which the
    CuTe family's ``launch.moe_gemm`` shares): w13 gathers token rows, fuses
    SiLU(gate)*up and writes expert-sorted rows; w2 scales by the routing weight and
    scatters to slot order; the grid depends on T and the configuration alone.
    """

    def layer(hidden, w13, w2, ids, weights, out=None, expert_map=None):
        cfg13, cfg2, occ13, occ2 = configs_at(hidden.shape[0])
        rows = ids.numel()
        routing = local_routing(ids, weights, w13.shape[0], expert_map)
        inter = hidden.new_empty(rows, w2.shape[2])
        launch(hidden, w13, routing, cfg13, inter, gemm="w13", num_sms=num_sms,
               occupancy=occ13)
        down = _rows(hidden, rows, w2.shape[1], expert_map is not None)
        launch(inter, w2, routing, cfg2, down, gemm="w2", num_sms=num_sms, occupancy=occ2)
        return top_k_sum(down, ids.shape[1], out)

    return layer


def routed_layer(configs_at: ConfigsAt, num_sms: int) -> Layer:
    """``configured_layer`` over the Triton family with its routing stage fused into w13
    (``moe_gemm_w13_routed``: one launch fewer) for calls of at most
    ``FUSED_ROUTING_MAX_SLOTS`` slots without an expert map; other calls route first, as
    the triton path does. The grid still depends only on T and the configuration."""
    routed_first = configured_layer(moe_gemm, configs_at, num_sms)

    def layer(hidden, w13, w2, ids, weights, out=None, expert_map=None):
        if expert_map is not None or ids.numel() > FUSED_ROUTING_MAX_SLOTS:
            return routed_first(hidden, w13, w2, ids, weights, out, expert_map)
        cfg13, cfg2, _, occ2 = configs_at(hidden.shape[0])
        rows = ids.numel()
        inter = hidden.new_empty(rows, w2.shape[2])
        routing = moe_gemm_w13_routed(hidden, w13, ids, weights, w13.shape[0], cfg13, inter)
        down = hidden.new_empty(rows, w2.shape[1])
        moe_gemm(inter, w2, routing, cfg2, down, gemm="w2", num_sms=num_sms, occupancy=occ2)
        return top_k_sum(down, ids.shape[1], out)

    return layer


def grouped_mm_path(hidden, w13, w2, ids, weights, out=None, expert_map=None):
    """``torch._grouped_mm`` (``ramp.kernels.grouped_mm``) for both GEMMs on RaMP's
    routing, with Triton glue around them: the gather into expert order (which also
    inverts the permutation), SiLU*mul in one pass, and the top-k sum that gathers, weights
    and adds each token's rows in one pass. The GEMMs read and write contiguous
    expert-sorted rows; under expert parallelism the other ranks' slots sort last, past
    the offsets, and are left out of the sum."""
    routing = local_routing(ids, weights, w13.shape[0], expert_map)
    offs = expert_offsets(routing.counts)
    a_sorted, row_of = gather_sorted(hidden, routing)
    act = silu_mul(grouped_mm(a_sorted, w13, offs))
    down = grouped_mm(act, w2, offs)
    return top_k_sum(down, routing.top_k, out,
                     SortedRows(row_of, routing.topk_weights, offs[-1:]))


class PathUnavailable(Exception):
    """A layer path cannot be built: unknown name, or what it reads is missing."""


@dataclass(frozen=True)
class PathInputs:
    """What building a layer path may read; each reader is called only by a path that
    needs it (None: not available here), and may raise ``PathUnavailable`` or the
    caller's own error.

    ``num_sms``: the device's SM count, None on the Triton interpreter (no device).
    ``poly_models``: the sync-free kernel's fitted (w13, w2) cost models, from the
    ``triton-poly`` profiles. ``configs``: a configured path's name -> its
    configurations per T (configurations of ``PATH_FAMILY[name]``).
    """

    num_sms: int | None
    poly_models: Callable[[], tuple[WaveCostModel, WaveCostModel]] | None = None
    configs: Callable[[str], ConfigsAt] | None = None


INTERPRETER_SMS = 4  # the Triton interpreter: any small positive grid bound works


def _poly_path(inputs: PathInputs) -> Layer:
    if inputs.poly_models is None:
        raise PathUnavailable("no triton-poly profiles")
    w13_model, w2_model = inputs.poly_models()
    return poly_layer(PolyGemm.from_model(w13_model), PolyGemm.from_model(w2_model),
                      inputs.num_sms or w13_model.num_sms)


def _configs(inputs: PathInputs, path: str) -> ConfigsAt:
    if inputs.configs is None:
        raise PathUnavailable(f"no {PATH_FAMILY[path]} configurations per size")
    return inputs.configs(path)  # a bad record is reported wherever it is read


def _triton_path(inputs: PathInputs) -> Layer:
    return configured_layer(moe_gemm, _configs(inputs, "triton"),
                            inputs.num_sms or INTERPRETER_SMS)


def _triton_tma_path(inputs: PathInputs) -> Layer:
    """The triton path's configurations with their operand tiles through TMA
    descriptors (``TMA`` variant; weights for both GEMMs, w2's activations too)."""
    configs_at = _configs(inputs, "triton-tma")

    def tma_configs_at(tokens: int) -> tuple[KernelConfig, KernelConfig, int, int]:
        cfg13, cfg2, occ13, occ2 = configs_at(tokens)
        return (dataclasses.replace(cfg13, variant=TMA),
                dataclasses.replace(cfg2, variant=TMA), occ13, occ2)

    return configured_layer(moe_gemm, functools.cache(tma_configs_at),
                            inputs.num_sms or INTERPRETER_SMS)


def _triton_fused_path(inputs: PathInputs) -> Layer:
    return routed_layer(_configs(inputs, "triton-fused"), inputs.num_sms or INTERPRETER_SMS)


def _cute_path(inputs: PathInputs) -> Layer:
    """The CuTe family, imported here: nvidia-cutlass-dsl is an optional dependency, and
    it has no interpreter, so the path needs the DSL and a GPU. Each configuration
    compiles on its first call (the runtime's warm-up, before any graph capture)."""
    configs_at = _configs(inputs, "cute")
    try:
        from ramp.kernels.cute.launch import moe_gemm as cute_gemm
    except ImportError as exc:
        raise PathUnavailable(f"the CuTe family needs nvidia-cutlass-dsl, which does not "
                              f"import here ({type(exc).__name__}: {exc})") from exc
    if inputs.num_sms is None:
        raise PathUnavailable("the CuTe family runs on a CUDA GPU only (no device here)")
    return configured_layer(cute_gemm, configs_at, inputs.num_sms)


LAYER_PATHS: dict[str, Callable[[PathInputs], Layer]] = {
    "triton": _triton_path,
    "triton-fused": _triton_fused_path,
    "triton-tma": _triton_tma_path,
    "triton-poly": _poly_path,
    "cute": _cute_path,
    "grouped_mm": lambda inputs: grouped_mm_path,
}


# The kernel family whose configurations (one per GEMM and T) a configured path runs.
PATH_FAMILY = {"triton": "triton", "triton-fused": "triton", "triton-tma": "triton",
               "cute": "cute"}


def build_path(name: str, inputs: PathInputs) -> Layer:
    """The layer path ``name`` (a key of ``LAYER_PATHS``) built from ``inputs``."""
    if name not in LAYER_PATHS:
        raise PathUnavailable(f"no layer path {name!r}; known: {', '.join(LAYER_PATHS)}")
    return LAYER_PATHS[name](inputs)
