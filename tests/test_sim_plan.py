"""Plan policies: the simulator costs a step's MoE layers from a measured layer plan, as
the engine's dispatch mode runs it (``ramp.sim.moe.LayerPlanCost``).

The plans here are written by the tests (tiny, with known times), so every expected step
time follows from the plan by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ramp.errors import InputError
from ramp.hardware import get_gpu
from ramp.histograms import sample_histograms
from ramp.layerplan import LayerPlan, embedded_layer_plans, load_layer_plan
from ramp.models import get_model
from ramp.sim.calibrate import load_engine_results, simulate_run
from ramp.sim.cli import main
from ramp.sim.costs import Calibration, StepCoster, build_layout
from ramp.sim.moe import LayerPlanCost, resolve_plan
from ramp.sim.routing import DECODE
from ramp.sim.runner import collapsed_pool, synthetic_pool

MODEL = get_model("olmoe-1b-7b")
GPU = get_gpu("H200")
REPO = Path(__file__).resolve().parent.parent
# engine vs triton: equal at 1 and 16 tokens, triton 2x faster at 8
TOKENS = (1, 8, 16)
ENGINE_US = (40.0, 100.0, 160.0)
TRITON_US = (40.0, 50.0, 160.0)


def _plan(path: Path) -> Path:
    plan = LayerPlan(GPU.name, MODEL.problem("w13", tp=1, ep=1), "vllm 0.26.0", TOKENS,
                     {"engine": ENGINE_US, "triton": TRITON_US})
    return plan.save(path)


def test_plan_chooses_and_interpolates_like_the_plan(tmp_path):
    cost = resolve_plan(GPU, MODEL.name, MODEL.problem("w13", tp=1, ep=1), 1,
                        [str(_plan(tmp_path / "p.json"))])
    plan = cost.plan
    assert plan.choices == ("engine", "triton", "engine")
    assert cost.source == f"layer plan {tmp_path / 'p.json'}"
    for t in range(1, 40):  # the path is the plan's decision at its bucket
        assert cost.path("plan", t) == plan.choices[plan.bucket(t)]
        assert cost.path("plan-engine", t) == "engine"
    assert cost.layer_us("plan", 8) == 50.0 and cost.layer_us("plan-engine", 8) == 100.0
    # 4 tokens: bucket 8 (triton), between triton's times at 1 and 8
    assert cost.layer_us("plan", 4) == pytest.approx(40 + 3 / 7 * 10)
    assert cost.layer_us("plan-engine", 12) == pytest.approx(130.0)
    # 12 tokens: bucket 16 chooses the engine, so the plan runs the engine's kernel
    assert cost.layer_us("plan", 12) == cost.layer_us("plan-engine", 12)
    # beyond the last measured size: the last size's time per token
    assert cost.layer_us("plan", 48) == pytest.approx(160.0 * 3)


def test_a_path_twice_as_fast_at_8_tokens_moves_the_step_by_exactly_that(tmp_path):
    cal = Calibration()
    layout = build_layout("tp", GPU, MODEL, 1, ("plan", "plan-engine", "static"), cal,
                          plans=[str(_plan(tmp_path / "p.json"))])
    pool = synthetic_pool(MODEL, steps=6, prefill_tokens=64)
    coster = StepCoster(GPU, MODEL, pool, cal, {"tp": layout})

    def step(policy: str, tokens: int) -> tuple[float, float]:
        return coster.step_seconds(layout, policy, tokens, 0.0, 0.0, DECODE, 0)

    (on, moe_on), (off, moe_off) = step("plan", 8), step("plan-engine", 8)
    assert moe_off == pytest.approx(MODEL.moe_layers * 100e-6, rel=1e-12)
    assert moe_on == pytest.approx(MODEL.moe_layers * 50e-6, rel=1e-12)
    assert off - on == pytest.approx(MODEL.moe_layers * 50e-6, rel=1e-9)
    assert step("plan", 16) == step("plan-engine", 16)  # the engine wins its own bucket
    # a step above the graph sizes is eager: without host times the plan gives it to
    # the engine, as the runtime does
    coster.graph_tokens = 4
    assert step("plan", 8) == step("plan-engine", 8)
    # the cost model's policies are still costed per GEMM alongside
    assert step("static", 8)[1] > 0 and step("static", 8)[1] != moe_off
    assert "plan policies: layer plan" in layout.moe_source


def test_an_eager_step_moves_by_the_paths_host_time_beyond_the_engines(tmp_path):
    """With host times in the plan an eager call may take RaMP's path (cheaper for the
    host here: 60 against 300 us a call); the eager step then pays its GPU time plus
    ``eager_host_fraction`` of the host difference per MoE layer (outside its MoE part),
    the engine kernel's own host time being in the calibrated eager overhead."""
    plan = LayerPlan(GPU.name, MODEL.problem("w13", tp=1, ep=1), "vllm 0.26.0", TOKENS,
                     {"engine": ENGINE_US, "triton": TRITON_US},
                     host_us={"engine": (300.0,) * 3, "triton": (60.0,) * 3})
    path = str(plan.save(tmp_path / "p.json"))
    for fraction in (1.0, 0.25, 0.0):
        cal = Calibration(eager_host_fraction=fraction)
        layout = build_layout("tp", GPU, MODEL, 1, ("plan", "plan-engine"), cal, plans=[path])
        coster = StepCoster(GPU, MODEL, synthetic_pool(MODEL, steps=6, prefill_tokens=64),
                            cal, {"tp": layout}, graph_tokens=4)
        assert layout.plan.path("plan", 8, eager=True) == "triton"

        def step(policy: str, coster=coster, layout=layout) -> tuple[float, float]:
            return coster.step_seconds(layout, policy, 8, 0.0, 0.0, DECODE, 0)

        (on, moe_on), (off, moe_off) = step("plan"), step("plan-engine")
        assert moe_off == pytest.approx(MODEL.moe_layers * 100e-6, rel=1e-12)
        assert moe_on == pytest.approx(MODEL.moe_layers * 50e-6, rel=1e-12)  # GPU only
        assert off - on == pytest.approx(
            MODEL.moe_layers * (50e-6 - fraction * (60e-6 - 300e-6)), rel=1e-9)
        coster.graph_tokens = 512  # in a CUDA graph: no host time at all
        assert coster.eager_host_seconds(layout, "plan", 8) == 0.0
        assert step("plan-engine")[0] - step("plan")[0] == pytest.approx(
            MODEL.moe_layers * 50e-6, rel=1e-9)
    with pytest.raises(InputError, match="eager_host_fraction"):
        Calibration(eager_host_fraction=-0.5)


def test_a_max_eager_step_takes_the_longer_of_its_host_and_gpu_time(tmp_path):
    """``eager_step`` max: an eager step whose host work (``eager_overhead_us`` plus the
    MoE layers' calls at the plan's ``host_us``) outlasts its GPU work takes the host
    time, so RaMP's path gains by its lower host time, not its GPU time; with a small
    host overhead the step is the GPU's and gains what the layer's GPU time gains."""
    layers = MODEL.moe_layers
    for overhead, engine_host, host_bound in ((50_000.0, 300.0, True), (0.0, 3.0, False)):
        plan = LayerPlan(GPU.name, MODEL.problem("w13", tp=1, ep=1), "vllm 0.26.0", TOKENS,
                         {"engine": ENGINE_US, "triton": TRITON_US},
                         host_us={"engine": (engine_host,) * 3,
                                  "triton": (engine_host / 5,) * 3})
        path = str(plan.save(tmp_path / f"p{engine_host}.json"))
        cal = Calibration(eager_step="max", eager_overhead_us=overhead)
        layout = build_layout("tp", GPU, MODEL, 1, ("plan", "plan-engine"), cal, plans=[path])
        coster = StepCoster(GPU, MODEL, synthetic_pool(MODEL, steps=6, prefill_tokens=64),
                            cal, {"tp": layout}, graph_tokens=4)

        def step(policy: str, coster=coster, layout=layout) -> tuple[float, float]:
            return coster.step_seconds(layout, policy, 8, 0.0, 0.0, DECODE, 0)

        (on, moe_on), (off, moe_off) = step("plan"), step("plan-engine")
        fixed = coster.overhead_seconds(1)
        gpu_off = coster.dense_seconds(layout, 8, 0.0, 0.0) + moe_off
        if host_bound:
            assert off == pytest.approx(fixed + overhead * 1e-6 + layers * 300e-6, rel=1e-9)
            assert off - on == pytest.approx(layers * (300e-6 - 60e-6), rel=1e-9)
            assert gpu_off < off - fixed
        else:
            assert off == pytest.approx(fixed + gpu_off, rel=1e-9)
            assert off - on == pytest.approx(moe_off - moe_on, rel=1e-9) and on < off
    with pytest.raises(InputError, match="eager_step must be one of"):
        Calibration(eager_step="sum")
    with pytest.raises(InputError, match="with eager_step max it must be 0"):
        Calibration(eager_step="max", eager_host_fraction=0.5)


def test_plan_time_follows_the_step_routing_by_the_static_cost_ratio(tmp_path):
    """A plan timed under uniform routing, a step routed as dummy weights route (every
    token on the first top-k experts): the layer costs the plan's time times the static
    tables' cost on the step's histograms over theirs on uniform ones."""
    times = {"engine": ENGINE_US, "triton": TRITON_US}
    plan = LayerPlan(GPU.name, MODEL.problem("w13", tp=1, ep=1), "vllm 0.26.0", TOKENS,
                     times, times_us_by_routing={"uniform": times})
    cal = Calibration()
    layout = build_layout("tp", GPU, MODEL, 1, ("plan", "plan-engine"), cal,
                          plans=[str(plan.save(tmp_path / "p.json"))])
    coster = StepCoster(GPU, MODEL, collapsed_pool(MODEL), cal, {"tp": layout})

    def static_us(hists):
        total = 0.0
        for gemm in layout.gemms:
            pred = gemm.profile.model.predict(hists)
            total = total + pred[np.arange(len(hists)),
                                 gemm.profile.dispatcher("static").choose_batch(hists)]
        return total.mean()

    uniform = np.concatenate([sample_histograms("uniform", MODEL.num_experts, 16, MODEL.top_k,
                                                seed=s) for s in range(4)])
    factor = static_us(coster.pool.hists(16, DECODE, 0)) / static_us(uniform)
    assert factor < 0.9  # a few hot experts stream fewer weights than all of them
    moe = coster.moe_seconds(layout, 16, DECODE, 0)
    assert moe["plan-engine"] == pytest.approx(MODEL.moe_layers * 160e-6 * factor, rel=1e-9)
    assert moe["plan"] == moe["plan-engine"]  # the plan's own choice at 16: the engine


def test_no_plan_names_the_command_that_measures_one():
    with pytest.raises(InputError, match=r"python -m ramp\.adapters\.plan --model "
                                         r"olmoe-1b-7b --out DIR"):
        build_layout("tp", GPU, MODEL, 1, ("plan",), Calibration())
    res = CliRunner().invoke(main, ["replay", "qwen3-30b-a3b", "--gpu", "H100-SXM",
                                    "--policy", "plan", "--requests", "5"])
    assert res.exit_code == 2 and "ramp.adapters.plan --model qwen3-30b-a3b" in res.output
    assert "Traceback" not in res.output
    bad = CliRunner().invoke(main, ["replay", "qwen3-30b-a3b", "--policy", "plans"])
    assert bad.exit_code == 2 and "policy 'plans'" in bad.output


def test_shipped_plans_are_the_ones_engine_runs_use():
    """The shipped H200 plans cover the w13 problem of the engine runs' models."""
    keys = {load_layer_plan(p).problem for p in embedded_layer_plans()}
    for name in ("qwen3-30b-a3b", "deepseek-v2-lite", "mixtral-8x7b"):
        assert get_model(name).problem("w13", tp=1, ep=1) in keys


def test_results_files_simulate_modes_under_plan_policies(tmp_path):
    src = REPO / "bench" / "results" / "engine" / "H200_qwen3-30b-a3b_decode-heavy.json"
    if not src.exists():
        pytest.skip("engine results not in this checkout")
    data = json.loads(src.read_text())
    data["workload"]["num_prompts"] = 16  # a short run of the same schema
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    by_mode = {r.ramp_mode: r for r in load_engine_results(path, "plan")}
    assert by_mode["off"].policy == "plan-engine" and by_mode["dispatch"].policy == "plan"
    assert by_mode["off"].with_moe_costs("model").policy == "static"
    with pytest.raises(InputError, match="moe costs"):
        by_mode["off"].with_moe_costs("nope")
    pools: dict = {}
    off = simulate_run(by_mode["off"], Calibration(), pools)
    on = simulate_run(by_mode["dispatch"], Calibration(), pools)
    plan = next(lay.plan for lay in off.coster.layouts.values())
    assert isinstance(plan, LayerPlanCost)
    # decode steps of 16 tokens: the plan's choice at 16 is what separates the runs
    gain = plan.layer_us("plan-engine", 16) / plan.layer_us("plan", 16)
    measured = on.metrics["tpot_p50_s"] / off.metrics["tpot_p50_s"]
    assert (gain > 1) == (measured < 1)
