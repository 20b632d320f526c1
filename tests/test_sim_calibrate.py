"""``ramp-sim calibrate`` and the fidelity script: fits recover step costs that made the
measurements, and the results-file schema is validated field by field.

The "measurements" here are written by the tests themselves, by simulating with a
known calibration (the truth) that differs from the defaults: the fit has to find its
way back from the defaults. No measured result is fabricated or committed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from ramp.errors import InputError
from ramp.hardware import get_gpu
from ramp.models import get_model
from ramp.sim.calibrate import (
    EngineRun,
    calibrate_runs,
    calibrate_sources,
    load_engine_results,
    simulate_run,
    step_features,
)
from ramp.sim.cli import main
from ramp.sim.costs import Calibration, StepCoster, build_layout, graph_size
from ramp.sim.engine import EngineConfig, simulate
from ramp.sim.runner import synthetic_pool
from ramp.trace import Arrival, TraceReader, write_trace
from ramp.traces.generators import synthetic_trace

TRUTH = Calibration(step_overhead_us=3000, layer_overhead_us=35, dense_efficiency=0.8,
                    attention_efficiency=0.6, eager_overhead_us=30000)
MODEL = "olmoe-1b-7b"
REPO = Path(__file__).resolve().parent.parent


def _results_file(path: Path, model: str, workload: str, prompts: int, input_len: int,
                  output_len: int, arrivals: list[float] | None,
                  truth: Calibration = TRUTH) -> Path:
    """An engine results file whose numbers are the simulator's under ``truth``."""
    run = EngineRun(str(path), model, "H200", 1, workload, "static", [input_len] * prompts,
                    [output_len] * prompts, arrivals, 64, 4096)
    sim = simulate_run(run, truth, {})
    m, res = sim.metrics, sim.run
    online = {} if arrivals is None else {
        "ttft_ms_p50": 1e3 * m["ttft_p50_s"], "ttft_ms_p99": 1e3 * m["ttft_p99_s"],
        "tpot_ms_p50": 1e3 * m["tpot_p50_s"], "tpot_ms_p99": 1e3 * m["tpot_p99_s"],
        "requests": [{"arrival": float(a), "sent": float(a), "first": float(f),
                      "done": float(d), "prompt": int(pr), "output": int(o)}
                     for a, f, d, pr, o in zip(res.arrival, res.first_token, res.finish,
                                               res.prompt, res.output)],
        "itl_ms_quantiles": {str(q): float(np.percentile(
            np.repeat(res.step_time, res.step_decode) * 1e3, q)) for q in (10, 50, 90)}}
    lengths = ({"input_len": input_len, "output_len": output_len} if arrivals is None else
               {"input_lens": [input_len] * prompts, "output_lens": [output_len] * prompts})
    data = {  # the schema of bench/engine/bench.py
        "device": {"device": "NVIDIA H200", "sms": 132}, "engine": {"name": "vllm"},
        "command": "simulated by the test, under a known calibration", "model": model,
        "workload": {"name": workload, "num_prompts": prompts, "arrivals": arrivals,
                     "max_num_seqs": 64, "max_num_batched_tokens": 4096, **lengths},
        "runs": [{"ramp_mode": "off", "total_tok_per_s": m["throughput_tok_s"],
                  "out_tok_per_s": m["out_tok_s"], "elapsed_s": 1.0, **online}],
        "ratio": None, "ramp_calls": {"eager": {"w13": {"triton": 8}}, "captured": {}},
        "ramp_fallbacks": {}, "tokens_match": True,
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("engine")
    for model in (MODEL, "qwen3-30b-a3b"):
        _results_file(d / f"H200_{model}_prefill-heavy.json", model, "prefill-heavy", 48,
                      2048, 8, None)
        _results_file(d / f"H200_{model}_decode-heavy.json", model, "decode-heavy", 96,
                      128, 192, None)
        _results_file(d / f"H200_{model}_online.json", model, "online", 150, 512, 96,
                      np.cumsum(rng.exponential(0.1, 150)).tolist())
    return d


def test_results_file_fit_reproduces_measurements(results_dir):
    runs = [r for p in sorted(results_dir.glob("*.json")) for r in load_engine_results(p)]
    cal = calibrate_runs(runs)
    for run in runs:
        before = simulate_run(run, Calibration(), {}).metrics
        after = simulate_run(run, cal, {}).metrics
        for metric in ("throughput_tok_s", "tpot_p50_s"):
            if metric in run.measured:
                assert after[metric] == pytest.approx(run.measured[metric], rel=0.03)
        # the defaults were off: the fit had work to do (an online run's throughput is
        # its arrival rate whatever the step costs, its TPOT is not)
        assert max(abs(before[m] / v - 1) for m, v in run.measured.items()) > 0.05
    # two layer counts: fixed and per-layer overheads are both found
    assert cal.step_overhead_us == pytest.approx(TRUTH.step_overhead_us, rel=0.15)
    assert cal.layer_overhead_us == pytest.approx(TRUTH.layer_overhead_us, rel=0.25)
    # steps above the CUDA-graph size (2 * max_seqs = 128 tokens here) pay it
    assert cal.eager_overhead_us == pytest.approx(TRUTH.eager_overhead_us, rel=0.15)


def test_max_eager_step_fit_finds_the_host_time_of_host_bound_steps(tmp_path):
    """Measurements made under ``eager_step`` max, whose eager steps (2,048-token
    prefills of a small model) are bound by 40 ms of host time: the fit, started from
    the defaults, finds that host time and reproduces the runs; the additive model fits
    the same runs with a smaller eager overhead (GPU time + overhead = host time)."""
    truth = dataclasses.replace(TRUTH, eager_step="max", eager_overhead_us=40000)
    paths = [_results_file(tmp_path / "H200_m_prefill-heavy.json", MODEL, "prefill-heavy",
                           48, 2048, 8, None, truth),
             _results_file(tmp_path / "H200_m_decode-heavy.json", MODEL, "decode-heavy",
                           96, 128, 192, None, truth)]
    runs = [r for p in paths for r in load_engine_results(p)]
    cal = calibrate_runs(runs, Calibration(eager_step="max"))
    assert cal.eager_step == "max"
    assert cal.eager_overhead_us == pytest.approx(40000, rel=0.1)
    for run in runs:
        after = simulate_run(run, cal, {}).metrics
        assert after["throughput_tok_s"] == pytest.approx(
            run.measured["throughput_tok_s"], rel=0.03)
    additive = calibrate_runs(runs)
    assert additive.eager_overhead_us < 0.9 * cal.eager_overhead_us


def test_fidelity_script_holds_out_each_workload(results_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("sim_fidelity",
                                                  REPO / "bench" / "sim_fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    out = tmp_path / "fid.json"
    runs = [r for p in sorted(results_dir.glob("*.json")) for r in load_engine_results(p)]
    # by default each model's folds train on that model's other workloads only
    axis, folds = fidelity._folds(runs)
    assert axis == "workload" and len(folds) == 6
    for (model, held), tested in folds.items():
        assert {(r.model, r.workload) for r in tested} == {(model, held)}
    # (across models: 3 folds, half the simulations of the per-model default)
    # the results files' model has no layer plan: MoE from the cost model
    assert fidelity.main(["--dir", str(results_dir), "--out", str(out),
                          "--across-models", "--moe-costs", "model", "--no-alternative",
                          "--eager-host-fraction", "0.5"]) == 0
    result = json.loads(out.read_text())
    # every run here had spread routing: none is left of the collapsed ones
    assert fidelity.main(["--dir", str(results_dir), "--out", str(tmp_path / "none.json"),
                          "--routing", "collapsed"]) == 2
    assert not (tmp_path / "none.json").exists()
    assert result["held_out_by"] == "workload" and result["across_models"]
    assert result["base_calibration"]["eager_host_fraction"] == 0.5  # what it simulated with
    assert set(result["calibrations_by_fold"]) == {"prefill-heavy", "decode-heavy", "online"}
    rows = result["rows"]
    assert {r["workload"] for r in rows} == {"prefill-heavy", "decode-heavy", "online"}
    for row in rows:
        assert {"model", "workload", "metric", "measured", "predicted_uncalibrated",
                "predicted_calibrated", "error"} <= set(row)
        assert row["error"] == pytest.approx(row["predicted_calibrated"] / row["measured"] - 1)
    thr = result["summary"]["throughput_tok_s"]
    assert thr["mean_abs_error_calibrated"] < thr["mean_abs_error_uncalibrated"]
    # the online files keep each request's times: TTFT by engine state, every request in
    # one group; measured is the truth's simulation, which the held-out fit comes near
    states = {Path(t["source"]).name: t["groups"] for t in result["ttft_by_state"]}
    assert set(states) == {f"H200_{m}_online.json" for m in (MODEL, "qwen3-30b-a3b")}
    for groups in states.values():
        assert sum(g["requests"] for g in groups) == 150
        assert {g["state"] for g in groups} <= {"idle", "busy, prompt <= graph size",
                                                "busy, prompt > graph size"}
        for g in groups:
            assert abs(g["gap_ms_p50"]) < 0.5 * g["measured_ms_p50"]
    gaps = {Path(t["source"]).name: t for t in result["decode_gaps"]}
    assert set(gaps) == set(states)
    for t in gaps.values():
        assert t["quantiles"] == [10.0, 50.0, 90.0]
        assert t["measured_ms"] == sorted(t["measured_ms"])  # quantiles rise
        assert t["predicted_ms"][1] == pytest.approx(t["measured_ms"][1], rel=0.5)
    assert fidelity.main(["--dir", str(tmp_path / "empty")]) == 2


def test_results_file_validation(tmp_path, results_dir):
    good = json.loads((results_dir / f"H200_{MODEL}_online.json").read_text())
    cases = [
        (lambda d: d.pop("model"), "missing field 'model'"),
        (lambda d: d["workload"].update(num_prompts="many"), "field 'num_prompts' must be int"),
        (lambda d: d["workload"].update(arrivals=[0.0, 1.0]), "field 'arrivals' must be null"),
        (lambda d: d["workload"].update(input_lens=[5]), "field 'input_lens' must be 150 ints"),
        (lambda d: d["device"].pop("device"), "device: missing field 'device'"),
        (lambda d: d["runs"][0].update(ramp_mode="on"), "field 'ramp_mode' is 'on'"),
        (lambda d: d["runs"][0].update(total_tok_per_s=-1), "field 'total_tok_per_s' must be"),
        (lambda d: d.update(device="Voodoo3"), "unknown GPU 'Voodoo3'"),
        (lambda d: d.update(ramp_calls=3), "ramp_calls: expected {'eager'"),
        (lambda d: d.update(ramp_calls={"eager": {"w13": 5}}), "ramp_calls: expected"),
        (lambda d: d["workload"].update(concurrency=32),
         "field 'concurrency' is 32: a closed-loop client"),
        (lambda d: d.update(kv_cache_tokens={"off": 0}), "field 'kv_cache_tokens' must map"),
    ]
    for change, message in cases:
        data = json.loads(json.dumps(good))
        change(data)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load_engine_results(path)


def test_the_engines_kv_cache_is_the_simulated_capacity(tmp_path, results_dir):
    """Where the results file says how many KV tokens each engine allocated, the run is
    simulated with that capacity instead of the memory model's."""
    source = results_dir / f"H200_{MODEL}_online.json"
    data = json.loads(source.read_text())
    data["kv_cache_tokens"] = {"off": 20_000}
    path = tmp_path / "kv.json"
    path.write_text(json.dumps(data))
    (told,), (unsaid,) = load_engine_results(path), load_engine_results(source)
    assert told.kv_capacity == 20_000 and unsaid.kv_capacity is None
    modelled = simulate_run(unsaid, Calibration(), {}).run.kv_capacity
    assert simulate_run(told, Calibration(), {}).run.kv_capacity == 20_000 != modelled


def test_a_dispatch_run_that_ran_no_ramp_call_is_simulated_as_the_engine(tmp_path,
                                                                        results_dir):
    """A dispatch engine whose every layer fell back ran vLLM's kernel: its runs take the
    engine's policy, whatever its mode's name (and a file without counters is trusted)."""
    data = json.loads((results_dir / f"H200_{MODEL}_decode-heavy.json").read_text())
    data["runs"].append({**data["runs"][0], "ramp_mode": "dispatch"})
    for calls, policy in (({"eager": {"w13": {"engine": 40}}, "captured": {}}, "plan-engine"),
                          ({"eager": {"w13": {"engine": 4, "triton": 1}}}, "plan"),
                          (None, "plan")):
        data["ramp_calls"] = calls
        path = tmp_path / "run.json"
        path.write_text(json.dumps(data))
        runs = {r.ramp_mode: r for r in load_engine_results(path, moe_costs="plan")}
        assert runs["dispatch"].policy == policy and runs["off"].policy == "plan-engine"


def test_eager_variant_runs_are_left_out_and_the_others_kept(tmp_path, results_dir):
    """``bench.py --modes off,dispatch,dispatch:launch``: the variant's runs differ in host
    time per eager call, which the step model lacks, so they are not simulated; the
    plain modes of the same file still are."""
    data = json.loads((results_dir / f"H200_{MODEL}_decode-heavy.json").read_text())
    data["runs"] += [{**data["runs"][0], "ramp_mode": "dispatch"},
                     {**data["runs"][0], "ramp_mode": "dispatch:launch"}]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert sorted(r.ramp_mode for r in load_engine_results(path)) == ["dispatch", "off"]


def test_ramp_gain_leaves_out_a_dispatch_engine_that_ran_no_ramp_call():
    spec = importlib.util.spec_from_file_location("sim_fidelity",
                                                  REPO / "bench" / "sim_fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)

    def rows(source, dispatch_policy):
        return [{"source": source, "model": "m", "workload": "w", "ramp_mode": mode,
                 "policy": policy, "metric": "throughput_tok_s", "measured": tok_s,
                 "predicted_calibrated": tok_s}
                for mode, policy, tok_s in (("off", "plan-engine", 100.0),
                                            ("dispatch", dispatch_policy, 110.0))]
    gains = fidelity.ramp_gain(rows("a.json", "plan") + rows("aa.json", "plan-engine"))
    assert len(gains) == 1 and gains[0]["source"] == "a.json"  # which file each gain is of
    assert gains[0]["throughput_tok_s_measured"] == pytest.approx(1.1)


def test_engine_config_and_routing_come_from_the_results_file():
    """A measured run is simulated as it ran: CUDA graphs up to the largest captured
    size, and dummy weights' collapsed routing (no router re-spread)."""
    path = REPO / "bench" / "results" / "engine" / "H200_qwen3-30b-a3b_prefill-heavy.json"
    data = json.loads(path.read_text())
    runs = load_engine_results(path)
    assert {r.graph_tokens for r in runs} == {max(data["engine_config"]
                                                  ["cudagraph_capture_sizes"])} == {512}
    assert {r.routing for r in runs} == {"collapsed"}
    assert runs[0].sim_config(Calibration()).engine.graph_tokens == 512


def test_scheduler_reproduces_the_recorded_vllm_schedule():
    """vLLM 0.26's own steps (the DeepSeek trace recorded on the H200, the third
    prefill-heavy run: 256 x 1024 in / 128 out, 2048 batched tokens, 256 seqs): 136
    steps of 2048 tokens (decodes first, the last prompt chunked), a 1304-token step,
    then the drain at CUDA-graph sizes. The simulated schedule, padded as graphs run,
    is the same step for step. Its routing is collapsed onto experts 0..5."""
    from test_sim_engine import LinearCosts

    with TraceReader(REPO / "bench" / "results" / "engine"
                     / "H200_deepseek-v2-lite_recorded.jsonl.gz") as reader:
        steps = list(reader)
    assert all((s.hists[:, :6] == s.tokens).all() and (s.hists[:, 6:] == 0).all()
               for s in steps)
    recorded = [s.tokens for s in steps if s.step >= 2237]
    run = simulate([Arrival(0.0, 1024, 128)] * 256, LinearCosts(), "static",
                   EngineConfig(max_batched_tokens=2048, max_seqs=256))
    padded = [graph_size(int(t), 512) for t in run.step_tokens]
    assert padded[:137] == recorded[:137] == [2048] * 136 + [1304]
    assert padded[137:len(recorded) - 1] == recorded[137:-1]  # the trace ends one early


def _timed_trace(path: Path) -> Path:
    """A routing trace whose steps carry step_ms from TRUTH (attention left out: trace
    steps carry no contexts)."""
    model = get_model(MODEL)
    tokens = [1, 4, 16, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8, 32]
    phases = ["decode"] * 5 + ["prefill"] * 7 + ["decode"] * 2
    header, steps = synthetic_trace(model, None, tokens, phases, seed=1)
    gpu = get_gpu("H200")
    layout = build_layout("tp", gpu, model, 1, ("static",), TRUTH)
    coster = StepCoster(gpu, model, synthetic_pool(model), TRUTH, {"tp": layout})
    timed = []
    for s in steps:
        feats, comm = step_features(coster, layout, np.array([float(s.tokens)]),
                                    np.zeros(1), np.zeros(1))
        x = np.array([TRUTH.step_overhead_us, TRUTH.layer_overhead_us,
                      1 / TRUTH.dense_efficiency, 1 / TRUTH.attention_efficiency,
                      TRUTH.eager_overhead_us])
        ms = 1e3 * float(feats[0] @ x + comm[0] + coster.moe_of(layout, s.hists)["static"])
        timed.append(dataclasses.replace(s, step_ms=ms))
    write_trace(path, header, timed)
    return path


def test_trace_step_ms_is_read_and_validated(tmp_path):
    path = _timed_trace(tmp_path / "t.jsonl")
    with TraceReader(path) as reader:
        steps = list(reader)
    assert all(s.step_ms is not None and s.step_ms > 3 for s in steps)
    lines = path.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["step_ms"] = "fast"
    (tmp_path / "b.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(bad), lines[3]]))
    with pytest.raises(InputError, match=r"b.jsonl:3: field 'step_ms' must be a finite number > 0"):
        list(TraceReader(tmp_path / "b.jsonl"))


def test_trace_fit_recovers_fixed_cost_and_dense_efficiency(tmp_path):
    path = _timed_trace(tmp_path / "t.jsonl")
    cal = calibrate_sources([path], "H200", Calibration())
    layers = get_model(MODEL).layers
    fixed = cal.step_overhead_us + layers * cal.layer_overhead_us
    assert fixed == pytest.approx(TRUTH.step_overhead_us + layers * TRUTH.layer_overhead_us,
                                  rel=0.01)
    # compute-bound steps are the eager ones: their slope separates the two
    assert cal.dense_efficiency == pytest.approx(TRUTH.dense_efficiency, rel=0.05)
    # steps above 512 tokens (the default CUDA-graph size) pay it once each
    assert cal.eager_overhead_us == pytest.approx(TRUTH.eager_overhead_us, rel=0.02)
    assert cal.attention_efficiency == pytest.approx(1.0, rel=0.01)  # unseen: the prior
    with pytest.raises(InputError, match="no step carries 'step_ms'"):
        trace = tmp_path / "plain.jsonl"
        with TraceReader(path) as reader:
            write_trace(trace, reader.header, [dataclasses.replace(s, step_ms=None)
                                               for s in reader])
        calibrate_sources([trace], "H200", Calibration())


def test_calibrate_cli_writes_yaml_that_replay_reads(tmp_path):
    path = _timed_trace(tmp_path / "t.jsonl")
    out = tmp_path / "cal.yaml"
    res = CliRunner().invoke(main, ["calibrate", str(path), "--gpu", "H200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "dense_efficiency: 1 -> 0.7" in res.output
    assert "eager_overhead_us: 1e+04 -> 2.9" in res.output
    fitted = yaml.safe_load(out.read_text())
    assert fitted["dense_efficiency"] == pytest.approx(0.8, rel=0.05)
    res = CliRunner().invoke(main, ["replay", str(path), "--gpu", "H200", "--requests", "20",
                                    "--calibration", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output


def test_fidelity_takes_a_traces_steps_into_its_models_folds(results_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sim_fidelity",
                                                  REPO / "bench" / "sim_fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    trace = _timed_trace(tmp_path / "timed.jsonl")
    out = tmp_path / "fid.json"
    assert fidelity.main(["--dir", str(results_dir), "--out", str(out), "--model", MODEL,
                          "--trace", str(trace), "--moe-costs", "model",
                          "--no-alternative"]) == 0
    result = json.loads(out.read_text())
    assert result["traces"] == [str(trace)]
    assert {r["model"] for r in result["rows"]} == {get_model(MODEL).name}
    assert set(result["calibrations_by_fold"]) == {
        f"{get_model(MODEL).name}/{w}" for w in ("prefill-heavy", "decode-heavy", "online")}
    # a trace of a model without runs here has no GPU to be costed on
    assert fidelity.main(["--dir", str(results_dir), "--out", str(out), "--model",
                          "qwen3-30b-a3b", "--trace", str(trace), "--no-alternative"]) == 2
    assert "has runs on [] here" in capsys.readouterr().err


def test_calibrate_cli_takes_the_eager_step_model(tmp_path):
    """``ramp-sim calibrate --eager-step max`` fits that model and writes it, so that
    ``replay --calibration`` runs the model the fit assumed."""
    path = _timed_trace(tmp_path / "t.jsonl")
    out = tmp_path / "cal.yaml"
    result = CliRunner().invoke(main, ["calibrate", str(path), "--gpu", "H200", "--out",
                                       str(out), "--eager-step", "max"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["eager_step"] == "max"
