"""Engine-neutral core of the adapters: one call per fused-MoE layer, three modes.

Engine adapters (``ramp.adapters.vllm``, ``ramp.adapters.sglang``) wrap the engine's
fused-MoE entry point and hand every call to ``RampMoERuntime.fused_moe`` together with
a zero-argument callable that runs the engine's own implementation:

- ``off``: the engine's implementation, nothing else.
- ``record``: the routing of the call is counted on the GPU into a trace
  (``ramp.adapters.recorder``), then the engine's implementation runs.
- ``dispatch``: RaMP's sync-free Triton path runs instead: on-GPU routing, then the
  polymorphic GEMM (``ramp.kernels.triton.poly.PolyGemm``) for w13 and w2, whose CTAs
  pick their tile configuration from the live histogram with the fitted cost model of
  this GPU and shape; then the top-k sum. Nothing reads the histogram on the host, so
  engines can keep capturing the layer in CUDA graphs.

Whatever goes wrong inside RaMP (no GPU or profile for this shape, a dtype, quantization
or activation RaMP does not run, a kernel that fails to compile) is logged once per
reason and the engine's own implementation runs: a server never goes down because of
RaMP. A shape that failed once is not retried.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ramp.errors import InputError, ProfileMismatchError, RampError
from ramp.problem import MoEProblem
from ramp.profile import Profile, find_profile, load_profile

if TYPE_CHECKING:
    from ramp.adapters.recorder import TraceRecorder
    from ramp.kernels.triton.poly import PolyGemm

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
}


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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"RaMP mode {self.mode!r} is not one of {MODES} "
                             f"(set {ENV['mode']} or pass mode=)")

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


class EngineVersionError(RampError):
    """The installed engine lacks the hook point in the shape an adapter expects."""


class Unsupported(Exception):
    """RaMP does not run this call; the message is the reason logged (once)."""


@dataclass
class _Plan:
    """RaMP's kernels for one (shape, dtype, device); ``warm`` once run outside a capture
    (first calls compile kernels and upload cost-model parameters, which a CUDA-graph
    capture must not see)."""

    w13: PolyGemm
    w2: PolyGemm
    num_sms: int
    key: str
    warm: bool = False


class RampMoERuntime:
    """Routes an engine's fused-MoE calls by mode; see the module docstring."""

    def __init__(self, config: RampConfig, *, engine: str = "", engine_version: str = ""
                 ) -> None:
        self.config = config
        self.engine = engine
        self.engine_version = engine_version
        self._plans: dict[tuple[Any, ...], _Plan | str] = {}
        self._dir_profiles: list[Profile] | None = None
        self._logged: set[str] = set()
        self.recorder: TraceRecorder | None = None
        if config.mode == "record":
            from ramp.adapters.recorder import TraceRecorder

            self.recorder = TraceRecorder(
                config.trace_path, ring_steps=config.ring_steps,
                poll_seconds=config.poll_seconds, hold_seconds=config.hold_seconds,
                model=config.model, engine=engine,
                engine_version=engine_version)
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
    ) -> torch.Tensor | R:
        """One MoE layer: ``sum_j w[t,j] * W2[e] (SiLU(G[e] x_t) * U[e] x_t)``.

        ``hidden_states`` [T, K], ``w13`` [E, 2I, K] (gate rows then up rows), ``w2``
        [E, K, I], ``topk_ids``/``topk_weights`` [T, k]. ``fallback`` runs the engine's
        implementation and its result is returned whenever RaMP does not run the call.
        ``layer`` identifies the MoE layer for recording (default: the w13 storage);
        ``global_num_experts`` is the engine's expert count when it differs from the
        local ``E`` (expert parallelism); ``unsupported`` is the engine adapter's reason
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
                self.recorder = None
            return fallback()
        if self.mode != "dispatch":
            return fallback()
        try:
            if unsupported is not None:
                raise Unsupported(unsupported)
            plan = self._plan(hidden_states, w13, w2, topk_ids, topk_weights,
                              global_num_experts)
            capturing = hidden_states.is_cuda and torch.cuda.is_current_stream_capturing()
            if capturing and not plan.warm:
                raise Unsupported(f"{plan.key}: first call is inside a CUDA-graph capture, "
                                  "so the engine kernel was captured (RaMP needs one eager "
                                  "call first to compile and upload its parameters)")
            try:
                result = _run(plan, hidden_states, w13, w2, topk_ids, topk_weights, out)
                if scale not in (None, 1.0):
                    result.mul_(scale)
            except Exception as exc:
                reason = (f"{plan.key}: RaMP kernels failed ({type(exc).__name__}: {exc}); "
                          "this shape stays on the engine kernel")
                self._plans[_key(hidden_states, w13, topk_ids)] = reason
                raise Unsupported(reason) from exc
            if not plan.warm and not capturing:
                plan.warm = True
                logger.info("RaMP dispatch active for %s (%d SMs)", plan.key, plan.num_sms)
            return result
        except Unsupported as exc:
            self.log_fallback(str(exc))
            return fallback()

    def _plan(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
              ids: torch.Tensor, weights: torch.Tensor, global_num_experts: int | None
              ) -> _Plan:
        key = _key(hidden, w13, ids)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = self._build(hidden, w13, w2, ids, weights, global_num_experts)
            except Unsupported as exc:
                plan = str(exc)
            except Exception as exc:  # import errors, bad profile files, ...
                plan = f"RaMP setup failed ({type(exc).__name__}: {exc})"
            self._plans[key] = plan
        if isinstance(plan, str):
            raise Unsupported(plan)
        return plan

    def _build(self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
               ids: torch.Tensor, weights: torch.Tensor, global_num_experts: int | None
               ) -> _Plan:
        problems = check_call(hidden, w13, w2, ids, weights, global_num_experts)
        from ramp.kernels.triton.configs import FAMILY_VERSION
        from ramp.kernels.triton.poly import PolyGemm

        gpu, live_sms = self._gpu(hidden.device)
        models = []
        for problem in problems:
            profile = self._profile(gpu, problem)
            if profile.family_version != FAMILY_VERSION:
                raise Unsupported(f"profile {profile.key} is for kernel family version "
                                  f"{profile.family_version}, installed kernels are "
                                  f"{FAMILY_VERSION}")
            if live_sms is not None and profile.model.num_sms != live_sms:
                raise Unsupported(f"profile {profile.key} was measured with "
                                  f"{profile.model.num_sms} SMs, this device has {live_sms} "
                                  "(MIG slice or cut-down part): profile this device")
            models.append(profile.model)
        return _Plan(PolyGemm.from_model(models[0]), PolyGemm.from_model(models[1]),
                     live_sms or models[0].num_sms, f"{gpu}/{problems[0].key}")

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

    def _profile(self, gpu: str, problem: MoEProblem) -> Profile:
        """``profile_dir`` first (any ``*.json`` that is a profile), then the embedded."""
        if self._dir_profiles is None:
            self._dir_profiles = _read_profile_dir(self.config.profile_dir)
        for profile in self._dir_profiles:
            if (profile.gpu, profile.problem, profile.family) == (gpu, problem, POLY_FAMILY):
                return profile
        profile = find_profile(gpu, problem, family=POLY_FAMILY)
        if profile is None:
            where = f" or in {self.config.profile_dir}" if self.config.profile_dir else ""
            raise Unsupported(f"no {POLY_FAMILY} profile for {gpu} {problem.key} embedded"
                              f"{where}: run `ramp profile` for this GPU and shape")
        return profile

    def log_fallback(self, reason: str) -> None:
        """Log that the engine kernel runs instead of RaMP, once per distinct reason."""
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning("RaMP falls back to the engine kernel: %s", reason)

    def close(self) -> None:
        """Flush and close the trace (record mode); safe to call twice."""
        if self.recorder is not None:
            self.recorder.close()


def check_call(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
               ids: torch.Tensor, weights: torch.Tensor,
               global_num_experts: int | None) -> tuple[MoEProblem, MoEProblem]:
    """The (w13, w2) problems of a call RaMP can run, or ``Unsupported`` with the reason."""
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
    if global_num_experts not in (None, -1, experts):
        raise Unsupported(f"expert parallelism ({experts} local of {global_num_experts} "
                          "experts)")
    dtype, top_k = DTYPES[hidden.dtype], ids.shape[1]
    return (MoEProblem(experts, two_i, hidden_size, top_k, dtype, "w13"),
            MoEProblem(experts, hidden_size, two_i // 2, top_k, dtype, "w2"))


def _key(hidden: torch.Tensor, w13: torch.Tensor, ids: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(w13.shape), hidden.dtype, w13.dtype, ids.shape[1], hidden.device)


def _run(plan: _Plan, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
         ids: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Route on the GPU, run both polymorphic GEMMs, sum the weighted top-k rows."""
    from ramp.kernels.triton.fused_moe import route

    tokens, top_k = ids.shape
    routing = route(ids, weights, w13.shape[0])
    inter = hidden.new_empty(tokens * top_k, w2.shape[2])
    plan.w13(hidden, w13, routing, inter, gemm="w13", num_sms=plan.num_sms)
    rows = hidden.new_empty(tokens * top_k, w2.shape[1])
    plan.w2(inter, w2, routing, rows, gemm="w2", num_sms=plan.num_sms)
    return torch.sum(rows.view(tokens, top_k, -1), dim=1, out=out)


def _read_profile_dir(directory: str | None) -> list[Profile]:
    """Every ``*.json`` under ``directory`` that loads as a profile (others skipped)."""
    if not directory:
        return []
    root = Path(directory)
    if not root.is_dir():
        raise Unsupported(f"profile directory {root} does not exist")
    profiles = []
    for path in sorted(root.glob("*.json")):
        try:
            profiles.append(load_profile(path))
        except (InputError, ProfileMismatchError) as exc:
            logger.debug("skipping %s: %s", path, exc)
    return profiles
