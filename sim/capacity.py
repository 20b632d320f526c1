"""Capacity planning: the largest request rate a deployment serves within its SLOs.

For a model on ``N`` GPUs of one type, as ``N / G`` replicas of ``G`` GPUs behind a
router, ``max_rate`` finds the largest arrival rate at which the p99 TTFT and p99 TPOT
of the workload meet the objectives. The search doubles the rate until it fails, then
bisects to ``rel_tol``; every trial stops as soon as more than 1% of the requests
miss an objective (``simulate(stop_slo=...)``), so overloaded trials cost little.
Feasibility is treated as monotone in the rate (true of a queue, up to the jitter of
one seeded trajectory). Replicas share one step coster, so the MoE cost cache built by
one trial serves them all. Cost per million output tokens comes from a per-GPU-hour
price table (``sim/scenarios/prices/gpu-hour.yaml`` holds editable example prices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.hardware import get_gpu
from ramp.plaindata import locate, read_yaml, save_figure
from ramp.sim.engine import ROUTERS, simulate
from ramp.sim.metrics import SLO, request_latencies
from ramp.sim.routing import RoutingPool
from ramp.sim.runner import SimConfig, prepare
from ramp.sim.workload import SyntheticWorkload
from ramp.trace import Arrival

MIN_RATE = 0.01  # req/s: below it a deployment counts as serving nothing within the SLOs


@dataclass(frozen=True)
class Workload:
    """Request lengths and arrival shape; ``at(rate)`` gives ``duration_s`` of arrivals
    at a rate (a fixed duration, not a fixed count: a short burst at a high rate never
    builds the queue that its steady state would).

    ``synthetic``: a seeded process (its own rate and request count are replaced per
    trial); ``recorded``: arrivals scaled in time to the trial's mean rate, repeated
    end to end when the recording is shorter than the duration.
    """

    synthetic: SyntheticWorkload | None = None
    recorded: tuple[Arrival, ...] = ()
    duration_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.synthetic is None) == (not self.recorded):
            raise InputError("capacity workload: give a distribution or recorded arrivals")
        if self.duration_s <= 0:
            raise InputError(f"capacity workload: duration must be > 0, got {self.duration_s}")
        if self.recorded and self.recorded[-1].time <= self.recorded[0].time:
            raise InputError("capacity workload: recorded arrivals span no time")

    def describe(self) -> str:
        if self.synthetic is not None:
            syn = self.synthetic
            return (f"{syn.process} arrivals, {self.duration_s:g} s per trial; prompt "
                    f"{syn.prompt.dist} mean {syn.prompt.mean:g}, output {syn.output.dist} "
                    f"mean {syn.output.mean:g} tokens")
        return (f"recorded arrivals ({len(self.recorded)} requests, time-scaled), "
                f"{self.duration_s:g} s per trial")

    def at(self, rate: float) -> list[Arrival]:
        count = max(1, round(rate * self.duration_s))
        if self.synthetic is not None:
            syn = self.synthetic
            return SyntheticWorkload(rate, count, syn.prompt, syn.output, syn.process,
                                     syn.cv).arrivals(self.seed)
        t0, n = self.recorded[0].time, len(self.recorded)
        period = (self.recorded[-1].time - t0) * n / (n - 1)  # one gap past the last
        scale = (n / period) / rate
        return [Arrival(((a.time - t0) + (i // n) * period) * scale, a.prompt, a.output)
                for i, a in ((i, self.recorded[i % n]) for i in range(count))]


@dataclass
class Trial:
    """One simulated rate: whether it met the SLOs and its tail latencies."""

    rate: float
    ok: bool
    ttft_p99_s: float
    tpot_p99_s: float
    out_tok_s: float
    stopped: bool


@dataclass
class CapacityPoint:
    """The largest SLO-meeting rate of one GPU count and router."""

    gpus: int
    replicas: int
    router: str
    max_rate: float          # req/s; 0 when even the lowest rate tried fails
    best: Trial | None       # the trial at max_rate
    trials: list[Trial] = field(default_factory=list)
    cost_per_mtok: float | None = None  # price per million output tokens at max_rate


def _trial(coster: Any, config: SimConfig, workload: Workload, rate: float, replicas: int,
           router: str, policy: str) -> Trial:
    arrivals = workload.at(rate)
    run = simulate(arrivals, coster, policy, config.engine, config.mode, config.switch,
                   replicas=replicas, router=router,
                   stop_slo=(config.slo.ttft_s, config.slo.tpot_s))
    lat = request_latencies(run)
    ttft = float(np.percentile(lat["ttft"], 99)) if lat["ttft"].size else math.inf
    tpot = float(np.percentile(lat["tpot"], 99)) if lat["tpot"].size else 0.0
    done = lat["served"]
    span = float(run.finish[done].max() - run.arrival.min()) if done.any() else 0.0
    ok = (not run.stopped and bool(done.all()) and ttft <= config.slo.ttft_s
          and tpot <= config.slo.tpot_s)
    return Trial(rate, ok, ttft, tpot,
                 float(run.output[done].sum()) / span if span > 0 else 0.0, run.stopped)


def max_rate(coster: Any, config: SimConfig, workload: Workload, replicas: int, router: str,
             policy: str = "static", start: float = 1.0, rel_tol: float = 0.02,
             ) -> tuple[float, Trial | None, list[Trial]]:
    """Largest rate (req/s) meeting ``config.slo`` p99s: doubling from ``start``, then
    bisection to ``rel_tol``. Returns (rate, its trial, all trials)."""
    trials: list[Trial] = []

    def run(rate: float) -> Trial:
        trials.append(_trial(coster, config, workload, rate, replicas, router, policy))
        return trials[-1]

    t = run(start)
    if t.ok:  # double until a rate fails
        lo, rate = t, start * 2
        while (t := run(rate)).ok:
            lo, rate = t, rate * 2
        hi = rate
    else:  # halve until a rate passes
        hi, rate = start, start / 2
        while not (t := run(rate)).ok:
            if rate < MIN_RATE:
                return 0.0, None, trials
            hi, rate = rate, rate / 2
        lo = t
    while hi - lo.rate > rel_tol * lo.rate:
        t = run((lo.rate + hi) / 2)
        if t.ok:
            lo = t
        else:
            hi = t.rate
    return lo.rate, lo, trials


@dataclass(frozen=True)
class PriceTable:
    """Price per GPU-hour by catalog GPU name, from a YAML the user edits."""

    currency: str
    per_gpu_hour: dict[str, float]
    source: str


def load_prices(path: str | Path) -> PriceTable:
    """A price table YAML: ``currency: USD`` and ``per_gpu_hour: {GPU: price}``; errors
    name the line of the offending value."""
    data = read_yaml(path, "price table", mapping=True)
    for key in data:
        if key not in ("currency", "per_gpu_hour"):
            raise InputError(locate(f"{path}: unknown field {key!r} (a price table has "
                                    "'currency' and 'per_gpu_hour')", data, key))
    table = data.get("per_gpu_hour")
    if not isinstance(table, dict):
        raise InputError(locate(f"{path}: expected a mapping 'per_gpu_hour: {{GPU: price}}'",
                                data, "per_gpu_hour"))
    currency = data.get("currency", "")
    if not isinstance(currency, str):
        raise InputError(locate(f"{path}: field 'currency' must be a string, got "
                                f"{currency!r}", data, "currency"))
    prices = {}
    for gpu, price in table.items():
        if (isinstance(price, bool) or not isinstance(price, (int, float))
                or not 0 <= price < math.inf):
            raise InputError(locate(f"{path}: per_gpu_hour.{gpu} must be a finite number "
                                    f">= 0, got {price!r}", table, gpu))
        try:
            prices[get_gpu(str(gpu)).name] = float(price)
        except InputError as exc:
            raise InputError(locate(f"{path}: per_gpu_hour: {exc}", table, gpu)) from None
    return PriceTable(currency, prices, str(path))


def default_prices_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("ramp.sim") / "scenarios" / "prices" / "gpu-hour.yaml"))


@dataclass
class CapacityPlan:
    """Every (GPU count, router) point, and what the table needs to say."""

    model: str
    gpu: str
    replica_gpus: int
    mode: str
    slo: SLO
    moe_source: str
    points: list[CapacityPoint]
    price_per_gpu_hour: float | None
    currency: str
    workload: str
    target_rate: float | None = None

    def answer(self) -> str | None:
        """The fewest GPUs meeting ``target_rate`` per router, as a sentence."""
        if self.target_rate is None:
            return None
        parts = []
        for router in dict.fromkeys(p.router for p in self.points):
            fits = [p for p in self.points if p.router == router and
                    p.max_rate >= self.target_rate]
            parts.append(f"{router}: {min(fits, key=lambda p: p.gpus).gpus} x {self.gpu}"
                         if fits else f"{router}: more than "
                         f"{max(p.gpus for p in self.points)} x {self.gpu}")
        return (f"{self.target_rate:g} req/s within TTFT p99 <= {self.slo.ttft_s:g} s and "
                f"TPOT p99 <= {1e3 * self.slo.tpot_s:g} ms needs " + "; ".join(parts))

    def format(self) -> str:
        lines = [f"{self.model} on {self.gpu}, replicas of {self.replica_gpus} GPU(s) "
                 f"({self.mode}); SLO: TTFT p99 <= {self.slo.ttft_s:g} s, TPOT p99 <= "
                 f"{1e3 * self.slo.tpot_s:g} ms", f"workload: {self.workload}",
                 f"MoE cost: {self.moe_source}"]
        header = ["GPUs", "replicas", "router", "max req/s", "TTFT p99 ms", "TPOT p99 ms",
                  "out tok/s", f"{self.currency or 'cost'}/M out tok"]
        rows = []
        for p in self.points:
            b = p.best
            rows.append([str(p.gpus), str(p.replicas), p.router, f"{p.max_rate:.2f}",
                         f"{1e3 * b.ttft_p99_s:.0f}" if b else "-",
                         f"{1e3 * b.tpot_p99_s:.1f}" if b else "-",
                         f"{b.out_tok_s:.0f}" if b else "-",
                         f"{p.cost_per_mtok:.3f}" if p.cost_per_mtok is not None else "-"])
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines += ["", "  ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        if self.price_per_gpu_hour is None:
            lines.append(f"(no price for {self.gpu} in the price table: cost not shown)")
        answer = self.answer()
        if answer:
            lines += ["", answer]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"model": self.model, "gpu": self.gpu, "replica_gpus": self.replica_gpus,
                "mode": self.mode, "slo": asdict(self.slo), "moe_cost_source": self.moe_source,
                "workload": self.workload, "price_per_gpu_hour": self.price_per_gpu_hour,
                "currency": self.currency,
                "target_rate": self.target_rate, "answer": self.answer(),
                "points": [asdict(p) for p in self.points]}


def plan_capacity(config: SimConfig, pool: RoutingPool, workload: Workload,
                  gpu_counts: Sequence[int], routers: Sequence[str] = ROUTERS,
                  prices: PriceTable | None = None, target_rate: float | None = None,
                  policy: str = "static", rel_tol: float = 0.02) -> CapacityPlan:
    """Max SLO-meeting rate per GPU count (multiples of the replica size) and router.
    With ``target_rate``, GPU counts beyond the first that meets it for every router
    are skipped (early stop: more GPUs only serve more)."""
    coster = prepare(config, pool)
    layout = next(iter(coster.layouts.values()))
    size = layout.gpus
    bad = [n for n in gpu_counts if n % size]
    if bad:
        raise InputError(f"--gpu-counts {bad}: not multiples of the replica's {size} GPU(s)")
    gpu = get_gpu(config.gpu).name
    price = prices.per_gpu_hour.get(gpu) if prices else None
    points: list[CapacityPoint] = []
    per_replica: dict[str, float] = {}
    for n in sorted(gpu_counts):
        replicas = n // size
        for router in routers:
            same = next((p for p in points if p.gpus == n), None) if replicas == 1 else None
            if same is not None:  # one replica: every router sends it everything
                rate, best, trials = same.max_rate, same.best, same.trials
            else:  # start near the previous count's capacity per replica
                start = max(0.25, per_replica.get(router, 1.0) * replicas * 0.9)
                rate, best, trials = max_rate(coster, config, workload, replicas, router,
                                              policy, start, rel_tol)
            if rate > 0:
                per_replica[router] = rate / replicas
            cost = (price * n / (best.out_tok_s * 3600) * 1e6
                    if price is not None and best is not None and best.out_tok_s > 0 else None)
            points.append(CapacityPoint(n, replicas, router, rate, best, trials, cost))
        if target_rate is not None and all(
                p.max_rate >= target_rate for p in points if p.gpus == n):
            break
    return CapacityPlan(coster.model.name, gpu, size, config.mode, config.slo,
                        " | ".join(f"{k}: {v.moe_source}" for k, v in coster.layouts.items()),
                        points, price, prices.currency if prices else "", workload.describe(),
                        target_rate)


def plot_capacity(plan: CapacityPlan, path: str | Path) -> Path:
    """Max rate and cost per million output tokens against GPU count, per router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    for router in dict.fromkeys(p.router for p in plan.points):
        pts = [p for p in plan.points if p.router == router]
        ax_r.plot([p.gpus for p in pts], [p.max_rate for p in pts], "o-", label=router)
        costs = [(p.gpus, p.cost_per_mtok) for p in pts if p.cost_per_mtok is not None]
        if costs:
            ax_c.plot(*zip(*costs), "o-", label=router)
    if plan.target_rate is not None:
        ax_r.axhline(plan.target_rate, color="grey", ls="--", lw=1,
                     label=f"target {plan.target_rate:g} req/s")
    ax_r.set_xlabel(f"GPUs ({plan.gpu})")
    ax_r.set_ylabel("max request rate within SLO (req/s)")
    ax_r.set_ylim(bottom=0)
    ax_r.legend(fontsize=8)
    ax_r.grid(alpha=0.3)
    ax_c.set_xlabel(f"GPUs ({plan.gpu})")
    ax_c.set_ylabel(f"{plan.currency} per million output tokens".strip())
    if plan.price_per_gpu_hour is None:
        ax_c.text(0.5, 0.5, f"no price for {plan.gpu}\nin the price table",
                  ha="center", va="center", transform=ax_c.transAxes)
    else:
        ax_c.set_ylim(bottom=0)
        ax_c.legend(fontsize=8)
    ax_c.grid(alpha=0.3)
    for ax in (ax_r, ax_c):
        ax.set_xticks(sorted({p.gpus for p in plan.points}))
    fig.suptitle(f"{plan.model} on {plan.gpu} (replicas of {plan.replica_gpus}, {plan.mode}): "
                 f"TTFT p99 <= {plan.slo.ttft_s:g} s, TPOT p99 <= {1e3 * plan.slo.tpot_s:g} ms"
                 f"\n{plan.workload}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
