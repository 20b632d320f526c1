"""Engine-neutral core of the adapters: one call per fused-MoE layer, three modes.

Engine adapters (``ramp.adapters.vllm``, ``ramp.adapters.sglang``) wrap the engine's
fused-MoE entry point and hand every call to ``RampMoERuntime.fused_moe`` together with
a zero-argument callable that runs the engine's own implementation:

- ``off``: the engine's implementation, nothing else.
- ``record``: the routing of the call is counted on the GPU into a trace
  (``ramp.adapters.recorder``), then the engine's implementation runs.
- ``dispatch``: per call of T tokens, the layer plan of this GPU, shape and engine
  (``ramp.layerplan``: whole-layer times of every path measured side by side with the
  engine's kernel) picks the path: the engine's own kernel wherever no RaMP path measured
  faster (the guard), else RaMP's Triton or CuTe family with that size's configuration,
  the sync-free polymorphic kernel (``ramp.kernels.triton.poly.PolyGemm``: its CTAs pick the
  tile configuration from the live histogram on the GPU) or ``torch._grouped_mm``. The
  choice uses T alone, which the host knows even while an engine captures a CUDA graph
  for that batch size; nothing reads the histogram on the host.

Whatever goes wrong inside RaMP (no GPU, profile or layer plan for this shape, a dtype, quantization
or activation RaMP does not run, a kernel that fails to compile) is logged once per
reason and the engine's own implementation runs: a server never goes down because of
RaMP. A shape that failed once is not retried.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ramp.adapters import eager_variant
from ramp.errors import InputError, ProfileMismatchError, RampError
from ramp.layerplan import ENGINE, LayerPlan, find_layer_plan, load_layer_plan
from ramp.plaindata import write_atomically
from ramp.problem import MoEProblem
from ramp.profile import Profile, find_profile, load_profile

if TYPE_CHECKING:
    from ramp.adapters.recorder import TraceRecorder
    from ramp.costmodel import WaveCostModel

logger = logging.getLogger("ramp.adapters")

MODES = ("off", "record", "dispatch")
POLY_FAMILY = "triton-poly"
DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
R = TypeVar("R")

ENV = {
    "mode": "RAMP_MODE",
    "trace_path": "RAMP_TRACE",
    "profile_dir": "RAMP_PROFILE_DIR",
    "gpu": "RAMP_GPU",
    "model": "RAMP_MODEL",
    "ring_steps": "RAMP_RING_STEPS",
    "poll_seconds": "RAMP_POLL_SECONDS",
    "hold_seconds": "RAMP_HOLD_SECONDS",
    "stats_path": "RAMP_STATS",
    "eager_variant_path": "RAMP_EAGER_VARIANT_FILE",
}
STATS_EVERY_S = 2.0  # the stats file is rewritten at most this often (and at exit)
# a path's warm-up result against float32 (the H200 plans measured bf16 layers at 2.9e-3
# for RaMP's Triton paths to 4.9e-3 for grouped_mm: rel_err in their details files)
WARM_UP_TOLERANCE = 2e-2
# the largest eager call primed for a later CUDA graph of its size (_prime): engines
# capture graphs up to a few thousand tokens (vLLM's max_cudagraph_capture_size)
PRIME_MAX_TOKENS = 8192
LayerPath = Callable[..., torch.Tensor]
# what a failed shape does from then on (the end of its log line)
DROPPED = ("its eager calls and new CUDA graphs run the engine kernel (graphs captured "
           "before keep theirs)")


@dataclass(frozen=True)
class RampConfig:
    """How RaMP runs inside an engine; every field has an environment variable (``ENV``)
    so that the engine's worker processes, which the user does not start, get it too."""

    mode: str = "off"
    trace_path: str = "ramp_trace.rank{rank}.jsonl"  # record: {rank} and {pid} expand
    profile_dir: str | None = None  # dispatch: searched before the embedded profiles
    gpu: str | None = None          # dispatch: catalog GPU name (default: detected)
    model: str | None = None        # record: model name for the trace header
    ring_steps: int = 256           # record: device ring size in steps
    poll_seconds: float = 0.05      # record: how often the writer thread looks
    hold_seconds: float = 30.0      # record: quiet time after the last graph capture
    stats_path: str | None = None   # dispatch: JSON of calls per path ({pid} expands)
    # dispatch: a file naming how eager calls run (``adapters.eager_variant``), re-read
    # while serving, so one engine start compares them (bench.py --modes dispatch:V)
    eager_variant_path: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"RaMP mode {self.mode!r} is not one of {MODES} "
                             f"(set {ENV['mode']} or pass mode=)")
        # checked here, once, so that no call of a serving engine meets a bad value
        for name, fills in (("trace_path", {"rank": 0, "pid": 0}), ("stats_path", {"pid": 0})):
            template = getattr(self, name)
            try:
                if template is not None:
                    template.format(**fills)
            except (KeyError, IndexError, ValueError) as exc:
                raise InputError(f"{ENV[name]}={template!r}: only "
                                 f"{', '.join('{' + k + '}' for k in fills)} may be "
                                 f"filled in ({type(exc).__name__}: {exc})") from None
        if not self.poll_seconds > 0:
            raise InputError(f"{ENV['poll_seconds']}={self.poll_seconds} must be > 0 "
                             "(0 would busy-loop the recorder's thread)")
        if not self.hold_seconds >= 0:
            raise InputError(f"{ENV['hold_seconds']}={self.hold_seconds} must be >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any
                 ) -> RampConfig:
        """Defaults, then ``RAMP_*`` variables, then the non-None ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = environ.get(ENV[f.name])
            if text is not None and text != "":
                try:
                    values[f.name] = {"int": int, "float": float}.get(str(f.type), str)(text)
                except ValueError:
                    raise InputError(f"{ENV[f.name]}={text!r} is not a valid {f.type}"
                                     ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def export(self) -> None:
        """Write this configuration to ``os.environ`` for processes the engine spawns."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                os.environ.pop(ENV[f.name], None)
            else:
                os.environ[ENV[f.name]] = str(value)


def register_from_env(enable: Callable[[], Any], engine: str) -> None:
    """An engine plugin's entry point: ``enable()`` when ``RAMP_MODE`` asks for RaMP.

    Never raises: engines do not guard plugin calls, and a RaMP problem must not stop the
    server. RaMP's own errors (a bad ``RAMP_*`` value, an engine version it does not
    hook) are one log line; anything else is logged with its traceback. The engine then
    runs as if RaMP were not installed."""
    try:
        if RampConfig.from_env().mode != "off":
            enable()
    except RampError as exc:
        logger.error("RaMP not enabled in %s (%s); %s runs unchanged", engine, exc, engine)
    except Exception:
        logger.exception("RaMP not enabled in %s; %s runs unchanged", engine, engine)


class EngineVersionError(RampError):
    """The installed engine lacks the hook point in the shape an adapter expects."""


class Unsupported(Exception):
    """RaMP does not run this call; the message is the reason logged (once)."""


@dataclass
class _Layer:
    """RaMP's paths for one (shape, dtype, device) and the plan that picks one per T.

    ``paths`` maps a path name to a ``ramp.kernels.layers`` layer callable.
    ``_warm_up`` compiles and checks every path of the buckets a call of the first
    (eager) call's size or smaller can land in, before the engine captures any CUDA
    graph; a larger bucket's paths on the first eager call there (``warmed``)."""

    key: str
    plan: LayerPlan
    paths: dict[str, LayerPath]
    # (path, configuration) pairs compiled and checked against float32 (``_warm_up``),
    # and the (path, bucket index) pairs known to run one of them (the per-call test)
    warmed: set[tuple[str, str]] = field(default_factory=set)
    checked: set[tuple[str, int]] = field(default_factory=set)
    primed: set[tuple[str, int]] = field(default_factory=set)  # (path, T) run eagerly once
    # what eager calls run per path: the paths themselves, or (a plan measured so) the
    # paths with recurring sizes replayed from CUDA graphs (``kernels.eager_graphs``)
    eager_paths: dict[str, LayerPath] = field(default_factory=dict)


@dataclass
class RuntimeStats:
    """Calls per shape and path, counted on the host: eager calls run Python each time,
    a CUDA-graph replay runs none, so captures are counted (each captured graph replays
    the path it captured for its batch size) and replays are not."""

    eager: Counter = field(default_factory=Counter)      # (shape, path) -> calls
    captured: Counter = field(default_factory=Counter)   # (shape, path) -> captures
    fallbacks: Counter = field(default_factory=Counter)  # reason -> calls
    # layer -> which plan serves it (key, when measured, host times, eager graphs): what
    # a results file needs to say which plan an engine ran
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def nest(counter: Counter) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for (shape, path), n in sorted(counter.items()):
                out.setdefault(shape, {})[path] = n
            return out
        return {"pid": os.getpid(), "eager": nest(self.eager),
                "captured": nest(self.captured), "fallbacks": dict(self.fallbacks),
                "plans": self.plans}


class RampMoERuntime:
    """Routes an engine's fused-MoE calls by mode; see the module docstring."""

    def __init__(self, config: RampConfig, *, engine: str = "", engine_version: str = "",
                 warm_up_to_first_call: bool = False,
                 captures_largest_first: bool = False) -> None:
        """``warm_up_to_first_call``: the first call's warm-up checks only the buckets a
        call of its size can reach (larger ones on their first eager call), for an engine
        that sizes its KV cache from its first step's peak memory (vLLM); else every
        bucket at start-up (SGLang sizes its cache before any step, and a check in the
        middle of serving would stall that request). ``captures_largest_first``: the
        engine captures its CUDA graphs once, largest size first (vLLM: so that smaller
        graphs reuse the larger ones' memory pool), so no graph is ever captured above
        the first captured size and eager calls larger than it need no priming."""
        self.config = config
        self.engine = engine
        self.engine_version = engine_version
        self.warm_up_to_first_call = warm_up_to_first_call
        self.captures_largest_first = captures_largest_first
        self._largest_capture = 0  # the largest T seen inside an engine's graph capture
        self._layers: dict[tuple[Any, ...], _Layer | str] = {}
        self._dir_files: tuple[list[Profile], list[LayerPlan]] | None = None
        self._logged: set[str] = set()
        self.stats = RuntimeStats()
        self._stats_written = 0.0
        self._eager_variant, self._variant_read = "plan", -float("inf")
        self._eager_graphs: list[tuple[str, Any]] = []  # (layer key, EagerGraphs), kept
        # when a layer is dropped after a failure, so its counts stay in the stats
        self.recorder: TraceRecorder | None = None
        # layers RaMP stopped using, and a recorder that failed: CUDA graphs the engine
        # captured may still launch their kernels on their buffers, so they live as long
        # as the process (the recorder is closed, its trace written, at exit)
        self._retired: list[_Layer] = []
        self._stopped: list[TraceRecorder] = []
        if config.mode == "record":
            from ramp.adapters.recorder import TraceRecorder

            self.recorder = TraceRecorder(
                config.trace_path, ring_steps=config.ring_steps,
                poll_seconds=config.poll_seconds, hold_seconds=config.hold_seconds,
                model=config.model, engine=engine,
                engine_version=engine_version)
        if config.mode != "off":
            atexit.register(self.close)

    @property
    def mode(self) -> str:
        return self.config.mode

    def fused_moe(
        self,
        hidden_states: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        fallback: Callable[[], R],
        *,
        layer: Hashable | None = None,
        global_num_experts: int | None = None,
        unsupported: str | None = None,
        out: torch.Tensor | None = None,
        scale: float | None = None,
        expert_map: torch.Tensor | None = None,
    ) -> torch.Tensor | R:
        """One MoE layer: ``sum_j w[t,j] * W2[e] (SiLU(G[e] x_t) * U[e] x_t)``.

        ``hidden_states`` [T, K], ``w13`` [E, 2I, K] (gate rows then up rows), ``w2``
        [E, K, I], ``topk_ids``/``topk_weights`` [T, k]. ``fallback`` runs the engine's
        implementation and its result is returned whenever RaMP does not run the call.
        ``layer`` identifies the MoE layer for recording (default: the w13 storage);
        ``global_num_experts`` is the engine's expert count when it differs from the
        local ``E`` (expert parallelism: ``topk_ids`` are then global ids and
        ``expert_map`` [global E] maps them to local ids or -1, vLLM's convention; only
        the local experts' share is computed); ``unsupported`` is the engine adapter's reason
        not to run RaMP (quantization, activation, ...). ``out`` [T, K] receives the
        result on the RaMP path, else a new tensor does; ``scale`` multiplies it
        (DeepSeek-style routed scaling factors).
        """
        if self.recorder is not None:
            try:
                self.recorder.observe(
                    w13.data_ptr() if layer is None else layer, topk_ids,
                    num_experts=(global_num_experts if global_num_experts and
                                 global_num_experts > 0 else w13.shape[0]),
                    hidden=hidden_states.shape[-1], intermediate=w2.shape[2],
                    dtype=hidden_states.dtype)
            except Exception as exc:  # recording stops; serving goes on
                logger.error("RaMP record stopped: %s: %s", type(exc).__name__, exc)
                self.recorder.stop(f"{type(exc).__name__}: {exc}")
                self._stopped.append(self.recorder)
                self.recorder = None
            return fallback()
        if self.mode != "dispatch":
            return fallback()
        try:
            if unsupported is not None:
                raise Unsupported(unsupported)
            layer_paths = self._layer(hidden_states, w13, w2, topk_ids, topk_weights,
                                      global_num_experts, expert_map)
            tokens = hidden_states.shape[0]
            capturing = capturing_graph(hidden_states)
            variant = "plan" if capturing else self.eager_variant()
            path = (ENGINE if variant == "engine"
                    else layer_paths.plan.choose(tokens, eager=not capturing))
            # this call's path, and eagerly the graph's path too, which _prime runs
            graphed = path if capturing else layer_paths.plan.choose(tokens)
            self._ensure_warm(layer_paths, {path, graphed} - {ENGINE}, tokens, capturing,
                              hidden_states, w13, w2, topk_ids, expert_map)
            self._count(layer_paths.key, path, capturing)
            if capturing:
                self._largest_capture = max(self._largest_capture, tokens)
            else:
                self._prime(layer_paths, path, graphed, tokens, hidden_states, w13, w2,
                            topk_ids, topk_weights, expert_map)
            if path == ENGINE:
                return fallback()
            # Catches what fails at launch (compilation, arguments, launch resources). A
            # device fault inside the kernel is asynchronous: it surfaces at the engine's
            # next synchronizing call, not here (run with CUDA_LAUNCH_BLOCKING=1 to see it
            # at this launch). _warm_up runs every path once and synchronizes, so a fault
            # there keeps the shape on the engine kernel.
            run = (layer_paths.paths[path] if capturing or variant == "launch"
                   else layer_paths.eager_paths[path])
            try:
                result = run(hidden_states, w13, w2, topk_ids, topk_weights, out, expert_map)
                if scale not in (None, 1.0):
                    result.mul_(scale)
            except Exception as exc:
                raise self._drop_shape(
                    hidden_states, w13, topk_ids, expert_map,
                    f"{layer_paths.key}: RaMP {path} path failed ({type(exc).__name__}: "
                    f"{exc}); {DROPPED}") from exc
            return result
        except Unsupported as exc:
            self.log_fallback(str(exc))
            return fallback()
        except Exception as exc:  # a RaMP bug must not reach the engine's forward pass
            reason = f"RaMP error ({type(exc).__name__}: {exc})"
            # not retried; unless the call's tensors are not even a shape RaMP can key
            with contextlib.suppress(Exception):
                self._drop_shape(hidden_states, w13, topk_ids, expert_map, reason)
            self.log_fallback(reason)
            return fallback()

    def eager_variant(self) -> str:
        """How eager calls run now (``adapters.eager_variant.VARIANTS``), from
        ``eager_variant_path``, re-read at most every ``REREAD_S``; ``plan`` without the
        setting, the file or a valid name (a bad file is logged once, not counted as a
        fallback: no call fell back). Calls inside a capture always take the plan's
        choice: a graph keeps what it captured."""
        path = self.config.eager_variant_path
        if not path:
            return "plan"
        now = time.monotonic()
        if now - self._variant_read < eager_variant.REREAD_S:
            return self._eager_variant
        self._variant_read = now
        self._eager_variant, problem = eager_variant.read(path)
        if problem is not None:
            self._warn_once(f"RaMP: {problem}")
        return self._eager_variant

    def _ensure_warm(self, layer: _Layer, paths: set[str], tokens: int, capturing: bool,
                     hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     ids: torch.Tensor, expert_map: torch.Tensor | None) -> None:
        """A call in a bucket larger than the first call's (``warm_up_to_first_call``):
        its ``paths`` are compiled and checked now, on this eager call's size (the first
        call warmed only the buckets it could reach, so that the warm-up never allocates
        more than the engine's first step, from whose peak memory vLLM sizes its KV
        cache). Inside a capture nothing may compile: that call takes the engine's kernel
        (engines capture sizes up to their first, profiling, step, all warmed). A failed
        check leaves the shape to the engine."""
        bucket = layer.plan.bucket(tokens)
        unchecked = []
        for path in paths:
            if (path, bucket) in layer.checked:
                continue
            if _what(layer.plan, path, bucket) in layer.warmed:  # a configuration shared
                layer.checked.add((path, bucket))
                continue
            unchecked.append(path)
        if not unchecked:
            return
        if capturing:
            # named by its bucket, not T: one line per bucket, not per captured size
            raise Unsupported(f"{layer.key}: RaMP {unchecked[0]} path in the bucket of "
                              f"T={layer.plan.tokens[bucket]} is not warmed up (the bucket "
                              "is above the first call's size) and "
                              "cannot compile inside a CUDA-graph capture: this graph "
                              "keeps the engine kernel")
        try:
            _warm_up(layer, hidden, w13, w2, ids.shape[1], expert_map, tokens, bucket)
        except Exception as exc:
            raise self._drop_shape(
                hidden, w13, ids, expert_map,
                f"{layer.key}: RaMP kernels failed at warm-up of T={tokens} "
                f"({type(exc).__name__}: {exc}); {DROPPED}"
            ) from exc

    def _prime(self, layer: _Layer, eager_path: str, graphed: str, tokens: int,
               hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor,
               weights: torch.Tensor, expert_map: torch.Tensor | None) -> None:
        """An eager call of a size whose CUDA graph would run another RaMP path than
        this call does (the eager choice weighs host cost): run the graph's path once
        too (its result unused), once per size up to ``PRIME_MAX_TOKENS``, so that what
        the graph runs has run before the engine captures it (engines run each size
        eagerly first; anything left to compile or load inside a capture would break
        it). The kernels compile once whatever T (``do_not_specialize`` on the sizes),
        and the warm-up compiles each configuration: this covers what they miss. A
        failure here leaves the shape to the engine. ``graphed``: the plan's choice for
        this size inside a graph."""
        if (graphed in (ENGINE, eager_path) or tokens > PRIME_MAX_TOKENS
                or (graphed, tokens) in layer.primed or tokens > self._prime_limit()):
            return
        layer.primed.add((graphed, tokens))
        try:
            layer.paths[graphed](hidden, w13, w2, ids, weights, None, expert_map)
        except Exception as exc:
            raise self._drop_shape(
                hidden, w13, ids, expert_map,
                f"{layer.key}: RaMP {graphed} path failed at T={tokens} before its CUDA "
                f"graph ({type(exc).__name__}: {exc}); {DROPPED}"
            ) from exc

    def _prime_limit(self) -> float:
        """The largest eager size that a later CUDA graph may still capture: with an
        engine that captures largest first, once it captured, its first capture's size
        (every serving step above it stays eager); else no bound."""
        if self.captures_largest_first and self._largest_capture:
            return self._largest_capture
        return float("inf")

    def _drop_shape(self, hidden: torch.Tensor, w13: torch.Tensor, ids: torch.Tensor,
                    expert_map: torch.Tensor | None, reason: str) -> Unsupported:
        """Leave this call's shape to the engine's kernel from now on, for ``reason``:
        the error to raise (the caller logs it once and runs the engine). CUDA graphs
        captured before keep the RaMP kernels they captured, so the layer's buffers
        (e.g. the sync-free kernel's device-side coefficients) stay alive."""
        key = _key(hidden, w13, ids, expert_map)
        if isinstance(self._layers.get(key), _Layer):
            self._retired.append(self._layers[key])
        self._layers[key] = reason
        return Unsupported(reason)

    def _count(self, key: str, path: str, capturing: bool) -> None:
        (self.stats.captured if capturing else self.stats.eager)[key, path] += 1
        if self.config.stats_path and not capturing:
            now = time.monotonic()
            if now - self._stats_written >= STATS_EVERY_S:
                self._stats_written = now
                self.write_stats()

    def _layer(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
               ids: torch.Tensor, weights: torch.Tensor, global_num_experts: int | None,
               expert_map: torch.Tensor | None) -> _Layer:
        key = _key(hidden, w13, ids, expert_map)
        layer = self._layers.get(key)
        if layer is None:
            if capturing_graph(hidden):
                raise Unsupported(f"first call of {_describe(key)} is inside a CUDA-graph "
                                  "capture: RaMP needs one eager call first to compile its "
                                  "kernels, so the engine kernel was captured")
            try:
                layer = self._build(hidden, w13, w2, ids, weights, global_num_experts,
                                    expert_map)
            except Unsupported as exc:
                layer = str(exc)
            except Exception as exc:  # import errors, bad profile files, kernel faults ...
                layer = f"RaMP setup failed ({type(exc).__name__}: {exc})"
            self._layers[key] = layer
        if isinstance(layer, str):
            raise Unsupported(layer)
        return layer

    def _build(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
               ids: torch.Tensor, weights: torch.Tensor, global_num_experts: int | None,
               expert_map: torch.Tensor | None) -> _Layer:
        problems, ep = check_call(hidden, w13, w2, ids, weights, global_num_experts,
                                  expert_map)
        gpu, live_sms = self._gpu(hidden.device)
        plan = self._layer_plan(gpu, problems[0], ep)
        from ramp.kernels.layers import PathInputs, PathUnavailable, build_path

        inputs = PathInputs(live_sms,
                            poly_models=lambda: self._poly_models(gpu, problems, live_sms),
                            configs=lambda path: _plan_configs(plan, path))
        paths: dict[str, LayerPath] = {}
        while missing := sorted(plan.paths_used() - {ENGINE} - set(paths)):
            for name in missing:
                try:
                    paths[name] = build_path(name, inputs)
                except PathUnavailable as exc:
                    # Only this path's buckets move: to the next path the measurements
                    # rank first (which may need building in turn), else the engine.
                    self.log_fallback(f"layer plan {plan.key} chooses path {name!r} at T "
                                      f"{_buckets_of(plan, name)}, which this RaMP cannot "
                                      f"run here ({exc}): those sizes take the next "
                                      "measured path")
                    plan = plan.without({name})
        paths = {name: p for name, p in paths.items() if name in plan.paths_used()}
        key = f"{gpu}/{problems[0].key}" + (f"/ep{ep}" if ep > 1 else "")
        if plan.eager_graphs:
            from ramp.kernels.eager_graphs import EagerGraphs

            eager_paths = {name: EagerGraphs(p) for name, p in paths.items()}
        else:
            eager_paths = dict(paths)
        layer = _Layer(key, plan, paths, eager_paths=eager_paths)
        # the process's peak allocation before the warm-up (never reset: an engine's
        # memory profiling reads the same peak), to say how far the warm-up raised it
        peak = _peak_bytes(hidden)
        try:
            _warm_up(layer, hidden, w13, w2, ids.shape[1], expert_map,
                     hidden.shape[0] if self.warm_up_to_first_call else None)
        except Exception as exc:
            raise Unsupported(f"{layer.key}: RaMP kernels failed at warm-up "
                              f"({type(exc).__name__}: {exc}); this shape stays on the "
                              "engine kernel") from exc
        logger.info("RaMP dispatch active for %s: %s", layer.key, _plan_summary(plan))
        if plan.eager_graphs:
            self._eager_graphs += [(key, w) for w in eager_paths.values()]
        self.stats.plans[layer.key] = {
            "plan": plan.key, "measured": plan.provenance.get("date"),
            "host_measured": plan.provenance.get("host_measured", {}).get("date"),
            "eager_graphs": plan.eager_graphs,
            # the first call's size and how much the warm-up then raised the peak memory
            # an engine sizes its KV cache from (vLLM: its profiling step's peak)
            "warm_up_tokens": int(hidden.shape[0]),
            "warm_up_peak_rise_mib": round(max(0, _peak_bytes(hidden) - peak) / 2**20, 1)}
        return layer

    def _poly_models(self, gpu: str, problems: tuple[MoEProblem, MoEProblem],
                     live_sms: int | None) -> tuple[WaveCostModel, WaveCostModel]:
        """The sync-free kernel's (w13, w2) models, from profiles of the installed kernel
        version measured on a device with this one's SM count."""
        from ramp.families import get_family

        installed = get_family(POLY_FAMILY).family_version()
        models = []
        for problem in problems:
            profile = self._profile(gpu, problem)
            if profile.family_version != installed:
                raise Unsupported(f"profile {profile.key} is for kernel family version "
                                  f"{profile.family_version}, installed kernels are "
                                  f"{installed}")
            if live_sms is not None and profile.model.num_sms != live_sms:
                raise Unsupported(f"profile {profile.key} was measured with "
                                  f"{profile.model.num_sms} SMs, this device has {live_sms} "
                                  "(MIG slice or cut-down part): profile this device")
            models.append(profile.model)
        return models[0], models[1]

    def _gpu(self, device: torch.device) -> tuple[str, int | None]:
        """Catalog name to look profiles up under, and the live SM count if on a GPU."""
        from ramp.hardware import detect_gpu, get_gpu

        live = detect_gpu(device.index or 0) if device.type == "cuda" else None
        if self.config.gpu is not None:
            return get_gpu(self.config.gpu).name, live.sms if live else None
        if live is None:
            raise Unsupported(f"no CUDA GPU for tensors on {device}; set RAMP_GPU to use "
                              "the profiles of a named GPU")
        return live.name, live.sms

    def _read_dir(self) -> tuple[list[Profile], list[LayerPlan]]:
        if self._dir_files is None:
            self._dir_files = _read_profile_dir(self.config.profile_dir)
        return self._dir_files

    def _profile(self, gpu: str, problem: MoEProblem) -> Profile:
        """``profile_dir`` first (any ``*.json`` that is a profile), then the embedded."""
        for profile in self._read_dir()[0]:
            if (profile.gpu, profile.problem, profile.family) == (gpu, problem, POLY_FAMILY):
                return profile
        profile = find_profile(gpu, problem, family=POLY_FAMILY)
        if profile is None:
            where = f" or in {self.config.profile_dir}" if self.config.profile_dir else ""
            raise Unsupported(f"no {POLY_FAMILY} profile for {gpu} {problem.key} embedded"
                              f"{where}: run `ramp profile` for this GPU and shape")
        return profile

    def _layer_plan(self, gpu: str, problem: MoEProblem, ep: int = 1) -> LayerPlan:
        """The guard: whole-layer times of each path next to the engine's kernel."""
        plan = find_layer_plan(gpu, problem, self.engine, self._read_dir()[1], ep)
        if plan is None:
            where = f" or in {self.config.profile_dir}" if self.config.profile_dir else ""
            ep_text = f" at EP={ep}" if ep > 1 else ""
            ep_arg = f" --ep {ep}" if ep > 1 else ""
            raise Unsupported(
                f"no layer plan for {gpu} {problem.key}{ep_text} under "
                f"{self.engine or 'this engine'} embedded{where}, so nothing shows RaMP is "
                f"faster here: measure one with `python -m ramp.adapters.plan --model "
                f"{_catalog_name(problem, ep)}{ep_arg} --out DIR` on this GPU with the "
                "engine installed, and set RAMP_PROFILE_DIR=DIR")
        return plan

    def log_fallback(self, reason: str) -> None:
        """Log that the engine kernel runs instead of RaMP, once per distinct reason."""
        self.stats.fallbacks[reason] += 1
        self._warn_once(f"RaMP falls back to the engine kernel: {reason}")

    def _warn_once(self, message: str) -> None:
        """Log ``message`` as a warning the first time only (engines call per layer and
        step: a repeated reason must not flood the log)."""
        if message not in self._logged:
            self._logged.add(message)
            logger.warning("%s", message)

    def write_stats(self) -> Path | None:
        """Write ``RuntimeStats`` to ``stats_path`` (atomically: readers never see half),
        once this process saw a MoE call: an engine's front-end process, which runs none,
        must not replace a worker's file when ``{pid}`` is not in the path. Never raises:
        a file that cannot be written is logged once (no call fell back)."""
        stats = self.stats
        if not self.config.stats_path or not (stats.eager or stats.captured or stats.fallbacks):
            return None
        path = Path(self.config.stats_path.format(pid=os.getpid()))
        try:
            text = json.dumps({**stats.to_dict(), "eager_graphs": self._eager_graph_counts()},
                              indent=1) + "\n"
            write_atomically(path, lambda tmp: tmp.write_text(text), "stats")
        except Exception as exc:
            self._warn_once(f"RaMP: stats not written to {path} ({type(exc).__name__}: {exc})")
            return None
        return path

    def _eager_graph_counts(self) -> dict[str, dict[str, int]]:
        """Per layer shape whose plan replays eager calls from CUDA graphs: graphs
        captured, replays, and wrappers turned off by a failed capture."""
        counts: dict[str, dict[str, int]] = {}
        for key, w in self._eager_graphs:
            c = counts.setdefault(key, {"captures": 0, "replays": 0, "disabled": 0})
            c["captures"] += w.captures
            c["replays"] += w.replays
            c["disabled"] += w.disabled
        return counts

    def close(self) -> None:
        """Flush and close the trace (record mode), write the stats; safe to call twice.
        Runs at exit too: nothing here may raise."""
        for recorder in [self.recorder, *self._stopped]:
            if recorder is None:
                continue
            try:
                recorder.close()
            except Exception as exc:
                logger.error("RaMP record: trace not closed (%s: %s)", type(exc).__name__, exc)
        if self.mode == "dispatch":
            self.write_stats()
            served = sum(n for (_, p), n in self.stats.eager.items() if p != ENGINE)
            logger.info("RaMP dispatch: %d eager calls on RaMP paths, %d captured, %d "
                        "fallbacks", served, sum(self.stats.captured.values()),
                        sum(self.stats.fallbacks.values()))


def check_call(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
               ids: torch.Tensor, weights: torch.Tensor, global_num_experts: int | None,
               expert_map: torch.Tensor | None = None
               ) -> tuple[tuple[MoEProblem, MoEProblem], int]:
    """The local (w13, w2) problems of a call RaMP can run and its expert-parallel
    degree, or ``Unsupported`` with the reason."""
    if hidden.dtype not in DTYPES:
        raise Unsupported(f"activation dtype {hidden.dtype} (RaMP runs bfloat16 and "
                          "float16)")
    if w13.dtype != hidden.dtype or w2.dtype != hidden.dtype:
        raise Unsupported(f"quantized or mixed-dtype weights (w13 {w13.dtype}, w2 "
                          f"{w2.dtype}, activations {hidden.dtype})")
    if hidden.dim() != 2 or w13.dim() != 3 or w2.dim() != 3 or ids.dim() != 2:
        raise Unsupported("unexpected tensor ranks: hidden [T, K], w13 [E, 2I, K], "
                          "w2 [E, K, I], topk_ids [T, k]")
    experts, two_i, hidden_size = w13.shape
    if (two_i % 2 or tuple(w2.shape) != (experts, hidden_size, two_i // 2)
            or hidden.shape[1] != hidden_size or ids.shape != weights.shape
            or ids.shape[0] != hidden.shape[0]):
        raise Unsupported(f"shapes hidden {list(hidden.shape)}, w13 {list(w13.shape)}, "
                          f"w2 {list(w2.shape)}, topk {list(ids.shape)} are not a gated "
                          "MoE layer")
    total = experts if global_num_experts in (None, -1) else global_num_experts
    if expert_map is None and total != experts:
        raise Unsupported(f"expert parallelism ({experts} local of {total} experts) "
                          "without an expert map")
    if expert_map is not None and (expert_map.dim() != 1 or expert_map.numel() != total
                                   or expert_map.dtype.is_floating_point
                                   or expert_map.device != ids.device):
        raise Unsupported(f"expert map of shape {list(expert_map.shape)} "
                          f"{expert_map.dtype} on {expert_map.device} for {total} experts "
                          f"and ids on {ids.device}")
    if total % experts:
        raise Unsupported(f"{experts} local experts do not divide {total}")
    dtype, top_k = DTYPES[hidden.dtype], ids.shape[1]
    return ((MoEProblem(experts, two_i, hidden_size, top_k, dtype, "w13"),
             MoEProblem(experts, hidden_size, two_i // 2, top_k, dtype, "w2")),
            total // experts)


def _key(hidden: torch.Tensor, w13: torch.Tensor, ids: torch.Tensor,
         expert_map: torch.Tensor | None = None) -> tuple[Any, ...]:
    ep = None if expert_map is None else expert_map.numel()
    return (tuple(w13.shape), hidden.dtype, w13.dtype, ids.shape[1], hidden.device, ep)


def _catalog_name(problem: MoEProblem, ep: int = 1) -> str:
    """The catalog model with this local w13 layer (at some TP degree), else a
    placeholder."""
    from ramp.models import MODELS

    for model in MODELS.values():
        for tp in (1, 2, 4, 8):
            try:
                if model.problem("w13", tp=tp, ep=ep) == problem:
                    return model.name
            except RampError:
                continue
    return "<catalog model of this shape>"


def _describe(key: tuple[Any, ...]) -> str:
    shape, dtype, _, top_k, device, _ep = key
    return f"w13 {list(shape)} {dtype} top-{top_k} on {device}"


def _buckets_of(plan: LayerPlan, path: str) -> str:
    """The measured token counts whose bucket ``plan`` gives to ``path``, e.g. '128, 192'."""
    return ", ".join(str(t) for t, graphed, eager in zip(plan.tokens, plan.choices,
                                                         plan.eager_choices)
                     if path in (graphed, eager))


def _plan_summary(plan: LayerPlan) -> str:
    return (f"in CUDA graphs {_runs(plan.tokens, plan.choices)}; eager "
            f"{_runs(plan.tokens, plan.eager_choices)}")


def _runs(tokens: tuple[int, ...], choices: tuple[str, ...]) -> str:
    """Runs of equal choices over the measured token counts, e.g. 'T<=8: triton; ...'."""
    runs, start = [], 0
    for i in range(1, len(choices) + 1):
        if i == len(choices) or choices[i] != choices[start]:
            runs.append(f"T<={tokens[i - 1]}: {choices[start]}" if start == 0 else
                        f"T {tokens[start - 1] + 1}..{tokens[i - 1]}: {choices[start]}")
            start = i
    return "; ".join(runs) + f" (beyond {tokens[-1]}: {choices[-1]})"


def config_entry(entry: Mapping[str, Any]) -> tuple[Any, Any, int, int]:
    """A layer plan's record of what a configured path (``triton``, ``cute``) ran at one
    size (``{"w13": config, "w2": config, "occupancy_w13": n, "occupancy_w2": n}``) as
    ``kernels.layers``' (w13 config, w2 config, w13 occupancy, w2 occupancy)."""
    from ramp.config import KernelConfig

    return (KernelConfig.from_dict(entry["w13"], "w13"), KernelConfig.from_dict(entry["w2"], "w2"),
            int(entry.get("occupancy_w13", 1)), int(entry.get("occupancy_w2", 1)))


def _plan_configs(plan: LayerPlan, path: str) -> Callable[[int], tuple[Any, Any, int, int]]:
    """The configurations the plan timed for ``path`` (of its kernel family,
    ``kernels.layers.PATH_FAMILY``), per bucket (``kernels.layers.ConfigsAt``)."""
    from ramp.kernels.layers import PATH_FAMILY

    configs = {i: config_entry(entry) for i, entry in enumerate(plan.configs.get(path, ()))
               if entry is not None}
    missing = [plan.tokens[i] for i, chosen in enumerate(zip(plan.choices,
                                                            plan.eager_choices))
               if path in chosen and i not in configs]
    if missing:
        raise Unsupported(f"layer plan {plan.key} chooses the {path} path at T={missing} "
                          "but records no configuration for it")
    families = sorted({cfg.family for entry in configs.values() for cfg in entry[:2]}
                      - {PATH_FAMILY[path]})
    if families:
        raise Unsupported(f"layer plan {plan.key} records {families} configurations for "
                          f"the {path} path")
    return lambda tokens: configs[plan.bucket(tokens)]


def _peak_bytes(tensor: torch.Tensor) -> int:
    """The process's peak allocation on ``tensor``'s GPU (0 off a GPU); read, never reset."""
    return torch.cuda.max_memory_allocated(tensor.device) if tensor.is_cuda else 0


def capturing_graph(tensor: torch.Tensor) -> bool:
    """Whether this call is being captured into a CUDA graph (on ``tensor``'s stream)."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _what(plan: LayerPlan, path: str, bucket: int) -> tuple[str, str]:
    """What a call of ``bucket`` on ``path`` runs: the path and its configuration there."""
    return path, repr(plan.configs.get(path, [None] * len(plan.tokens))[bucket])


def _warm_up(layer: _Layer, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
             top_k: int, expert_map: torch.Tensor | None, tokens: int | None,
             bucket: int | None = None) -> None:
    """Run each path once per distinct configuration it serves, on random routing, so
    every kernel compiles now (an eager call) and never inside the engine's CUDA-graph
    capture; and check its result against the layer in float32 (``WARM_UP_TOLERANCE``),
    so that a kernel that is wrong on this GPU, driver or compiler raises here and the
    shape stays on the engine's kernel instead of serving wrong tokens.

    ``tokens`` None: every bucket at its measured size. Without ``bucket``: every bucket
    a call of at most ``tokens`` tokens (the first call's) can land in, each at its
    measured size or at ``tokens`` where smaller (at least one token), so no path runs
    larger than the call it precedes; vLLM's first call is its profiling step
    (``max_num_batched_tokens``), whose peak memory sizes the KV cache. With ``bucket``:
    that bucket's paths, at ``tokens`` (a later eager call's size)."""
    from ramp.kernels.layers import reference_error

    gen = torch.Generator(device=hidden.device).manual_seed(0)
    plan = layer.plan
    if tokens is None:
        sizes = list(enumerate(plan.tokens))
    elif bucket is None:
        reach = max(1, tokens)
        sizes = [(i, min(t, reach)) for i, t in enumerate(plan.tokens)
                 if plan.bucket(min(t, reach)) == i]
    else:
        sizes = [(bucket, max(1, tokens))]
    for i, size in sizes:
        for path in (plan.choices[i], plan.eager_choices[i]):
            what = _what(plan, path, i)
            if path == ENGINE or what in layer.warmed:
                layer.checked.add((path, i))
                continue
            x = torch.randn(size, hidden.shape[1], device=hidden.device, generator=gen)
            experts = w13.shape[0] if expert_map is None else expert_map.numel()
            scores = torch.rand(size, experts, device=hidden.device, generator=gen)
            weights, ids = torch.topk(scores, top_k)
            x, ids = x.to(hidden.dtype), ids.to(torch.int32)
            got = layer.paths[path](x, w13, w2, ids, weights, None, expert_map)
            err = reference_error(got, x, w13, w2, ids, weights, expert_map)
            if not err <= WARM_UP_TOLERANCE:  # NaN fails too
                raise ValueError(f"path {path} at T={size} is wrong here: relative error "
                                 f"{err:.3g} against float32 (tolerance {WARM_UP_TOLERANCE})")
            layer.warmed.add(what)
            layer.checked.add((path, i))
    if hidden.is_cuda:
        torch.cuda.synchronize(hidden.device)


def _read_profile_dir(directory: str | None) -> tuple[list[Profile], list[LayerPlan]]:
    """Every ``*.json`` under ``directory`` that loads as a profile or a layer plan. Any
    other file is skipped with one warning (the caller reads the directory once),
    whatever its fault: one bad file must not turn dispatch off for the shapes the good
    ones serve."""
    if not directory:
        return [], []
    root = Path(directory)
    if not root.is_dir():
        raise Unsupported(f"profile directory {root} does not exist")
    profiles, plans = [], []
    for path in sorted(root.glob("*.json")):
        try:
            if path.name.endswith("_layer.json"):
                plans.append(load_layer_plan(path))
            else:
                profiles.append(load_profile(path))
        except (InputError, ProfileMismatchError) as exc:
            logger.warning("RaMP skips %s in the profile directory: %s", path, exc)
        except Exception as exc:  # a fault of RaMP's reader: still only this file
            logger.warning("RaMP skips %s in the profile directory (%s: %s)", path,
                           type(exc).__name__, exc)
    return profiles, plans
