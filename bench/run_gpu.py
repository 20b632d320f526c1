"""One GPU call per model shape: profile, held-out exhaustive timings, baselines.

    source bench/device_env.sh
    python3 bench/run_gpu.py --model qwen3-30b-a3b --gemm w13 --out $OUT
    python3 bench/run_gpu.py --family cute --model qwen3-30b-a3b mixtral-8x7b --gemm w13 \
        --out $OUT     # several models in one process share the CuTe compilations

Writes into --out: the fitted profile, the training and held-out measurements (every
configuration on every histogram) and the baselines on the held-out histograms
(``torch._grouped_mm``; vLLM's own fused_moe GEMM with the config vLLM picks, when vLLM
is importable: ``bench/vllm_baseline.py``). Regret and speedups are computed from
these files on any machine by ``bash bench/evaluate_all.sh`` (``ramp evaluate`` per shape).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ramp.families import TimerOptions, get_family, profilable_families
from ramp.hardware import detect_gpu
from ramp.models import get_model
from ramp.profiler import SamplePlan, fit_profile, measure, timer_provenance

HOLDOUT = SamplePlan(
    tokens=(1, 3, 12, 48, 192, 768, 3072),
    routings=("uniform", "zipf:s=0.8", "zipf:s=1.2", "zipf:s=1.6", "hot:hot_fraction=0.3"),
    seed=7,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, nargs="+")
    ap.add_argument("--gemm", choices=["w13", "w2"], required=True)
    ap.add_argument("--family", choices=[f for f in profilable_families() if f != "grouped_mm"],
                    default="triton", help="grouped_mm: see --grouped-mm")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=240.0, help="training timing budget (s)")
    ap.add_argument("--skip-holdout", action="store_true",
                    help="profiles only (the sync-free branches too): no held-out timings, "
                         "no side-by-side")
    ap.add_argument("--routings", default=None,
                    help="training routings, ';'-separated (default: the profiler's)")
    ap.add_argument("--skip-sync-free", action="store_true")
    ap.add_argument("--jobs", type=int, default=None,
                    help="compile processes (default: the family's, e.g. CuTe's at most 4)")
    ap.add_argument("--grouped-mm", action="store_true",
                    help="only profile torch._grouped_mm (training and held-out calls)")
    ap.add_argument("--side-by-side", metavar="PROFILE",
                    help="only re-time RaMP, static, vLLM and grouped_mm on the held-out "
                         "calls, with this fitted profile")
    args = ap.parse_args()
    if args.side_by_side:
        from ramp.profile import load_profile

        profile = load_profile(args.side_by_side)
        hists, labels = HOLDOUT.histograms(profile.problem)
        out = Path(args.out)
        side_by_side(profile, hists, labels,
                     out / f"{profile.gpu}_{profile.problem.key}_baselines.json",
                     "python3 " + " ".join(sys.argv))
        return

    for model in args.model:
        profile_shape(args, get_model(model).problem(args.gemm))


def make_timer(family: str, problem, configs=None, jobs: int | None = None):
    """The family's profiling timer over ``configs`` (default: its whole space)."""
    return get_family(family).make_timer(problem, configs,
                                         TimerOptions(jobs=jobs, progress=False))


def profile_shape(args, problem) -> None:
    gpu = detect_gpu()
    out = Path(args.out)
    stem = f"{gpu.name}_{problem.key}"
    command = "python3 " + " ".join(sys.argv)
    if args.grouped_mm:
        timer = make_timer("grouped_mm", problem)
        for name, plan in (("train", SamplePlan()), ("holdout", HOLDOUT)):
            hists, labels = plan.histograms(problem)
            meas = measure(timer, gpu.name, problem, hists, labels)
            meas.provenance["command"] = command
            meas.save(out / f"{stem}_grouped_mm.{name}.json")
        return
    family = args.family
    t0 = time.monotonic()
    timer = make_timer(family, problem, jobs=args.jobs)
    compile_s = time.monotonic() - t0
    print(f"{problem.key}: compiled+verified {len(timer.bank)} {family} configs in "
          f"{compile_s:.1f} s; max rel err {max(timer.verify_errors.values()):.2e}; "
          f"dropped {timer.dropped}")

    plan = SamplePlan(routings=tuple(args.routings.split(";"))) if args.routings else SamplePlan()
    hists, labels = plan.histograms(problem)
    train = measure(timer, gpu.name, problem, hists, labels, budget_s=args.budget,
                    checkpoint=out / f"{stem}_{family}.train.json")
    train.provenance.update(command=command, compile_and_verify_seconds=round(compile_s, 1),
                            **timer_provenance(timer))
    train.save(out / f"{stem}_{family}.train.json")
    profile = fit_profile(train, gpu.sms)
    profile.provenance["profiling_wall_seconds"] = round(time.monotonic() - t0, 1)
    profile.save(out / f"{stem}_{family}.profile.json")
    print(f"profiled in {time.monotonic() - t0:.1f} s wall")
    sync_free = family == "triton" and not args.skip_sync_free
    if sync_free:
        poly_timer, poly_profile = fit_sync_free(train, out, stem, command)
    if args.skip_holdout:
        return

    hists, labels = HOLDOUT.histograms(problem)
    hold = measure(timer, gpu.name, problem, hists, labels)
    hold.provenance["command"] = command
    hold.save(out / f"{stem}_{family}.holdout.json")
    if sync_free:
        time_sync_free(poly_timer, poly_profile, hists, labels, out, stem, command)

    timer.close()  # the side-by-side builds its own timers
    suffix = "" if family == "triton" else f"_{family}"
    side_by_side(profile, hists, labels, out / f"{stem}{suffix}_baselines.json", command)
    print(f"done in {time.monotonic() - t0:.1f} s")


def side_by_side(profile, hists, labels, path: Path, command: str) -> None:
    """In one process and loop: RaMP's and static dispatch's choices, vLLM's kernel with
    its shipped config, torch._grouped_mm, and the machine's measured ceilings."""
    from ramp.kernels.cuda_timing import matmul_flops, read_bandwidth

    problem = profile.problem
    choices = {"": profile}
    if profile.family != "triton":  # the Triton family's RaMP, in the same loop
        from ramp.profile import find_profile

        choices["triton_"] = find_profile(profile.gpu, problem, family="triton")
    picks, timers = {}, {}
    for prefix, prof in choices.items():
        ramp_idx = prof.dispatcher("ramp").choose_batch(hists)
        static_idx = prof.dispatcher("static").choose_batch(hists)
        used = sorted({*ramp_idx.tolist(), *static_idx.tolist()})
        timers[prefix] = make_timer(prof.family, problem,
                                    [prof.model.bank.configs[i] for i in used])
        col = {cfg: c for c, cfg in enumerate(timers[prefix].bank.configs)}
        picks[prefix] = [(col[prof.model.bank.configs[r]], col[prof.model.bank.configs[s]])
                         for r, s in zip(ramp_idx, static_idx)]
    gmm = make_timer("grouped_mm", problem)
    result: dict = {
        "labels": labels, "command": command, "profile": profile.key,
        "device": gmm.device_info(),
        "read_bandwidth_bytes_per_s": read_bandwidth(), "matmul_flops": matmul_flops(),
        "grouped_mm_rel_err": gmm.verify(hists[len(hists) // 2]),
        "grouped_mm_us": [],
    }
    for prefix, prof in choices.items():
        result.update({f"{prefix}ramp_us": [], f"{prefix}static_us": []})
        result[f"{prefix}profile"] = prof.key
    for i, hist in enumerate(hists):
        for prefix, timer in timers.items():
            times = timer.time_all(hist)
            r, s = picks[prefix][i]
            result[f"{prefix}ramp_us"].append(float(times[r]))
            result[f"{prefix}static_us"].append(float(times[s]))
        result["grouped_mm_us"].append(float(np.nanmin(gmm.time_all(hist))))
    for timer in timers.values():
        timer.close()
    try:
        from bench.vllm_baseline import vllm_times
    except ImportError as exc:
        result["vllm"] = f"not run: {exc}"
    else:
        result["vllm"] = vllm_times(problem, hists)
    path.write_text(json.dumps(result, indent=1) + "\n")


def fit_sync_free(train, out: Path, stem: str, command: str):
    """Pick the polymorphic kernel's branches from the training measurements, profile
    each branch (forced) on the same histograms, fit: the sync-free profile."""
    from ramp.kernels.triton.poly import PolyTimer
    from ramp.polymorphism import select_branches

    chosen = select_branches(train.bank, train.times)
    branches = [train.bank.configs[i] for i in chosen.indices]
    print(f"sync-free branches {[c.name for c in branches]}, "
          f"training oracle-mix regret {chosen.mean_regret:.4f}")
    timer = PolyTimer(train.problem, branches)
    poly_train = measure(timer, train.gpu, train.problem, train.hists, train.labels)
    poly_train.provenance["command"] = command
    poly_train.save(out / f"{stem}_poly.train.json")
    profile = fit_profile(poly_train, timer.num_sms)
    profile.save(out / f"{stem}_poly.profile.json")
    return timer, profile


def time_sync_free(timer, profile, hists, labels, out: Path, stem: str, command: str) -> None:
    """Time the self-selecting launch (and every branch forced) on held-out calls."""
    from ramp.kernels.triton.poly import PolyGemm

    poly = PolyGemm.from_model(profile.model)
    rows = []
    for hist, label in zip(hists, labels):
        forced = timer.time_all(hist)
        auto_us, choice = timer.time_auto(poly, hist)
        rows.append({"label": label, "auto_us": auto_us, "choice": choice,
                     "forced_us": forced.tolist()})
    (out / f"{stem}_poly.holdout.json").write_text(json.dumps({
        "command": command, "gpu": profile.gpu, "device": timer.device_info(),
        "branches": [c.to_dict() for c in profile.model.bank.configs],
        "occupancy": profile.model.bank.occupancy[0], "calls": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
