"""Serving metrics of simulated runs, the RaMP-vs-static comparison, tables and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.plaindata import save_figure
from ramp.queueing import queue_growth
from ramp.sim.engine import RunResult


@dataclass(frozen=True)
class SLO:
    """Service-level objectives for goodput: a request counts if it meets both."""

    ttft_s: float = 2.0
    tpot_s: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.ttft_s < math.inf and 0 < self.tpot_s < math.inf):
            raise InputError(f"SLO: ttft_s and tpot_s must be finite and > 0, got "
                             f"{self.ttft_s}, {self.tpot_s}")


def _pct(x: np.ndarray, q: float, weights: np.ndarray | None = None) -> float:
    if x.size == 0:
        return float("nan")
    if weights is None:
        return float(np.percentile(x, q))
    order = np.argsort(x)
    cum = np.cumsum(weights[order])
    if cum[-1] <= 0:
        return float("nan")
    return float(x[order][np.searchsorted(cum, q / 100 * cum[-1])])


def request_latencies(run: RunResult) -> dict[str, np.ndarray]:
    """TTFT, TPOT (mean inter-token time after the first token) and end-to-end latency
    of the served requests (rejected ones excluded)."""
    done = run.first_token >= 0
    ttft = run.first_token[done] - run.arrival[done]
    multi = done & (run.output > 1)
    tpot = (run.finish[multi] - run.first_token[multi]) / (run.output[multi] - 1)
    return {"ttft": ttft, "tpot": tpot, "e2e": run.finish[done] - run.arrival[done],
            "served": done}


def summarize(run: RunResult, slo: SLO = SLO()) -> dict[str, Any]:
    """Scalar metrics of one run (seconds, tokens/s, requests/s)."""
    lat = request_latencies(run)
    done = lat["served"]
    ttft, tpot = lat["ttft"], lat["tpot"]
    start = float(run.arrival.min()) if run.arrival.size else 0.0
    makespan = float(run.finish[done].max() - start) if done.any() else 0.0
    out_tokens = int(run.output[done].sum())
    tpot_all = np.full(int(done.sum()), 0.0)
    tpot_all[(run.output[done] > 1)] = tpot
    good = int(np.sum((ttft <= slo.ttft_s) & (tpot_all <= slo.tpot_s)))
    busy = float(run.step_time.sum())
    # Inter-token latency: each step (and each layout switch stall) delays every request
    # decoding in it by its duration.
    itl_x = np.concatenate([run.step_time, [sw[3] for sw in run.switches]])
    itl_w = np.concatenate([run.step_decode, [sw[2] for sw in run.switches]]).astype(float)
    rate = lambda n: n / makespan if makespan > 0 else float("nan")  # noqa: E731
    return {**overload(run, lat),
        "policy": run.policy, "mode": run.mode,
        "requests": int(run.arrival.size), "served": int(done.sum()),
        "offered_req_s": (float((run.arrival.size - 1) / np.ptp(run.arrival))
                          if run.arrival.size > 1 and np.ptp(run.arrival) > 0 else float("nan")),
        "rejected": int((~done).sum()),
        "makespan_s": makespan,
        "throughput_tok_s": rate(out_tokens),
        "throughput_req_s": rate(int(done.sum())),
        "goodput_req_s": rate(good), "slo_attainment": good / max(1, int(done.sum())),
        "ttft_mean_s": float(ttft.mean()) if ttft.size else float("nan"),
        "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
        "tpot_mean_s": float(tpot.mean()) if tpot.size else float("nan"),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p99_s": _pct(tpot, 99),
        "itl_p50_s": _pct(itl_x, 50, itl_w), "itl_p99_s": _pct(itl_x, 99, itl_w),
        "e2e_mean_s": float(lat["e2e"].mean()) if done.any() else float("nan"),
        "steps": int(run.step_time.size), "busy_s": busy,
        "mean_step_ms": 1e3 * busy / max(1, run.step_time.size),
        "mean_batch_tokens": float(run.step_tokens.mean()) if run.step_tokens.size else 0.0,
        "moe_share": float(run.step_moe.sum() / busy) if busy > 0 else float("nan"),
        "moe_s": float(run.step_moe.sum()),
        "preemptions": int(run.preemptions.sum()),
        "switches": len(run.switches),
        "switch_thresholds": list(run.thresholds) if run.mode == "switch" else None,
        "kv_capacity_tokens": run.kv_capacity,
    }


def overload(run: RunResult, lat: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Whether the offered load exceeded what the replica serves (``ramp.queueing``:
    the queue grew through the run), over the served requests."""
    lat = request_latencies(run) if lat is None else lat
    return queue_growth(run.arrival[lat["served"]], lat["ttft"])


def speedup(base: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
    """How much faster ``new`` serves than ``base`` (> 1: better), metric by metric."""
    def ratio(a: float, b: float) -> float:
        return float(a / b) if b and np.isfinite(a) and np.isfinite(b) else float("nan")

    return {
        "tpot_mean": ratio(base["tpot_mean_s"], new["tpot_mean_s"]),
        "ttft_p50": ratio(base["ttft_p50_s"], new["ttft_p50_s"]),
        "e2e_mean": ratio(base["e2e_mean_s"], new["e2e_mean_s"]),
        "busy_time": ratio(base["busy_s"], new["busy_s"]),
        "throughput": ratio(new["throughput_tok_s"], base["throughput_tok_s"]),
        "goodput": ratio(new["goodput_req_s"], base["goodput_req_s"]),
        "moe_time": ratio(base["moe_s"], new["moe_s"]),
    }


_COLUMNS = (
    ("policy", "policy", "{}"), ("mode", "mode", "{}"), ("served", "served", "{}"),
    ("ttft_p50_s", "TTFT p50 ms", "{:.0f}", 1e3), ("ttft_p99_s", "TTFT p99 ms", "{:.0f}", 1e3),
    ("tpot_mean_s", "TPOT ms", "{:.1f}", 1e3), ("tpot_p99_s", "TPOT p99 ms", "{:.1f}", 1e3),
    ("itl_p99_s", "ITL p99 ms", "{:.1f}", 1e3),
    ("throughput_tok_s", "tok/s", "{:.0f}"), ("goodput_req_s", "goodput r/s", "{:.2f}"),
    ("moe_share", "MoE share", "{:.0%}"), ("preemptions", "preempt", "{}"),
    ("switches", "switches", "{}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of run summaries."""
    header = [c[1] for c in _COLUMNS]
    body = []
    for row in rows:
        cells = []
        for key, _, fmt, *scale in _COLUMNS:
            value = row[key]
            if isinstance(value, float) and not np.isfinite(value):
                cells.append("-")
                continue
            cells.append(fmt.format(value * scale[0] if scale else value))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _log_axis(ax: Any, axis: str = "x", subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """A log axis labelled in plain numbers at ``subs`` of each decade, minor ticks
    unlabelled (matplotlib's default labels overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _binned(t: np.ndarray, y: np.ndarray, edges: np.ndarray, how: str) -> np.ndarray:
    """``how`` ("mean" or "max") of ``y`` per time bin; NaN for empty bins."""
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    out = np.full(len(edges) - 1, np.nan)
    if how == "max":
        np.fmax.at(out, idx, y)
    else:
        total = np.bincount(idx, weights=y, minlength=len(out))
        count = np.bincount(idx, minlength=len(out))
        np.divide(total, count, out=out, where=count > 0)
    return out


def plot_runs(runs: Sequence[RunResult], out_dir: str | Path, title: str = "",
              slo: SLO | None = None) -> list[Path]:
    """timeline.png (per policy, side by side: step time, running batch, queue, KV
    occupancy and preemptions over time) and cdf.png (TTFT and TPOT CDFs, SLO lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [f"{run.policy}/{run.mode}" for run in runs]
    rows = ("step time (ms)", "running batch", "queued requests", "KV cache used (%)")
    fig, axes = plt.subplots(len(rows), len(runs), figsize=(5.5 * len(runs) + 1, 8.5),
                             sharex=True, sharey="row", squeeze=False)
    end = max((float(r.step_start[-1] + r.step_time[-1]) for r in runs if r.step_time.size),
              default=1.0)
    edges = np.linspace(0.0, end, 801)
    mid = (edges[:-1] + edges[1:]) / 2
    for col, (run, label) in enumerate(zip(runs, labels)):
        t = run.step_start
        ax = axes[:, col]
        ax[0].plot(mid, 1e3 * _binned(t, run.step_time, edges, "mean"), lw=0.8, label="mean")
        ax[0].plot(mid, 1e3 * _binned(t, run.step_time, edges, "max"), lw=0.5, alpha=0.6,
                   label="max")
        ax[1].plot(mid, _binned(t, run.step_decode.astype(float), edges, "mean"), lw=0.8,
                   label="decoding requests")
        ax[1].plot(mid, _binned(t, run.step_tokens.astype(float), edges, "mean"), lw=0.8,
                   label="tokens per step")
        ax[2].plot(mid, _binned(t, run.step_waiting.astype(float), edges, "max"), lw=0.8,
                   color="C3")
        kv = 100.0 * run.step_kv_used / max(1, run.kv_capacity)
        ax[3].plot(mid, _binned(t, kv, edges, "max"), lw=0.8, color="C2")
        if run.preempt_steps.size:
            ax[3].plot(t[run.preempt_steps], np.full(run.preempt_steps.size, 100.0), "v",
                       color="C3", ms=4, label=f"preemption ({run.preempt_steps.size})")
            ax[3].legend(fontsize=7, loc="lower right")
        for when, *_ in run.switches:
            ax[0].axvline(when, color="grey", lw=0.3)
        ax[0].set_title(label + (f", {run.replicas} replicas" if run.replicas > 1 else ""),
                        fontsize=10)
        ax[-1].set_xlabel("simulated time (s)")
        for a in ax:
            a.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[1, 0].legend(fontsize=7, loc="upper right")
    for a, name in zip(axes[:, 0], rows):
        a.set_ylabel(name)
    axes[3, 0].set_ylim(0, 105)
    _log_axis(axes[1, 0], "y", subs=(1.0,))
    fig.suptitle((title + "\n" if title else "") + "per 1/800 of the run: step time mean "
                 "and max, batch means, queue and KV maxima", fontsize=10)
    fig.tight_layout()
    timeline = out / "timeline.png"
    save_figure(fig, timeline)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for run, label in zip(runs, labels):
        lat = request_latencies(run)
        for a, key in zip(axes, ("ttft", "tpot")):
            x = np.sort(lat[key])
            if x.size:
                a.plot(1e3 * x, np.arange(1, x.size + 1) / x.size, label=label)
    limits = (None, None) if slo is None else (slo.ttft_s, slo.tpot_s)
    for a, name, limit in zip(axes, ("TTFT (ms)", "TPOT (ms)"), limits):
        _log_axis(a)
        if limit is not None:
            a.axvline(1e3 * limit, color="k", ls="--", lw=1, label=f"SLO {1e3 * limit:g} ms")
        a.axhline(0.99, color="grey", ls=":", lw=0.8)
        a.set_xlabel(name)
        a.set_ylabel("fraction of requests")
        a.set_ylim(0, 1.01)
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title + " (dotted: p99)", fontsize=10)
    fig.tight_layout()
    cdf = out / "cdf.png"
    save_figure(fig, cdf)
    plt.close(fig)
    return [timeline, cdf]


def plot_sweep(results: dict[str, Any], path: str | Path) -> Path:
    """A what-if sweep at a glance: TTFT p99, TPOT p99 and throughput per point and
    policy (failed points left out, named in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in results["points"] if "error" not in r]
    failed = len(results["points"]) - len(points)
    labels = [" ".join(f"{k}={v}" for k, v in r["point"].items()) or "-" for r in points]
    policies = list(dict.fromkeys(s["policy"] for r in points for s in r["runs"]))
    metrics = (("ttft_p99_s", "TTFT p99 (ms)", 1e3), ("tpot_p99_s", "TPOT p99 (ms)", 1e3),
               ("throughput_tok_s", "throughput (output tok/s)", 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(10, 1.3 * len(points) * 3), 4.5))
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(points))
    for ax, (key, name, scale) in zip(axes, metrics):
        for i, policy in enumerate(policies):
            values = [next((s[key] * scale for s in r["runs"] if s["policy"] == policy),
                           np.nan) for r in points]
            ax.bar(x + (i - (len(policies) - 1) / 2) * width, values, width, label=policy)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    title = f"what-if {results['scenario']}"
    if failed:
        title += f" ({failed} failed point(s) not shown)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
