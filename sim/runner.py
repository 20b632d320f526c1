"""One simulation study: a routing source, a workload, a replica, and one run per policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import CapacityError, InputError
from ramp.expert_parallel import PLACEMENTS
from ramp.hardware import get_gpu
from ramp.histograms import sample_histograms
from ramp.models import MODELS, MoEModel, get_model
from ramp.sim.costs import Calibration, Layout, StepCoster, build_layout
from ramp.sim.engine import MODES, EngineConfig, RunResult, SwitchConfig, simulate
from ramp.sim.metrics import SLO, format_table, speedup, summarize
from ramp.sim.moe import check_policies
from ramp.sim.routing import RoutingPool
from ramp.sim.workload import resolve_path
from ramp.trace import Arrival, TraceHeader, TraceReader, TraceStep

GPU_COUNTS = (1, 2, 4, 8, 16)
MAX_GPUS = 1024


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``model=None`` takes the routing trace's model; ``gpus=None``
    the fewest GPUs (1, 2, 4, 8, 16) the model fits on in every layout ``mode`` uses."""

    gpu: str = "H100-SXM"
    model: str | None = None
    gpus: int | None = None
    mode: str = "tp"
    policies: tuple[str, ...] = ("static", "ramp")
    engine: EngineConfig = field(default_factory=EngineConfig)
    calibration: Calibration = field(default_factory=Calibration)
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    slo: SLO = field(default_factory=SLO)
    profiles: tuple[str, ...] = ()
    ep_placement: str = "contiguous"
    plans: tuple[str, ...] = ()  # layer plan files (plan policies), before the embedded

    def __post_init__(self) -> None:
        if not self.policies:
            raise InputError("at least one policy")
        if len(set(self.policies)) != len(self.policies):
            raise InputError(f"policies repeated: {self.policies}")
        check_policies(self.policies)
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r} not in {MODES}")
        if self.gpus is not None and not 1 <= self.gpus <= MAX_GPUS:
            raise InputError(f"gpus must be in 1..{MAX_GPUS} (leave it out for the fewest "
                             f"that fit), got {self.gpus}")
        if self.ep_placement not in PLACEMENTS:
            raise InputError(f"ep_placement {self.ep_placement!r} not in {PLACEMENTS}")


@dataclass
class Report:
    """Summaries of every run, the RaMP-vs-static speedup, and where costs came from."""

    config: dict[str, Any]
    moe_source: str
    summaries: list[dict[str, Any]]
    speedup: dict[str, float] | None
    runs: list[RunResult] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "moe_cost_source": self.moe_source,
                "runs": self.summaries, "ramp_vs_static": self.speedup}

    def title(self) -> str:
        """Model, GPUs and load, for plot titles."""
        first = self.summaries[0]
        load = (f"{first['requests']} requests at {first['offered_req_s']:.2f} req/s"
                if np.isfinite(first["offered_req_s"]) else f"{first['requests']} requests")
        return f"{self.config['model']} on {self.config['gpus']} x {self.config['gpu']}, {load}"

    def format(self) -> str:
        lines = [f"{self.title()}, KV cache {self.summaries[0]['kv_capacity_tokens']} tokens"]
        if self.config.get("gpus_chosen"):
            lines.append(f"GPUs: {self.config['gpus_chosen']}")
        lines += [f"MoE cost: {self.moe_source}", "", format_table(self.summaries)]
        for s in self.summaries:
            if s["overloaded"]:
                lines.append(f"WARNING ({s['policy']}): the offered load exceeds what the "
                             "replica serves: the queue grows (TTFT p50 "
                             f"{s['ttft_p50_first_tenth_s']:.2f} s for the first tenth of "
                             f"the arrivals, {s['ttft_p50_last_tenth_s']:.2f} s for the last); "
                             "add GPUs or lower the rate (ramp-sim capacity)")
        if self.speedup:
            s = self.speedup
            pair = ("RaMP vs static" if {"static", "ramp"} <= set(self.config["policies"])
                    else "RaMP's layer plan vs the engine's kernel")
            lines += ["", f"{pair} (> 1 is better): "
                      f"TPOT {s['tpot_mean']:.3f}x, TTFT p50 {s['ttft_p50']:.3f}x, "
                      f"end-to-end latency {s['e2e_mean']:.3f}x, throughput "
                      f"{s['throughput']:.3f}x, goodput {s['goodput']:.3f}x, GPU busy time "
                      f"{s['busy_time']:.3f}x, MoE GEMM time {s['moe_time']:.3f}x"]
        return "\n".join(lines)


def load_pool(trace: str | Path, seed: int = 0, samples: int = 16,
              strict: bool = True) -> RoutingPool:
    """Routing pool from a trace file (or the name of a shipped one)."""
    path = resolve_path(trace, "trace")
    with TraceReader(path, strict=strict) as reader:
        return RoutingPool(reader.header, iter(reader), seed=seed, samples=samples,
                           where=str(path))


def synthetic_pool(model: MoEModel, preset: str | None = None, seed: int = 0,
                   samples: int = 16, steps: int = 48, decode_tokens: int = 64,
                   prefill_tokens: int = 1024) -> RoutingPool:
    """Routing pool generated for ``model`` (for what-if models nobody recorded); the
    default preset is the realistic generator (``ramp.realistic``)."""
    from ramp.traces.generators import serving_schedule, synthetic_trace

    tokens, phases = serving_schedule(steps * 2 // 3, decode_tokens, steps - steps * 2 // 3,
                                      prefill_tokens)
    header, generated = synthetic_trace(model, preset, tokens, phases, seed)
    return RoutingPool(header, generated, seed=seed, samples=samples)


def collapsed_pool(model: MoEModel, seed: int = 0, samples: int = 16) -> RoutingPool:
    """Routing of an engine run on dummy weights (vLLM ``load_format=dummy``): every
    router's logits are nearly equal, so top-k picks experts ``0 .. top_k - 1`` for every
    token of every layer (bench/engine/bench.py ``spread_router``; what the trace vLLM
    0.26 recorded shows, bench/results/engine/H200_deepseek-v2-lite_recorded.jsonl.gz)."""
    header = TraceHeader(model.name, model.layers, model.moe_layers, model.num_experts,
                         model.top_k, model.hidden, model.moe_intermediate, model.dtype,
                         source="collapsed:dummy-weights")

    def step(i: int, phase: str, tokens: int) -> TraceStep:
        hist = sample_histograms("collapsed", model.num_experts, tokens, model.top_k)
        return TraceStep(i, phase, tokens, np.repeat(hist, model.moe_layers, axis=0))

    return RoutingPool(header, [step(0, "prefill", 2048), step(1, "decode", 256)],
                       seed=seed, samples=samples)


def routing_for(model: str, seed: int = 0) -> RoutingPool:
    """The shipped routing trace of catalog ``model``, else its synthetic default routing."""
    from ramp.sim.workload import embedded_path

    name = get_model(model).name
    if embedded_path(name) is not None:
        return load_pool(name, seed=seed)
    return synthetic_pool(get_model(name), seed=seed)


def resolve_model(name: str | None, header: TraceHeader, where: str = "trace") -> MoEModel:
    """The simulated model: ``name`` or the trace's (``where``: the trace file, named
    when its header's model is not in the catalog), with the routing shape checked."""
    try:
        model = get_model(name or header.model)
    except InputError:
        if name is not None:
            raise
        raise InputError(f"{where}:1: header field 'model': {header.model!r} is not a "
                         f"catalog model ({', '.join(MODELS)}); pass --model") from None
    trace_shape = (header.moe_layers, header.num_experts, header.top_k)
    if (model.moe_layers, model.num_experts, model.top_k) != trace_shape:
        raise InputError(f"model {model.name} routes (moe_layers, experts, top_k) = "
                         f"{(model.moe_layers, model.num_experts, model.top_k)}, the trace "
                         f"has {trace_shape}; pick a matching model or a synthetic routing")
    return model


def build_layouts(config: SimConfig, model: MoEModel) -> tuple[int, dict[str, Layout], str]:
    """GPU count and layouts of the replica (both TP and EP for mode ``switch``), and
    what was chosen for the user: with ``gpus=None`` the fewest GPUs whose memory holds
    the model. Only that capacity failure moves on to more GPUs; any other error (a bad
    profile, an unknown policy) is the user's to fix and is raised as it is."""
    gpu = get_gpu(config.gpu)
    names = ("tp", "ep") if config.mode == "switch" else (config.mode,)
    counts = (config.gpus,) if config.gpus is not None else GPU_COUNTS
    last: CapacityError | None = None
    for gpus in counts:
        try:
            layouts = {n: build_layout(n, gpu, model, gpus, config.policies,
                                       config.calibration, config.profiles,
                                       config.engine.max_batched_tokens,
                                       config.engine.max_seqs, config.plans)
                       for n in names}
        except CapacityError as exc:
            if config.gpus is not None:
                raise
            last = exc
            continue
        _check_profiles_used(config.profiles, layouts)
        chosen = "" if config.gpus is not None else (
            f"{gpus}, the fewest that fit (--gpus not given)"
            + (f"; fewer do not: {last}" if last else ""))
        return gpus, layouts, chosen
    raise CapacityError(f"{model.name} does not fit on up to {GPU_COUNTS[-1]} x "
                        f"{gpu.name}: {last}")


def _check_profiles_used(profiles: Sequence[str], layouts: dict[str, Layout]) -> None:
    """A profile the user named that matches no simulated GEMM is an error, not skipped."""
    used = {g.source for lay in layouts.values() for g in lay.gemms}
    shapes = sorted({g.profile.problem.key for lay in layouts.values() for g in lay.gemms})
    for path in profiles:
        if f"profile {path}" not in used:
            raise InputError(f"profile {path}: matches none of the simulated GEMMs "
                             f"({', '.join(shapes)}); drop it or profile those shapes")


def prepare(config: SimConfig, pool: RoutingPool) -> StepCoster:
    """The step coster of the replica (model, layouts, calibration) for ``pool``."""
    return _prepare(config, pool)[0]


def _prepare(config: SimConfig, pool: RoutingPool) -> tuple[StepCoster, str]:
    """The step coster and what ``build_layouts`` chose for the user."""
    model = resolve_model(config.model, pool.header, pool.where)
    _, layouts, chosen = build_layouts(config, model)
    return StepCoster(get_gpu(config.gpu), model, pool, config.calibration, layouts,
                      config.ep_placement, config.engine.graph_tokens), chosen


def run_study(config: SimConfig, pool: RoutingPool, arrivals: Sequence[Arrival],
              progress: bool = False, coster: StepCoster | None = None) -> Report:
    """Simulate ``arrivals`` once per policy and compare them (``coster``: one from
    ``prepare`` for this config and pool, to reuse its MoE cost cache across studies)."""
    chosen = ""
    if coster is None:
        coster, chosen = _prepare(config, pool)
    model, layouts = coster.model, coster.layouts
    gpus = next(iter(layouts.values())).gpus
    runs = [simulate(arrivals, coster, policy, config.engine, config.mode, config.switch,
                     progress) for policy in config.policies]
    summaries = [summarize(r, config.slo) for r in runs]
    by_policy = {s["policy"]: s for s in summaries}
    pair = next((p for p in (("static", "ramp"), ("plan-engine", "plan"))
                 if set(p) <= set(by_policy)), None)
    gain = speedup(by_policy[pair[0]], by_policy[pair[1]]) if pair else None
    described = {
        "gpu": get_gpu(config.gpu).name, "model": model.name, "gpus": gpus,
        "gpus_chosen": chosen,
        "mode": config.mode, "ep_placement": config.ep_placement,
        "policies": list(config.policies), "seed": pool.seed,
        "routing_samples": pool.samples, "routing_source": pool.header.source,
        "routing_steps": pool.steps, "engine": asdict(config.engine),
        "calibration": asdict(config.calibration), "switch": asdict(config.switch),
        "slo": asdict(config.slo),
    }
    source = " | ".join(f"{name}: {lay.moe_source}" for name, lay in layouts.items())
    return Report(described, source, summaries, gain, runs)
