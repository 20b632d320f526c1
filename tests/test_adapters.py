"""Engine adapters on the CPU: record path, dispatch path, fallbacks, hooks, dump converter.

Kernels run in Triton's interpreter (fp16, tiny shapes; conftest sets TRITON_INTERPRET).
vLLM and SGLang are not installable next to this CPU torch (both pin CUDA torch builds),
so their hooks are exercised through stand-ins with the engines' exact signatures, and
checked against the engines' real sources when ``RAMP_TEST_VLLM_SOURCE`` /
``RAMP_TEST_SGLANG_SOURCE`` name an unpacked wheel, or against the installed engines.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from ramp.adapters import sglang as sglang_adapter  # noqa: E402
from ramp.adapters import vllm as vllm_adapter  # noqa: E402
from ramp.adapters.recorder import TraceRecorder, trace_header  # noqa: E402
from ramp.adapters.runtime import ENV, RampConfig, RampMoERuntime  # noqa: E402
from ramp.bank import KernelBank  # noqa: E402
from ramp.config import KernelConfig  # noqa: E402
from ramp.costmodel import WaveCostModel  # noqa: E402
from ramp.errors import InputError  # noqa: E402
from ramp.kernels.cute.configs import cute_configs  # noqa: E402
from ramp.kernels.triton.configs import FAMILY_VERSION  # noqa: E402
from ramp.layerplan import LayerPlan, load_layer_plan  # noqa: E402
from ramp.problem import MoEProblem  # noqa: E402
from ramp.profile import Profile  # noqa: E402
from ramp.trace import read_header, read_steps  # noqa: E402

HIDDEN, INTER, EXPERTS, TOP_K = 64, 32, 8, 2
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMS = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 2


def make_layer(tokens: int, seed: int, dtype=torch.float16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, generator=gen).to(dtype)
    w13 = (torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=gen) / HIDDEN**0.5).to(dtype)
    w2 = (torch.randn(EXPERTS, HIDDEN, INTER, generator=gen) / INTER**0.5).to(dtype)
    weights, ids = torch.topk(torch.randn(tokens, EXPERTS, generator=gen).softmax(-1), TOP_K)
    return [t.to(DEVICE) for t in (x, w13, w2, ids.to(torch.int32), weights)]


def reference(x, w13, w2, ids, weights):
    """float32 loop over token-expert slots: the definition of the layer."""
    x, w13, w2, ids, weights = (t.cpu() for t in (x, w13, w2, ids, weights))
    out = torch.zeros(x.shape[0], w2.shape[1])
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate, up = w13[e, :INTER].float() @ x[t].float(), w13[e, INTER:].float() @ x[t].float()
            out[t] += weights[t, j] * (w2[e].float() @ (torch.nn.functional.silu(gate) * up))
    return out


class Engine:
    """The engine side of a call: its own implementation, counting how often it ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "engine result"


ENGINE_NAME = "test-engine"
TRITON_CFG = {"w13": KernelConfig("triton", 16, 32, 32).to_dict(),
              "w2": KernelConfig("triton", 16, 64, 32, persistent=True).to_dict()}
CUTE_CFG = {"w13": cute_configs()[0].to_dict(), "w2": cute_configs()[1].to_dict()}
RECORDED = {"triton": TRITON_CFG, "triton-fused": TRITON_CFG,  # what the configured
            "triton-tma": TRITON_CFG, "cute": CUTE_CFG}       # paths ran


def save_plan(directory: Path, paths: dict[int, str], dtype: str = "float16",
              gpu: str = "H100-SXM", ep: int = 1) -> LayerPlan:
    """A layer plan for the tiny layer whose measured winner at each T is ``paths[T]``
    (made-up times: the winner 1 us, the engine 10 us, other paths 20 us), in CUDA
    graphs and eager alike (made-up host times: the engine's the dearest)."""
    tokens = sorted(paths)
    names = {"engine", *paths.values()}
    times = {n: tuple(1.0 if paths[t] == n else 10.0 if n == "engine" else 20.0
                      for t in tokens) for n in names}
    configs = {name: tuple(cfg for _ in tokens) for name, cfg in RECORDED.items()
               if name in names}
    host = {n: (100.0 if n == "engine" else 50.0,) * len(tokens) for n in names}
    plan = LayerPlan(gpu, MoEProblem(EXPERTS, 2 * INTER, HIDDEN, TOP_K, dtype, "w13"),
                     f"{ENGINE_NAME} 1", tuple(tokens), times, configs=configs, ep=ep,
                     host_us=host)
    plan.save(directory / f"{plan.key}.json")
    return plan


def save_profiles(directory: Path, dtype: str = "float16", gpu: str = "H100-SXM",
                  family_version: str = FAMILY_VERSION, block_k: int = 32,
                  plan: dict[int, str] | None = None) -> None:
    """Hand-built sync-free profiles (two branches, made-up fitted parameters) for the
    tiny layer: what `ramp profile` writes, small enough for the interpreter; and a
    layer plan that picks the sync-free path at every size (or ``plan``)."""
    branches = [KernelConfig("triton", 16, 32, block_k, persistent=True, variant="poly"),
                KernelConfig("triton", 32, 64, block_k, persistent=True, variant="poly")]
    bank = KernelBank.build(branches, 1)
    for gemm, n, k in (("w13", 2 * INTER, HIDDEN), ("w2", HIDDEN, INTER)):
        problem = MoEProblem(EXPERTS, n, k, TOP_K, dtype, gemm)
        model = WaveCostModel(bank, problem, SMS, np.array([[4.0, 1.0, 0.5, 2.0],
                                                          [4.0, 3.0, 0.5, 1.0]]))
        Profile(gpu, problem, "triton-poly", family_version, model, {1: 0}).save(
            directory / f"{gpu}_{problem.key}_poly.json")
    save_plan(directory, plan or {1: "triton-poly", 64: "triton-poly"}, dtype, gpu)


# --- configuration ---------------------------------------------------------------------

def test_config_from_env_and_export(monkeypatch):
    for name in ENV.values():  # restored after the test: export() writes them
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("RAMP_MODE", "record")
    monkeypatch.setenv("RAMP_RING_STEPS", "64")
    config = RampConfig.from_env(trace_path="t.jsonl")
    assert (config.mode, config.ring_steps, config.trace_path) == ("record", 64, "t.jsonl")
    assert RampConfig.from_env(mode="dispatch").mode == "dispatch"  # arguments win
    RampConfig(mode="dispatch", profile_dir="/p").export()
    assert os.environ["RAMP_MODE"] == "dispatch"
    assert os.environ["RAMP_PROFILE_DIR"] == "/p"
    with pytest.raises(InputError, match="RAMP_MODE"):
        RampConfig.from_env(mode="fast")
    monkeypatch.setenv("RAMP_RING_STEPS", "many")
    with pytest.raises(InputError, match="RAMP_RING_STEPS='many'"):
        RampConfig.from_env()


@pytest.mark.parametrize("setting,message", [
    (dict(stats_path="stats.rank{rank}.json"), "RAMP_STATS='stats.rank{rank}.json'"),
    (dict(trace_path="t.{node}.jsonl"), "RAMP_TRACE='t.{node}.jsonl'"),
    (dict(poll_seconds=0.0), "RAMP_POLL_SECONDS=0.0 must be > 0"),
    (dict(hold_seconds=-1.0), "RAMP_HOLD_SECONDS=-1.0 must be >= 0"),
])
def test_bad_settings_are_refused_before_any_call(setting, message):
    """A value that would fail inside a serving engine's forward pass (a stats path
    template with a field only the trace path has) or busy-loop its recorder thread is an
    error naming the variable when the configuration is made."""
    with pytest.raises(InputError, match=re.escape(message)):
        RampConfig(mode="dispatch", **setting)


def test_plugin_entry_points_log_one_line_and_never_raise(monkeypatch, caplog):
    """A bad setting when the engine loads its plugins: one error line, no traceback,
    and the engine goes on without RaMP."""
    monkeypatch.setenv("RAMP_MODE", "dispatch")
    monkeypatch.setenv("RAMP_STATS", "s.{rank}.json")
    for adapter in (vllm_adapter, sglang_adapter):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="ramp.adapters"):
            adapter.register()
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is None
        assert "RAMP_STATS" in caplog.records[0].getMessage()


# --- record ----------------------------------------------------------------------------

def run_steps(runtime_or_recorder, steps: int, layers: int, seed: int) -> list[np.ndarray]:
    """Forward passes of a fake model: ``layers`` MoE layers per step. Returns the true
    [layers, experts] histograms of every step (the first pass included)."""
    gen = torch.Generator().manual_seed(seed)
    truth = []
    for _ in range(steps):
        tokens = int(torch.randint(1, 24, (1,), generator=gen))
        hists = []
        for layer in range(layers):
            ids = torch.rand(tokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices
            ids = ids.to(torch.int32).to(DEVICE)
            if isinstance(runtime_or_recorder, TraceRecorder):
                runtime_or_recorder.observe(("layer", layer), ids, num_experts=EXPERTS,
                                            hidden=HIDDEN, intermediate=INTER,
                                            dtype=torch.float16)
            else:
                x, w13, w2, _, weights = LAYERS[layer]
                out = runtime_or_recorder.fused_moe(x[:tokens], w13, w2, ids,
                                                    weights[:tokens], ENGINE)
                assert out == "engine result"
            hists.append(np.bincount(ids.reshape(-1).cpu().numpy(), minlength=EXPERTS))
        truth.append(np.stack(hists))
    return truth


LAYERS = [make_layer(24, seed) for seed in range(3)]
ENGINE = Engine()


def test_record_end_to_end(tmp_path):
    """Every step after the first (layer-discovery) pass lands in a readable trace with
    the exact per-layer histograms; the engine's kernel runs for every call."""
    config = RampConfig(mode="record", trace_path=str(tmp_path / "t.rank{rank}.jsonl"),
                        poll_seconds=0.01, ring_steps=64)
    runtime = RampMoERuntime(config, engine="test-engine", engine_version="1")
    calls = ENGINE.calls
    truth = run_steps(runtime, steps=20, layers=3, seed=1)
    runtime.close()
    assert ENGINE.calls - calls == 60
    path = tmp_path / "t.rank0.jsonl"
    header = read_header(path)
    assert (header.moe_layers, header.num_experts, header.top_k, header.hidden,
            header.moe_intermediate, header.dtype) == (3, EXPERTS, TOP_K, HIDDEN, INTER,
                                                       "float16")
    assert (header.source, header.engine, header.engine_version) == ("recorded",
                                                                      "test-engine", "1")
    steps = list(read_steps(path))
    assert [s.step for s in steps] == list(range(19))
    for step in steps:
        assert np.array_equal(step.hists, truth[step.step + 1])
        assert step.tokens * TOP_K == truth[step.step + 1][0].sum()
    stats = runtime.recorder.stats
    assert (stats.recorded, stats.dropped, stats.invalid) == (19, 0, 0)


def test_record_inside_inference_mode(tmp_path):
    """Engines run the forward pass under torch.inference_mode; the poller thread, which
    is outside it, still copies and writes every step (vLLM 0.26 stopped recording at
    the first step with "Inplace update to inference tensor outside InferenceMode")."""
    recorder = TraceRecorder(str(tmp_path / "t.jsonl"), poll_seconds=0.001, hold_seconds=0)
    with torch.inference_mode():
        truth = run_steps(recorder, steps=12, layers=2, seed=4)
    recorder.close()
    assert recorder._failed == "closed"  # the poller never failed
    steps = list(read_steps(tmp_path / "t.jsonl"))
    assert [s.step for s in steps] == list(range(11))
    for step in steps:
        assert np.array_equal(step.hists, truth[step.step + 1])


def test_record_ring_overflow_drops_and_counts(tmp_path):
    """No poll for 30 steps with a ring of 10: the forward pass never waits, the oldest
    steps are counted as dropped and the newest ones are written intact."""
    recorder = TraceRecorder(str(tmp_path / "t.jsonl"), ring_steps=10, start_thread=False)
    truth = run_steps(recorder, steps=31, layers=2, seed=2)  # pass 1 finds the layers
    recorder.poll()
    recorder.close()
    steps = list(read_steps(tmp_path / "t.jsonl"))
    assert recorder.stats.dropped == 24 and recorder.stats.recorded == 6
    assert [s.step for s in steps] == list(range(24, 30))
    for step in steps:
        assert np.array_equal(step.hists, truth[step.step + 1])


def test_record_never_blocks_on_a_stuck_writer(tmp_path):
    """The trace file is locked by another process-like holder, so the writer thread
    blocks in its append; forward passes go on, and what the ring could not hold is
    dropped and counted, not waited for."""
    path = tmp_path / "t.jsonl"
    recorder = TraceRecorder(str(path), ring_steps=10, poll_seconds=0.001, hold_seconds=0)
    truth = run_steps(recorder, steps=3, layers=2, seed=3)
    with open(path, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (truth.extend(
            run_steps(recorder, steps=40, layers=2, seed=4)), done.set()))
        worker.start()
        assert done.wait(timeout=30), "the forward pass waited for the trace writer"
        fcntl.flock(holder, fcntl.LOCK_UN)
    worker.join()
    recorder.close()
    stats = recorder.stats
    # At most the steps before the lock, one chunk in flight and one ring after it.
    assert stats.dropped >= 40 - 2 * (10 - 4) and stats.recorded + stats.dropped == 42
    for step in read_steps(path):
        assert np.array_equal(step.hists, truth[step.step + 1])


def test_record_large_steps_count_across_ctas(tmp_path):
    """Prefill-sized steps (more ids than one counting CTA takes) are counted right, and
    ids outside the expert range (padding tokens, other ranks' experts) are not counted."""
    recorder = TraceRecorder(str(tmp_path / "t.jsonl"), start_thread=False)
    gen = torch.Generator().manual_seed(4)
    truth = []
    for tokens in (3, 2600, 4100, 5):
        ids = torch.rand(tokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices
        ids[::7] = -1
        ids[1::7] = EXPERTS
        recorder.observe("layer", ids.to(torch.int32).to(DEVICE), num_experts=EXPERTS,
                         hidden=HIDDEN, intermediate=INTER, dtype=torch.float16)
        valid = ids[(ids >= 0) & (ids < EXPERTS)].numpy()
        truth.append((len(valid) // TOP_K, np.bincount(valid, minlength=EXPERTS)))
    recorder.close()
    steps = list(read_steps(tmp_path / "t.jsonl"))
    assert [s.step for s in steps] == [0, 1, 2]
    for step, (tokens, hist) in zip(steps, truth[1:]):
        assert step.tokens == tokens and np.array_equal(step.hists[0], hist)


def test_record_leaves_out_inconsistent_steps(tmp_path):
    """Rank-local ids (-1 for experts elsewhere) make layers disagree on the row count:
    such steps are counted as invalid, not written."""
    recorder = TraceRecorder(str(tmp_path / "t.jsonl"), start_thread=False)
    ids = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=DEVICE)
    for local in (ids, ids, torch.where(ids < 2, ids, -1), ids):
        for layer, layer_ids in (("a", ids), ("b", local)):
            recorder.observe(layer, layer_ids, num_experts=EXPERTS, hidden=HIDDEN,
                             intermediate=INTER, dtype=torch.float16)
    recorder.close()
    assert (recorder.stats.recorded, recorder.stats.invalid) == (2, 1)
    assert [s.step for s in read_steps(tmp_path / "t.jsonl")] == [0, 2]


def test_a_failing_recorder_stops_keeps_its_ring_and_writes_its_trace_at_exit(tmp_path,
                                                                             caplog):
    """record mode: when observing a call fails the engine goes on, the recorder stops
    (no further kernels) but stays alive, since captured graphs still count into its
    ring, and closing the runtime writes the steps it read."""
    path = tmp_path / "t.jsonl"
    runtime = RampMoERuntime(RampConfig(mode="record", trace_path=str(path)))
    recorder = runtime.recorder
    recorder.start_thread = False
    truth = run_steps(runtime, steps=4, layers=2, seed=11)
    recorder.observe = lambda *a, **k: 1 / 0
    x, w13, w2, ids, weights = make_layer(3, seed=12)
    engine = Engine()
    with caplog.at_level(logging.ERROR, logger="ramp.adapters"):
        assert runtime.fused_moe(x, w13, w2, ids, weights, engine) == "engine result"
    assert engine.calls == 1 and runtime.recorder is None
    assert runtime._stopped == [recorder] and recorder._ring is not None
    assert "RaMP record stopped: ZeroDivisionError" in caplog.text
    runtime.close()
    runtime.close()
    assert recorder._ring is not None  # closed, still allocated
    steps = list(read_steps(path))
    assert steps and all(np.array_equal(s.hists, truth[s.step + 1]) for s in steps)


def test_trace_header_names_the_catalog_model():
    """A recorded shape of Qwen3-30B-A3B under TP=2 is named after the catalog model,
    with its full intermediate size; an unknown shape keeps what was seen."""
    header = trace_header(48, 128, 8, 2048, 384, torch.bfloat16, "/models/Qwen3-30B-A3B",
                          "vllm", "0.33.0")
    assert (header.model, header.layers, header.moe_intermediate, header.tp) == (
        "qwen3-30b-a3b", 48, 768, 2)
    other = trace_header(5, 16, 2, 256, 64, torch.int8, None, "", "")
    assert (other.model, other.layers, other.dtype) == ("unknown", 5, "bfloat16")
    assert other.meta["activation_dtype"] == "int8"


# --- dispatch: numerics ----------------------------------------------------------------

def dispatch_runtime(tmp_path, plan: dict[int, str] | None = None, **config
                     ) -> RampMoERuntime:
    save_profiles(tmp_path, plan=plan)
    return RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                     gpu="H100-SXM", **config), engine=ENGINE_NAME)


def test_dispatch_matches_float32_reference(tmp_path, caplog):
    """RaMP's path (on-GPU routing, two polymorphic GEMMs, top-k sum) computes the layer;
    the engine's kernel does not run."""
    runtime = dispatch_runtime(tmp_path)
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(13, seed=5)
    out = torch.full((13, HIDDEN), float("nan"), dtype=torch.float16, device=DEVICE)
    with caplog.at_level(logging.INFO, logger="ramp.adapters"):
        result = runtime.fused_moe(x, w13, w2, ids, weights, engine, out=out, scale=2.0)
    assert result is out and engine.calls == 0
    ref = 2.0 * reference(x, w13, w2, ids, weights)
    assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2
    assert "RaMP dispatch active for H100-SXM/w13-E8-N64-K64-top2-float16" in caplog.text


@pytest.mark.parametrize("path", ["triton", "triton-fused", "triton-tma", "grouped_mm",
                                  "triton-poly"])
def test_every_path_matches_float32_reference(tmp_path, path):
    """Each path a layer plan can choose computes the layer (outputs poisoned first,
    every row checked), at sizes in two buckets."""
    runtime = dispatch_runtime(tmp_path, plan={4: path, 32: path})
    for tokens, seed in ((3, 11), (29, 12)):
        engine = Engine()
        x, w13, w2, ids, weights = make_layer(tokens, seed=seed)
        out = torch.full((tokens, HIDDEN), float("nan"), dtype=torch.float16, device=DEVICE)
        assert runtime.fused_moe(x, w13, w2, ids, weights, engine, out=out) is out
        assert engine.calls == 0 and bool(torch.isfinite(out).all())
        ref = reference(x, w13, w2, ids, weights)
        assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2, (path, tokens)


def test_a_path_wrong_at_warm_up_leaves_the_shape_to_the_engine(tmp_path, monkeypatch, caplog):
    """A kernel that runs but computes a wrong layer on this machine (a compiler or
    driver bug, a missing barrier) is caught by the warm-up's float32 check: the engine's
    kernel serves the shape, and the reason is logged once."""
    import ramp.kernels.layers as layers

    real = layers.build_path

    def off_by_a_bit(name, inputs):
        path = real(name, inputs)
        return lambda *args: path(*args) * 1.05

    monkeypatch.setattr(layers, "build_path", off_by_a_bit)
    runtime = dispatch_runtime(tmp_path, plan={4: "triton", 32: "triton"})
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(3, seed=13)
    with caplog.at_level(logging.WARNING, logger="ramp.adapters"):
        assert runtime.fused_moe(x, w13, w2, ids, weights, engine) == "engine result"
        assert runtime.fused_moe(x, w13, w2, ids, weights, engine) == "engine result"
    assert engine.calls == 2
    (reason, count), = runtime.stats.fallbacks.items()
    assert "path triton at T=4 is wrong here: relative error" in reason and count == 2
    assert caplog.text.count("is wrong here") == 1


def _two_bucket_runtime(tmp_path, monkeypatch, eager_host_us=50.0, **flags):
    """A runtime over a plan of T = 4 and 32, the Triton path in both with a different
    configuration each (``eager_host_us``: its host time at 32; dearer than the engine's
    there, the eager choice at 32 is the engine's and the graph's stays Triton), and the
    sizes the float32 check ran at."""
    import ramp.kernels.layers as layers

    save_profiles(tmp_path, plan={1: "engine"})
    other = {"w13": KernelConfig("triton", 32, 32, 32).to_dict(), "w2": TRITON_CFG["w2"]}
    plan = LayerPlan("H100-SXM", MoEProblem(EXPERTS, 2 * INTER, HIDDEN, TOP_K, "float16",
                                            "w13"), f"{ENGINE_NAME} 1", (4, 32),
                     {"engine": (10.0, 10.0), "triton": (1.0, 1.0)},
                     configs={"triton": (TRITON_CFG, other)},
                     host_us={"engine": (100.0, 100.0), "triton": (50.0, eager_host_us)})
    plan.save(tmp_path / f"{plan.key}.json")
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM"), engine=ENGINE_NAME, **flags)
    checked = []
    real = layers.reference_error

    def spy(got, x, *args):
        checked.append(x.shape[0])
        return real(got, x, *args)

    monkeypatch.setattr(layers, "reference_error", spy)
    return runtime, checked


def _call(runtime, engine, tokens, seed):
    x, w13, w2, ids, weights = make_layer(tokens, seed=seed)
    out = runtime.fused_moe(x, w13, w2, ids, weights, engine)
    if tokens and out != "engine result":
        ref = reference(x, w13, w2, ids, weights)
        assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2
    return out


def test_warm_up_runs_nothing_larger_than_the_first_call(tmp_path, monkeypatch):
    """vLLM sizes its KV cache from its first (profiling) step's peak memory, when RaMP
    warms its paths up: with ``warm_up_to_first_call`` only the buckets that step's size
    can reach are checked then, none at a larger size; a larger bucket is checked on its
    first eager call, at that call's size; inside a CUDA-graph capture an unchecked
    bucket takes the engine's kernel for that call only (and is not counted as RaMP's)."""
    import ramp.adapters.runtime as rt

    runtime, checked = _two_bucket_runtime(tmp_path, monkeypatch, warm_up_to_first_call=True)
    engine = Engine()
    _call(runtime, engine, 3, 31)
    assert checked == [3]  # bucket 4 at the call's own 3 tokens; bucket 32 not yet
    monkeypatch.setattr(rt, "capturing_graph", lambda tensor: True)
    assert _call(runtime, engine, 20, 32) == "engine result" and engine.calls == 1
    assert checked == [3] and any("not warmed up" in r for r in runtime.stats.fallbacks)
    assert not runtime.stats.captured  # the graph kept the engine kernel
    monkeypatch.setattr(rt, "capturing_graph", lambda tensor: False)
    _call(runtime, engine, 20, 33)
    _call(runtime, engine, 29, 34)
    assert checked == [3, 20] and engine.calls == 1  # checked once, at its first size


def test_warm_up_checks_the_graph_path_an_eager_call_primes(tmp_path, monkeypatch):
    """An eager call whose own path is the engine's (its host time is dearer) still runs
    the graph's path once before that size's capture (``_prime``): it is checked first.
    A first call of no tokens checks at one token, never at none."""
    runtime, checked = _two_bucket_runtime(tmp_path, monkeypatch, eager_host_us=500.0,
                                           warm_up_to_first_call=True)
    engine = Engine()
    _call(runtime, engine, 0, 40)
    assert checked == [1]
    assert _call(runtime, engine, 20, 41) == "engine result"  # eager: the engine's path
    assert checked == [1, 20]  # the Triton configuration of bucket 32, which it primed


def test_warm_up_checks_every_bucket_at_start_up_by_default(tmp_path, monkeypatch):
    """Without ``warm_up_to_first_call`` (SGLang sizes its KV cache before any step) the
    first call checks every bucket at its measured size, and nothing later."""
    runtime, checked = _two_bucket_runtime(tmp_path, monkeypatch)
    engine = Engine()
    _call(runtime, engine, 3, 42)
    assert checked == [4, 32]
    _call(runtime, engine, 20, 43)
    assert checked == [4, 32] and engine.calls == 0


@pytest.mark.parametrize("path", ["triton", "triton-fused", "triton-tma", "grouped_mm",
                                  "triton-poly"])
def test_expert_parallel_layer_computes_the_local_share(tmp_path, path):
    """EP=2 as vLLM calls it: 16 global experts, this rank holds 4..11 as local 0..7,
    ids are global and the expert map sends the other ranks' experts to -1. The result is
    the local experts' weighted share only (the engine sums the ranks), and the plan is
    the EP=2 one."""
    save_profiles(tmp_path, plan={1: "engine"})  # the EP=1 plan would give the engine
    save_plan(tmp_path, {4: path, 32: path}, ep=2)
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM"), engine=ENGINE_NAME)
    expert_map = torch.full((2 * EXPERTS,), -1, dtype=torch.int32)
    expert_map[4:12] = torch.arange(EXPERTS, dtype=torch.int32)
    expert_map = expert_map.to(DEVICE)
    for tokens, seed in ((3, 21), (29, 22)):
        x, w13, w2, _, _ = make_layer(tokens, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        weights, ids = torch.topk(torch.rand(tokens, 2 * EXPERTS, generator=gen), TOP_K)
        ids, weights = ids.to(torch.int32).to(DEVICE), weights.to(DEVICE)
        out = torch.full((tokens, HIDDEN), float("nan"), dtype=torch.float16, device=DEVICE)
        engine = Engine()
        assert runtime.fused_moe(x, w13, w2, ids, weights, engine, out=out,
                                 global_num_experts=2 * EXPERTS, expert_map=expert_map) is out
        assert engine.calls == 0
        local = expert_map[ids.long()]
        ref = reference(x, w13, w2, local.clamp(min=0), weights * (local >= 0))
        assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2, (path, tokens)


def test_plan_hands_slower_buckets_to_the_engine(tmp_path):
    """The guard: where the plan measured no RaMP path faster, the engine runs; the
    stats count eager calls per path and are written to RAMP_STATS."""
    stats = tmp_path / "stats.{pid}.json"
    runtime = dispatch_runtime(tmp_path, plan={4: "engine", 16: "triton-poly", 64: "engine"},
                               stats_path=str(stats))
    engine = Engine()
    for tokens in (2, 4, 9, 16, 40, 200):  # buckets 4, 4, 16, 16, 64, beyond 64
        x, w13, w2, ids, weights = make_layer(tokens, seed=tokens)
        runtime.fused_moe(x, w13, w2, ids, weights, engine)
    assert engine.calls == 4
    runtime.close()
    written = json.loads(Path(str(stats).format(pid=os.getpid())).read_text())
    assert written["eager"] == {"H100-SXM/w13-E8-N64-K64-top2-float16":
                                {"engine": 4, "triton-poly": 2}}
    assert written["captured"] == {} and written["fallbacks"] == {}
    # which plan served (a results file says so), and no eager graphs without the flag
    served = written["plans"]["H100-SXM/w13-E8-N64-K64-top2-float16"]
    assert served["plan"] == "H100-SXM_w13-E8-N64-K64-top2-float16_layer"
    assert served["eager_graphs"] is False and written["eager_graphs"] == {}
    # the first call's size, and the warm-up's rise of the peak memory (none off a GPU)
    assert served["warm_up_tokens"] == 2 and served["warm_up_peak_rise_mib"] == 0


def test_layer_plan_choice_and_round_trip(tmp_path):
    plan = save_plan(tmp_path, {1: "engine", 8: "triton", 512: "grouped_mm"})
    assert [plan.choose(t) for t in (1, 2, 8, 9, 512, 4096)] == [
        "engine", "triton", "triton", "grouped_mm", "grouped_mm", "grouped_mm"]
    again = LayerPlan.from_dict(json.loads((tmp_path / f"{plan.key}.json").read_text()), "x")
    assert again == plan and again.choices == plan.choices
    close = LayerPlan(plan.gpu, plan.problem, "e", (1,), {"engine": (10.0,), "triton": (9.9,)},
                      configs={"triton": (TRITON_CFG,)})
    assert close.choices == ("engine",)  # 1% faster is within the 2% margin: not taken
    with pytest.raises(InputError, match="no 'engine' path"):
        LayerPlan(plan.gpu, plan.problem, "e", (1,), {"triton": (1.0,)})
    with pytest.raises(InputError, match="ascending"):
        LayerPlan(plan.gpu, plan.problem, "e", (8, 1), {"engine": (1.0, 1.0)})
    with pytest.raises(InputError, match="must name the engine"):
        LayerPlan(plan.gpu, plan.problem, " ", (1,), {"engine": (1.0,)})


def test_eager_calls_take_a_path_only_where_it_costs_the_host_no_more(tmp_path):
    """An eager call pays its launches on the host, and vLLM's eager prefill steps are
    host-bound: there the plan takes the fastest GPU-side path whose measured host time
    is at most the engine's (the next fastest if the fastest's is dearer), and the
    engine wherever host times are missing. Calls in CUDA graphs take ``choices``."""
    plan = save_plan(tmp_path, {1: "engine"})
    times = {"engine": (10.0, 10.0, 10.0), "triton": (8.0, 8.0, 8.0),
             "triton-tma": (7.0, 7.0, 7.0)}
    host = {"engine": (100.0, 100.0, 100.0), "triton": (90.0, 120.0, 100.0),
            "triton-tma": (95.0, 130.0, None)}
    guarded = LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024), times, host_us=host)
    assert guarded.choices == ("triton-tma",) * 3
    assert guarded.eager_choices == ("triton-tma", "engine", "triton")
    assert [guarded.choose(t, eager=True) for t in (1, 8, 9, 5000)] == [
        "triton-tma", "engine", "triton", "triton"]
    assert guarded.paths_used() == {"triton-tma", "triton", "engine"}
    again = LayerPlan.from_dict(json.loads(json.dumps(guarded.to_dict())), "x")
    assert again == guarded and again.eager_choices == guarded.eager_choices
    assert guarded.without({"triton-tma"}).eager_choices == ("triton", "engine", "triton")
    unmeasured = LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024), times)
    assert unmeasured.eager_choices == ("engine",) * 3
    assert unmeasured.choices == guarded.choices
    with pytest.raises(InputError, match=r"host_us\['cute'\] is not a path"):
        LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024), times,
                  host_us={"cute": (1.0, 1.0, 1.0)})
    with pytest.raises(InputError, match=r"host_us\['triton'\] has 1 values"):
        LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024), times,
                  host_us={"triton": (1.0,)})


def test_a_plan_takes_remeasured_sizes_and_keeps_the_others(tmp_path):
    """Re-measuring the prefill sizes of a plan (a new path there) replaces those sizes'
    measurements; the first re-measured size, whose bucket start the new run could not
    time, keeps the plan's own (its start's check is not lost); a path only the new
    sizes timed is null elsewhere; a plan of another layer, routings or sizes is refused."""
    plan = save_plan(tmp_path, {1: "engine"})
    by = {"uniform": {"engine": (10.0, 10.0, 10.0, 10.0), "triton": (8.0, 8.0, 9.0, 9.9)}}
    starts = {"uniform": {"engine": (None, None, 10.0, 10.0), "triton": (None, None, 12.0, 9.0)}}
    base = LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024, 2048), by["uniform"],
                     configs={"triton": (TRITON_CFG,) * 4}, times_us_by_routing=by,
                     interval_starts=(None, None, 9, 1025),
                     interval_start_times_us_by_routing=starts,
                     host_us={"engine": (90.0,) * 4, "triton": (50.0,) * 4},
                     provenance={"command": "first"})
    assert base.choices == ("triton", "triton", "engine", "engine")  # 1024 loses at 9
    new_by = {"uniform": {"engine": (10.5, 10.0), "triton": (9.0, 9.5),
                          "grouped_mm": (9.5, 7.0)}}
    new = LayerPlan(plan.gpu, plan.problem, "e", (1024, 2048), new_by["uniform"],
                    times_us_by_routing=new_by, interval_starts=(None, 1025),
                    interval_start_times_us_by_routing={"uniform": {
                        "engine": (None, 10.0), "grouped_mm": (None, 8.0)}},
                    configs={"triton": (TRITON_CFG, TRITON_CFG)},
                    host_us={"engine": (95.0, 95.0), "triton": (52.0, 52.0),
                             "grouped_mm": (60.0, 60.0)}, provenance={"command": "second"})
    merged = base.with_remeasured(new)
    assert merged.tokens == base.tokens
    assert merged.times_us["engine"] == (10.0, 10.0, 10.0, 10.0)
    assert merged.times_us["grouped_mm"] == (None, None, None, 7.0)
    assert merged.host_us["grouped_mm"] == (None, None, None, 60.0)
    assert merged.times_us_by_routing["uniform"]["triton"] == (8.0, 8.0, 9.0, 9.5)
    assert set(merged.configs) == {"triton"}
    assert merged.interval_starts == (None, None, 9, 1025)
    assert merged.interval_start_times_us_by_routing["uniform"]["triton"] == (
        None, None, 12.0, None)
    assert merged.choices == ("triton", "triton", "engine", "grouped_mm")
    assert merged.provenance["command"] == "first"
    assert merged.provenance["remeasured"] == [{"tokens": [2048], "command": "second"}]
    again = LayerPlan.from_dict(json.loads(json.dumps(merged.to_dict())), "x")
    assert again == merged
    with pytest.raises(InputError, match="sizes \\[4096\\] are not among"):
        base.with_remeasured(LayerPlan(plan.gpu, plan.problem, "e", (4096,),
                                       {"engine": (1.0,)},
                                       times_us_by_routing={"uniform": {"engine": (1.0,)}}))
    with pytest.raises(InputError, match="skip some of its sizes"):
        base.with_remeasured(LayerPlan(plan.gpu, plan.problem, "e", (8, 2048),
                                       {"engine": (1.0, 1.0)}, times_us_by_routing={
                                           "uniform": {"engine": (1.0, 1.0)}}))
    with pytest.raises(InputError, match="routings"):
        base.with_remeasured(LayerPlan(plan.gpu, plan.problem, "e", (1024,),
                                       {"engine": (1.0,)}))
    with pytest.raises(InputError, match="another engine"):
        base.with_remeasured(LayerPlan(plan.gpu, plan.problem, "other", (1024,),
                                       {"engine": (1.0,)}, times_us_by_routing={
                                           "uniform": {"engine": (1.0,)}}))
    # the plan tool refuses these before it spends GPU time on them
    base.check_remeasure((1024, 2048), ("uniform",), False)
    for tokens, routings, eager, match in (((8, 2048), ("uniform",), False, "consecutive"),
                                           ((4096,), ("uniform",), False, "consecutive"),
                                           ((1024,), ("zipf:s=1.2",), False, "--routings"),
                                           ((1024,), ("uniform",), True, "--eager-graphs")):
        with pytest.raises(InputError, match=match):
            base.check_remeasure(tokens, routings, eager)


def test_host_samples_hold_fewer_calls_where_the_gpu_would_keep_the_host_waiting():
    from ramp.adapters.plan import HOST_CALLS, HOST_GPU_BUDGET_US, host_calls

    assert host_calls(None) == HOST_CALLS == host_calls(10.0)
    assert host_calls(HOST_GPU_BUDGET_US / 5) == 5
    assert host_calls(1e9) == 3  # at least three calls a sample


def test_an_eager_path_dearer_on_the_host_must_be_gpu_bound_and_save_more(tmp_path):
    """A path that adds host time still takes an eager size where its layer keeps the
    GPU busier than the host and saves more GPU time than it adds (a large prefill
    step on big experts), not where the saving is smaller or the layer host-bound."""
    plan = save_plan(tmp_path, {1: "engine"})
    times = {"engine": (2000.0, 1000.0, 500.0), "triton-tma": (1500.0, 950.0, 300.0)}
    host = {"engine": (800.0, 800.0, 400.0), "triton-tma": (900.0, 900.0, 450.0)}
    guarded = LayerPlan(plan.gpu, plan.problem, "e", (1024, 2048, 4096), times, host_us=host)
    assert guarded.choices == ("triton-tma",) * 3
    # saves 500 us for 100 more of host; saves 50 for 100; host-bound (300 < 450)
    assert guarded.eager_choices == ("triton-tma", "engine", "engine")


def timed_plan_runtime(tmp_path, times: dict[str, tuple[float, float]],
                       host_us: dict[str, tuple[float, float]] | None = None):
    """A dispatch runtime over the tiny layer's profiles and a plan of T = 4 and 32 with
    these times (``host_us``: host times per eager call), the Triton configuration
    recorded for every RaMP path."""
    save_profiles(tmp_path, plan={1: "engine"})
    plan = LayerPlan("H100-SXM", MoEProblem(EXPERTS, 2 * INTER, HIDDEN, TOP_K, "float16",
                                            "w13"),
                     f"{ENGINE_NAME} 1", (4, 32), times,
                     configs={p: (TRITON_CFG, TRITON_CFG) for p in times if p != "engine"},
                     host_us=host_us or {})
    plan.save(tmp_path / f"{plan.key}.json")
    return plan, RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                           gpu="H100-SXM"), engine=ENGINE_NAME)


def test_an_eager_call_without_host_times_runs_the_engine(tmp_path):
    """The runtime passes an eager call (no CUDA-graph capture: every call on the CPU)
    to the engine where its plan measured no host times, and counts it there."""
    _, runtime = timed_plan_runtime(tmp_path, {"engine": (10.0, 10.0), "triton": (1.0, 1.0)})
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(3, seed=5)
    assert runtime.fused_moe(x, w13, w2, ids, weights, engine) == "engine result"
    assert engine.calls == 1
    key = "H100-SXM/w13-E8-N64-K64-top2-float16"
    assert runtime.stats.eager == {(key, "engine"): 1}
    # a CUDA graph of this size would run triton: it ran once, eagerly, to compile
    # everything before a capture; once per size
    layer, = [v for v in runtime._layers.values() if not isinstance(v, str)]
    assert layer.primed == {("triton", 3)}
    runtime.fused_moe(x, w13, w2, ids, weights, engine)
    x20, w13, w2, ids20, weights20 = make_layer(20, seed=6)
    runtime.fused_moe(x20, w13, w2, ids20, weights20, engine)
    assert layer.primed == {("triton", 3), ("triton", 20)} and engine.calls == 3


def served_once(tmp_path, seed: int):
    """A dispatch runtime over ``tmp_path``'s profiles and plan, one 3-token call that
    RaMP serves (checked against float32), and the layer it built."""
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM"), engine=ENGINE_NAME)
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(3, seed=seed)
    out = runtime.fused_moe(x, w13, w2, ids, weights, engine)
    ref = reference(x, w13, w2, ids, weights)
    assert engine.calls == 0 and float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2
    layer, = [v for v in runtime._layers.values() if not isinstance(v, str)]
    return runtime, layer


def test_an_eager_call_on_another_path_primes_the_graphs_path(tmp_path):
    """Where the eager choice (cheapest on the host) is another RaMP path than a CUDA
    graph of the size would run, the eager call runs its own path and primes the
    graph's once."""
    plan, _ = timed_plan_runtime(
        tmp_path, {"engine": (10.0, 10.0), "triton": (1.0, 1.0), "triton-fused": (2.0, 2.0)},
        host_us={"engine": (100.0, 100.0), "triton": (200.0, 200.0),
                 "triton-fused": (50.0, 50.0)})
    assert plan.choices == ("triton", "triton") and plan.eager_choices == ("triton-fused",) * 2
    runtime, layer = served_once(tmp_path, seed=9)
    assert layer.primed == {("triton", 3)}
    assert runtime.stats.eager == {("H100-SXM/w13-E8-N64-K64-top2-float16", "triton-fused"): 1}


def test_an_engine_capturing_largest_first_primes_no_size_above_its_graphs(tmp_path,
                                                                           monkeypatch):
    """vLLM captures its graphs once, the largest size first: after its first capture no
    graph is ever made of a larger size, so larger eager calls (chunked-prefill steps of
    every size up to the token budget) do not run the graph's path a second time."""
    import ramp.adapters.runtime as rt

    timed_plan_runtime(
        tmp_path, {"engine": (10.0, 10.0), "triton": (1.0, 1.0), "triton-fused": (2.0, 2.0)},
        host_us={"engine": (100.0, 100.0), "triton": (200.0, 200.0),
                 "triton-fused": (50.0, 50.0)})
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM"), engine=ENGINE_NAME,
                             captures_largest_first=True)
    engine = Engine()
    for tokens, capturing in ((20, False), (8, True), (12, False), (6, False)):
        monkeypatch.setattr(rt, "capturing_graph", lambda tensor, c=capturing: c)
        _call(runtime, engine, tokens, tokens)
    layer, = [v for v in runtime._layers.values() if not isinstance(v, str)]
    # 20 before any capture (vLLM's warm-up of its largest graph); 12 > 8 never again
    assert layer.primed == {("triton", 20), ("triton", 6)} and engine.calls == 0


def test_a_path_failing_when_primed_leaves_the_shape_to_the_engine(tmp_path, caplog):
    """The eager run that compiles a graph size's path fails: the engine serves this
    and every later call of the shape, and the reason is logged once."""
    _, runtime = timed_plan_runtime(tmp_path, {"engine": (10.0, 10.0), "triton": (1.0, 1.0)})
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(3, seed=7)
    runtime.fused_moe(x, w13, w2, ids, weights, engine)  # builds the layer (and primes 3)
    layer, = [v for v in runtime._layers.values() if not isinstance(v, str)]

    def broken(*args):
        raise RuntimeError("no compiler here")

    layer.paths["triton"] = broken
    x9, w13, w2, ids9, weights9 = make_layer(9, seed=8)
    with caplog.at_level(logging.WARNING, logger="ramp.adapters"):
        for _ in range(2):
            assert runtime.fused_moe(x9, w13, w2, ids9, weights9, engine) == "engine result"
    assert engine.calls == 3
    assert caplog.text.count("failed at T=9 before its CUDA graph") == 1


def test_a_path_must_win_under_every_routing(tmp_path):
    """The host never knows a call's routing: a path 10% faster on average but slower
    under one measured routing is not taken (Mixtral at T=256 on the H200: RaMP's Triton
    path 18% faster under Zipf routing, 1% slower under uniform)."""
    plan = save_plan(tmp_path, {1: "engine"})
    by_routing = {"uniform": {"engine": (10.0, 10.0), "triton": (10.1, 9.0)},
                  "zipf:s=1.2": {"engine": (12.0, 12.0), "triton": (9.0, 10.0)}}
    guarded = LayerPlan(plan.gpu, plan.problem, "e", (1, 8),
                        {"engine": (10.95, 10.95), "triton": (9.53, 9.49)},
                        times_us_by_routing=by_routing)
    assert guarded.choices == ("engine", "triton")
    again = LayerPlan.from_dict(json.loads(json.dumps(guarded.to_dict())), "x")
    assert again == guarded and again.choices == guarded.choices
    with pytest.raises(InputError, match="times_us_by_routing"):
        LayerPlan(plan.gpu, plan.problem, "e", (1, 8), {"engine": (1.0, 1.0)},
                  times_us_by_routing={"uniform": {"engine": (1.0,)}})


def test_a_path_must_win_at_its_buckets_smallest_size_too(tmp_path):
    """A bucket's configuration runs from just above the previous plan size: where the
    plan timed that size too, a path that wins at the plan size but loses there is not
    taken (a tile chosen at 1,024 tokens is at its worst at 769)."""
    from ramp.adapters.plan import interval_starts

    plan = save_plan(tmp_path, {1: "engine"})
    times = {"engine": (10.0, 10.0, 10.0), "triton": (9.0, 9.0, 9.0)}
    starts = {"uniform": {"engine": (None, 8.0, 8.0), "triton": (None, 7.0, 8.5)}}
    guarded = LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024), times,
                        times_us_by_routing={"uniform": times}, interval_starts=(None, 5, 769),
                        interval_start_times_us_by_routing=starts)
    assert guarded.choices == ("triton", "triton", "engine")
    again = LayerPlan.from_dict(json.loads(json.dumps(guarded.to_dict())), "x")
    assert again == guarded and again.choices == guarded.choices
    assert guarded.without({"triton"}).interval_start_times_us_by_routing == {
        "uniform": {"engine": (None, 8.0, 8.0)}}
    with pytest.raises(InputError, match=r"interval_starts\[2\] = 1024 is not between"):
        LayerPlan(plan.gpu, plan.problem, "e", (1, 8, 1024), times,
                  interval_starts=(None, 5, 1024))
    # vLLM's graph sizes inside its CUDA graphs (up to 512), any size beyond
    assert interval_starts((1, 2, 8, 48, 192, 256, 320, 512, 768, 1024)) == (
        None, None, 4, 16, 56, 200, 272, 336, 513, 769)


def test_a_plan_without_a_path_gives_its_sizes_to_the_next_measured_one(tmp_path):
    """A runtime without the CuTe DSL drops the cute path: where triton is next and beats
    the engine by the margin it inherits the size, elsewhere the engine does."""
    plan = save_plan(tmp_path, {1: "engine"})
    full = LayerPlan(plan.gpu, plan.problem, "e", (1, 8),
                     {"engine": (10.0, 10.0), "triton": (9.0, 9.9), "cute": (8.0, 8.0)},
                     configs={"triton": (TRITON_CFG, TRITON_CFG), "cute": (CUTE_CFG, CUTE_CFG)},
                     times_us_by_routing={"uniform": {"engine": (10.0, 10.0),
                                                      "cute": (8.0, 8.0)}})
    assert full.choices == ("cute", "cute")
    less = full.without({"cute"})
    assert less.choices == ("triton", "engine") and "cute" not in less.configs
    assert less.times_us_by_routing == {"uniform": {"engine": (10.0, 10.0)}}
    assert full.choices == ("cute", "cute")  # the original is unchanged
    with pytest.raises(InputError, match="cannot be dropped"):
        full.without({"engine"})


def test_the_plan_offers_the_neighbouring_sizes_configurations():
    from ramp.adapters.plan import best_candidate, guard_passes, neighbour_configs

    table = {1: "a", 2: "a", 4: "b", 8: "c"}  # the static tables' choice per size
    tokens = (1, 2, 4, 8)
    assert neighbour_configs(table.get, tokens, 0) == ["a"]       # its neighbour is the same
    assert neighbour_configs(table.get, tokens, 1) == ["a", "b"]
    assert neighbour_configs(table.get, tokens, 2) == ["b", "a", "c"]
    assert neighbour_configs(table.get, tokens, 3) == ["c", "b"]
    own = {"uniform": [10.0, 11.0, 10.5], "zipf": [12.0, 12.0, 12.0]}
    faster = {"uniform": [9.0, 9.5, 9.0], "zipf": [11.0, 11.5, 11.0]}
    mixed = {"uniform": [8.0, 8.0, 8.0], "zipf": [20.0, 20.0, 20.0]}  # geomean 12.6: worse
    failed = {"uniform": [], "zipf": [1.0]}                            # no rounds somewhere
    assert best_candidate([own, mixed, faster, failed], range(4)) == 2
    assert best_candidate([own, mixed, faster], [0, 1]) == 0   # only those the guard passed
    engine = {"uniform": [10.0, 10.0, 10.0], "zipf": [12.5, 12.5, 12.5]}
    assert guard_passes(engine, faster)                        # 9.0 < 9.8 and 11.0 < 12.25
    assert not guard_passes(engine, own)                       # 10.5 is not below 9.8
    assert not guard_passes(engine, failed)


def rederive_cli(details: Path, out: Path) -> subprocess.CompletedProcess:
    """``python -m ramp.adapters.plan --from-details DETAILS --out OUT``."""
    return subprocess.run([sys.executable, "-m", "ramp.adapters.plan", "--from-details",
                           str(details), "--out", str(out)], capture_output=True, text=True)


def test_plans_rederive_from_their_details_without_a_gpu(tmp_path):
    """``--from-details``: the per-round timings of a details file give the plan under
    the current rule; a file that is not one is a one-line error with exit status 2."""
    plan = save_plan(tmp_path, {1: "engine"})
    rounds = {"engine": {"uniform": [[10.0, 10.2, 9.9]], "zipf": [[10.0, 10.1, 10.0]]},
              "triton": {"uniform": [[10.3, 10.4, 10.3]], "zipf": [[8.0, 8.1, 7.9]]}}
    details = tmp_path / "d.json"
    details.write_text(json.dumps({"times_us": rounds, "plan": {
        **plan.to_dict(), "times_us": {"engine": [10.0], "triton": [9.0]}}}))
    out = tmp_path / "plans"
    res = rederive_cli(details, out)
    assert res.returncode == 0, res.stderr
    (written,) = out.glob("*.json")
    again = load_layer_plan(written)
    assert again.choices == ("engine",)  # faster on average, slower under uniform
    assert again.times_us_by_routing["uniform"]["triton"] == (10.3,)
    assert json.loads(details.read_text())["plan"]["choices"] == ["engine"]
    details.write_text("{}")
    res = rederive_cli(details, out)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "field 'times_us' missing" in res.stderr and str(details) in res.stderr


def test_plans_rederive_their_interval_starts_too(tmp_path):
    plan = save_plan(tmp_path, {1: "engine", 8: "engine"})
    rounds = {"engine": {"uniform": [[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]},
              "triton": {"uniform": [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]}}
    at_start = {"engine": {"uniform": [[], [8.0, 8.1, 7.9]]},
                "triton": {"uniform": [[], [8.4, 8.5, 8.6]]}}  # loses at T=5
    details = tmp_path / "d.json"
    details.write_text(json.dumps({"times_us": rounds, "interval_start_times_us": at_start,
                                   "plan": {**plan.to_dict(), "interval_starts": [None, 5]}}))
    out = tmp_path / "plans"
    res = rederive_cli(details, out)
    assert res.returncode == 0, res.stderr
    (written,) = out.glob("*.json")
    again = load_layer_plan(written)
    assert again.choices == ("triton", "engine")
    assert again.interval_start_times_us_by_routing["uniform"]["triton"] == (None, 8.5)


def test_vllm_hook_runs_ramp_or_the_original(tmp_path):
    """The wrapper around TritonExperts.apply: RaMP writes `output` and the hook returns
    None as vLLM's apply does; a call RaMP does not run goes to the original."""

    class TritonExperts:  # vLLM's signature (0.33.0), the engine's body replaced
        def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation,
                  global_num_experts, expert_map, a1q_scale, a2_scale, workspace13,
                  workspace2, expert_tokens_meta, apply_router_weight_on_input):
            output.fill_(7.0)

    runtime = dispatch_runtime(tmp_path)
    apply = vllm_adapter._wrap(TritonExperts, TritonExperts.apply, runtime)
    x, w13, w2, ids, weights = make_layer(9, seed=6)
    call = dict(hidden_states=x, w1=w13, w2=w2, topk_weights=weights, topk_ids=ids,
                activation="silu", global_num_experts=-1, expert_map=None, a1q_scale=None,
                a2_scale=None, workspace13=None, workspace2=None, expert_tokens_meta=None,
                apply_router_weight_on_input=False)
    out = torch.zeros(9, HIDDEN, dtype=torch.float16, device=DEVICE)
    assert apply(TritonExperts(), output=out, **call) is None
    ref = reference(x, w13, w2, ids, weights)
    assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2
    call["activation"] = "gelu"
    assert apply(TritonExperts(), out, *call.values()) is None  # positional binding too
    assert torch.all(out == 7.0)
    # a call RaMP cannot read (an activation of a type it cannot compare): vLLM's runs

    class Activation:
        def __ne__(self, other):
            raise RuntimeError("not comparable")

    out.zero_()
    call["activation"] = Activation()
    assert apply(TritonExperts(), output=out, **call) is None
    assert torch.all(out == 7.0)
    assert any("call not understood" in r for r in runtime.stats.fallbacks)


def test_sglang_hook_runs_ramp_in_place(tmp_path):
    """The wrapper around SGLang's fused_experts: in-place runner configs get the result
    in hidden_states, routed scaling applied; a quantized call goes to the original."""
    from collections import namedtuple
    from dataclasses import dataclass

    TopK = namedtuple("StandardTopKOutput", "topk_weights topk_ids router_logits")

    @dataclass
    class MoeRunnerConfig:  # the fields SGLang 0.5.23 has that the adapter reads
        num_experts: int = EXPERTS
        num_local_experts: int = EXPERTS
        layer_id: int = 0
        activation: str = "silu"
        is_gated: bool = True
        inplace: bool = True
        routed_scaling_factor: float | None = 0.5

    def fused_experts(hidden_states, w1, w2, topk_output, moe_runner_config, b1=None,
                      b2=None, use_fp8_w8a8=False, w1_scale=None, a1_q=None):
        return "original"

    runtime = dispatch_runtime(tmp_path)
    wrapped = sglang_adapter._wrap(fused_experts, runtime)
    x, w13, w2, ids, weights = make_layer(11, seed=7)
    ref = 0.5 * reference(x, w13, w2, ids, weights)
    result = wrapped(x, w13, w2, TopK(weights, ids, None), MoeRunnerConfig())
    assert result is x
    assert float((x.float().cpu() - ref).norm() / ref.norm()) < 1e-2
    assert wrapped(x, w13, w2, TopK(weights, ids, None), MoeRunnerConfig(),
                   use_fp8_w8a8=True) == "original"
    assert wrapped(x, w13, w2, TopK(weights, ids, None),
                   MoeRunnerConfig(num_local_experts=4)) == "original"


# --- dispatch: every failure falls back, logged once -----------------------------------

def fallbacks(runtime, caplog, tokens=5, **changes):
    """Call twice; return how often the engine ran and the fallback log lines."""
    x, w13, w2, ids, weights = make_layer(tokens, seed=8)
    args = dict(hidden_states=x, w13=w13, w2=w2, topk_ids=ids, topk_weights=weights)
    kwargs = {k: changes.pop(k) for k in ("unsupported", "global_num_experts")
              if k in changes}
    args.update(changes)
    engine = Engine()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ramp.adapters"):
        for _ in range(2):
            assert runtime.fused_moe(fallback=engine, **args, **kwargs) == "engine result"
    return engine.calls, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("changes,reason", [
    (dict(unsupported="vLLM quantized weights"), "vLLM quantized weights"),
    (dict(hidden_states=torch.zeros(5, HIDDEN, device=DEVICE)),
     "activation dtype torch.float32"),
    (dict(w13=torch.zeros(EXPERTS, 2 * INTER, HIDDEN, dtype=torch.int8, device=DEVICE)),
     "quantized or mixed-dtype weights"),
    (dict(w2=torch.zeros(EXPERTS, HIDDEN, INTER + 1, dtype=torch.float16, device=DEVICE)),
     "are not a gated MoE layer"),
    (dict(global_num_experts=4 * EXPERTS),
     "expert parallelism (8 local of 32 experts) without an expert map"),
])
def test_unsupported_calls_fall_back_once(tmp_path, caplog, changes, reason):
    calls, lines = fallbacks(dispatch_runtime(tmp_path), caplog, **changes)
    assert calls == 2
    assert len(lines) == 1 and reason in lines[0]


def test_missing_profile_gpu_and_directory_fall_back(tmp_path, caplog):
    runtime = RampMoERuntime(RampConfig(mode="dispatch", gpu="H100-SXM"), engine="vllm")
    _, lines = fallbacks(runtime, caplog)
    assert len(lines) == 1 and lines[0].startswith(
        "RaMP falls back to the engine kernel: no layer plan for H100-SXM "
        "w13-E8-N64-K64-top2-float16 under vllm embedded")
    assert "python -m ramp.adapters.plan --model" in lines[0]
    save_plan(tmp_path, {1: "triton-poly"})  # a plan, but no sync-free profile
    runtime = RampMoERuntime(RampConfig(mode="dispatch", gpu="H100-SXM",
                                        profile_dir=str(tmp_path)), engine=ENGINE_NAME)
    _, lines = fallbacks(runtime, caplog)
    assert lines == [f"RaMP falls back to the engine kernel: no triton-poly profile for "
                     f"H100-SXM w13-E8-N64-K64-top2-float16 embedded or in {tmp_path}: run "
                     "`ramp profile` for this GPU and shape"]
    _, lines = fallbacks(RampMoERuntime(RampConfig(mode="dispatch")), caplog)
    detected = "no CUDA GPU for tensors on cpu" if DEVICE == "cpu" else "profile for"
    assert len(lines) == 1 and detected in lines[0]
    runtime = RampMoERuntime(RampConfig(mode="dispatch", gpu="H100-SXM",
                                        profile_dir=str(tmp_path / "absent")))
    _, lines = fallbacks(runtime, caplog)
    assert len(lines) == 1 and "does not exist" in lines[0]


def test_bad_files_in_profile_dir_are_skipped_once_not_fatal(tmp_path, caplog):
    """One bad *.json beside the good profiles (not UTF-8, a TypeError-shaped field,
    broken JSON) is skipped with one warning each; dispatch still runs every shape."""
    save_profiles(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'{"schema": "caf\xe9"}')
    good = json.loads(next(tmp_path.glob("*_w13-*_poly.json")).read_text())
    (tmp_path / "provenance.json").write_text(json.dumps({**good, "provenance": [1]}))
    (tmp_path / "broken.json").write_text("{")
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM"), engine=ENGINE_NAME)
    x, w13, w2, ids, weights = make_layer(5, seed=8)
    engine = Engine()
    with caplog.at_level(logging.WARNING, logger="ramp.adapters"):
        for _ in range(2):
            runtime.fused_moe(x, w13, w2, ids, weights, engine)
    assert engine.calls == 0
    skipped = sorted(r.getMessage().split(" in the profile")[0] for r in caplog.records)
    assert skipped == [f"RaMP skips {tmp_path / n}" for n in
                       ("broken.json", "latin1.json", "provenance.json")]


def test_stale_profile_and_import_error_fall_back(tmp_path, caplog, monkeypatch):
    save_profiles(tmp_path, family_version="0")
    runtime = RampMoERuntime(RampConfig(mode="dispatch", gpu="H100-SXM",
                                        profile_dir=str(tmp_path)), engine=ENGINE_NAME)
    _, lines = fallbacks(runtime, caplog)
    assert len(lines) == 1 and "kernel family version 0" in lines[0]
    monkeypatch.setitem(sys.modules, "ramp.kernels.layers", None)  # as if no kernels
    (tmp_path / "ok").mkdir()
    _, lines = fallbacks(dispatch_runtime(tmp_path / "ok"), caplog)
    assert len(lines) == 1 and "RaMP setup failed (ModuleNotFoundError" in lines[0]


@pytest.fixture
def no_cutlass(monkeypatch):
    """This process as if nvidia-cutlass-dsl were not installed (as on CI)."""
    monkeypatch.setitem(sys.modules, "cutlass", None)
    for name in ("ramp.kernels.cute.launch", "ramp.kernels.cute.moe_gemm"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_layer_paths_are_the_plans_paths_and_say_what_they_miss(no_cutlass):
    """One table of layer paths: exactly the RaMP paths a layer plan may name; a path
    whose inputs are absent says which, and an unknown name lists the known ones.
    Importing the table needs no CuTe DSL; building the cute path without it says so."""
    from ramp.kernels.layers import LAYER_PATHS, PathInputs, PathUnavailable, build_path
    from ramp.layerplan import ENGINE, PATHS

    assert set(LAYER_PATHS) == set(PATHS) - {ENGINE}
    bare = PathInputs(num_sms=None)
    assert callable(build_path("grouped_mm", bare))
    with pytest.raises(PathUnavailable, match="triton-poly profiles"):
        build_path("triton-poly", bare)
    for name, family in (("triton", "triton"), ("triton-fused", "triton"),
                         ("triton-tma", "triton"), ("cute", "cute")):
        with pytest.raises(PathUnavailable, match=f"no {family} configurations"):
            build_path(name, bare)
    configured = PathInputs(num_sms=132, configs=lambda path: lambda tokens: None)
    with pytest.raises(PathUnavailable, match="needs nvidia-cutlass-dsl, which does not "
                                              "import here"):
        build_path("cute", configured)
    with pytest.raises(PathUnavailable, match="known: triton"):
        build_path("cutlass", bare)


def test_cute_path_needs_a_gpu():
    """With the DSL but no device (it has no interpreter) the cute path is unavailable."""
    pytest.importorskip("cutlass")
    if DEVICE == "cuda":
        pytest.skip("a GPU is visible")
    from ramp.kernels.layers import PathInputs, PathUnavailable, build_path

    with pytest.raises(PathUnavailable, match="CUDA GPU only"):
        build_path("cute", PathInputs(num_sms=None, configs=lambda path: lambda t: None))


def test_plan_choosing_cute_without_the_dsl_moves_only_its_sizes(tmp_path, caplog,
                                                                 no_cutlass):
    """A plan measured where the CuTe family ran, served where nvidia-cutlass-dsl is
    missing: the sizes it gave to cute take the next measured path (the engine here, as
    RaMP's Triton lost to it there), the other sizes keep RaMP's Triton; logged once."""
    runtime = dispatch_runtime(tmp_path, plan={4: "cute", 32: "triton"})
    engine = Engine()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ramp.adapters"):
        for tokens in (3, 20, 3):
            x, w13, w2, ids, weights = make_layer(tokens, seed=8)
            result = runtime.fused_moe(x, w13, w2, ids, weights, engine)
            if tokens == 20:
                ref = reference(x, w13, w2, ids, weights)
                assert float((result.float().cpu() - ref).norm() / ref.norm()) < 1e-2
    assert engine.calls == 2  # the two T=3 calls
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(
        "RaMP falls back to the engine kernel: layer plan H100-SXM_w13-E8-N64-K64-top2-"
        "float16_layer chooses path 'cute' at T 4, which this RaMP cannot run here (the "
        "CuTe family needs nvidia-cutlass-dsl")
    assert lines[0].endswith("those sizes take the next measured path")


@pytest.mark.parametrize("recorded,reason", [
    ({}, "chooses the cute path at T=[4] but records no configuration for it"),
    ({"cute": (TRITON_CFG, None)}, "records ['triton'] configurations for the cute path"),
])
def test_plan_configs_of_the_cute_path_are_checked(tmp_path, caplog, recorded, reason):
    """The cute path runs the configurations its plan recorded, read like triton's: a
    plan that records none, or another family's, falls back with the reason."""
    plan = save_plan(tmp_path, {4: "cute", 32: "engine"})
    plan = dataclasses.replace(plan, configs=recorded)
    plan.save(tmp_path / f"{plan.key}.json")
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM"), engine=ENGINE_NAME)
    calls, lines = fallbacks(runtime, caplog)
    assert calls == 2 and len(lines) == 1 and reason in lines[0]


def test_kernel_failure_falls_back_and_is_not_retried(tmp_path, caplog):
    """A profile whose tiles cannot compile (block_k 24 is no power of two): the warm-up
    of the first call fails inside Triton, falls back, and the shape stays on the engine
    kernel."""
    save_profiles(tmp_path, block_k=24)
    runtime = RampMoERuntime(RampConfig(mode="dispatch", gpu="H100-SXM",
                                        profile_dir=str(tmp_path)), engine=ENGINE_NAME)
    built = []
    build = runtime._build
    runtime._build = lambda *a, **k: built.append(1) or build(*a, **k)
    calls, lines = fallbacks(runtime, caplog)
    assert calls == 2
    assert len(lines) == 1 and "RaMP kernels failed at warm-up" in lines[0]
    assert built == [1]  # the second call found the shape dropped: nothing rebuilt
    dropped = [v for v in runtime._layers.values() if isinstance(v, str)]
    assert len(dropped) == 1 and "stays on the engine kernel" in dropped[0]


def test_a_path_failing_after_serving_keeps_what_graphs_captured_alive(tmp_path, caplog):
    """A shape that served calls, then whose path fails: the engine's kernel runs from
    then on (logged once, not retried), and the layer's buffers, which CUDA graphs
    captured earlier still read, are kept, not freed."""
    runtime = dispatch_runtime(tmp_path)
    x, w13, w2, ids, weights = make_layer(5, seed=8)
    engine = Engine()
    runtime.fused_moe(x, w13, w2, ids, weights, engine)
    assert engine.calls == 0
    (layer,) = runtime._layers.values()

    def broken(*args):
        raise RuntimeError("launch failed")

    for paths in (layer.paths, layer.eager_paths):
        paths.update(dict.fromkeys(paths, broken))
    calls, lines = fallbacks(runtime, caplog)
    assert calls == 2
    assert len(lines) == 1 and "path failed (RuntimeError: launch failed)" in lines[0]
    assert "graphs captured before keep theirs" in lines[0]
    assert runtime._retired == [layer]


def test_an_error_of_ramps_own_falls_back_and_is_not_retried(tmp_path, caplog):
    """Whatever RaMP raises beyond its known reasons (here a bug in choosing a path)
    never reaches the engine: the engine's kernel runs, the reason is logged once and
    the shape is not tried again."""
    runtime = dispatch_runtime(tmp_path)
    runtime.eager_variant = lambda: 1 / 0
    calls, lines = fallbacks(runtime, caplog)
    assert calls == 2
    assert len(lines) == 1 and "RaMP error (ZeroDivisionError" in lines[0]
    assert sum(runtime.stats.fallbacks.values()) == 2


def test_stats_are_written_only_by_a_process_that_saw_calls_and_never_raise(tmp_path,
                                                                             caplog):
    """An engine's front-end process (no MoE calls) writes no stats over a worker's; a
    file that cannot be written is one warning, not a fallback, and never an error."""
    path = tmp_path / "stats.json"
    runtime = dispatch_runtime(tmp_path, stats_path=str(path))
    runtime.close()
    assert not path.exists()
    layer = make_layer(5, seed=8)
    runtime.fused_moe(*layer, Engine())
    runtime.close()
    assert json.loads(path.read_text())["eager"]
    blocked = dispatch_runtime(tmp_path, stats_path=str(tmp_path / "file" / "s.json"))
    (tmp_path / "file").write_text("a file where a folder should be")
    blocked.fused_moe(*layer, Engine())
    with caplog.at_level(logging.WARNING, logger="ramp.adapters"):
        blocked.close()
        blocked.close()
    assert sum(blocked.stats.fallbacks.values()) == 0
    assert sum("stats not written" in r.getMessage() for r in caplog.records) == 1


def test_off_mode_only_runs_the_engine(tmp_path):
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(3, seed=9)
    runtime = RampMoERuntime(RampConfig(mode="off"))
    assert runtime.fused_moe(x, w13, w2, ids, weights, engine) == "engine result"
    assert engine.calls == 1 and runtime.recorder is None


# --- hook points in the real engines ---------------------------------------------------

def test_signature_checks():
    assert vllm_adapter.signature_problem(list(vllm_adapter.APPLY_PARAMETERS)) is None
    changed = [*vllm_adapter.APPLY_PARAMETERS[:-1], "apply_router_weight_on_input", "x"]
    assert "unknown ['x']" in vllm_adapter.signature_problem(changed)

    def new_required(hidden_states, w1, w2, topk_output, moe_runner_config, mystery):
        pass

    def new_optional(hidden_states, w1, w2, topk_output, moe_runner_config, mystery=1):
        pass

    import inspect
    assert "['mystery']" in sglang_adapter.signature_problem(
        inspect.signature(new_required).parameters)
    assert sglang_adapter.signature_problem(inspect.signature(new_optional).parameters) is None


def source_parameters(root: str, module: str, qualname: str) -> list[str]:
    """Parameter names of a function or method, read from an engine's source tree."""
    tree = ast.parse((Path(root) / (module.replace(".", "/") + ".py")).read_text())
    scope: list[ast.stmt] = tree.body
    for part in qualname.split("."):
        node = next(n for n in scope if getattr(n, "name", None) == part)
        scope = getattr(node, "body", [])
    return [a.arg for a in node.args.args + node.args.kwonlyargs]


def engine_sources(variable: str, what: str) -> list[str]:
    """The unpacked engine wheels named by ``variable`` (os.pathsep-separated); without
    them the test skips, except under .ci/run (RAMP_REQUIRE_ENGINE_SOURCES), where it
    fails: CI must not pass with the hook checks silently skipped."""
    roots = [p for p in os.environ.get(variable, "").split(os.pathsep) if p]
    if not roots:
        message = f"set {variable} to {what} (.ci/engine_sources.sh unpacks them)"
        if os.environ.get("RAMP_REQUIRE_ENGINE_SOURCES"):
            pytest.fail(message)
        pytest.skip(message)
    return roots


def test_vllm_source_has_the_hook_point():
    """Every supported vLLM release (0.26 and 0.33 in CI) has the hook, signature intact."""
    for root in engine_sources("RAMP_TEST_VLLM_SOURCE", "unpacked vLLM wheels"):
        module = next(m for m in vllm_adapter.HOOK_MODULES
                      if (Path(root) / (m.replace(".", "/") + ".py")).exists())
        params = source_parameters(root, module, "TritonExperts.apply")
        assert vllm_adapter.signature_problem(params) is None, root
        assert any(v in root for v in vllm_adapter.TESTED_VERSIONS), root


def test_sglang_source_has_the_hook_point():
    root, = engine_sources("RAMP_TEST_SGLANG_SOURCE", "an unpacked SGLang wheel")
    params = source_parameters(root, sglang_adapter.HOOK_MODULES[0], "fused_experts")
    assert all(p in params for p in sglang_adapter.REQUIRED)
    assert set(params) - set(sglang_adapter.REQUIRED) <= set(sglang_adapter.NEUTRAL)
    runner = (Path(root) / "sglang/srt/layers/moe/moe_runner/triton.py").read_text()
    assert "moe_runner.triton_utils.fused_moe import (\n            fused_experts," in runner


def test_vllm_hook_installs_on_the_installed_engine():
    pytest.importorskip("vllm", reason="vLLM pins a CUDA torch build; not installed here")
    cls = vllm_adapter.find_hook_class()
    original = cls.apply
    vllm_adapter.enable(mode="off")
    try:
        assert cls.apply is not original and cls.apply.__wrapped__ is original
    finally:
        vllm_adapter.disable()
    assert cls.apply is original


def test_sglang_hook_installs_on_the_installed_engine():
    pytest.importorskip("sglang", reason="SGLang pins a CUDA torch build; not installed here")
    module, original = sglang_adapter.find_hook()
    sglang_adapter.enable(mode="off")
    try:
        assert module.fused_experts.__wrapped__ is original
    finally:
        sglang_adapter.disable()
    assert module.fused_experts is original


def test_eager_graphs_wrapper_passes_through_off_the_gpu_and_checks_its_settings():
    """``kernels.eager_graphs.EagerGraphs`` on the CPU (the interpreter has no CUDA
    graphs) runs the layer as it is, every time; its settings are checked."""
    from ramp.kernels.eager_graphs import EagerGraphs

    calls = []

    def layer(*args):
        calls.append(args[0].shape[0])
        return args[0] * 2

    wrapped = EagerGraphs(layer)
    x = torch.ones(3, 4)
    for _ in range(3):
        assert torch.equal(wrapped(x, x, x, x, x), x * 2)
    assert calls == [3, 3, 3] and wrapped.captures == 0 and not wrapped.sizes
    with pytest.raises(ValueError, match="min_calls >= 2"):
        EagerGraphs(layer, min_calls=1)


def test_a_plan_measured_with_eager_graphs_has_the_runtime_run_them(tmp_path):
    """A plan whose host times were measured with eager calls replayed from CUDA graphs
    makes the runtime wrap its paths so for eager calls (and only for them); the flag
    survives the JSON round trip; results stay the layer's."""
    from ramp.kernels.eager_graphs import EagerGraphs

    save_profiles(tmp_path, plan={4: "triton", 32: "triton"})
    plan = save_plan(tmp_path, {4: "triton", 32: "triton"})
    graphed = dataclasses.replace(plan, eager_graphs=True)
    again = LayerPlan.from_dict(json.loads(json.dumps(graphed.to_dict())), "x")
    assert again.eager_graphs and again == graphed
    graphed.save(tmp_path / f"{plan.key}.json")
    _, layer = served_once(tmp_path, seed=10)
    assert isinstance(layer.eager_paths["triton"], EagerGraphs)
    assert layer.eager_paths["triton"].layer is layer.paths["triton"]


def test_eager_calls_follow_the_variant_file_one_engine_start_compares(tmp_path, monkeypatch,
                                                                      caplog):
    """``RAMP_EAGER_VARIANT_FILE`` (``bench.py --modes dispatch:V``): ``engine`` gives
    eager calls to the engine's kernel, ``launch`` runs the plan's path without its eager
    graphs, ``plan`` (or no file) as the plan says; a bad name is logged and the plan
    serves. Results stay the layer's."""
    from ramp.adapters import eager_variant

    monkeypatch.setattr(eager_variant, "REREAD_S", 0.0)
    plan, _ = timed_plan_runtime(
        tmp_path, {"engine": (10.0, 10.0), "triton": (1.0, 1.0)},
        host_us={"engine": (100.0, 100.0), "triton": (50.0, 50.0)})
    dataclasses.replace(plan, eager_graphs=True).save(tmp_path / f"{plan.key}.json")
    variant = tmp_path / "eager-variant"
    runtime = RampMoERuntime(RampConfig(mode="dispatch", profile_dir=str(tmp_path),
                                        gpu="H100-SXM", eager_variant_path=str(variant)),
                             engine=ENGINE_NAME)
    assert RampConfig.from_env({ENV["eager_variant_path"]: str(variant)}
                               ).eager_variant_path == str(variant)
    engine = Engine()
    x, w13, w2, ids, weights = make_layer(3, seed=11)
    ref = reference(x, w13, w2, ids, weights)

    def served(expect_engine: bool) -> None:
        calls = engine.calls
        out = runtime.fused_moe(x, w13, w2, ids, weights, engine)
        assert engine.calls == calls + expect_engine
        if not expect_engine:
            assert float((out.float().cpu() - ref).norm() / ref.norm()) < 1e-2

    served(expect_engine=False)                       # no file: the plan, eager graphs
    layer, = [v for v in runtime._layers.values() if not isinstance(v, str)]
    replayed = []
    graphs = layer.eager_paths["triton"]
    layer.eager_paths["triton"] = lambda *a: replayed.append(1) or graphs(*a)
    served(expect_engine=False)
    assert replayed == [1]
    variant.write_text("engine\n")
    served(expect_engine=True)
    variant.write_text("launch")
    served(expect_engine=False)
    assert replayed == [1]                            # the path itself, not its graphs
    variant.write_text("plan")
    served(expect_engine=False)
    assert replayed == [1, 1]
    variant.write_text("fastest")
    with caplog.at_level(logging.WARNING):
        served(expect_engine=False)
    assert "'fastest' is not one of plan, engine, launch" in caplog.text
    variant.write_bytes(b"\xff\xfe")                # not UTF-8: logged, the plan serves
    served(expect_engine=False)
    assert "unreadable" in caplog.text and runtime.stats.fallbacks == {}
    key = "H100-SXM/w13-E8-N64-K64-top2-float16"
    assert runtime.stats.eager == {(key, "triton"): 6, (key, "engine"): 1}
    layer.eager_paths["triton"] = graphs
    assert runtime.stats.plans[key]["eager_graphs"] is True
    # off the GPU the wrapper passes every call through: nothing captured or replayed
    assert runtime._eager_graph_counts() == {key: {"captures": 0, "replays": 0,
                                                   "disabled": 0}}
