"""Seeded synthetic routing traces with controlled skew, hot experts and temporal drift.

Each MoE layer ``l`` has a base expert popularity: a Zipf law with its own exponent
``s_l`` (drawn from ``RoutingStats.zipf_s``, so layers differ in skew as measured in
real models), its ranks shuffled, and ``hot_experts`` experts multiplied by
``hot_boost`` (persistent heavy hitters). From step to step the log-popularity
drifts as an AR(1) process, ``z_t = rho * z_{t-1} + sqrt(1 - rho^2) * sigma * eps``,
so consecutive steps route alike (``rho`` near 1) while the long-run mean stays the
base popularity. Tokens then pick ``top_k`` distinct experts by popularity
(``ramp.histograms.sample_topk``).

The presets target orders of magnitude reported for served MoE models, not one model's
exact numbers: imbalance persists at inference and grows with batch size (Liu et al.
2026, arXiv:2602.19938), coarse 8-expert models route close to balanced (Mixtral routing
analysis, Jiang et al. 2024, arXiv:2401.04088), fine-grained models without shared
experts have the highest local routing consistency (Liang et al. 2025, arXiv:2505.16056).
``routing_summary`` measures what a trace actually has, to compare with a recording.

Preset ``realistic`` (the default) is another generator: ``ramp.realistic``, fitted to
real routing (bursts within passages, skew that persists at large batches); its
prefill steps are consecutive tokens, its decode steps tokens drawn across sequences.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ramp.errors import InputError
from ramp.histograms import sample_topk, zipf_popularity
from ramp.models import MoEModel
from ramp.realistic import RealisticRouting, default_routing
from ramp.tokenrouting import count_experts
from ramp.trace import TraceHeader, TraceStep


@dataclass(frozen=True)
class RoutingStats:
    """Parameters of the synthetic router (see the module docstring)."""

    name: str
    zipf_s: tuple[float, float]  # range of per-layer Zipf exponents
    hot_experts: int             # persistent hot experts per layer
    hot_boost: float             # popularity multiplier of a hot expert
    rho: float                   # step-to-step correlation of log-popularity
    sigma: float                 # stationary std of the log-popularity drift
    description: str = ""

    def __post_init__(self) -> None:
        lo, hi = self.zipf_s
        if not 0 <= lo <= hi:
            raise InputError(f"routing preset {self.name}: zipf_s must satisfy 0 <= lo <= hi")
        if self.hot_experts < 0 or self.hot_boost < 1:
            raise InputError(f"routing preset {self.name}: hot_experts >= 0, hot_boost >= 1")
        if not 0 <= self.rho < 1 or self.sigma < 0:
            raise InputError(f"routing preset {self.name}: need 0 <= rho < 1, sigma >= 0")


PRESETS: dict[str, RoutingStats] = {
    p.name: p
    for p in (
        RoutingStats("uniform", (0.0, 0.0), 0, 1.0, 0.0, 0.0,
                     "every expert equally popular: what static tables are tuned on"),
        RoutingStats("balanced", (0.1, 0.4), 0, 1.0, 0.9, 0.2,
                     "coarse experts (Mixtral-like): mild, layer-dependent skew; "
                     "max/mean load ~1.5 at 1024 tokens with 8 experts"),
        RoutingStats("skewed", (0.2, 0.5), 2, 2.0, 0.95, 0.3,
                     "fine-grained experts (Qwen3/DeepSeek-like): layer-dependent skew, two "
                     "persistent hot experts per layer, strong step-to-step consistency; "
                     "max/mean load ~4 at 1024 tokens with 128 experts"),
        RoutingStats("hot", (0.4, 0.8), 4, 3.0, 0.97, 0.4,
                     "heavy hitters (a domain-specific workload): max/mean load ~7.5"),
    )
}


REALISTIC = "realistic"
PRESET_NAMES = (REALISTIC, *PRESETS)
DEFAULT_PRESET = REALISTIC


def get_preset(name: str) -> RoutingStats:
    if name not in PRESETS:
        raise InputError(f"routing preset {name!r} unknown; known: {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def synthetic_trace(model: MoEModel, preset: str | None, tokens: Sequence[int],
                    phases: Sequence[str], seed: int = 0
                    ) -> tuple[TraceHeader, Iterator[TraceStep]]:
    """Header and steps of a synthetic trace of preset ``preset`` (None: DEFAULT_PRESET)."""
    name = preset or DEFAULT_PRESET
    if name == REALISTIC:
        routing = default_routing()
        return (realistic_header(model, routing, seed),
                realistic_steps(model, routing, tokens, phases, seed))
    stats = get_preset(name)
    return synthetic_header(model, stats, seed), generate_steps(model, stats, tokens, phases,
                                                                seed)


def realistic_steps(model: MoEModel, routing: RealisticRouting, tokens: Sequence[int],
                    phases: Sequence[str], seed: int = 0) -> Iterator[TraceStep]:
    """Steps cut from one generated token stream: a prefill (or mixed) step takes the
    next ``T`` consecutive tokens, a decode step ``T`` tokens drawn across the stream."""
    if len(tokens) != len(phases):
        raise InputError("realistic_steps: one phase per step")
    rng = np.random.default_rng(seed)
    stream = routing.generate(model.num_experts, model.top_k, model.moe_layers,
                              max(1, int(sum(tokens))), rng)
    cursor = 0
    for i, (count, phase) in enumerate(zip(tokens, phases, strict=True)):
        if phase == "decode":
            rows = rng.choice(stream.tokens, size=int(count), replace=False)
        else:
            rows = np.arange(cursor, cursor + int(count))
            cursor += int(count)
        hists = count_experts(stream.topk_ids[:, rows], model.num_experts)
        yield TraceStep(step=i, phase=phase, tokens=int(count), hists=hists.astype(np.int64))


def realistic_header(model: MoEModel, routing: RealisticRouting, seed: int) -> TraceHeader:
    """Header of a trace from the realistic generator, recording its parameters."""
    from ramp import __version__

    return TraceHeader.from_model(
        model, source=f"synthetic:{REALISTIC}", engine="ramp.realistic",
        engine_version=__version__, meta={"seed": seed, **routing.to_dict()})


def generate_steps(model: MoEModel, stats: RoutingStats, tokens: Sequence[int],
                   phases: Sequence[str], seed: int = 0) -> Iterator[TraceStep]:
    """One synthetic step per ``tokens[i]`` (phase ``phases[i]``), seeded."""
    if len(tokens) != len(phases):
        raise InputError("generate_steps: one phase per step")
    rng = np.random.default_rng(seed)
    layers, experts = model.moe_layers, model.num_experts
    base = np.empty((layers, experts))
    for layer in range(layers):
        s = rng.uniform(*stats.zipf_s)
        log_p = np.log(rng.permutation(zipf_popularity(experts, s)))
        hot = rng.choice(experts, size=min(stats.hot_experts, experts), replace=False)
        log_p[hot] += np.log(stats.hot_boost)
        base[layer] = log_p
    drift = rng.standard_normal((layers, experts)) * stats.sigma
    innovation = np.sqrt(1.0 - stats.rho ** 2) * stats.sigma
    for i, (count, phase) in enumerate(zip(tokens, phases, strict=True)):
        if i:
            drift = stats.rho * drift + innovation * rng.standard_normal((layers, experts))
        logits = base + drift
        pop = np.exp(logits - logits.max(axis=1, keepdims=True))
        hists = np.stack([sample_topk(pop[layer], int(count), model.top_k, seed=rng)[0]
                          for layer in range(layers)])
        yield TraceStep(step=i, phase=phase, tokens=int(count), hists=hists)


def synthetic_header(model: MoEModel, stats: RoutingStats, seed: int) -> TraceHeader:
    """Header of a generated trace, recording the generator and its parameters."""
    from ramp import __version__

    return TraceHeader.from_model(
        model, source=f"synthetic:{stats.name}", engine="ramp.traces.generators",
        engine_version=__version__,
        meta={"seed": seed, "zipf_s": list(stats.zipf_s), "hot_experts": stats.hot_experts,
              "hot_boost": stats.hot_boost, "rho": stats.rho, "sigma": stats.sigma,
              "description": stats.description},
    )


def serving_schedule(decode_steps: int, decode_tokens: int, prefill_steps: int,
                     prefill_tokens: int) -> tuple[list[int], list[str]]:
    """Token counts and phases of a small serving-like trace: prefill steps spread evenly
    among decode steps (as chunked prefill interleaves them)."""
    total = decode_steps + prefill_steps
    prefill_at = set(np.linspace(0, total, prefill_steps, endpoint=False).astype(int).tolist())
    tokens = [prefill_tokens if i in prefill_at else decode_tokens for i in range(total)]
    return tokens, ["prefill" if i in prefill_at else "decode" for i in range(total)]


class RoutingSummary:
    """``routing_summary`` one step at a time: memory is one step and a few per-layer
    sums, whatever the trace's length (``ramp-sim trace info`` streams with it)."""

    def __init__(self) -> None:
        self.steps = 0
        self._ratio_sum: np.ndarray | None = None  # per layer, over steps
        self._active_sum = 0.0
        self._corr_sum = 0.0
        self._corr_count = 0
        self._previous: np.ndarray | None = None

    def add(self, step: TraceStep) -> None:
        hists = step.hists
        totals = hists.sum(axis=1)
        # skew_stats' max_mean_ratio per layer, vectorised (0 for an empty layer)
        ratio = np.divide(hists.max(axis=1) * hists.shape[1], totals,
                          out=np.zeros(len(hists)), where=totals > 0)
        self._ratio_sum = ratio if self._ratio_sum is None else self._ratio_sum + ratio
        self._active_sum += float(np.count_nonzero(hists, axis=1).mean() / hists.shape[1])
        share = hists / step.tokens
        if self._previous is not None:
            xc = self._previous - self._previous.mean(axis=1, keepdims=True)
            yc = share - share.mean(axis=1, keepdims=True)
            den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
            ok = den > 0
            self._corr_sum += float(((xc * yc).sum(axis=1)[ok] / den[ok]).sum())
            self._corr_count += int(ok.sum())
        self._previous = share
        self.steps += 1

    def result(self) -> dict[str, float]:
        if self._ratio_sum is None:
            raise InputError("routing_summary: no steps")
        per_layer = self._ratio_sum / self.steps
        return {
            "max_mean_ratio": float(per_layer.mean()),
            "active_fraction": self._active_sum / self.steps,
            "layer_spread": float(per_layer.std()),
            "step_correlation": (self._corr_sum / self._corr_count if self._corr_count
                                 else float("nan")),
        }


def routing_summary(steps: Iterable[TraceStep]) -> dict[str, float]:
    """Measured routing statistics of steps, to compare synthetic and recorded traces.

    ``max_mean_ratio`` and ``active_fraction``: mean over steps and layers (see
    ``ramp.histograms.skew_stats``); ``layer_spread``: std over layers of each layer's
    mean max/mean ratio (how much layers differ); ``step_correlation``: mean Pearson
    correlation of a layer's expert loads between consecutive steps.
    """
    summary = RoutingSummary()
    for step in steps:
        summary.add(step)
    return summary.result()
