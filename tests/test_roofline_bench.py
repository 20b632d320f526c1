"""bench/roofline.py on the CPU: the roofline calls, the configurations each family times,
and the report (floors, RaMP's cross-family pick, bests, baselines, targets, errors) from
measurement files made here with the shipped H200 profiles' predicted times. Timing
itself needs a GPU."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ramp.costmodel import WaveCostModel
from ramp.dispatch import CrossFamilyDispatcher
from ramp.models import get_model
from ramp.profile import find_profile
from ramp.profiler import Measurements

_SPEC = importlib.util.spec_from_file_location(
    "roofline", Path(__file__).resolve().parents[1] / "bench" / "roofline.py")
rf = importlib.util.module_from_spec(_SPEC)
sys.modules["roofline"] = rf
_SPEC.loader.exec_module(rf)

MODEL = get_model("deepseek-v2-lite")
PROBLEM = MODEL.problem("w13")
TOKENS = (1, 16, 256, 2048)


def _files(tmp_path: Path, seed: int = 0, families=("triton", "grouped_mm")):
    """Measurement files as ``measure`` writes them: each family's profiled configurations
    timed at the profile's prediction with seeded noise; baselines with vLLM 10% slower
    than the best measured configuration."""
    hists, labels = rf.roofline_calls(MODEL, PROBLEM, TOKENS, seed=seed)
    rng = np.random.default_rng(seed)
    paths, best = [], np.full(len(hists), np.inf)
    for family in families:
        profile = find_profile("H200", PROBLEM, family=family)
        idx = rf.configs_to_time(profile, hists, 8)
        times = profile.model.predict(hists)[:, idx] * rng.lognormal(0, 0.03, (len(hists),
                                                                              len(idx)))
        # grouped_mm's timer runs the one tile PyTorch picks (the profile predicts the
        # other at inf): NaN there, as the real files have
        times[~np.isfinite(times)] = np.nan
        assert family != "grouped_mm" or np.isnan(times).sum(axis=1).min() >= 1
        meas = Measurements("H200", PROBLEM, profile.model.bank.subset(idx), family,
                            profile.family_version, hists, labels, times)
        path = tmp_path / f"H200_{PROBLEM.key}_{family}.roofline.json"
        meas.save(path)
        paths.append(path)
        best = np.fmin(best, np.nanmin(times, axis=1))
    base = {"schema": rf.BASELINES, "gpu": "H200", "problem": PROBLEM.to_dict(),
            "labels": labels, "command": "test", "device": {"device": "NVIDIA H200"},
            "read_bandwidth_bytes_per_s": 4.46e12, "matmul_flops": 7.9e14,
            "vllm": [{"us": float(1.1 * b), "config": {"BLOCK_SIZE_M": 16}, "rel_err": 1e-3}
                     for b in best]}
    base["vllm"][0]["rel_err"] = 0.5  # a wrong output: its time must not count
    path = tmp_path / f"H200_{PROBLEM.key}_{rf.BASELINES}.json"
    path.write_text(json.dumps(base))
    return [*paths, path], hists, best


def test_roofline_calls_cover_every_size_and_routing():
    hists, labels = rf.roofline_calls(MODEL, PROBLEM, TOKENS)
    assert len(labels) == len(TOKENS) * 3
    assert [rf.routing_name(x) for x in labels[:3]] == ["uniform", "zipf:s=1.2", "realistic"]
    assert (hists.sum(axis=1) == np.repeat(TOKENS, 3) * PROBLEM.top_k).all()


def test_configs_to_time_hold_every_family_pick():
    profile = find_profile("H200", PROBLEM, family="triton")
    hists, _ = rf.roofline_calls(MODEL, PROBLEM, TOKENS)
    picked = set(rf.configs_to_time(profile, hists, 4))
    assert set(profile.dispatcher("ramp").choose_batch(hists).tolist()) <= picked
    assert set(profile.dispatcher("static").choose_batch(hists).tolist()) <= picked
    assert len(picked) < len(profile.model.bank)
    assert rf.configs_to_time(profile, hists, 0) == list(range(len(profile.model.bank)))


def test_report_floors_picks_bests_and_targets(tmp_path):
    paths, hists, best = _files(tmp_path)
    # in file-name order, as a shell glob gives them: grouped_mm's file before triton's,
    # whose static table indexes the head of the concatenated bank
    result = rf.report(sorted(paths), "test")
    calls = result["calls"]
    assert len(calls) == len(hists) and result["matmul_flops"] == 7.9e14
    profiles = [find_profile("H200", PROBLEM, family=f) for f in ("triton", "grouped_mm")]
    model = WaveCostModel.concat([p.model for p in profiles])
    picks = CrossFamilyDispatcher(model, profiles[0].dispatcher("static"),
                                  [p.error for p in profiles],
                                  [len(p.model.bank) for p in profiles]).choose_batch(hists)
    for i, c in enumerate(calls):
        rows, active = hists[i].sum(), np.count_nonzero(hists[i])
        floor = max((active * PROBLEM.expert_weight_bytes
                     + rows * (PROBLEM.k + PROBLEM.n) * PROBLEM.dtype_bytes) / 4.46e12,
                    2.0 * rows * PROBLEM.n * PROBLEM.k / 7.9e14) * 1e6
        assert c["floor_us"] == pytest.approx(floor)
        # the files keep microseconds to 3 decimals
        assert c["best_us"] == pytest.approx(best[i], abs=1e-3)
        assert c["vllm_us"] == (None if i == 0 else pytest.approx(1.1 * best[i]))
        assert c["ramp_config"] == model.bank.configs[picks[i]].name
        assert c["ramp_us"] >= c["best_us"] and c["best_us"] == min(c["family_best_us"].values())
        assert c["grouped_mm_us"] == c["family_best_us"]["grouped_mm"]
    t = result["targets"][PROBLEM.key]
    assert t["vs_vllm_min"] == pytest.approx(min(c["vllm_us"] / c["ramp_us"] for c in calls
                                                 if c["vllm_us"]))
    assert t["met"]["vs_vllm_min"] == (t["vs_vllm_min"] >= 1.0)
    prefill = [c["floor_us"] / c["ramp_us"] for c in calls if c["tokens"] >= 1024]
    assert t["prefill_floor_fraction_min"] == pytest.approx(min(prefill))
    out = tmp_path / "roofline.json"
    assert rf.main(["report", *map(str, paths), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["calls"][0]["shape"] == PROBLEM.key
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_report_bad_inputs_are_one_line_errors(tmp_path, capsys):
    paths, *_ = _files(tmp_path)
    measurements, base = paths[:-1], paths[-1]
    for args, message in ((measurements, "no roofline-baselines file"),
                          ([paths[1], base], "no triton measurements")):
        assert rf.main(["report", *map(str, args), "--out", str(tmp_path / "r.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    data = json.loads(base.read_text())
    data["labels"] = data["labels"][::-1]
    base.write_text(json.dumps(data))
    assert rf.main(["report", *map(str, paths), "--out", str(tmp_path / "r.json")]) == 2
    assert "other calls" in capsys.readouterr().err
    assert rf.main(["measure", "--model", "deepseek-v2-lite", "--families", "tritn",
                    "--out", str(tmp_path)]) == 2
    assert "'tritn' is not one of" in capsys.readouterr().err
