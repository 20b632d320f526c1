"""Step time of one forward pass of the simulated replica, from a batch's composition.

    step = overhead + dense GEMMs + attention + collectives + routed-expert GEMMs

- overhead: per step and per layer (scheduler, sampling, launch of a CUDA-graph
  replay), plus ``eager_overhead_us`` on steps of more tokens than the engine captured
  CUDA graphs for (vLLM: ``min(2 * max_num_seqs, 512)``): those launch every kernel
  from Python (docs/sim.md, "Fidelity"). Under ``Calibration.eager_step`` max such a
  step is instead ``overhead + max(GPU terms, eager_overhead_us + the MoE calls' host
  time)``: the host launches while the GPU runs;

- dense GEMMs (attention projections, router, shared experts, dense layers, LM head):
  one roofline over the step, ``max(FLOPs / peak, weight bytes / HBM bandwidth)``;
- attention: a roofline over (query, context) token pairs and KV bytes read;
- collectives: TP all-reduces (ring, ``2(G-1)/G`` of the bytes per GPU) after attention
  and after the MLP of every layer; EP all-to-all dispatch and combine per MoE layer;
- routed experts: the wave cost model of w13 and w2 on every MoE layer's histogram of the
  step under the run's dispatch policy; under EP each GPU runs the GEMMs of its expert
  shard (its local histogram and local T*k, ``ramp.expert_parallel``; experts placed
  contiguously or balanced by the trace's load) and the layer waits for the slowest GPU.

A *layout* is one parallel arrangement of the ``G`` GPUs of a replica: ``tp`` (attention
and experts tensor-parallel) or ``ep`` (attention data-parallel, experts
expert-parallel, as in DeepSeek/SGLang DP-attention deployments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ramp.errors import CapacityError, InputError
from ramp.expert_parallel import ExpertPlacement
from ramp.hardware import GPUSpec
from ramp.histograms import parse_histogram_spec
from ramp.models import MoEModel
from ramp.problem import DTYPE_BYTES
from ramp.sim.moe import PLAN_POLICIES, GemmCost, LayerPlanCost, resolve_gemm, resolve_plan
from ramp.sim.routing import RoutingPool

PLAN_REFERENCE_SAMPLES = 4  # histograms per plan routing and T behind routing_factor

LAYOUTS = ("tp", "ep")
EXACT_TOKENS = 256  # steps up to this many tokens get their own routing and cost


def graph_size(tokens: int, graph_tokens: int) -> int:
    """Batch a ``tokens``-token step runs at: the smallest CUDA-graph capture size that
    holds it (vLLM's default sizes 1, 2, 4, then multiples of 8 to 256, of 16 above),
    up to ``graph_tokens``; a larger step runs eagerly at its own size. vLLM pads the
    inputs of a graph replay to the captured size (the recorded trace's step sizes
    show it: a drain of 237, 235, 233 running requests runs as 240, 240, 240)."""
    if tokens > graph_tokens:
        return tokens
    size = tokens if tokens <= 2 else 4 if tokens <= 4 else -(-tokens // 8) * 8 \
        if tokens <= 256 else -(-tokens // 16) * 16
    return min(size, graph_tokens)


def token_bucket(tokens: int) -> int:
    """``tokens`` itself up to EXACT_TOKENS, above it the nearest of 16 geometric
    buckets per octave (<= 3.2% away): large steps' MoE time is the bucket's, scaled
    linearly (compute-bound there: the wave quantisation left is well under 1%), which
    bounds the distinct histograms a long run must cost."""
    if tokens <= EXACT_TOKENS:
        return tokens
    step = 1 << (tokens.bit_length() - 5)
    return (tokens + step // 2) // step * step


# how an eager step's host and GPU time combine (``Calibration.eager_step``)
EAGER_STEPS = ("additive", "max")


@dataclass(frozen=True)
class Calibration:
    """Knobs that tie the model to a real engine (``ramp-sim calibrate`` fits the step
    costs; docs/sim.md says how).

    Defaults: ``flops_efficiency``/``bandwidth_efficiency`` are the H100 measurements
    quoted in ``ramp.hardware`` (bf16 matmul at 795 of 989 TFLOP/s; copy at 3.0 of 3.35
    TB/s; bench/results/raw/*_baselines.json record them per run), the hardware ceilings; ``dense_efficiency``/``attention_efficiency`` are what the engine's dense
    GEMMs and attention kernels reach of those ceilings (fitted; at most the datasheet,
    ``1 / max(flops_efficiency, bandwidth_efficiency)``). The overheads are typical of a
    CUDA-graph decode step of vLLM V1 (scheduler, sampling, launch) and of the per-layer
    small kernels (norms, rotary, router top-k, MoE align/permute);
    ``eager_overhead_us`` is the host time a step without a CUDA graph adds (every
    kernel launched from Python: vLLM 0.26 on an H200 spends ~50 ms on a 2048-token step
    of a 27-layer MoE, bench/results/engine/H200_deepseek-v2-lite_recorded.jsonl.gz;
    the default is an order of magnitude, fit it). That overhead holds the engine
    kernel's host time per eager MoE call; a layer plan's path that costs the host more
    or less (its ``host_us``, measured per call in isolation) moves an eager step by
    ``eager_host_fraction`` of the difference per MoE layer. 0 (the default) leaves host
    time out, 1 takes it at face value: on the tenth session's engine runs neither fits
    both models (DeepSeek-V2-Lite's runs want 0.3-0.7, Qwen3-30B-A3B's at most 0.15;
    docs/sim.md), so it is not fitted yet. ``eager_step`` picks how an eager step's host
    and GPU combine: ``additive`` (GPU time + ``eager_overhead_us`` + the fraction's
    term) or ``max`` (the host launches while the GPU runs, so the step takes the longer
    of its GPU time and its host time, ``eager_overhead_us`` of non-MoE host work plus
    the MoE layers' calls at the plan's per-call ``host_us``; ``eager_overhead_us``
    then means the step's host time outside the MoE calls, and the fraction must be
    0). The cost model's policies have no per-call host time, so under max their host
    side is ``eager_overhead_us`` alone: use a max calibration with the MoE costing it
    was fitted under (``--moe-costs``). Memory: vLLM sizes
    the KV cache from ``gpu_memory_utilization`` of the GPU's memory minus weights, the
    peak activations of a ``max_batched_tokens`` forward pass, and ``runtime_reserve_gib``
    (CUDA graphs, NCCL buffers, cuBLAS workspaces: vLLM V1 logs ~0.3-0.6 GiB for graphs).
    """

    flops_efficiency: float = 0.8
    bandwidth_efficiency: float = 0.9
    interconnect_efficiency: float = 0.8
    step_overhead_us: float = 1500.0
    layer_overhead_us: float = 20.0
    eager_overhead_us: float = 10000.0
    eager_host_fraction: float = 0.0
    eager_step: str = "additive"
    collective_latency_us: float = 10.0
    dense_efficiency: float = 1.0
    attention_efficiency: float = 1.0
    moe_scale: float = 1.0  # multiplies cost-model times (profile kernels vs the engine's)
    gpu_memory_utilization: float = 0.9
    runtime_reserve_gib: float = 1.0

    def __post_init__(self) -> None:
        # comparisons written so that NaN fails them; inf is never a calibration
        for name in ("flops_efficiency", "bandwidth_efficiency", "interconnect_efficiency",
                     "gpu_memory_utilization"):
            if not 0 < getattr(self, name) <= 1:
                raise InputError(f"calibration.{name} must be in (0, 1], got "
                                 f"{getattr(self, name)}")
        ceiling = self.kernel_efficiency_ceiling
        for name in ("dense_efficiency", "attention_efficiency"):
            if not 0 < getattr(self, name) <= ceiling * (1 + 1e-9):
                raise InputError(f"calibration.{name} must be in (0, {ceiling:.4g}] (above "
                                 f"that the kernels would beat the datasheet), got "
                                 f"{getattr(self, name)}")
        for name in ("step_overhead_us", "layer_overhead_us", "eager_overhead_us",
                     "eager_host_fraction", "collective_latency_us", "runtime_reserve_gib"):
            if not 0 <= getattr(self, name) < math.inf:
                raise InputError(f"calibration.{name} must be finite and >= 0, got "
                                 f"{getattr(self, name)}")
        if self.eager_step not in EAGER_STEPS:
            raise InputError(f"calibration.eager_step must be one of {EAGER_STEPS}, got "
                             f"{self.eager_step!r}")
        if self.eager_step == "max" and self.eager_host_fraction:
            raise InputError("calibration.eager_host_fraction is the additive eager step's "
                             "term: with eager_step max it must be 0 (host times count "
                             "whole there)")
        if not 0 < self.moe_scale < math.inf:
            raise InputError(f"calibration.moe_scale must be finite and > 0, got "
                             f"{self.moe_scale}")

    @property
    def kernel_efficiency_ceiling(self) -> float:
        """Largest dense/attention efficiency: the kernels reach the datasheet peaks."""
        return 1.0 / max(self.flops_efficiency, self.bandwidth_efficiency)


def kv_bytes_per_token(model: MoEModel) -> int:
    """KV-cache bytes one token occupies over all layers (MLA keeps the compressed latent)."""
    return kv_bytes_per_token_per_gpu(model, 1)


def kv_bytes_per_token_per_gpu(model: MoEModel, tp: int) -> int:
    """KV bytes one token occupies on each of ``tp`` tensor-parallel GPUs. Each GPU keeps
    ``ceil(kv_heads / tp)`` heads: with more GPUs than KV heads the heads are replicated
    (vLLM does so), and MLA's single latent is replicated on every GPU."""
    if model.is_mla:
        width = model.kv_lora_rank + model.qk_rope_head_dim
    else:
        width = 2 * -(-model.num_kv_heads // tp) * model.head_dim
    return model.layers * width * DTYPE_BYTES[model.dtype]


def activation_bytes(model: MoEModel, tokens: int, max_seqs: int, tp: int = 1) -> float:
    """Peak activation bytes per GPU of a ``tokens``-token forward pass, what vLLM's
    profiling run reserves before sizing the KV cache: the residual stream and its
    normed copy, attention q/k/v/out, the MoE layer's permuted input, w13 output and
    SiLU product for ``top_k`` rows per token, and fp32 logits of ``max_seqs`` sampled
    tokens. An estimate (the allocator's fragmentation is left out)."""
    dtype = DTYPE_BYTES[model.dtype]
    inter = max(model.moe_intermediate, model.dense_intermediate) / tp
    qkv = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim / tp
    per_token = 3 * model.hidden + qkv + model.top_k * (model.hidden + 3 * inter)
    return tokens * per_token * dtype + min(tokens, max_seqs) * model.vocab_size * 4


@dataclass
class Layout:
    """Per-GPU constants of one parallel layout, precomputed once."""

    name: str
    gpus: int
    flops_per_token: float       # dense FLOPs per token per GPU
    weight_bytes: float          # dense weight bytes streamed per step per GPU
    attn_flops_per_pair: float   # attention FLOPs per (query, context) pair per GPU
    kv_read_per_token: float     # KV bytes read per context token per GPU
    comm_bytes_per_token: float  # collective bytes per step token per GPU
    collectives: int             # collectives per step (latency)
    kv_capacity: int             # KV-cache capacity of the replica, tokens
    gemms: tuple[GemmCost, GemmCost]
    weight_bytes_per_gpu: float = 0.0  # resident weights (memory model, reports)
    reserve_bytes_per_gpu: float = 0.0  # activations + runtime reserve
    plan: LayerPlanCost | None = None  # the layer plan, when a plan policy is simulated

    @property
    def moe_source(self) -> str:
        parts = [f"{g.profile.problem.gemm}: {g.source}" for g in self.gemms]
        if self.plan is not None:
            parts.append(f"plan policies: {self.plan.source}")
        return "; ".join(parts)


def build_layout(name: str, gpu: GPUSpec, model: MoEModel, gpus: int, policies: Sequence[str],
                 cal: Calibration, profiles: Sequence[str | Path] = (),
                 max_batched_tokens: int = 8192, max_seqs: int = 256,
                 plans: Sequence[str | Path] = ()) -> Layout:
    """Constants of layout ``name`` ("tp" or "ep") of ``model`` on ``gpus`` x ``gpu``;
    the scheduler limits size the activation reserve (memory model: ``Calibration``);
    ``plans``: layer plan files tried before the embedded ones (plan policies)."""
    if name not in LAYOUTS:
        raise InputError(f"layout {name!r} not in {LAYOUTS}")
    if gpus < 1:
        raise InputError(f"gpus must be >= 1, got {gpus}")
    tp, ep = (gpus, 1) if name == "tp" else (1, gpus)
    dtype = DTYPE_BYTES[model.dtype]
    dense = model.dense_weight_bytes()
    embed = model.hidden * model.vocab_size * dtype
    routed = model.routed_expert_bytes()
    v_dim = model.v_head_dim or model.head_dim
    attn_pair = 2.0 * model.num_attention_heads * (model.head_dim + v_dim) * model.layers
    kvb = kv_bytes_per_token(model)
    act = model.hidden * dtype
    if name == "tp":  # everything sharded G ways; all-reduce after attention and MLP
        weights_per_gpu = (dense + embed + routed) / gpus
        streamed = dense / gpus
        comm = 2 * model.layers * act * 2 * (gpus - 1) / gpus
        collectives = 2 * model.layers if gpus > 1 else 0
        kv_per_gpu = kv_bytes_per_token_per_gpu(model, gpus)  # every token on every GPU
        kv_read = float(kv_per_gpu)
        activations = activation_bytes(model, max_batched_tokens, max_seqs, tp=gpus)
    else:  # attention data-parallel (replicated), experts sharded; all-to-all per MoE layer
        weights_per_gpu = dense + embed + routed / gpus
        streamed = dense
        comm = model.moe_layers * 2 * model.top_k * act * (gpus - 1) / gpus / gpus
        collectives = 2 * model.moe_layers if gpus > 1 else 0
        kv_per_gpu = kvb * 1.0 / gpus  # each token's KV on its own GPU only
        kv_read = kvb / gpus
        activations = activation_bytes(model, -(-max_batched_tokens // gpus), max_seqs)
    usable = gpu.hbm_bytes * cal.gpu_memory_utilization
    reserve = activations + cal.runtime_reserve_gib * 2**30
    free = usable - weights_per_gpu - reserve
    if free <= 0:
        raise CapacityError(f"{model.name} does not fit on {gpus} x {gpu.name} in layout "
                            f"{name}: {weights_per_gpu / 1e9:.1f} GB of weights + "
                            f"{reserve / 1e9:.1f} GB of activations and runtime reserve per "
                            f"GPU, {usable / 1e9:.1f} GB usable; use more GPUs")
    w13, w2 = (resolve_gemm(gpu, model.problem(g, tp=tp, ep=ep), policies, profiles)
                for g in ("w13", "w2"))
    plan = (resolve_plan(gpu, model.name, w13.profile.problem, ep, plans)
            if set(policies) & set(PLAN_POLICIES) else None)
    return Layout(name, gpus, 2.0 * model.dense_params() / gpus, streamed,
                  attn_pair / gpus, kv_read, comm, collectives,
                  int(free // kv_per_gpu), (w13, w2), weights_per_gpu, reserve, plan)


class StepCoster:
    """Step times of one replica; MoE costs cached per (layout, token bucket, phase,
    sample) for all policies at once, so runs of several policies share the work.
    Steps above EXACT_TOKENS vary less from step to step (more tokens average the
    routing out) and use a quarter of the pool's routing samples. ``ep_placement`` places
    the experts of an ``ep`` layout (``ramp.expert_parallel.PLACEMENTS``). Steps of more
    than ``graph_tokens`` tokens run without a CUDA graph (``eager_overhead_us``)."""

    def __init__(self, gpu: GPUSpec, model: MoEModel, pool: RoutingPool, cal: Calibration,
                 layouts: dict[str, Layout], ep_placement: str = "contiguous",
                 graph_tokens: int = 512) -> None:
        self.model = model
        self.pool = pool
        self.samples = pool.samples
        self.cal = cal
        self.layouts = layouts
        self._peak = gpu.peak_flops(model.dtype) * cal.flops_efficiency
        self._bw = gpu.hbm_bandwidth * cal.bandwidth_efficiency
        self._link = gpu.interconnect_bandwidth * cal.interconnect_efficiency
        self._fixed = (cal.step_overhead_us + model.layers * cal.layer_overhead_us) * 1e-6
        self._eager = cal.eager_overhead_us * 1e-6
        self.graph_tokens = graph_tokens
        self._dense_inv = 1.0 / cal.dense_efficiency
        self._attn_inv = 1.0 / cal.attention_efficiency
        self._moe: dict[tuple[str, int, int, int], tuple[dict[str, float], float]] = {}
        self._plan_reference: dict[tuple[str, int], float] = {}
        self._placements = {
            name: ExpertPlacement.make(ep_placement, model.num_experts, layout.gpus,
                                       pool.mean_load() if ep_placement == "balanced" else None)
            for name, layout in layouts.items() if name == "ep"}

    def moe_seconds(self, layout: Layout, tokens: int, phase_class: int,
                    sample: int) -> dict[str, float]:
        """Routed-expert time of a whole step per policy, seconds (plan policies: the
        whole MoE layers, at the step's exact token count)."""
        bucket = token_bucket(tokens)
        if bucket != tokens:
            sample %= max(1, self.pool.samples // 4)
        key = (layout.name, bucket, phase_class, sample)
        hit = self._moe.get(key)
        if hit is None:
            hit = self._moe[key] = self._moe_at_bucket(layout, bucket, phase_class, sample)
        per_gemm, factor = hit
        scaled = {p: t * tokens / bucket for p, t in per_gemm.items()}
        return {**scaled, **self.plan_seconds(layout, tokens, factor)}

    def _moe_at_bucket(self, layout: Layout, tokens: int, phase_class: int, sample: int
                       ) -> tuple[dict[str, float], float]:
        """The per-GEMM policies' seconds (none for a layout of plan policies only) and
        the plan's routing factor, at a token bucket; no histogram is drawn where
        neither needs one."""
        plan_only = layout.plan is not None and not layout.gemms[0].dispatchers
        if plan_only and not layout.plan.plan.times_us_by_routing:
            return {}, 1.0
        hists = self.pool.hists(tokens, phase_class, sample)
        return ({} if plan_only else self._gemm_seconds(layout, hists),
                self.routing_factor(layout, tokens, hists))

    def plan_seconds(self, layout: Layout, tokens: int,
                     routing_factor: float = 1.0) -> dict[str, float]:
        """Seconds of a step's MoE layers per plan policy from the layer plan (every
        layer sees all ``tokens``), times the step's ``routing_factor``."""
        if layout.plan is None:
            return {}
        scale = 1e-6 * self.cal.moe_scale * self.model.moe_layers * routing_factor
        eager = tokens > self.graph_tokens
        return {p: layout.plan.layer_us(p, tokens, eager) * scale for p in PLAN_POLICIES}

    def eager_host_seconds(self, layout: Layout, policy: str, tokens: int) -> float:
        """Host time an eager step of ``tokens`` tokens spends on its MoE layers under a
        plan ``policy`` beyond what the engine's kernel costs (negative where the path
        costs the host less), ``eager_host_fraction`` of the plan's ``host_us`` difference
        per layer; 0 in a CUDA graph, without a plan, or for the cost model's policies.
        Kept apart from the MoE part: in the additive step the engine kernel's own host
        time is in ``eager_overhead_us``, so this can be negative. Padding to a graph size never
        crosses ``graph_tokens``, so padded and unpadded counts give the same time."""
        if (layout.plan is None or policy not in PLAN_POLICIES or tokens <= self.graph_tokens
                or self.cal.eager_host_fraction == 0):
            return 0.0
        return (1e-6 * self.cal.eager_host_fraction * self.model.moe_layers
                * layout.plan.eager_host_delta_us(policy, tokens))

    def routing_factor(self, layout: Layout, tokens: int, hists: np.ndarray) -> float:
        """How much dearer a step's routing makes a layer than the routings its plan was
        timed under: the GEMMs' cost under the profiles' static tables on the step's
        histograms ``hists`` [moe_layers, E] over the same on the plan's routings at the
        same T (the geometric mean over them, as the plan summarises its times).

        A plan measures the whole layer per T, blind to the histogram; the engine runs
        were routed otherwise (dummy weights put every token on the first top-k experts:
        a DeepSeek-V2-Lite decode-heavy run made 26.3k tok/s so and 18.1k with spread
        routers, the same plan). 1.0 for a plan that does not record its routings."""
        routings = layout.plan.plan.times_us_by_routing if layout.plan else {}
        if not routings:
            return 1.0
        ref_key = (layout.name, tokens)
        ref = self._plan_reference.get(ref_key)
        if ref is None:
            experts, top_k = self.model.num_experts, self.model.top_k
            means = [self._static_us(layout, np.stack([parse_histogram_spec(
                f"{r}{',' if ':' in r else ':'}tokens={tokens},seed={seed}", experts, top_k)
                for seed in range(PLAN_REFERENCE_SAMPLES)])).mean() for r in routings]
            ref = self._plan_reference[ref_key] = float(np.exp(np.mean(np.log(means))))
        return float(self._static_us(layout, hists).mean()) / ref

    def _static_us(self, layout: Layout, hists: np.ndarray) -> np.ndarray:
        """Microseconds of both GEMMs per histogram under the static tables (EP: the
        slowest shard of each)."""
        local, shards = self._local_view(layout, hists)
        total = 0.0
        for gemm in layout.gemms:
            pred = gemm.profile.model.predict(local)
            chosen = gemm.profile.dispatcher("static").choose_batch(local)
            total = total + pred[np.arange(len(local)), chosen]
        return total.reshape(len(hists), shards).max(axis=1)

    def _local_view(self, layout: Layout, hists: np.ndarray) -> tuple[np.ndarray, int]:
        """Each shard's local histograms [H * shards, local E] of global ``hists`` [H, E]
        under the layout's expert placement, and the shard count (1: no EP)."""
        placement = self._placements.get(layout.name)
        if placement is None:
            return hists, 1
        return placement.view(hists).hists.reshape(len(hists) * placement.ep, -1), placement.ep

    def moe_of(self, layout: Layout, hists: np.ndarray) -> dict[str, float]:
        """Routed-expert seconds per policy of a step with global histograms ``hists``
        [moe_layers, experts]: the per-GEMM policies and the plan policies."""
        tokens = round(float(hists.sum()) / (hists.shape[0] * self.model.top_k))
        return {**self._gemm_seconds(layout, hists),
                **self.plan_seconds(layout, tokens, self.routing_factor(layout, tokens, hists))}

    def _gemm_seconds(self, layout: Layout, hists: np.ndarray) -> dict[str, float]:
        """Routed-expert GEMM seconds per cost-model policy of a step with global
        histograms ``hists`` [moe_layers, experts] (EP: each rank costs its local view
        under the placement; each layer waits for its slowest shard)."""
        local, shards = self._local_view(layout, hists)
        layers = hists.shape[0]
        total: dict[str, np.ndarray] = {}
        for gemm in layout.gemms:
            for policy, us in gemm.costs(local).items():
                total[policy] = total.get(policy, 0.0) + us
        scale = 1e-6 * self.cal.moe_scale
        return {p: float(us.reshape(layers, shards).max(axis=1).sum() * scale)
                for p, us in total.items()}

    def rooflines(self, layout: Layout, tokens, pairs, context, maximum=max):
        """(dense GEMM roofline, attention roofline, collectives) seconds of steps, before
        the dense and attention kernel efficiencies: floats, or arrays with
        ``maximum=np.maximum`` (what ``ramp-sim calibrate`` regresses on).

        ``pairs``: attention (query, context) token pairs of the step; ``context``: KV
        tokens read (decode contexts plus prefill prefixes).
        """
        gemm = maximum(tokens * layout.flops_per_token / self._peak,
                       layout.weight_bytes / self._bw)
        attn = maximum(pairs * layout.attn_flops_per_pair / self._peak,
                       context * layout.kv_read_per_token / self._bw)
        comm = 0.0
        if layout.collectives:
            comm = (tokens * layout.comm_bytes_per_token / self._link
                    + layout.collectives * self.cal.collective_latency_us * 1e-6)
        return gemm, attn, comm

    def overhead_seconds(self, tokens: int) -> float:
        """Fixed host and small-kernel time of a ``tokens``-token step: a CUDA-graph
        replay up to ``graph_tokens``, eager launches above (added to the GPU time: the
        additive eager step's; ``step_seconds`` takes the max model's apart)."""
        return self._fixed + (self._eager if tokens > self.graph_tokens else 0.0)

    def dense_seconds(self, layout: Layout, tokens: int, pairs: float,
                      context: float) -> float:
        """Everything but the routed experts and fixed overheads, seconds."""
        gemm, attn, comm = self.rooflines(layout, tokens, pairs, context)
        return gemm * self._dense_inv + attn * self._attn_inv + comm

    def eager_moe_host_seconds(self, layout: Layout, policy: str, tokens: int) -> float:
        """Host seconds the MoE calls of an eager step take under a plan ``policy``: the
        plan's ``host_us`` per call times the MoE layers; 0 where it is unknown (the cost
        model's policies, plans without host times), which leaves the step's host side at
        ``eager_overhead_us``."""
        if layout.plan is None or policy not in PLAN_POLICIES:
            return 0.0
        us = layout.plan.host_us(policy, tokens)
        return 0.0 if us is None else 1e-6 * self.model.moe_layers * us

    def host_bound(self, layout: Layout, policy: str, tokens: int, gpu_seconds: float
                   ) -> bool:
        """Whether a step of ``tokens`` tokens whose GPU work takes ``gpu_seconds`` is
        bound by its host: only an eager step under ``eager_step`` max can be."""
        return (self.cal.eager_step == "max" and tokens > self.graph_tokens
                and self._eager + self.eager_moe_host_seconds(layout, policy, tokens)
                > gpu_seconds)

    def step_seconds(self, layout: Layout, policy: str, tokens: int, pairs: float,
                     context: float, phase_class: int, sample: int) -> tuple[float, float]:
        """(step time, MoE part) in seconds; a graphed step at its padded size. An eager
        step under ``eager_step`` max takes the longer of its GPU and host times."""
        tokens = graph_size(tokens, self.graph_tokens)  # padded rows are computed too
        moe = self.moe_seconds(layout, tokens, phase_class, sample)[policy]
        gpu = self.dense_seconds(layout, tokens, pairs, context) + moe
        if self.host_bound(layout, policy, tokens, gpu):
            return (self._fixed + self._eager
                    + self.eager_moe_host_seconds(layout, policy, tokens), moe)
        if self.cal.eager_step == "max":
            return self._fixed + gpu, moe
        return (self.overhead_seconds(tokens) + gpu
                + self.eager_host_seconds(layout, policy, tokens), moe)
