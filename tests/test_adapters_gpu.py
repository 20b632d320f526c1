"""Adapters on a real GPU: recording and dispatch inside CUDA graphs, and their cost.

Skipped without CUDA. The dispatch tests run every path a layer plan can choose (the
plan is written here, forcing one path at every size) with this GPU's embedded profiles,
and skip on a GPU that has none (Qwen3-30B-A3B's shapes; cute: CuTe profiles of both
GEMMs, H200 only today) and, for cute, where nvidia-cutlass-dsl is not installed. No engine is needed: a model
of stacked MoE layers calls the runtime the way the engine hooks do.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from ramp.adapters.runtime import RampConfig, RampMoERuntime  # noqa: E402
from ramp.layerplan import LayerPlan  # noqa: E402
from ramp.trace import read_steps  # noqa: E402

QWEN = dict(experts=128, hidden=2048, inter=768, top_k=8)  # Qwen3-30B-A3B, TP=1
PATHS = ("triton", "triton-fused", "triton-tma", "triton-poly", "cute", "grouped_mm")
PLAN_TOKENS = (1, 64, 512, 8192)


def forcing_runtime(tmp_path: Path, path: str, ep: int = 1, **flags) -> RampMoERuntime:
    """A dispatch runtime whose layer plan picks ``path`` at every size (made-up times:
    the path 1 us, the engine 2 us), with this GPU's embedded profiles (under ``ep``: of
    the full layer's shape, used here for the local one)."""
    from ramp.adapters.plan import ramp_layers
    from ramp.hardware import detect_gpu
    from ramp.models import get_model

    if path == "cute":
        pytest.importorskip("cutlass", reason="the cute path needs nvidia-cutlass-dsl")
    gpu = detect_gpu().name
    model = get_model("qwen3-30b-a3b")
    problems = (model.problem("w13"), model.problem("w2"))
    layers = ramp_layers(gpu, problems, None)
    if path not in layers:
        pytest.skip(f"no embedded {path} profiles for {gpu} and Qwen3-30B-A3B")
    config_at = layers[path][1]
    configs = ({path: tuple(config_at(t) for t in PLAN_TOKENS)}
               if config_at(PLAN_TOKENS[0]) is not None else {})
    times = {"engine": (2.0,) * len(PLAN_TOKENS), path: (1.0,) * len(PLAN_TOKENS)}
    host = {"engine": (2.0,) * len(PLAN_TOKENS), path: (1.0,) * len(PLAN_TOKENS)}
    plan = LayerPlan(gpu, problems[0], "gpu-test 1", PLAN_TOKENS, times, configs=configs,
                     ep=ep, host_us=host)
    plan.save(tmp_path / f"{plan.key}.json")
    return RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path)),
                          engine="gpu-test", **flags)


def qwen_weights(seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    e, h, i = QWEN["experts"], QWEN["hidden"], QWEN["inter"]
    w13 = (torch.randn(e, 2 * i, h, generator=gen, device="cuda") / h**0.5).bfloat16()
    w2 = (torch.randn(e, h, i, generator=gen, device="cuda") / i**0.5).bfloat16()
    return w13, w2


def routing(tokens: int, seed: int, experts: int = 128, top_k: int = 8, skew: float = 0.0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(tokens, experts, generator=gen, device="cuda")
    logits += skew * torch.linspace(3, 0, experts, device="cuda")  # a few hot experts
    weights, ids = torch.topk(logits.softmax(-1), top_k)
    return ids.to(torch.int32), weights


def reference(x, w13, w2, ids, weights):
    """float32 per-expert loop on the GPU."""
    out = torch.zeros(x.shape[0], w2.shape[1], device="cuda")
    inter = w13.shape[1] // 2
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        h = x[tok].float() @ w13[e].float().T
        act = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
        out.index_add_(0, tok, weights[tok, slot, None] * (act @ w2[e].float().T))
    return out


class Engine:
    def __init__(self, result=None) -> None:
        self.calls = 0
        self.result = result

    def __call__(self):
        self.calls += 1
        return self.result


def rel_err(out, ref) -> float:
    return float((out.float() - ref).norm() / ref.norm())


# --- dispatch --------------------------------------------------------------------------

def dispatch(runtime, *args, **kwargs):
    engine = Engine()
    out = runtime.fused_moe(*args, engine, **kwargs)
    assert engine.calls == 0, "RaMP fell back to the engine (see the log)"
    return out


def test_a_neighbours_configuration_passes_the_plans_check():
    """The layer plan times each configured path with its neighbouring sizes'
    configurations too (``neighbour_configs``) and checks each first (``check_at``):
    here the Triton path with T=1's and T=8192's configuration at T=64 (Qwen3 shape),
    and a layer that leaves rows unwritten is caught."""
    from ramp.adapters.plan import check_at, fixed_config_layer, ramp_layers
    from ramp.hardware import detect_gpu
    from ramp.models import get_model

    model = get_model("qwen3-30b-a3b")
    layers = ramp_layers(detect_gpu().name, (model.problem("w13"), model.problem("w2")), None)
    if "triton" not in layers:
        pytest.skip("no embedded triton profiles for this GPU")
    config_at = layers["triton"][1]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    w13, w2 = qwen_weights()
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(64, QWEN["hidden"], device="cuda", generator=gen).bfloat16()
    ids, weights = routing(64, seed=3)
    candidates = {f"T={t}": fixed_config_layer("triton", config_at(t), sms) for t in (1, 8192)}
    candidates["unwritten"] = lambda x, w13, w2, ids, w, out, expert_map: out
    errors = check_at(candidates, x, ids, weights, w13, w2)
    assert errors["T=1"] < 2e-2 and errors["T=8192"] < 2e-2
    assert errors["unwritten"] == "rows left unwritten or non-finite"


def test_plan_measurement_runs_end_to_end(monkeypatch):
    """``python -m ramp.adapters.plan``'s measurement at a few sizes, RaMP's Triton
    path standing in for vLLM's layer (these tests run without vLLM): the neighbours'
    configurations, the timings at each bucket's smallest size, the plan they make."""
    import json

    from ramp.adapters import plan as plan_module
    from ramp.hardware import detect_gpu
    from ramp.models import get_model

    model = get_model("qwen3-30b-a3b")
    problems = (model.problem("w13"), model.problem("w2"))
    layers = plan_module.ramp_layers(detect_gpu().name, problems, None)
    if "triton" not in layers:
        pytest.skip("no embedded triton profiles for this GPU")
    triton = layers["triton"][0]

    def engine(x, w13, w2, ids, weights, out=None, expert_map=None):
        return triton(x, w13, w2, ids, weights,
                      torch.empty(x.shape[0], w2.shape[1], dtype=x.dtype, device=x.device),
                      expert_map)

    monkeypatch.setattr(plan_module, "vllm_engine_layer", lambda: ("stand-in 0", engine))
    plan, details = plan_module.measure("qwen3-30b-a3b", None, (1, 4, 48), ("uniform",), 1)
    assert plan.interval_starts == (None, 2, 8)
    starts = plan.interval_start_times_us_by_routing["uniform"]
    assert set(starts) == set(plan.times_us)
    assert all(t[0] is None and t[1] > 0 and t[2] > 0 for t in starts.values())
    assert set(details["config_candidates"]) <= set(plan.configs)
    for per_size in details["config_candidates"].values():
        for entries in per_size.values():
            assert sum(e["chosen"] for e in entries) == 1
            assert all(e["rel_err"] is None or e["rel_err"] < 2e-2 for e in entries)
    again = plan_module.LayerPlan.from_dict(json.loads(json.dumps(plan.to_dict())), "x")
    assert again == plan


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("tokens,skew", [(1, 0.0), (37, 0.0), (512, 2.0), (4096, 0.0)])
def test_every_path_matches_reference(tmp_path, path, tokens, skew):
    """Outputs poisoned with NaN first; every row written and within bf16 error."""
    runtime = forcing_runtime(tmp_path, path)
    w13, w2 = qwen_weights()
    x = torch.randn(tokens, QWEN["hidden"], device="cuda").bfloat16()
    ids, weights = routing(tokens, seed=tokens, skew=skew)
    out = torch.full((tokens, QWEN["hidden"]), float("nan"), device="cuda",
                     dtype=torch.bfloat16)
    dispatch(runtime, x, w13, w2, ids, weights, out=out)
    assert bool(torch.isfinite(out).all())
    assert rel_err(out, reference(x, w13, w2, ids, weights)) < 2e-2


def test_warm_up_bounded_to_the_first_call_keeps_the_peak_memory_low(tmp_path):
    """vLLM sizes its KV cache from its first step's peak memory: warmed up to a first
    call of 64 tokens, RaMP's paths raise the peak by little; warmed up at every bucket
    (8,192 tokens the largest), by the hundreds of MiB a Qwen3 layer of that size needs."""
    w13, w2 = qwen_weights()
    rises = []
    for bounded in (True, False):
        (tmp_path / str(bounded)).mkdir()
        runtime = forcing_runtime(tmp_path / str(bounded), "triton",
                                  warm_up_to_first_call=bounded)
        x = torch.randn(64, QWEN["hidden"], device="cuda").bfloat16()
        ids, weights = routing(64, seed=5)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # a test's own process, not an engine's
        dispatch(runtime, x, w13, w2, ids, weights)
        (entry,) = runtime.stats.plans.values()
        assert entry["warm_up_tokens"] == 64
        rises.append(entry["warm_up_peak_rise_mib"])
    assert rises[0] < 64 < 256 < rises[1], rises


@pytest.mark.parametrize("path", PATHS)
def test_expert_parallel_map_inside_cuda_graph(tmp_path, path):
    """EP=2 on one GPU with a simulated map: 256 global experts, this rank holds 64..191
    as local 0..127 (Qwen3's layer shape), global ids; a captured graph replayed with new
    routings computes the local experts' share every time."""
    runtime = forcing_runtime(tmp_path, path, ep=2)
    w13, w2 = qwen_weights()
    expert_map = torch.full((256,), -1, dtype=torch.int32, device="cuda")
    expert_map[64:192] = torch.arange(128, dtype=torch.int32, device="cuda")
    tokens = 96
    x = torch.randn(tokens, QWEN["hidden"], device="cuda").bfloat16()
    ids, weights = routing(tokens, seed=11, experts=256)
    out = torch.empty(tokens, QWEN["hidden"], device="cuda", dtype=torch.bfloat16)
    kwargs = dict(out=out, global_num_experts=256, expert_map=expert_map)
    dispatch(runtime, x, w13, w2, ids, weights, **kwargs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runtime.fused_moe(x, w13, w2, ids, weights, Engine(), **kwargs)
    for seed, skew in ((12, 0.0), (13, 2.0)):
        new_ids, new_weights = routing(tokens, seed=seed, experts=256, skew=skew)
        ids.copy_(new_ids)
        weights.copy_(new_weights)
        graph.replay()
        torch.cuda.synchronize()
        local = expert_map[ids.long()]
        ref = reference(x, w13, w2, local.clamp(min=0), weights * (local >= 0))
        assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("path", PATHS)
def test_dispatch_inside_cuda_graph_follows_new_routing(tmp_path, path):
    """Warm once eagerly, capture, then replay with other routings: every replay is
    right, so nothing about the histogram was baked in on the host."""
    runtime = forcing_runtime(tmp_path, path)
    w13, w2 = qwen_weights()
    tokens = 64
    x = torch.randn(tokens, QWEN["hidden"], device="cuda").bfloat16()
    ids, weights = routing(tokens, seed=1)
    out = torch.empty(tokens, QWEN["hidden"], device="cuda", dtype=torch.bfloat16)
    dispatch(runtime, x, w13, w2, ids, weights, out=out)
    graph = torch.cuda.CUDAGraph()
    engine = Engine()
    with torch.cuda.graph(graph):
        runtime.fused_moe(x, w13, w2, ids, weights, engine, out=out)
    assert engine.calls == 0
    for seed, skew in ((2, 0.0), (3, 3.0), (4, 1.0)):
        new_ids, new_weights = routing(tokens, seed=seed, skew=skew)
        ids.copy_(new_ids)
        weights.copy_(new_weights)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, reference(x, w13, w2, ids, weights)) < 2e-2


def test_first_call_inside_a_capture_captures_the_engine_kernel(tmp_path):
    """RaMP never compiles or uploads inside a capture: the engine's kernel is captured
    instead, and the capture stays valid."""
    runtime = forcing_runtime(tmp_path, "triton-poly")
    w13, w2 = qwen_weights()
    x = torch.randn(8, QWEN["hidden"], device="cuda").bfloat16()
    ids, weights = routing(8, seed=5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = runtime.fused_moe(x, w13, w2, ids, weights, lambda: x * 2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, x * 2)


# --- record ----------------------------------------------------------------------------

def moe_model(runtime, layers: int, tokens: int, experts: int = 128, top_k: int = 8):
    """``layers`` MoE layers whose engine kernel is a cheap stand-in; the routing comes
    from a static buffer so that graph replays can be fed new routings."""
    w13 = [torch.empty(experts, 64, 32, device="cuda", dtype=torch.bfloat16)
           for _ in range(layers)]
    w2 = [torch.empty(experts, 32, 32, device="cuda", dtype=torch.bfloat16)
          for _ in range(layers)]
    ids = torch.zeros(layers, tokens, top_k, device="cuda", dtype=torch.int32)
    weights = torch.ones(tokens, top_k, device="cuda")
    hidden = torch.zeros(tokens, 32, device="cuda", dtype=torch.bfloat16)

    def forward():
        h = hidden
        for layer in range(layers):
            h = runtime.fused_moe(h, w13[layer], w2[layer], ids[layer], weights,
                                  lambda h=h: h + 1)
        return h

    def new_routing(seed: int) -> np.ndarray:
        for layer in range(layers):
            ids[layer].copy_(routing(tokens, seed * 1000 + layer, experts, top_k)[0])
        return np.stack([np.bincount(ids[layer].cpu().numpy().ravel(), minlength=experts)
                         for layer in range(layers)])

    return forward, new_routing


def test_record_survives_cuda_graph_capture(tmp_path):
    """The writer thread polls every 0.2 ms while the model is captured (global capture
    mode, PyTorch's default): the capture stays valid, eager warm-up passes are left out,
    and every replay is recorded with its own routing."""
    path = tmp_path / "trace.jsonl"
    runtime = RampMoERuntime(RampConfig(mode="record", trace_path=str(path),
                                        poll_seconds=0.0002, ring_steps=64))
    forward, new_routing = moe_model(runtime, layers=6, tokens=32)
    truth = [new_routing(0)]
    forward()                             # the pass that finds the layers
    for seed in (1, 2, 3):                # eager warm-up passes: dummy steps
        truth.append(new_routing(seed))
        forward()
    time.sleep(0.01)                      # let the writer poll before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    for seed in range(4, 40):
        truth.append(new_routing(seed))
        graph.replay()
    torch.cuda.synchronize()
    runtime.close()
    stats = runtime.recorder.stats
    assert (stats.warmup, stats.recorded, stats.dropped, stats.invalid) == (3, 36, 0, 0)
    steps = list(read_steps(path))
    assert [s.step for s in steps] == list(range(3, 39))
    for step in steps:
        assert np.array_equal(step.hists, truth[step.step + 1])


@pytest.mark.parametrize("tokens", [64, 8192])
def test_record_cost_per_layer(tokens, tmp_path, capsys):
    """Replay time of a 48-layer graph with and without recording: the recorder's
    kernel must stay a few microseconds per layer (a decode step of a 48-layer MoE model
    on an H100 takes milliseconds)."""
    def replay_us(mode: str) -> float:
        runtime = RampMoERuntime(RampConfig(mode=mode, ring_steps=64, poll_seconds=0.01,
                                            trace_path=str(tmp_path / f"{mode}.jsonl")))
        forward, new_routing = moe_model(runtime, layers=48, tokens=tokens)
        new_routing(0)
        for _ in range(3):
            forward()
        torch.cuda.synchronize()
        begin = time.perf_counter()
        for _ in range(20):
            forward()
        torch.cuda.synchronize()
        eager[mode] = (time.perf_counter() - begin) * 1e6 / 20
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward()
        for _ in range(10):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(200):
            graph.replay()
        end.record()
        end.synchronize()
        runtime.close()
        return start.elapsed_time(end) * 1000 / 200

    eager: dict[str, float] = {}
    base, recorded = replay_us("off"), replay_us("record")
    per_layer = (recorded - base) / 48
    with capsys.disabled():
        print(f"\nrecord cost, T={tokens}: graph replay {base:.1f} -> {recorded:.1f} us for "
              f"48 layers: {per_layer:.2f} us per layer; eager pass {eager['off']:.0f} -> "
              f"{eager['record']:.0f} us ({(eager['record'] - eager['off']) / 48:.1f} us "
              "per layer, mostly the kernel launch on the host)")
    assert per_layer < (5.0 if tokens <= 64 else 10.0)  # H100: 3.1 and 6.4 us


def test_host_time_of_an_eager_call_is_measured_behind_the_spin():
    """``host_us``: the issue time of a few launches, the GPU held busy meanwhile (never
    None for calls this quick), and more for a call that launches more."""
    from ramp.adapters.plan import host_us

    x = torch.zeros(16, device="cuda")
    one = host_us(lambda: x.add_(1), 20)
    ten = host_us(lambda: [x.add_(1) for _ in range(10)], 20)
    assert one is not None and ten is not None and 0 < one < ten
    torch.cuda.synchronize()
    assert float(x[0]) == 20 + 200  # every call ran, after the spin



def test_eager_graphs_replay_each_layers_weights_at_each_size():
    """``kernels.eager_graphs.EagerGraphs`` over the triton-tma path (Qwen3 shape): two
    layers' weights alternating at two sizes, outputs poisoned first. The first calls of
    a size run eagerly, the third runs on the static buffers and captures, the fourth
    replays one graph per (layer, size); every result equals the unwrapped layer's and
    float32's; inside a capture of the engine's own the call passes through."""
    from ramp.adapters.runtime import config_entry
    from ramp.kernels.eager_graphs import EagerGraphs
    from ramp.kernels.layers import PathInputs, build_path

    cfg = {"w13": {"family": "triton", "block_m": 64, "block_n": 128, "block_k": 64,
                   "num_warps": 4, "num_stages": 3, "persistent": True, "group_m": 8},
           "w2": {"family": "triton", "block_m": 64, "block_n": 128, "block_k": 64,
                  "num_warps": 4, "num_stages": 3, "persistent": True, "group_m": 8}}
    configs = config_entry(cfg)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    plain = build_path("triton-tma", PathInputs(sms, configs=lambda path: lambda t: configs))
    wrapped = EagerGraphs(plain)
    layers = [qwen_weights(seed) for seed in (1, 2)]
    for rnd in range(4):  # 2 eager, 1 eager on the static buffers + capture, 1 replay
        for tokens in (96, 160):
            for li, (w13, w2) in enumerate(layers):
                gen = torch.Generator(device="cuda").manual_seed(100 * rnd + tokens + li)
                x = torch.randn(tokens, QWEN["hidden"], generator=gen, device="cuda").bfloat16()
                ids, weights = routing(tokens, seed=rnd * 7 + li)
                out = torch.full((tokens, QWEN["hidden"]), float("nan"), dtype=torch.bfloat16,
                                 device="cuda")
                got = wrapped(x, w13, w2, ids, weights, out)
                assert got is out and bool(torch.isfinite(out).all())
                want = plain(x, w13, w2, ids, weights, None)
                assert torch.allclose(out.float(), want.float(), rtol=1e-2, atol=1e-2)
                assert rel_err(out, reference(x, w13, w2, ids, weights)) < 2e-2
    assert wrapped.captures == 4 and sorted(k[0] for k in wrapped.sizes) == [96, 160]
    assert wrapped.replays == 4  # the last round's calls, one per (layer, size)
    assert not wrapped.disabled
    graph = torch.cuda.CUDAGraph()
    w13, w2 = layers[0]
    x = torch.randn(96, QWEN["hidden"], device="cuda").bfloat16()
    ids, weights = routing(96, seed=3)
    with torch.cuda.graph(graph):
        wrapped(x, w13, w2, ids, weights, None)
    assert wrapped.captures == 4  # the engine's capture: passed through, none of its own
