"""bench/real_routing.py on the CPU: the calls it builds from real routing (full and EP
views), the summary and the report; the EP call's inputs through the Triton interpreter.
The timing itself needs a GPU (CUDA graphs) and runs there."""

import gzip
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ramp.expert_parallel import ExpertPlacement
from ramp.models import get_model
from ramp.profile import find_profile
from ramp.regret import evaluate
from ramp.tokenrouting import TokenRouting

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routing" / "esft-dsv2lite"
needs_data = pytest.mark.skipif(not (DATA / "law.npz").exists(),
                                reason="real routing data (../shared/data) absent")
MODEL = get_model("deepseek-v2-lite")
# bench/ is scripts, not an installed package: load the script from its file
_SPEC = importlib.util.spec_from_file_location(
    "real_routing", Path(__file__).resolve().parents[1] / "bench" / "real_routing.py")
rr = importlib.util.module_from_spec(_SPEC)
sys.modules["real_routing"] = rr  # dataclasses look their module up while the class is made
_SPEC.loader.exec_module(rr)


def _routing(tokens: int, seed: int, layers: int = 3, experts: int = 64, top_k: int = 6,
             skew: float = 1.5) -> TokenRouting:
    """Skewed distinct top-k ids (Gumbel top-k over Zipf-like logits), seeded."""
    rng = np.random.default_rng(seed)
    logits = -skew * np.log(np.arange(1, experts + 1))[rng.permutation(experts)]
    keys = logits + rng.gumbel(size=(layers, tokens, experts))
    ids = np.argsort(-keys, axis=2)[:, :, :top_k]
    return TokenRouting(ids, np.array([tokens // 2, tokens - tokens // 2]), experts)


def test_ep_call_is_the_busiest_rank_and_its_tokens():
    routing = _routing(256, seed=1)
    calls = rr.build_calls([("syn", routing)], [16, 64], ["full", "ep4", "ep8"], samples=2)
    assert len(calls) == 2 * 2 * 2 * 3          # T x batching x samples x views
    by_label = {}
    for c in calls:
        by_label.setdefault(c.label, {})[c.view] = c
    for views in by_label.values():
        full = views["full"]
        assert full.hist.sum() == full.tokens * 6 and full.expert_map is None
        assert np.array_equal(full.hist, np.bincount(full.ids.ravel(), minlength=64))
        for ep in (4, 8):
            c = views[f"ep{ep}"]
            local = ExpertPlacement.contiguous(64, ep).view(full.hist[None]).hists[0]
            assert c.hist.sum() == local.sum(axis=1).max()          # the busiest rank
            assert np.array_equal(c.hist, local[c.rank])
            mapped = c.expert_map[c.ids]
            assert (mapped >= 0).any(axis=1).all()                  # only tokens that reach it
            assert np.array_equal(np.bincount(mapped[mapped >= 0], minlength=64 // ep), c.hist)
            assert c.ids.shape[0] <= c.tokens


def test_balanced_placement_and_bad_views():
    calls = rr.build_calls([("syn", _routing(128, seed=2))], [64], ["ep4"], "balanced")
    assert {c.view for c in calls} == {"ep4"} and all(c.hist.size == 16 for c in calls)
    with pytest.raises(rr.InputError, match="--views"):
        rr.view_degree("ep1")


def test_configs_to_time_keeps_the_picks_and_the_cap():
    must = np.array([5, 190, 5])
    assert rr.configs_to_time(196, must, None) == list(range(196))
    capped = rr.configs_to_time(196, must, 12)
    assert len(capped) == 12 and {5, 190} <= set(capped)
    assert max(np.diff(capped)) < 60                                 # spread over the bank
    assert rr.configs_to_time(196, np.arange(30), 12) == list(range(30))  # picks win


def _result(seed: int = 3):
    """A result file as measure() writes it, with times from the shipped H200 profile's
    model times seeded noise (the summary must agree with ramp.regret.evaluate)."""
    profile = find_profile("H200", MODEL.problem("w13"))
    calls = rr.build_calls([("syn", _routing(512, seed=seed))], [4, 64, 256], ["full"])
    hists = np.stack([c.hist for c in calls])
    rng = np.random.default_rng(seed)
    times = profile.model.predict(hists) * rng.lognormal(0.0, 0.05, (len(calls), 196))
    ramp_idx, static_idx = rr.choices(profile, calls)
    free = rr.unguarded_picks(profile, hists)
    names = [c.name for c in profile.model.bank.configs]
    records = [rr.call_record(c, times[i], names, ["triton"] * 196, names[ramp_idx[i]],
                              names[static_idx[i]], names[free[i]])
               for i, c in enumerate(calls)]
    rr.finish_calls(records)
    return {"device": {"device": "test"}, "command": "test", "problem": profile.problem.key,
            "calls": records}, profile, hists, times


def test_summary_agrees_with_the_regret_evaluation():
    result, profile, hists, times = _result()
    s = rr.summarize(result["calls"])["full"]
    ramp, static = profile.dispatcher("ramp"), profile.dispatcher("static")
    report = evaluate(ramp, hists, times, baseline=static)
    assert s["calls"] == len(hists) and s["unmeasured_picks"] == 0
    assert s["ramp_mean_regret"] == pytest.approx(report.mean_regret)
    assert s["ramp_vs_static"] == pytest.approx(report.speedup_geomean)
    assert s["static_mean_regret"] == pytest.approx(evaluate(static, hists, times).mean_regret)
    free = evaluate(profile.dispatcher("ramp-unguarded"), hists, times, baseline=static)
    assert s["ramp_unguarded_calls"] == len(hists)
    assert s["ramp_unguarded_mean_regret"] == pytest.approx(free.mean_regret)
    assert s["ramp_unguarded_vs_static"] == pytest.approx(free.speedup_geomean)
    assert s["oracle_vs_static"] >= max(s["ramp_vs_static"], 1.0)
    worst = s["by_tokens"][s["worst_tokens"]]["ramp_vs_static"]
    assert worst == s["ramp_vs_static_worst_tokens"] == min(
        b["ramp_vs_static"] for b in s["by_tokens"].values())
    gain = np.log(s["ramp_vs_static"]) / np.log(s["oracle_vs_static"])
    assert s["oracle_gain_captured"] == pytest.approx(gain)
    assert "full:" in rr.table({"full": s})


def test_extra_families_join_the_oracle_and_are_summarised_alone(tmp_path):
    """Configurations of an extra family timed on the same calls: the oracle is the best
    of all, each family's own best is summarised, and RaMP's/static's picks (the profiled
    family's) are untouched; the table grows a column per family."""
    result, *_ = _result(seed=6)
    for i, c in enumerate(result["calls"]):
        best = min(t for t in c["times_us"] if t is not None)
        # the extra family: 10% faster than the Triton oracle on even calls, slower on odd
        extra = [best * (0.9 if i % 2 == 0 else 1.5), best * 2.0]
        c["configs"] += ["triton-tiles-a", "triton-tiles-b"]
        c["families"] += ["triton-tiles"] * 2
        c["times_us"] += extra
    before = rr.summarize(_result(seed=6)[0]["calls"])["full"]
    s = rr.summarize(rr.finish_calls(result["calls"]))["full"]
    alone = s["oracle_vs_static_by_family"]
    assert alone["triton"] == pytest.approx(before["oracle_vs_static"])
    assert s["ramp_vs_static"] == pytest.approx(before["ramp_vs_static"])
    assert s["oracle_vs_static"] > max(alone.values()) and s["oracle_vs_static"] > alone["triton"]
    even = [c for i, c in enumerate(result["calls"]) if i % 2 == 0]
    assert all(c["oracle_config"] == "triton-tiles-a" for c in even)
    assert "triton-tiles alone" in rr.table({"full": s})
    result["calls"][0]["families"].pop()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(result))
    assert rr.main(["--report", str(path)]) == 2


def test_ramp_chooses_across_the_extra_families_with_a_profile():
    """An extra family with a shipped profile of the view's problem joins RaMP's choice
    (the combined bank, Triton's first, so static's picks keep their indices); one
    without a profile is only timed."""
    from ramp.costmodel import WaveCostModel
    from ramp.dispatch import CrossFamilyDispatcher

    calls = rr.build_calls([("syn", _routing(4096, seed=5))], [16, 1024, 4096], ["full"])
    profile = rr.view_profile("H200", MODEL, "w13", "full")
    others = rr.view_profiles(profile, ["cute", "triton-tiles", "unprofiled"])
    assert [o.family for o in others] == ["cute", "triton-tiles"]  # "unprofiled": none
    ramp_idx, static_idx = rr.choices(profile, calls, others)
    hists = np.stack([c.hist for c in calls])
    model = WaveCostModel.concat([profile.model, *(o.model for o in others)])
    expected = CrossFamilyDispatcher(
        model, profile.dispatcher("static"), [profile.error, *(o.error for o in others)],
        [len(p.model.bank) for p in (profile, *others)]).choose_batch(hists)
    assert ramp_idx.tolist() == expected.tolist()
    assert static_idx.tolist() == profile.dispatcher("static").choose_batch(hists).tolist()
    assert (static_idx < len(profile.model.bank)).all()
    alone, _ = rr.choices(profile, calls)
    assert alone.tolist() == profile.dispatcher("ramp").choose_batch(hists).tolist()


def test_extra_families_option_is_checked(capsys, tmp_path):
    for bad, message in (("triton", "is always timed"), ("nope", "nope")):
        assert rr.main(["--data", str(tmp_path), "--out", str(tmp_path),
                        "--extra-families", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    assert rr.extra_families("triton-tiles") == ["triton-tiles"]
    assert rr.extra_families(None) == []


def test_report_recomputes_summary_and_plot(tmp_path):
    result, *_ = _result(seed=4)
    expected = rr.summarize(result["calls"])
    for c in result["calls"]:                 # the report must not trust stored picks' times
        c["ramp_us"] = c["static_us"] = c["oracle_us"] = -1.0
    path = tmp_path / rr.output_name("w13")       # real-routing-w13.json.gz
    path.write_bytes(gzip.compress(json.dumps(result).encode()))
    assert rr.main(["--report", str(path)]) == 0
    again = json.loads(gzip.decompress(path.read_bytes()))  # rewritten compressed
    assert again["summary"]["full"]["ramp_vs_static"] == pytest.approx(
        expected["full"]["ramp_vs_static"])
    assert (tmp_path / "real-routing-w13.png").stat().st_size > 10_000
    plain = tmp_path / "real-routing-w2.json"      # an uncompressed file stays so
    plain.write_text(json.dumps(result))
    assert rr.main(["--report", str(plain)]) == 0
    assert json.loads(plain.read_text())["summary"] == again["summary"]


def test_a_file_from_before_the_unguarded_picks_still_reports(tmp_path):
    result, *_ = _result(seed=4)
    for c in result["calls"]:
        del c["ramp_unguarded_config"]
    path = tmp_path / "real-routing-w13.json"
    path.write_text(json.dumps(result))
    assert rr.main(["--report", str(path)]) == 0
    s = json.loads(path.read_text())["summary"]["full"]
    assert s["ramp_unguarded_calls"] == 0 and s["ramp_unguarded_vs_static"] is None
    assert s["ramp_vs_static"] is not None


def test_a_truncated_compressed_result_is_one_line_naming_the_file(tmp_path, capsys):
    result, *_ = _result(seed=6)
    path = tmp_path / rr.output_name("w13")
    path.write_bytes(gzip.compress(json.dumps(result).encode())[:200])
    assert rr.main(["--report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "gzip" in err


def test_report_and_options_bad_input(tmp_path, capsys):
    result, *_ = _result(seed=5)
    del result["calls"][1]["times_us"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(result))
    assert rr.main(["--report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "calls[1]" in err and "'times_us'" in err
    assert rr.main(["--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert rr.main(["--data", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


@needs_data
def test_real_recordings_give_every_call():
    recordings = rr.load_recordings(DATA, MODEL)
    calls = rr.build_calls(recordings, rr.TOKENS, rr.VIEWS)
    assert len(calls) == len(recordings) * len(rr.TOKENS) * 2 * len(rr.VIEWS)
    for c in calls:
        assert c.hist.size == 64 // rr.view_degree(c.view)
        assert 0 < c.hist.sum() <= c.tokens * 6
    full = [c for c in calls if c.view == "full"]
    assert all(c.hist.sum() == c.tokens * 6 for c in full)
    for view in rr.VIEWS:   # every view has a shipped profile to dispatch with
        profile = rr.view_profile("H200", MODEL, "w13", view)
        ramp_idx, static_idx = rr.choices(profile, [c for c in calls if c.view == view])
        assert ramp_idx.shape == static_idx.shape == (len(full),)


def test_ep_call_inputs_compute_the_local_experts_rows():
    """The EP call as the GPU run builds it (``make_call_for_ids`` + ``local_routing``),
    through the Triton interpreter (fp16, tiny shape): every local slot gets
    SiLU(gate) * up of its token with its global expert's weights."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from ramp.config import KernelConfig
    from ramp.kernels.routing import local_routing
    from ramp.kernels.triton.fused_moe import moe_gemm
    from ramp.kernels.workload import make_call_for_ids, make_weights
    from ramp.problem import MoEProblem

    device = "cuda" if torch.cuda.is_available() else "cpu"
    routing = _routing(24, seed=6, layers=1, experts=8, top_k=2)
    [call_spec] = rr.build_calls([("syn", routing)], [12], ["ep2"], samples=1)[:1]
    problem = MoEProblem(num_experts=4, n=64, k=64, top_k=2, dtype="float16", gemm="w13")
    full_w = make_weights(MoEProblem(num_experts=8, n=64, k=64, top_k=2, dtype="float16",
                                     gemm="w13"), 1, device=device, seed=1)[0]
    experts = np.flatnonzero(call_spec.expert_map >= 0)      # global ids, local order
    local_w = full_w[torch.as_tensor(experts, device=device)].contiguous()
    call = make_call_for_ids(problem, [local_w], call_spec.ids, device=device, seed=2)
    emap = torch.as_tensor(call_spec.expert_map, device=device)
    r = local_routing(call.topk_ids, call.topk_weights, 4, emap)
    assert r.counts.cpu().tolist() == call_spec.hist.tolist()
    call.out.fill_(float("nan"))
    moe_gemm(call.activations, local_w, r, KernelConfig("triton", 16, 32, 32), call.out,
             gemm="w13", num_sms=2)
    slots = r.sorted_slots.cpu().long()[: int(call_spec.hist.sum())]
    x, w = call.activations.float().cpu(), full_w.float().cpu()
    for pos, slot in enumerate(slots.tolist()):
        e = int(call_spec.ids.ravel()[slot])
        gate, up = w[e, :32] @ x[slot // 2], w[e, 32:] @ x[slot // 2]
        expected = torch.nn.functional.silu(gate) * up
        got = call.out[pos].float().cpu()
        assert float((got - expected).norm() / expected.norm()) < 1e-2


def test_the_tuned_table_picks_with_the_other_calls_of_its_size_only():
    """``tuned_table_us``: each call gets the configuration best on the *other* calls of
    its T (relative to each one's best, geometric mean), never its own timings; a call
    alone at its T gets none; a configuration untimed on one of them is not a candidate."""
    def call(tokens, times):
        return {"tokens": tokens, "configs": ["a", "b", "c"], "times_us": times}

    rows = [call(8, [1.0, 1.5, 3.0]),    # its own best is a, but the others say b
            call(8, [2.0, 1.0, 3.0]),
            call(8, [3.0, 1.0, None]),
            call(64, [5.0, 4.0, 3.0])]     # alone at its T
    assert rr.tuned_table_us(rows) == [1.5, 1.0, 1.0, None]
    rows[1]["times_us"][1] = None        # b and c each untimed on a neighbour of call 0
    assert rr.tuned_table_us(rows)[0] == 1.0


def test_a_table_held_out_by_recording_never_sees_the_calls_data_set():
    """``held_out="recording"``: only the other recordings' calls of the size tune it."""
    def call(rec, times):
        return {"tokens": 8, "recording": rec, "configs": ["a", "b"], "times_us": times}

    rows = [call("law", [1.0, 2.0]), call("law", [1.0, 2.0]), call("intent", [2.0, 1.0])]
    assert rr.tuned_table_us(rows) == [1.0, 1.0, 2.0]                 # the other law call
    assert rr.tuned_table_us(rows, held_out="recording") == [2.0, 2.0, 2.0]


def test_a_table_of_one_family_picks_among_its_configurations_only():
    """``family``: the like-for-like bar for RaMP, which dispatches the profiled family."""
    rows = [{"tokens": 8, "recording": r, "configs": ["t1", "x1"],
             "families": ["triton", "triton-tiles"], "times_us": [2.0, 1.0]}
            for r in ("law", "intent")]
    assert rr.tuned_table_us(rows) == [1.0, 1.0]
    assert rr.tuned_table_us(rows, family="triton") == [2.0, 2.0]


def test_repick_makes_the_picks_again_from_the_stored_histograms(tmp_path, capsys):
    """``--report --repick``: the picks come from this RaMP's dispatchers over the
    shipped profiles and the calls' own histograms, so a file measured with the same
    profiles gets its own picks back, and a stale pick is replaced; a file without the
    provenance to find its profiles is one line, exit 2."""
    result, *_ = _result(seed=7)
    result["provenance"] = {"gpu": "H200", "model": MODEL.name, "gemm": "w13"}
    stored = [(c["ramp_config"], c["static_config"]) for c in result["calls"]]
    result["calls"][0]["ramp_config"] = "not-a-config"
    assert rr.repick(result) == {"full": ["triton"]}
    assert [(c["ramp_config"], c["static_config"]) for c in result["calls"]] == stored
    path = tmp_path / rr.output_name("w13")
    result["calls"][1]["static_config"] = "not-a-config"
    path.write_bytes(gzip.compress(json.dumps(result).encode()))
    assert rr.main(["--report", str(path), "--repick"]) == 0
    again = json.loads(gzip.decompress(path.read_bytes()))
    assert [(c["ramp_config"], c["static_config"]) for c in again["calls"]] == stored
    assert again["views"]["full"]["ramp_families"] == ["triton"]
    del result["provenance"]
    path.write_bytes(gzip.compress(json.dumps(result).encode()))
    assert rr.main(["--report", str(path), "--repick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "provenance.gpu" in err
