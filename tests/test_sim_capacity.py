"""Replicas behind a router, SLO early stopping, the capacity search, the memory model,
overload warnings, the token-stream routing and the plots a person reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_sim_engine import LinearCosts, step

from ramp.errors import InputError
from ramp.hardware import GPUS, MIB, get_gpu
from ramp.models import get_model
from ramp.sim import (
    Calibration,
    EngineConfig,
    SimConfig,
    build_layout,
    run_study,
    simulate,
    synthetic_pool,
)
from ramp.sim.capacity import Workload, load_prices, max_rate, plan_capacity
from ramp.sim.cli import main
from ramp.sim.costs import activation_bytes, kv_bytes_per_token_per_gpu
from ramp.sim.metrics import SLO, plot_runs, plot_sweep, request_latencies, summarize
from ramp.sim.routing import _systematic
from ramp.sim.workload import LengthDist, SyntheticWorkload
from ramp.trace import Arrival


def test_least_outstanding_balances_what_round_robin_piles_up():
    # every other request is long: round-robin sends them all to replica 0
    arrivals = [Arrival(0.01 * i, 2000 if i % 2 == 0 else 10, 200 if i % 2 == 0 else 2)
                for i in range(40)]
    rr = simulate(arrivals, LinearCosts(), "static", replicas=2, router="round-robin")
    lor = simulate(arrivals, LinearCosts(), "static", replicas=2, router="least-outstanding")
    one = simulate(arrivals, LinearCosts(), "static")
    for run in (rr, lor, one):
        assert (run.finish > 0).all()
    span = lambda r: r.finish.max()  # noqa: E731
    assert span(lor) < span(rr) < span(one)
    # round-robin: the long requests all on replica 0, so replica 1's steps are all small
    assert rr.replicas == 2 and rr.step_tokens.size > one.step_tokens.size / 2


def test_slo_watch_stops_an_overloaded_run_early():
    arrivals = [Arrival(0.001 * i, 500, 50) for i in range(2000)]  # far above capacity
    full = simulate(arrivals, LinearCosts(), "static")
    cut = simulate(arrivals, LinearCosts(), "static", stop_slo=(0.5, 0.05))
    assert cut.stopped and not full.stopped
    assert cut.step_time.size < full.step_time.size / 5
    light = [Arrival(1.0 * i, 100, 10) for i in range(50)]
    ok = simulate(light, LinearCosts(), "static", stop_slo=(0.5, 0.05))
    assert not ok.stopped and (ok.finish > 0).all()
    with pytest.raises(InputError, match="router 'random'"):
        simulate(light, LinearCosts(), "static", router="random")


def test_max_rate_brackets_the_slo_boundary():
    config = SimConfig(gpu="H100-SXM", model="olmoe-1b-7b", gpus=1, policies=("static",),
                       slo=SLO(0.5, 0.02))
    workload = Workload(SyntheticWorkload(1.0, 1, LengthDist("fixed", 256),
                                          LengthDist("fixed", 64)), duration_s=20)
    costs = LinearCosts()
    rate, best, trials = max_rate(costs, config, workload, 1, "round-robin", start=2.0,
                                  rel_tol=0.05)
    assert best is not None and best.ok and best.rate == rate
    assert best.tpot_p99_s <= 0.02 and best.ttft_p99_s <= 0.5
    failed = [t.rate for t in trials if not t.ok]
    assert failed and min(failed) <= rate * 1.05 + 1e-9
    assert all(t.rate <= rate for t in trials if t.ok)
    # the boundary is where TPOT p99 (about the step at the decode batch) reaches 20 ms:
    # A + B * batch = 0.02 -> batch 1800, batch = rate * (64 * step time) by Little's law
    assert rate > 10


def test_capacity_plan_scales_with_replicas_and_prices(tmp_path):
    config = SimConfig(gpu="H100-SXM", model="olmoe-1b-7b", policies=("static",),
                       slo=SLO(2.0, 0.05))
    workload = Workload(SyntheticWorkload(1.0, 1, LengthDist("lognormal", 512, 1.0),
                                          LengthDist("lognormal", 128, 1.0)), duration_s=20)
    prices = tmp_path / "p.yaml"
    prices.write_text("currency: EUR\nper_gpu_hour: {H100-SXM: 2.0}\n")
    pool = synthetic_pool(get_model("olmoe-1b-7b"))
    plan = plan_capacity(config, pool, workload, [1, 2], prices=load_prices(prices),
                         target_rate=None, rel_tol=0.05)
    by = {(p.gpus, p.router): p for p in plan.points}
    assert by[(1, "round-robin")].max_rate == by[(1, "least-outstanding")].max_rate
    assert by[(2, "round-robin")].max_rate > 1.6 * by[(1, "round-robin")].max_rate
    for p in plan.points:
        assert p.cost_per_mtok == pytest.approx(2.0 * p.gpus / (p.best.out_tok_s * 3600) * 1e6)
    text = plan.format()
    assert "TTFT p99 ms" in text and "TPOT p99 ms" in text and "EUR/M out tok" in text
    assert "MoE cost:" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_gpu_hour: {H100-SXM: cheap}\n")
    with pytest.raises(InputError, match=r"bad.yaml:1:26: per_gpu_hour.H100-SXM must be a finite"):
        load_prices(bad)


def test_capacity_cli_answers_how_many_gpus(tmp_path):
    out = tmp_path / "cap.png"
    res = CliRunner().invoke(main, [
        "capacity", "olmoe-1b-7b", "--gpu", "H200", "--rate", "30", "--duration", "15",
        "--prompt-mean", "512", "--output-mean", "64", "--plot", str(out),
        "--json", str(tmp_path / "cap.json"), "--tolerance", "0.1"])
    assert res.exit_code == 0, res.output
    assert "30 req/s within TTFT p99 <= 2 s and TPOT p99 <= 50 ms needs" in res.output
    assert "analytic model" in res.output  # no H200 profile is shipped: the source says so
    assert "EXAMPLE prices" in res.output
    assert out.stat().st_size > 10_000
    plan = json.loads((tmp_path / "cap.json").read_text())
    assert plan["answer"] and plan["points"]


def test_memory_model():
    assert get_gpu("H200").hbm_bytes == 143771 * MIB
    assert get_gpu("H100-SXM").hbm_bytes == 81559 * MIB  # of 80 GiB = 85.9e9 physical
    assert all(g.hbm_bytes > 16 * 2**30 for g in GPUS.values())
    qwen = get_model("qwen3-30b-a3b")  # 4 KV heads: TP beyond 4 replicates them
    assert kv_bytes_per_token_per_gpu(qwen, 8) == kv_bytes_per_token_per_gpu(qwen, 4)
    assert kv_bytes_per_token_per_gpu(qwen, 2) == 2 * kv_bytes_per_token_per_gpu(qwen, 4)
    mla = get_model("deepseek-v2-lite")  # one latent, on every GPU
    assert kv_bytes_per_token_per_gpu(mla, 8) == kv_bytes_per_token_per_gpu(mla, 1)
    h100 = get_gpu("H100-SXM")
    cal = Calibration()
    tp4 = build_layout("tp", h100, qwen, 4, ("static",), cal)
    tp8 = build_layout("tp", h100, qwen, 8, ("static",), cal)
    assert tp8.kv_capacity < 2.2 * tp4.kv_capacity  # replication: KV space grows ~2x only
    free8 = h100.hbm_bytes * 0.9 - tp8.weight_bytes_per_gpu - tp8.reserve_bytes_per_gpu
    assert tp8.kv_capacity == int(free8 // kv_bytes_per_token_per_gpu(qwen, 8))
    assert activation_bytes(qwen, 8192, 256) > activation_bytes(qwen, 2048, 256) > 0
    with pytest.raises(InputError, match="mixtral-8x7b does not fit on 1 x H100-SXM"):
        build_layout("tp", h100, get_model("mixtral-8x7b"), 1, ("static",), cal)
    big = build_layout("tp", h100, qwen, 1, ("static",), cal, max_batched_tokens=32768)
    small = build_layout("tp", h100, qwen, 1, ("static",), cal, max_batched_tokens=2048)
    assert big.kv_capacity < small.kv_capacity


def test_overload_warning_and_readable_plots(tmp_path):
    arrivals = SyntheticWorkload(60, 600, LengthDist("fixed", 512),
                                 LengthDist("fixed", 128)).arrivals(0)
    config = SimConfig(gpu="H100-SXM", model="olmoe-1b-7b", gpus=1,
                       engine=EngineConfig(2048, 16))
    report = run_study(config, synthetic_pool(get_model("olmoe-1b-7b")), arrivals)
    assert all(s["overloaded"] for s in report.summaries)
    text = report.format()
    assert "WARNING (static): the offered load exceeds" in text and "TPOT p99 ms" in text
    light = [Arrival(float(i), 100, 20) for i in range(100)]
    assert not summarize(simulate(light, LinearCosts(), "static"))["overloaded"]
    paths = plot_runs(report.runs, tmp_path, report.title(), SLO(2.0, 0.05))
    assert [p.name for p in paths] == ["timeline.png", "cdf.png"]
    assert all(p.stat().st_size > 20_000 for p in paths)
    results = {"scenario": "t", "points": [
        {"point": {"gpu": "H100-SXM"}, "runs": report.summaries},
        {"point": {"gpu": "RTX-4090"}, "error": "does not fit"}]}
    assert plot_sweep(results, tmp_path / "s.png").stat().st_size > 10_000


def test_token_stream_marginals_are_the_inclusion_frequencies():
    rng = np.random.default_rng(5)
    pi = rng.dirichlet(np.ones(16), size=3) * 4  # 3 layers, 16 experts, top-4
    pi = np.minimum(pi, 1.0)
    pi *= 4 / pi.sum(axis=1, keepdims=True)
    pi = np.minimum(pi, 1.0)
    order = np.tile(np.arange(16), (3, 1))
    ids = _systematic(pi, order, 20000, 4, rng)
    assert all(len(set(row)) == 4 for row in ids[:, :200].reshape(-1, 4).tolist())
    freq = np.stack([np.bincount(ids[layer].ravel(), minlength=16) for layer in range(3)])
    np.testing.assert_allclose(freq / 20000, pi * 4 / pi.sum(axis=1, keepdims=True),
                               atol=0.015)


def test_small_steps_use_the_stream_and_keep_invariants():
    pool = synthetic_pool(get_model("olmoe-1b-7b"), seed=3)
    for tokens in (1, 7, 63, 200):
        for sample in range(4):
            h = pool.hists(tokens, 1, sample)
            assert (h.sum(axis=1) == tokens * 8).all() and h.max() <= tokens
            np.testing.assert_array_equal(h, pool.hists(tokens, 1, sample))
    # nested: the stream's first tokens are shared, so counts only grow with T
    assert (pool.hists(100, 1, 0) >= pool.hists(50, 1, 0)).all()
    run = simulate([Arrival(0.0, 40, 3)], LinearCosts(), "static")
    assert request_latencies(run)["tpot"][0] == pytest.approx(step(1))


def test_whatif_keeps_the_points_that_run(tmp_path):
    import yaml

    scenario = {"name": "mixed", "seed": 0, "routing": {"trace": "mixtral-8x7b"},
                "workload": {"rate": 2, "requests": 20,
                             "prompt": {"dist": "fixed", "mean": 256},
                             "output": {"dist": "fixed", "mean": 16}},
                "base": {"gpus": 1, "policies": ["static", "ramp"]},
                "sweep": {"gpu": ["H200", "RTX-4090"]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    res = CliRunner().invoke(main, ["whatif", str(path), "--jobs", "1", "--no-progress",
                                    "--json", str(tmp_path / "w.json")])
    assert res.exit_code == 2, res.output  # a failed point: reported, the others kept
    assert "mixtral-8x7b does not fit on 1 x RTX-4090" in res.output
    assert "gpu=H200" in res.output and "TPOT p99 ms" in res.output
    points = json.loads((tmp_path / "w.json").read_text())["points"]
    assert "error" in points[1] and points[0]["runs"]
    assert (tmp_path / "w.png").stat().st_size > 10_000
