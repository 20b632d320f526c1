"""Fit the non-MoE step costs of ``Calibration`` to measured engine runs.

The step time is linear in five parameters once the rooflines are computed:

    step = x0 * 1us + x1 * layers * 1us + x2 * gemm + x3 * attention + x4 * eager * 1us
           + (collectives + MoE)

with ``x0 = step_overhead_us``, ``x1 = layer_overhead_us``, ``x2 = 1/dense_efficiency``,
``x3 = 1/attention_efficiency``, ``x4 = eager_overhead_us`` (``StepCoster.rooflines``
gives gemm and attention; ``eager`` is 1 on steps above the CUDA-graph size). Under
``Calibration.eager_step`` max an eager step is linear on either side of its bound: one
bound by its host is ``x0 + x1 * layers + x4`` plus its MoE calls' host time, one bound
by its GPU the graphed form; which side binds is read at the iterate being linearized
around (``step_terms``), and the fit starts with every eager step host-bound.

Two sources of measurements:

- a **trace whose steps carry ``step_ms``** (the recorder's wall time of each forward
  step): one equation per step, its MoE part costed on the step's own histograms. Trace
  steps carry no context lengths, so attention is not seen (``x3`` stays at its prior);
- an **engine results file** (``bench/results/engine/*.json``: throughput, TTFT and TPOT
  of a benchmark run): the run is simulated; with the schedule held fixed, every
  measured metric is a sum of step times (makespan: the steps of the last busy period
  after its first arrival; a request's TTFT: the steps from its busy period's start to
  its first token, less its arrival; TPOT: the steps of its decode over ``output - 1``),
  so it is linear in ``x`` too. Fit, re-simulate with the fit (the schedule moves),
  refit, until ``x`` moves by < 0.1% (or ``iterations``); the iterate whose own
  simulation matches the measurements best is kept (percentiles of a re-simulated
  schedule jitter by a percent or so, so the iteration need not settle).

The fit is bounded least squares on relative errors (``scipy.optimize.lsq_linear``):
overheads >= 0, efficiencies at most the datasheet ceiling
(``Calibration.kernel_efficiency_ceiling``), plus a weak prior (``PRIOR_WEIGHT`` per
parameter, on the relative deviation from the base calibration) that keeps parameters
the data cannot separate (fixed vs per-layer overhead on one model; dense efficiency vs
fixed overhead on memory-bound decode only) at their base values instead of anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.hardware import get_gpu
from ramp.models import get_model
from ramp.plaindata import locate, read_json
from ramp.sim.costs import Calibration, Layout, StepCoster, graph_size
from ramp.sim.engine import EngineConfig, RunResult, simulate
from ramp.sim.metrics import request_latencies
from ramp.sim.routing import RoutingPool
from ramp.sim.runner import SimConfig, collapsed_pool, prepare, routing_for
from ramp.trace import Arrival, TraceHeader, TraceReader, TraceStep

FITTED = ("step_overhead_us", "layer_overhead_us", "dense_efficiency", "attention_efficiency",
          "eager_overhead_us")
PRIOR_WEIGHT = 0.01
# added to eager_overhead_us where an eager_step max fit starts: every eager step then
# binds on its host, so the first fit sees x4 (an eager 2,048-token step takes ~50-150 ms)
HOST_BOUND_START_US = 100_000.0
DEFAULT_CALIBRATION = Calibration()
WORKLOADS = ("prefill-heavy", "decode-heavy", "online")
# how the MoE of an engine run is costed: per GEMM by the cost model, or per layer from
# the measured layer plan (the plan the engine's dispatch mode ran, and its engine times)
MOE_COSTS = ("model", "plan")
# engine ramp_mode -> simulated policy per MOE_COSTS (record: vLLM's kernels, plus the
# recorder's cost)
MODES = {"model": {"off": "static", "record": "static", "dispatch": "ramp"},
         "plan": {"off": "plan-engine", "record": "plan-engine", "dispatch": "plan"}}
# results-file run fields -> (metric, scale to seconds or tokens/s)
RUN_METRICS = {
    "total_tok_per_s": ("throughput_tok_s", 1.0),
    "out_tok_per_s": ("out_tok_s", 1.0),
    "ttft_ms_p50": ("ttft_p50_s", 1e-3), "ttft_ms_p99": ("ttft_p99_s", 1e-3),
    "tpot_ms_p50": ("tpot_p50_s", 1e-3), "tpot_ms_p99": ("tpot_p99_s", 1e-3),
}
FIT_METRICS = ("throughput_tok_s", "ttft_p50_s", "tpot_p50_s")


def _x(cal: Calibration) -> np.ndarray:
    return np.array([cal.step_overhead_us, cal.layer_overhead_us,
                     1 / cal.dense_efficiency, 1 / cal.attention_efficiency,
                     cal.eager_overhead_us])


def _with_x(cal: Calibration, x: np.ndarray) -> Calibration:
    return dataclasses.replace(cal, step_overhead_us=float(x[0]), layer_overhead_us=float(x[1]),
                               dense_efficiency=float(1 / x[2]),
                               attention_efficiency=float(1 / x[3]),
                               eager_overhead_us=float(x[4]))


def step_features(coster: StepCoster, layout: Layout, tokens: np.ndarray, pairs: np.ndarray,
                  context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``F`` [steps, 5] and the collective time [steps] of steps: the additive step
    time is ``F @ x + collectives + MoE`` (module docstring; ``step_terms`` adds the
    eager host term and the max model's binding sides)."""
    tokens = np.array([graph_size(int(t), coster.graph_tokens) for t in np.asarray(tokens)],
                      dtype=float)
    gemm, attn, comm = coster.rooflines(layout, tokens, pairs, context, np.maximum)
    ones = np.ones_like(np.asarray(gemm, dtype=float))
    eager = (tokens > coster.graph_tokens) * 1e-6
    feats = np.stack([ones * 1e-6, ones * coster.model.layers * 1e-6, gemm, attn,
                      ones * eager], axis=1)
    return feats, np.broadcast_to(np.asarray(comm, dtype=float), ones.shape)


def step_terms(coster: StepCoster, layout: Layout, policy: str, tokens: np.ndarray,
               pairs: np.ndarray, context: np.ndarray, moe: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Steps' times as ``F @ x + c`` around the coster's calibration: ``F`` [steps, 5]
    from ``step_features``; ``c`` the collectives, the MoE part ``moe`` and the additive
    eager host term, or for a host-bound eager step (``eager_step`` max) its MoE calls'
    host time alone (module docstring)."""
    feats, comm = step_features(coster, layout, tokens, pairs, context)
    padded = [graph_size(int(t), coster.graph_tokens) for t in np.asarray(tokens)]
    const = comm + np.asarray(moe, dtype=float) + np.array(
        [coster.eager_host_seconds(layout, policy, t) for t in padded])
    if coster.cal.eager_step != "max":
        return feats, const
    x = _x(coster.cal)
    gpu = feats[:, 2:4] @ x[2:4] + comm + np.asarray(moe, dtype=float)
    eager = feats[:, 4] > 0
    bound = np.array([coster.host_bound(layout, policy, t, g) for t, g in zip(padded, gpu)])
    host = np.array([coster.eager_moe_host_seconds(layout, policy, t) for t in padded])
    feats = feats.copy()
    feats[eager & ~bound, 4] = 0.0          # GPU-bound: the host overlaps it
    feats[bound, 2:4] = 0.0                 # host-bound: the GPU work overlaps it
    const = np.where(bound, host, const)
    return feats, const


@dataclass
class Equation:
    """One measurement, linear in ``x``: ``measured ~= a @ x + b``."""

    source: str
    metric: str
    measured: float
    a: np.ndarray
    b: float


def fit(equations: Sequence[Equation], base: Calibration) -> Calibration:
    """Bounded least squares on relative errors with the weak prior (module docstring)."""
    from scipy.optimize import lsq_linear

    if not equations:
        raise InputError("calibrate: no measurements to fit")
    x0 = _x(base)
    rows = [e.a / e.measured for e in equations]
    rhs = [(e.measured - e.b) / e.measured for e in equations]
    scale = np.maximum(np.abs(x0), 1e-9)
    weight = PRIOR_WEIGHT * np.sqrt(len(equations))
    rows += list(np.diag(weight / scale))
    rhs += list(weight * x0 / scale)
    lower = np.array([0.0, 0.0, 1 / base.kernel_efficiency_ceiling,
                      1 / base.kernel_efficiency_ceiling, 0.0])
    result = lsq_linear(np.array(rows), np.array(rhs), bounds=(lower, np.inf))
    return _with_x(base, np.maximum(result.x, lower))


# --- traces with measured step times ---------------------------------------------------


def _timed_steps(path: str) -> tuple[TraceHeader, tuple[TraceStep, ...]]:
    """A trace's header and its steps that carry ``step_ms``, read once per version of
    the file: a fit linearizes them around every iterate."""
    try:
        version = Path(path).stat().st_mtime_ns
    except OSError:
        version = -1  # unreadable: TraceReader says why, with the file's name
    return _read_timed_steps(path, version)


@functools.lru_cache(maxsize=8)
def _read_timed_steps(path: str, mtime_ns: int) -> tuple[TraceHeader, tuple[TraceStep, ...]]:
    with TraceReader(path) as reader:
        header = reader.header
        steps = tuple(s for s in reader if s.step_ms is not None)
    if not steps:
        raise InputError(f"{path}: no step carries 'step_ms' (measured step time)")
    return header, steps


def trace_equations(path: str | Path, gpu: str, base: Calibration, policy: str = "static",
                    profiles: Sequence[str] = (), plans: Sequence[str] = ()) -> list[Equation]:
    """One equation per trace step with ``step_ms``; the layout from the header's
    parallelism (``ep > 1``: expert-parallel), the MoE part from the step's histograms."""
    header, steps = _timed_steps(str(path))
    tp, ep = header.tp, header.ep
    mode = "ep" if ep > 1 else "tp"
    config = SimConfig(gpu=gpu, model=header.model, gpus=max(tp, ep), mode=mode,
                       policies=(policy,), calibration=base, profiles=tuple(profiles),
                       plans=tuple(plans))
    coster = prepare(config, RoutingPool(header, steps[:1]))
    layout = coster.layouts[mode]
    tokens = np.array([s.tokens for s in steps], dtype=float)
    moe = np.array([coster.moe_of(layout, s.hists)[policy] for s in steps])
    feats, const = step_terms(coster, layout, policy, tokens, np.zeros_like(tokens),
                              np.zeros_like(tokens), moe)
    return [Equation(f"{path}:step {step.step}", "step_s", step.step_ms * 1e-3, a, float(c))
            for step, a, c in zip(steps, feats, const)]


# --- engine results files --------------------------------------------------------------


# what an engine run's routers did: "trace" (spread routers or real weights: the model's
# shipped routing trace), "collapsed" (dummy weights: every token on experts 0..k-1)
RUN_ROUTINGS = ("trace", "collapsed")


@dataclass
class EngineRun:
    """One (results file, ramp_mode) of a measured engine benchmark: what to simulate and
    the measured metrics (means over repeats; seconds and tokens/s)."""

    source: str
    model: str
    gpu: str
    tp: int
    workload: str
    policy: str
    inputs: list[int]                # prompt tokens per request
    outputs: list[int]               # output tokens per request
    arrivals: list[float] | None     # offsets, s; None: all at once (offline)
    max_seqs: int
    max_batched_tokens: int
    measured: dict[str, float] = field(default_factory=dict)
    gpu_memory_utilization: float | None = None  # the engine's, when the file says
    concurrent: bool = False  # two engines shared the GPU (bench.py --concurrent)
    graph_tokens: int | None = None  # largest CUDA-graph capture size (None: vLLM default)
    routing: str = "trace"  # one of RUN_ROUTINGS
    ramp_mode: str = "off"  # the engine's (``MODES``): what ``policy`` simulates
    plans: tuple[str, ...] = ()  # layer plan files for plan policies (default: embedded)
    # False: a dispatch run whose RaMP served no call (every layer fell back), so the
    # engine's kernel is what ran and what is simulated
    ramp_served: bool = True
    kv_capacity: int | None = None  # the engine's KV cache, tokens (None: the memory model)

    def with_moe_costs(self, moe_costs: str, plans: Sequence[str] = ()) -> EngineRun:
        """This run with its MoE costed the ``moe_costs`` way (``MOE_COSTS``)."""
        if moe_costs not in MODES:
            raise InputError(f"moe costs {moe_costs!r} not in {MOE_COSTS}")
        ran = self.ramp_mode if self.ramp_served else "off"
        return dataclasses.replace(self, policy=MODES[moe_costs][ran], plans=tuple(plans))

    @property
    def pool_key(self) -> str:
        """Key of this run's routing pool in ``simulate_run``'s ``pools``."""
        return self.model if self.routing == "trace" else f"{self.model}:{self.routing}"

    def routing_pool(self) -> RoutingPool:
        """The routing the measured engine ran: the model's shipped trace, or collapsed
        onto the first ``top_k`` experts under dummy weights (``collapsed_pool``)."""
        if self.routing == "collapsed":
            return collapsed_pool(get_model(self.model))
        return routing_for(self.model)

    def arrival_list(self) -> list[Arrival]:
        times = self.arrivals if self.arrivals is not None else [0.0] * len(self.inputs)
        return [Arrival(float(t), p, o) for t, p, o in zip(times, self.inputs, self.outputs)]

    def sim_config(self, cal: Calibration, profiles: Sequence[str] = ()) -> SimConfig:
        if self.gpu_memory_utilization is not None:
            cal = dataclasses.replace(cal, gpu_memory_utilization=self.gpu_memory_utilization)
        return SimConfig(gpu=self.gpu, model=self.model, gpus=self.tp, mode="tp",
                         policies=(self.policy,),
                         engine=EngineConfig(self.max_batched_tokens, self.max_seqs,
                                             cuda_graph_tokens=self.graph_tokens,
                                             kv_capacity=self.kv_capacity),
                         calibration=cal, profiles=tuple(profiles), plans=self.plans)


def _field(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise InputError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                         f"got {value!r}")
    return value


def _lengths(wl: dict[str, Any], name: str, count: int, where: str) -> list[int]:
    """Per-request lengths: ``<name>_lens`` (a list) or ``<name>_len`` (one for all)."""
    if f"{name}_lens" in wl:
        values = _field(wl, f"{name}_lens", list, where)
        if len(values) != count or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise InputError(f"{where}: field '{name}_lens' must be {count} ints >= 1")
        return values
    value = _field(wl, f"{name}_len", int, where)
    if value < 1:
        raise InputError(f"{where}: field '{name}_len' must be >= 1, got {value}")
    return [value] * count


def _tp_of(data: dict[str, Any]) -> int:
    """Tensor-parallel degree: the engine args' ``tensor_parallel_size``, else the
    command line's ``--tensor-parallel-size``/``-tp``, else 1."""
    args = (data.get("engine_config") or {}).get("engine_args") or {}
    if isinstance(args.get("tensor_parallel_size"), int):
        return int(args["tensor_parallel_size"])
    match = re.search(r"(?:--tensor-parallel-size|-tp)[ =](\d+)", str(data.get("command", "")))
    return int(match.group(1)) if match else 1


def closed_loop(workload: dict[str, Any]) -> bool:
    """Whether an engine results file's ``workload`` was a closed-loop client
    (``bench.py concurrency:C``), which the simulator does not replay."""
    return workload.get("concurrency") is not None


def load_engine_results(path: str | Path, moe_costs: str = "model",
                        plans: Sequence[str] = ()) -> list[EngineRun]:
    """The runs of one results file, one per ``ramp_mode`` (the schema bench/engine/
    bench.py writes: ``device`` a name or ``{"device": name, ...}``; offline workloads
    with ``input_len``/``output_len``, online ones with per-request ``input_lens``/
    ``output_lens`` and ``arrivals``). Eager variants (``dispatch:V`` labels) are left
    out: they run eager calls otherwise than the plan, whose host times the simulator
    takes (``Calibration.eager_host_fraction``), measured them."""
    where = str(path)
    data = read_json(path, "engine results")
    model = get_model(_field(data, "model", str, where)).name
    device = _field(data, "device", (str, dict), where)
    gpu = get_gpu(_field(device, "device", str, f"{where} device")
                  if isinstance(device, dict) else device).name
    wl = _field(data, "workload", dict, where)
    w_where = f"{where} workload"
    if closed_loop(wl):
        raise InputError(f"{w_where}: field 'concurrency' is {wl['concurrency']!r}: a "
                         "closed-loop client, which the simulator does not replay (it "
                         "replays arrivals, or all requests at once)")
    ints = {k: _field(wl, k, int, w_where)
            for k in ("num_prompts", "max_num_seqs", "max_num_batched_tokens")}
    if min(ints.values()) < 1:
        raise InputError(f"{w_where}: counts must be >= 1, got {ints}")
    count = ints["num_prompts"]
    inputs, outputs = (_lengths(wl, n, count, w_where) for n in ("input", "output"))
    arrivals = wl.get("arrivals")
    if arrivals is not None and (not isinstance(arrivals, list) or len(arrivals) != count
                                 or not all(isinstance(t, (int, float))
                                            and not isinstance(t, bool) and t >= 0
                                            for t in arrivals)):
        raise InputError(f"{w_where}: field 'arrivals' must be null or {count} offsets "
                         ">= 0 (seconds)")
    runs = _field(data, "runs", list, where)
    if not runs:
        raise InputError(locate(f"{where}: field 'runs' is empty: no measured run to fit",
                                data, "runs"))
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for i, run in enumerate(runs):
        mode = _field(run, "ramp_mode", str, f"{where} runs[{i}]")
        if mode.startswith("dispatch:"):  # an eager variant on the dispatch engine
            continue  # (bench.py --modes dispatch:V): not the plan's way of running them
        if mode not in MODES["model"]:
            raise InputError(f"{where} runs[{i}]: field 'ramp_mode' is {mode!r}, not one of "
                             f"{sorted(MODES['model'])}")
        by_mode.setdefault(mode, []).append(run)
    config = data.get("engine_config") or {}
    args = config.get("engine_args") or {}
    util = args.get("gpu_memory_utilization")
    sizes = config.get("cudagraph_capture_sizes")
    if sizes is not None and (not isinstance(sizes, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes)):
        raise InputError(f"{where} engine_config: field 'cudagraph_capture_sizes' must be a "
                         "list of ints >= 1")
    graph_tokens = (max(sizes) if sizes else 0) if sizes is not None else None
    if args.get("enforce_eager"):
        graph_tokens = 0
    # dummy weights route every token to the same experts unless bench.py re-spread them
    collapsed = args.get("load_format") == "dummy" and not config.get("routers_respread")
    served = _ramp_served(data.get("ramp_calls"), f"{where} ramp_calls")
    kv = data.get("kv_cache_tokens") or {}
    if not isinstance(kv, dict) or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            for v in kv.values()):
        raise InputError(f"{where}: field 'kv_cache_tokens' must map each mode to an int "
                         ">= 1 or null")
    out = []
    for mode, repeats in by_mode.items():
        measured: dict[str, float] = {}
        for key, (metric, scale) in RUN_METRICS.items():
            values = [r[key] for r in repeats if r.get(key) is not None]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    raise InputError(f"{where} runs ({mode}): field {key!r} must be a number "
                                     f"> 0, got {v!r}")
            if values:
                measured[metric] = float(np.mean(values)) * scale
        if "throughput_tok_s" not in measured:
            raise InputError(f"{where} runs ({mode}): missing field 'total_tok_per_s'")
        out.append(EngineRun(
            where, model, gpu, _tp_of(data), str(_field(wl, "name", str, w_where)),
            MODES["model"][mode], inputs, outputs,
            None if arrivals is None else [float(t) for t in arrivals],
            ints["max_num_seqs"], ints["max_num_batched_tokens"], measured,
            float(util) if isinstance(util, (int, float)) else None,
            bool(data.get("concurrent", False)), graph_tokens,
            "collapsed" if collapsed else "trace", mode, kv_capacity=kv.get(mode),
            ramp_served=served or mode != "dispatch").with_moe_costs(moe_costs, plans))
    return out


def _ramp_served(calls: Any, where: str) -> bool:
    """Whether the dispatch engine's counters (``ramp_calls``: eager/captured -> layer ->
    path -> calls) show a call served by a RaMP path; a file without them is trusted."""
    if calls is None:
        return True
    try:
        return any(n > 0 for per_layer in calls.values() for per_path in per_layer.values()
                   for path, n in per_path.items() if path != "engine")
    except (AttributeError, TypeError):
        raise InputError(f"{where}: expected {{'eager': {{layer: {{path: calls}}}}, ...}}, "
                         f"got {calls!r:.80}") from None


@dataclass
class Simulated:
    """An engine run simulated under one calibration: metrics and the run itself."""

    metrics: dict[str, float]
    run: RunResult
    coster: StepCoster


def simulate_run(run: EngineRun, cal: Calibration, pools: dict[str, RoutingPool],
                 profiles: Sequence[str] = ()) -> Simulated:
    """Simulate ``run`` under ``cal``: the metrics ``load_engine_results`` measures."""
    pool = pools.get(run.pool_key) or pools.setdefault(run.pool_key, run.routing_pool())
    coster = prepare(run.sim_config(cal, profiles), pool)
    result = simulate(run.arrival_list(), coster, run.policy, run.sim_config(cal).engine)
    return Simulated(sim_metrics(result), result, coster)


def sim_metrics(result: RunResult) -> dict[str, float]:
    """The engine benchmark's metrics of a simulated run (vLLM bench definitions)."""
    lat = request_latencies(result)
    done = lat["served"]
    span = float(result.finish[done].max() - result.arrival.min()) if done.any() else np.nan
    out = {"throughput_tok_s": float((result.prompt[done] + result.output[done]).sum()) / span,
           "out_tok_s": float(result.output[done].sum()) / span}
    for name in ("ttft", "tpot"):
        for q in (50, 99):
            values = lat[name]
            out[f"{name}_p{q}_s"] = float(np.percentile(values, q)) if values.size else np.nan
    return out


def _nearest(values: np.ndarray, q: float) -> int:
    """Index of the element at percentile ``q`` (nearest rank)."""
    order = np.argsort(values)
    return int(order[min(len(order) - 1, round(q / 100 * (len(order) - 1)))])


def run_equations(run: EngineRun, sim: Simulated, metrics: Sequence[str] = FIT_METRICS,
                  ) -> list[Equation]:
    """The measured metrics of ``run`` as linear functions of ``x`` around the
    simulated schedule ``sim`` (module docstring)."""
    res, coster = sim.run, sim.coster
    layout = next(iter(coster.layouts.values()))
    feats, const = step_terms(coster, layout, res.policy, res.step_tokens.astype(float),
                              res.step_pairs, res.step_context, res.step_moe)
    cum_f = np.vstack([np.zeros((1, feats.shape[1])), np.cumsum(feats, axis=0)])
    cum_c = np.concatenate([[0.0], np.cumsum(const)])
    end = res.step_start + res.step_time

    def span(anchor: float, until: float) -> tuple[np.ndarray, float]:
        """Time from ``anchor`` (an arrival) to ``until`` (a step end) as ``a @ x + b``:
        the steps that start at or after the anchor, plus the wait for the first."""
        j = int(np.searchsorted(res.step_start, anchor - 1e-12))
        k = int(np.searchsorted(end, until - 1e-9))
        return cum_f[k + 1] - cum_f[j], float(cum_c[k + 1] - cum_c[j] + res.step_start[j] - anchor)

    lat = request_latencies(res)
    done = lat["served"]
    out = []
    for metric in metrics:
        if metric not in run.measured:
            continue
        measured = run.measured[metric]
        if metric == "throughput_tok_s":  # tokens / makespan: fit the drain after the
            tokens = float((res.prompt[done] + res.output[done]).sum())  # last arrival
            last = float(res.arrival[done].max())
            a, b = span(last, float(res.finish[done].max()))
            out.append(Equation(run.source, "makespan_s", tokens / measured, a,
                                b + last - float(res.arrival.min())))
        elif metric.startswith("ttft"):
            idx = np.flatnonzero(done)[_nearest(lat["ttft"], float(metric[6:8]))]
            a, b = span(float(res.arrival[idx]), float(res.first_token[idx]))
            out.append(Equation(run.source, metric, measured, a, b))
        elif metric.startswith("tpot"):
            multi = np.flatnonzero(done & (res.output > 1))
            if multi.size == 0:
                continue
            idx = multi[_nearest(lat["tpot"], float(metric[6:8]))]
            a, b = span(float(res.first_token[idx]), float(res.finish[idx]))
            n = float(res.output[idx] - 1)
            out.append(Equation(run.source, metric, measured, a / n, b / n))
    return out


# equations linearized around a calibration (a trace's steps: ``trace_fit``)
EquationsAt = Callable[[Calibration], list[Equation]]


def trace_fit(path: str | Path, gpu: str, policy: str = "static",
              profiles: Sequence[str] = (), plans: Sequence[str] = ()) -> EquationsAt:
    """The steps of a trace with ``step_ms`` as equations around any calibration
    (``trace_equations``, kept per calibration: every fold starts from the same one)."""
    _timed_steps(str(path))  # fail early on a trace without step_ms
    return functools.partial(_cached_trace_equations, str(path), gpu, policy=policy,
                             profiles=tuple(profiles), plans=tuple(plans))


@functools.lru_cache(maxsize=32)
def _cached_trace_equations(path: str, gpu: str, base: Calibration, policy: str,
                            profiles: tuple[str, ...], plans: tuple[str, ...]
                            ) -> list[Equation]:
    return trace_equations(path, gpu, base, policy, profiles, plans)


def calibrate_runs(runs: Sequence[EngineRun], base: Calibration = DEFAULT_CALIBRATION,
                   profiles: Sequence[str] = (), extra: Sequence[EquationsAt] = (),
                   pools: dict[str, RoutingPool] | None = None,
                   iterations: int = 8) -> Calibration:
    """Fit ``base``'s step costs to the measured engine ``runs`` and ``extra`` equations
    (traces' steps, ``trace_fit``), re-simulating and re-linearizing both around each
    iterate until the fit settles (module docstring)."""
    pools = {} if pools is None else pools
    cal, best, best_err = base, base, np.inf
    if base.eager_step == "max":  # start host-bound: GPU-bound eager steps leave x4 unseen
        cal = dataclasses.replace(base, eager_overhead_us=base.eager_overhead_us
                                  + HOST_BOUND_START_US)
    for _ in range(iterations):
        eqs = [e for at in extra for e in at(cal)] + [
            e for run in runs
            for e in run_equations(run, simulate_run(run, cal, pools, profiles))]
        err = rms_error(eqs, cal)  # of ``cal`` on its own schedule: what a replay shows
        if err < best_err:
            best, best_err = cal, err
        new = fit(eqs, base)
        moved = np.max(np.abs(_x(new) - _x(cal)) / np.abs(_x(cal)).clip(1e-9))
        if moved < 1e-3:
            break
        cal = new
    return best


def rms_error(equations: Sequence[Equation], cal: Calibration) -> float:
    """Root-mean-square relative error of ``cal`` on ``equations``."""
    x = _x(cal)
    return float(np.sqrt(np.mean([((e.a @ x + e.b) / e.measured - 1) ** 2
                                  for e in equations])))


def calibrate_sources(sources: Sequence[str | Path], gpu: str, base: Calibration,
                      policy: str = "static", profiles: Sequence[str] = (),
                      moe_costs: str = "model", plans: Sequence[str] = ()) -> Calibration:
    """Fit from results files (``*.json``, MoE costed the ``moe_costs`` way) and traces
    with ``step_ms`` (anything else, MoE under ``policy``) together."""
    runs = [r for s in sources if str(s).endswith(".json")
            for r in load_engine_results(s, moe_costs, plans)]
    steps = [trace_fit(s, gpu, policy, profiles, plans) for s in sources
             if not str(s).endswith(".json")]
    return calibrate_runs(runs, base, profiles, extra=steps)


def calibration_yaml(cal: Calibration, sources: Sequence[str]) -> str:
    """The calibration as YAML that ``--calibration`` and scenarios' ``calibration:`` read."""
    import yaml

    lines = ["# fitted by ramp-sim calibrate from:"] + [f"#   {s}" for s in sources]
    fitted = {k: round(float(getattr(cal, k)), 6) for k in FITTED}
    rest = {k: v for k, v in dataclasses.asdict(cal).items() if k not in FITTED}
    return ("\n".join(lines) + "\n" + yaml.safe_dump(fitted, sort_keys=False)
            + "# not fitted (from the base calibration):\n"
            + yaml.safe_dump(rest, sort_keys=False))
