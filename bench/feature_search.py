"""Which four cost-model features rank a family's configurations best (CPU, from raw files).

For every 4-feature set that contains ``launch``, drawn from the geometry features of
``ramp.geometry`` plus candidate per-expert tile classes computed here, fit each shape's
training measurements and report two regrets:

- ``loo``: leave-one-out on the training calls (each call dispatched by fits that did
  not see it): the selection criterion, which never touches held-out data;
- ``held-out``: the fit on all training calls, dispatched on the held-out calls (NaN
  for a shape profiled with ``--skip-holdout``, which has no held-out file).

Usage: python bench/feature_search.py FAMILY [--raw DIR] [--top N]   (FAMILY: triton,
cute, triton-tiles, ...). Reads DIR/*_FAMILY.{profile,train,holdout}.json (DIR: default
bench/results/raw). docs/perf/cute.md and docs/perf/triton.md have the results.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from ramp.costmodel import loo_predictions
from ramp.evaluation import _aligned_times
from ramp.geometry import FEATURE_NAMES, GeometryPlan
from ramp.profile import load_profile
from ramp.profiler import Measurements

RAW = Path(__file__).resolve().parent / "results" / "raw"


def candidate_features(plan: GeometryPlan, hists: np.ndarray) -> dict[str, np.ndarray]:
    """Geometry features and per-expert tile classes, each [H, C]."""
    geo = plan.geometry(hists)
    out = {name: geo.feature(name) for name in FEATURE_NAMES}
    bm = plan.block_m[None, :, None]
    h = hists[:, None, :]
    per_slot = (plan.tiles_per_row_tile / plan.slots)[None, :]
    out["partial_waves"] = ((h % bm) != 0).sum(axis=2) * per_slot     # last, partial tiles
    out["full_waves"] = (h // bm).sum(axis=2) * per_slot              # full row tiles
    out["max_expert_waves"] = (-(-h // bm)).max(axis=2) * per_slot    # the hottest expert
    out["cold_waves"] = ((h > 0) & (h <= bm // 2)).sum(axis=2) * per_slot  # <= half a tile
    out["hot_waves"] = out["tile_waves"] - out["cold_waves"]
    return out


def regrets(shape_files: tuple[Path, Path, Path], sets: list[tuple[str, ...]]
            ) -> dict[tuple[str, ...], tuple[float, float]]:
    """(LOO regret, held-out regret) per feature set for one shape's files; held-out is
    NaN where the held-out file does not exist."""
    profile = load_profile(shape_files[0])
    train = Measurements.load(shape_files[1])
    holdout = Measurements.load(shape_files[2]) if shape_files[2].exists() else None
    bank = profile.model.bank
    plan = GeometryPlan(bank, profile.problem, profile.model.num_sms)
    times = train.times[:, [train.bank.index(c) for c in bank.configs]]
    feats = candidate_features(plan, train.hists)
    out = {}
    for names in sets:
        x = np.stack([feats[n] for n in names], axis=-1)
        loo = loo_predictions(x, times)
        loo = np.where(np.isfinite(loo), loo, np.inf)
        held_regret = float("nan")
        if holdout is not None:
            held = _aligned_times(profile, holdout)
            held_feats = candidate_features(plan, holdout.hists)
            xh = np.stack([held_feats[n] for n in names], axis=-1)
            pred = np.full(held.shape, np.inf)
            for c in range(len(bank)):
                ok = np.isfinite(times[:, c])
                p, _ = nnls(x[ok, c] / times[ok, c][:, None], np.ones(int(ok.sum())))
                pred[:, c] = xh[:, c] @ p
            held_regret = _regret(held, pred)
        out[names] = (_regret(times, loo), held_regret)
    return out


def _regret(times: np.ndarray, pred: np.ndarray) -> float:
    chosen = times[np.arange(len(times)), np.argmin(pred, axis=1)]
    return float(np.mean(chosen / np.nanmin(times, axis=1) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("--raw", type=Path, default=RAW,
                        help="folder of the raw profile/train/holdout files")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    names = [n for n in (*FEATURE_NAMES, "partial_waves", "full_waves", "max_expert_waves",
                         "cold_waves", "hot_waves") if n != "launch"]
    sets = [("launch", *s) for s in itertools.combinations(names, 3)]
    results: dict[tuple[str, ...], dict[str, tuple[float, float]]] = {}
    for profile in sorted(args.raw.glob(f"*_{args.family}.profile.json")):
        stem = str(profile)[: -len(".profile.json")]
        shape = profile.name.split("_")[1].removesuffix("-bfloat16")
        files = (profile, Path(stem + ".train.json"), Path(stem + ".holdout.json"))
        for names_, value in regrets(files, sets).items():
            results.setdefault(names_, {})[shape] = value
    ranked = sorted(results.items(), key=lambda kv: np.mean([v[0] for v in kv[1].values()]))
    for names_, by_shape in ranked[: args.top]:
        loo = np.mean([v[0] for v in by_shape.values()])
        held = np.mean([v[1] for v in by_shape.values()])
        detail = "  ".join(f"{s} {100 * a:.2f}/{100 * b:.2f}" for s, (a, b) in by_shape.items())
        print(f"{','.join(names_[1:]):<42} loo {100 * loo:.2f}% held-out {100 * held:.2f}%  "
              f"({detail})")


if __name__ == "__main__":
    main()
