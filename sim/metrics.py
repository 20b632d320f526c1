"""Serving metrics of simulated runs, the RaMP-vs-static comparison, tables and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
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
    return {
        "policy": run.policy, "mode": run.mode,
        "requests": int(run.arrival.size), "served": int(done.sum()),
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
    ("tpot_mean_s", "TPOT ms", "{:.1f}", 1e3), ("itl_p99_s", "ITL p99 ms", "{:.1f}", 1e3),
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


def plot_runs(runs: Sequence[RunResult], out_dir: str | Path) -> list[Path]:
    """timeline.png (step time and batch tokens over time) and cdf.png (TTFT, TPOT)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_t, ax_b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for run in runs:
        label = f"{run.policy}/{run.mode}"
        stride = max(1, run.step_time.size // 5000)
        t = run.step_start[::stride]
        ax_t.plot(t, 1e3 * run.step_time[::stride], lw=0.6, label=label)
        ax_b.plot(t, run.step_tokens[::stride], lw=0.6, label=label)
        for when, *_ in run.switches:
            ax_t.axvline(when, color="grey", lw=0.3)
    ax_t.set_ylabel("step time (ms)")
    ax_b.set_ylabel("batch tokens")
    ax_b.set_xlabel("simulated time (s)")
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    timeline = out / "timeline.png"
    fig.savefig(timeline, dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        lat = request_latencies(run)
        for ax, key in zip(axes, ("ttft", "tpot")):
            x = np.sort(lat[key])
            ax.plot(1e3 * x, np.linspace(0, 1, x.size, endpoint=False),
                    label=f"{run.policy}/{run.mode}")
    for ax, name in zip(axes, ("TTFT (ms)", "TPOT (ms)")):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests")
        ax.legend(fontsize=8)
    fig.tight_layout()
    cdf = out / "cdf.png"
    fig.savefig(cdf, dpi=120)
    plt.close(fig)
    return [timeline, cdf]
