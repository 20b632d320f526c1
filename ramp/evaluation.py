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

from ramp.config import KernelConfig
from ramp.dispatch import OracleDispatcher, RampDispatcher
from ramp.errors import InputError
from ramp.plaindata import save_figure
from ramp.profile import Profile
from ramp.profiler import Measurements
from ramp.regret import chosen_times, evaluate
from ramp.regret import geomean as _geomean

PREFILL_TOKENS = 768  # held-out calls at least this large count as prefill

@dataclass(frozen=True)
class Ceilings:
    """Measured machine ceilings for the floors (read-only HBM bytes/s, matmul FLOP/s)."""

    read_bandwidth: float
    matmul_flops: float


def routing_of(label: str) -> str:
    """``"zipf:s=1.2,tokens=64,seed=3"`` -> ``"zipf:s=1.2"``."""
    return label.split("tokens=")[0].rstrip(":,")


def floor_us(meas: Measurements, ceilings: Ceilings) -> np.ndarray:
    """Per call: max(active experts' weights + activations read once, useful FLOPs)."""
    p = meas.problem
    rows = meas.hists.sum(axis=1)
    active = np.count_nonzero(meas.hists, axis=1)
    bytes_moved = active * p.expert_weight_bytes + rows * (p.k + p.n) * p.dtype_bytes
    return np.maximum(bytes_moved / ceilings.read_bandwidth,
                      2.0 * rows * p.n * p.k / ceilings.matmul_flops) * 1e6


def _aligned_times(profile: Profile, holdout: Measurements) -> np.ndarray:
    """Held-out times [H, C] in the column order of the profile's bank."""
    if holdout.problem != profile.problem or holdout.gpu != profile.gpu:
        raise InputError(f"held-out measurements are for {holdout.gpu}/{holdout.problem.key}, "
                         f"the profile for {profile.gpu}/{profile.problem.key}")
    return holdout.times[:, [holdout.bank.index(c) for c in profile.model.bank.configs]]


_BASELINE_SERIES = ("grouped_mm_us", "ramp_us", "triton_ramp_us", "triton_static_us")
_BASELINE_CEILINGS = ("read_bandwidth_bytes_per_s", "matmul_flops")


def load_baselines(path: str | Path, calls: int) -> dict[str, Any]:
    """A baselines file (``bench/``'s side-by-side timings) checked against ``calls``
    held-out calls: every series one number per call, ``vllm`` one ``{"us": ...}`` per
    call, ceilings positive numbers; errors name the file and field."""
    from ramp.plaindata import locate, read_json

    data = read_json(path, "baselines")
    if not isinstance(data, dict):
        raise InputError(f"{path}: baselines are a JSON object")

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for key in _BASELINE_SERIES:
        series = data.get(key)
        if series is not None and not (isinstance(series, list) and len(series) == calls
                                       and all(is_number(v) for v in series)):
            raise InputError(locate(f"{path}: field {key!r} must list {calls} numbers (one "
                                    "per held-out call)", data, key))
    vllm = data.get("vllm")
    if vllm is not None and not (isinstance(vllm, list) and len(vllm) == calls and all(
            isinstance(v, dict) and is_number(v.get("us")) for v in vllm)):
        raise InputError(locate(f"{path}: field 'vllm' must list {calls} objects with a "
                                "number 'us'", data, "vllm"))
    for key in _BASELINE_CEILINGS:
        if key in data and not (is_number(data[key]) and data[key] > 0):
            raise InputError(locate(f"{path}: field {key!r} must be a number > 0", data, key))
    return data


@dataclass(frozen=True)
class _SideBySide:
    """What a side-by-side file (``bench/run_gpu.py``) adds per held-out call (NaN where
    it has nothing): baselines, the primary RaMP choice re-timed with them, floors."""

    grouped_mm: np.ndarray
    vllm: Any
    vllm_us: np.ndarray
    same_run: bool
    ramp: np.ndarray
    ceilings: Ceilings | None
    floors: np.ndarray
    triton_ramp: np.ndarray
    triton_static: np.ndarray


def _side_by_side(base: dict[str, Any], holdout: Measurements, t_ramp: np.ndarray,
                  cross_family: bool) -> _SideBySide:
    nan = [np.nan] * len(holdout.hists)
    vllm = base.get("vllm")
    vllm_us = np.asarray([v["us"] for v in vllm], dtype=float) if isinstance(vllm, list) \
        else np.full(len(nan), np.nan)
    # Baseline ratios use RaMP's choice re-timed in the same run as the baselines; a
    # cross-family choice was not re-timed there, so it uses its held-out measurement.
    same_run = "ramp_us" in base and not cross_family
    ceilings = None
    if "read_bandwidth_bytes_per_s" in base and "matmul_flops" in base:
        ceilings = Ceilings(base["read_bandwidth_bytes_per_s"], base["matmul_flops"])
    return _SideBySide(
        grouped_mm=np.asarray(base.get("grouped_mm_us", nan), dtype=float),
        vllm=vllm, vllm_us=vllm_us, same_run=same_run,
        ramp=np.asarray(base["ramp_us"], dtype=float) if same_run else t_ramp,
        ceilings=ceilings,
        floors=floor_us(holdout, ceilings) if ceilings else np.full(len(nan), np.nan),
        # Another family's RaMP and static choices, re-timed in the same loop (CuTe runs).
        triton_ramp=np.asarray(base.get("triton_ramp_us", nan), dtype=float),
        triton_static=np.asarray(base.get("triton_static_us", nan), dtype=float),
    )


def _summary(chosen: dict[str, np.ndarray], sbs: _SideBySide, holdout: Measurements,
             skewed: np.ndarray) -> tuple[dict[str, Any], dict[str, dict[int, Any]]]:
    """Speedup geomeans (overall, per T, skewed, against the baselines, vs the floors)."""
    t_ramp, t_unguarded, t_static = chosen["ramp"], chosen["unguarded"], chosen["static"]
    gmm, vllm_us, t_ramp_sbs, t_triton = sbs.grouped_mm, sbs.vllm_us, sbs.ramp, sbs.triton_ramp
    tokens = holdout.tokens
    by_tokens = {name: {int(t): _geomean((t_static / times)[tokens == t])
                        for t in np.unique(tokens)}
                 for name, times in (("ramp_over_static", t_ramp),
                                     ("ramp_unguarded_over_static", t_unguarded),
                                     ("oracle_over_static", chosen["oracle"]))}
    summary = {
        "ramp_over_static_geomean": _geomean(t_static / t_ramp),
        "ramp_over_static_geomean_skewed": _geomean((t_static / t_ramp)[skewed]),
        "ramp_unguarded_over_static_geomean": _geomean(t_static / t_unguarded),
        "ramp_over_static_worst_tokens": min(by_tokens["ramp_over_static"].values()),
        "ramp_unguarded_over_static_worst_tokens": min(
            by_tokens["ramp_unguarded_over_static"].values()),
        "ramp_over_grouped_mm_geomean": _geomean(gmm / t_ramp_sbs),
        "ramp_over_vllm_static_geomean": _geomean(vllm_us / t_ramp_sbs),
        "baseline_ratios_same_run": sbs.same_run,
        "worst_ramp_vs_best_baseline": float(np.nanmax(
            t_ramp_sbs / np.fmin(gmm, vllm_us))) if np.isfinite(np.fmin(gmm, vllm_us)).any()
        else None,
    }
    decode, prefill = tokens <= 64, tokens >= PREFILL_TOKENS
    if np.isfinite(t_triton).any():
        summary["ramp_over_triton_ramp_geomean"] = _geomean(t_triton / t_ramp_sbs)
        for name, rows in (("decode", decode), ("prefill", prefill)):
            summary[f"ramp_over_triton_ramp_geomean_{name}"] = _geomean(
                (t_triton / t_ramp_sbs)[rows])
        summary["ramp_over_grouped_mm_geomean_prefill"] = _geomean((gmm / t_ramp_sbs)[prefill])
    if sbs.ceilings and decode.any():
        summary["hbm_floor_fraction_decode_mean"] = float(np.mean(sbs.floors[decode] /
                                                                  t_ramp[decode]))
    if sbs.ceilings and prefill.any():
        summary["floor_fraction_prefill_mean"] = float(np.mean(sbs.floors[prefill] /
                                                               t_ramp[prefill]))
    return summary, by_tokens


def evaluate_profile(profile: Profile, holdout: Measurements,
                     baselines: dict[str, Any] | None = None,
                     extra: list[tuple[Profile, Measurements]] = ()) -> dict[str, Any]:
    """Regret of RaMP and of static dispatch on held-out calls, speedups, baselines.

    ``extra`` adds other kernel families (their profile and held-out measurements on the
    same calls): RaMP then chooses across all families per call, while static dispatch
    stays the primary family's batch-size table, as in an engine.

    ``ramp`` is the default policy: guarded by the primary profile's measured model error
    (``GuardedDispatcher``), and with ``extra`` across families
    (``CrossFamilyDispatcher``: another family only beyond both families' errors);
    ``ramp_unguarded`` the model's plain argmin.
    """
    times = _aligned_times(profile, holdout)
    for other, other_holdout in extra:
        if other_holdout.labels != holdout.labels:
            raise InputError(f"{other.key}: held-out calls differ from the primary family's")
        times = np.hstack([times, _aligned_times(other, other_holdout)])
    hists = holdout.hists
    static = profile.dispatcher("static")
    ramp = profile.across_families([other for other, _ in extra])
    model = ramp.ramp.model
    unguarded = RampDispatcher(model)
    skewed = ~holdout.is_uniform()
    reports = {
        "ramp": evaluate(ramp, hists, times, baseline=static).to_dict(),
        "ramp_unguarded": evaluate(unguarded, hists, times, baseline=static).to_dict(),
        "static": evaluate(static, hists, times).to_dict(),
        "ramp_on_skewed": evaluate(ramp, hists[skewed], times[skewed],
                                   baseline=static).to_dict(),
    }
    ramp_idx = ramp.choose_batch(hists)
    chosen = {name: chosen_times(times, idx) for name, idx in (
        ("ramp", ramp_idx), ("unguarded", unguarded.choose_batch(hists)),
        ("static", static.choose_batch(hists)),
        ("oracle", OracleDispatcher(hists, times).choose_batch(hists)))}
    base = baselines or {}
    sbs = _side_by_side(base, holdout, chosen["ramp"], bool(extra))
    calls = [{
        "label": label, "tokens": int(holdout.tokens[i]),
        "active_experts": int(np.count_nonzero(hists[i])),
        "ramp_us": float(chosen["ramp"][i]), "ramp_config": model.bank.configs[ramp_idx[i]].name,
        "ramp_unguarded_us": float(chosen["unguarded"][i]),
        "static_us": float(chosen["static"][i]), "oracle_us": float(chosen["oracle"][i]),
        "ramp_side_by_side_us": float(sbs.ramp[i]),
        "grouped_mm_us": float(sbs.grouped_mm[i]), "vllm_static_us": float(sbs.vllm_us[i]),
        "triton_ramp_us": float(sbs.triton_ramp[i]),
        "triton_static_us": float(sbs.triton_static[i]), "floor_us": float(sbs.floors[i]),
    } for i, label in enumerate(holdout.labels)]
    summary, by_tokens = _summary(chosen, sbs, holdout, skewed)
    return {
        "gpu": profile.gpu, "problem": profile.problem.to_dict(), "profile": profile.key,
        "families": model.bank.families, "extra_profiles": [p.key for p, _ in extra],
        "profile_provenance": profile.provenance, "holdout_provenance": holdout.provenance,
        "baselines_command": base.get("command"), "vllm": sbs.vllm,
        "model_error": profile.error.to_dict(),
        "regret": reports, "summary": summary, "by_tokens": by_tokens, "calls": calls,
    }


def plot_evaluation(result: dict[str, Any], path: str | Path) -> Path:
    """Per-call times of every policy and baseline, by tokens, one panel per routing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = result["calls"]
    kinds = sorted({routing_of(c["label"]) for c in calls})
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.2 * len(kinds), 6.6), sharey="row",
                             sharex=True, squeeze=False)
    series = [("oracle_us", "oracle (exhaustive)", "k--"), ("ramp_us", "RaMP (guarded)", "C0o-"),
              ("ramp_unguarded_us", "RaMP unguarded", "C5x:"),
              ("static_us", "static (uniform-tuned)", "C1s-"),
              ("vllm_static_us", "vLLM static", "C3^-"),
              ("grouped_mm_us", "torch._grouped_mm", "C2d-"),
              ("triton_ramp_us", "Triton family, RaMP", "C4v-"), ("floor_us", "floor", "C7:")]
    for col, kind in enumerate(kinds):
        rows = sorted((c for c in calls if routing_of(c["label"]) == kind),
                      key=lambda c: c["tokens"])
        t = [c["tokens"] for c in rows]
        oracle = np.array([c["oracle_us"] for c in rows])
        for key, name, style in series:
            y = np.array([c[key] for c in rows])
            if np.isfinite(y).any():
                axes[0][col].plot(t, y, style, label=name, ms=4)
                axes[1][col].plot(t, y / oracle, style, ms=4)
        axes[0][col].set_yscale("log")
        axes[0][col].set_title(kind)
        axes[1][col].set_xlabel("tokens per step")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
    axes[1][0].set_ylabel("time / oracle")
    axes[0][0].set_ylabel("microseconds")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{result['gpu']} {result['problem']['gemm']} "
                 f"E{result['problem']['num_experts']} N{result['problem']['n']} "
                 f"K{result['problem']['k']} top{result['problem']['top_k']}")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return path


def evaluate_sync_free(poly: dict[str, Any], result: dict[str, Any],
                       holdout: Measurements | None = None) -> dict[str, Any]:
    """The sync-free kernel on the same held-out calls: its overhead over the same branch
    forced, over the same configuration launched on its own by the host (when the Triton
    held-out measurements are given), and over host-dispatched RaMP and the oracle."""
    calls = {c["label"]: c for c in result["calls"]}
    rows = [r for r in poly["calls"] if r["label"] in calls]
    if not rows:
        raise InputError("sync-free results share no held-out call with the evaluation")
    auto = np.array([r["auto_us"] for r in rows])
    forced_same = np.array([r["forced_us"][r["choice"]] for r in rows])
    standalone = None
    if holdout is not None:
        index = {lab: i for i, lab in enumerate(holdout.labels)}
        plain = [holdout.bank.index(KernelConfig.from_dict(dict(b, variant="")))
                 for b in poly["branches"]]
        standalone = np.array([holdout.times[index[r["label"]], plain[r["choice"]]]
                               for r in rows])
    forced_best = np.array([min(r["forced_us"]) for r in rows])
    host = np.array([calls[r["label"]]["ramp_us"] for r in rows])
    oracle = np.array([calls[r["label"]]["oracle_us"] for r in rows])
    return {
        "branches": [b.get("block_m") and f"m{b['block_m']}n{b['block_n']}k{b['block_k']}"
                     f"-w{b['num_warps']}s{b['num_stages']}" for b in poly["branches"]],
        "calls": len(rows),
        "overhead_vs_forced_same_branch_mean": float(np.mean(auto / forced_same - 1)),
        "vs_same_config_host_launched_geomean": None if standalone is None
        else _geomean(auto / standalone),
        "in_kernel_choice_regret_mean": float(np.mean(auto / forced_best - 1)),
        "vs_host_dispatched_ramp_geomean": _geomean(auto / host),
        "regret_vs_full_bank_oracle_mean": float(np.mean(auto / oracle - 1)),
        "command": poly.get("command"),
    }
