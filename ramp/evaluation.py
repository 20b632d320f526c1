"""Held-out evaluation of a profile: regret, speedups, baselines and floors, with plots.

Everything is computed from files a GPU run wrote (the profile, exhaustive held-out
measurements, baseline timings), so results are reproducible on any machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ramp.dispatch import OracleDispatcher
from ramp.errors import InputError
from ramp.profile import Profile
from ramp.profiler import Measurements
from ramp.regret import chosen_times, evaluate


@dataclass(frozen=True)
class Ceilings:
    """Measured machine ceilings for the floors (read-only HBM bytes/s, matmul FLOP/s)."""

    read_bandwidth: float
    matmul_flops: float


def routing_of(label: str) -> str:
    """``"zipf:s=1.2,tokens=64,seed=3"`` -> ``"zipf:s=1.2"``."""
    return label.split("tokens=")[0].rstrip(":,")


def _geomean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.exp(np.mean(np.log(x)))) if x.size else None


def floor_us(meas: Measurements, ceilings: Ceilings) -> np.ndarray:
    """Per call: max(active experts' weights + activations read once, useful FLOPs)."""
    p = meas.problem
    rows = meas.hists.sum(axis=1)
    active = np.count_nonzero(meas.hists, axis=1)
    bytes_moved = active * p.expert_weight_bytes + rows * (p.k + p.n) * p.dtype_bytes
    return np.maximum(bytes_moved / ceilings.read_bandwidth,
                      2.0 * rows * p.n * p.k / ceilings.matmul_flops) * 1e6


def evaluate_profile(profile: Profile, holdout: Measurements,
                     baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Regret of RaMP and of static dispatch on held-out calls, speedups, baselines."""
    if holdout.problem != profile.problem or holdout.gpu != profile.gpu:
        raise InputError(f"held-out measurements are for {holdout.gpu}/{holdout.problem.key}, "
                         f"the profile for {profile.gpu}/{profile.problem.key}")
    cols = np.array([holdout.bank.index(c) for c in profile.model.bank.configs])
    times = holdout.times[:, cols]
    hists = holdout.hists
    ramp, static = profile.dispatcher("ramp"), profile.dispatcher("static")
    oracle = OracleDispatcher(hists, times)
    skewed = ~holdout.is_uniform()
    reports = {
        "ramp": evaluate(ramp, hists, times, baseline=static).to_dict(),
        "static": evaluate(static, hists, times).to_dict(),
        "ramp_on_skewed": evaluate(ramp, hists[skewed], times[skewed],
                                   baseline=static).to_dict(),
    }
    t_ramp = chosen_times(times, ramp.choose_batch(hists))
    t_static = chosen_times(times, static.choose_batch(hists))
    t_oracle = chosen_times(times, oracle.choose_batch(hists))
    calls = []
    base = baselines or {}
    gmm = np.asarray(base.get("grouped_mm_us", [np.nan] * len(hists)), dtype=float)
    vllm = base.get("vllm")
    vllm_us = np.asarray([v["us"] for v in vllm], dtype=float) if isinstance(vllm, list) \
        else np.full(len(hists), np.nan)
    # Baseline ratios use RaMP's choice re-timed in the same run as the baselines.
    t_ramp_sbs = np.asarray(base.get("ramp_us", t_ramp), dtype=float)
    ceilings = None
    if "read_bandwidth_bytes_per_s" in base and "matmul_flops" in base:
        ceilings = Ceilings(base["read_bandwidth_bytes_per_s"], base["matmul_flops"])
    floors = floor_us(holdout, ceilings) if ceilings else np.full(len(hists), np.nan)
    ramp_names = [profile.model.bank.configs[i].name for i in ramp.choose_batch(hists)]
    for i, label in enumerate(holdout.labels):
        calls.append({
            "label": label, "tokens": int(holdout.tokens[i]),
            "active_experts": int(np.count_nonzero(hists[i])),
            "ramp_us": float(t_ramp[i]), "ramp_config": ramp_names[i],
            "static_us": float(t_static[i]), "oracle_us": float(t_oracle[i]),
            "ramp_side_by_side_us": float(t_ramp_sbs[i]),
            "grouped_mm_us": float(gmm[i]), "vllm_static_us": float(vllm_us[i]),
            "floor_us": float(floors[i]),
        })
    summary = {
        "ramp_over_static_geomean": _geomean(t_static / t_ramp),
        "ramp_over_static_geomean_skewed": _geomean((t_static / t_ramp)[skewed]),
        "ramp_over_grouped_mm_geomean": _geomean(gmm / t_ramp_sbs),
        "ramp_over_vllm_static_geomean": _geomean(vllm_us / t_ramp_sbs),
        "worst_ramp_vs_best_baseline": float(np.nanmax(
            t_ramp_sbs / np.fmin(gmm, vllm_us))) if np.isfinite(np.fmin(gmm, vllm_us)).any()
        else None,
    }
    decode = holdout.tokens <= 64
    if ceilings and decode.any():
        summary["hbm_floor_fraction_decode_mean"] = float(np.mean(floors[decode] /
                                                                  t_ramp[decode]))
    return {
        "gpu": profile.gpu, "problem": profile.problem.to_dict(), "profile": profile.key,
        "profile_provenance": profile.provenance, "holdout_provenance": holdout.provenance,
        "baselines_command": base.get("command"), "vllm": vllm,
        "regret": reports, "summary": summary, "calls": calls,
    }


def plot_evaluation(result: dict[str, Any], path: str | Path) -> Path:
    """Per-call times of every policy and baseline, by tokens, one panel per routing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = result["calls"]
    kinds = sorted({routing_of(c["label"]) for c in calls})
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.8), sharey=True,
                             squeeze=False)
    series = [("oracle_us", "oracle (exhaustive)", "k--"), ("ramp_us", "RaMP", "C0o-"),
              ("static_us", "static (uniform-tuned)", "C1s-"),
              ("vllm_static_us", "vLLM static", "C3^-"),
              ("grouped_mm_us", "torch._grouped_mm", "C2d-"), ("floor_us", "floor", "C7:")]
    for ax, kind in zip(axes[0], kinds):
        rows = sorted((c for c in calls if routing_of(c["label"]) == kind),
                      key=lambda c: c["tokens"])
        t = [c["tokens"] for c in rows]
        for key, name, style in series:
            y = [c[key] for c in rows]
            if np.isfinite(y).any():
                ax.plot(t, y, style, label=name, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(kind)
        ax.set_xlabel("tokens per step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("microseconds")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{result['gpu']} {result['problem']['gemm']} "
                 f"E{result['problem']['num_experts']} N{result['problem']['n']} "
                 f"K{result['problem']['k']} top{result['problem']['top_k']}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return path
