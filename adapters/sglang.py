"""SGLang adapter: RaMP behind SGLang's Triton ``fused_experts``.

Hook point: the module function ``fused_experts(hidden_states, w1, w2, topk_output,
moe_runner_config, ...)`` of ``sglang/srt/layers/moe/moe_runner/triton_utils/fused_moe.py``
(SGLang 0.5.23; ``layers/moe/fused_moe_triton/fused_moe.py`` in earlier 0.5 releases).
SGLang's Triton MoE runner (the default for bf16 on Hopper without an all-to-all
backend) looks it up in that module at every call, so replacing the module attribute
(and the package's re-export) reaches every MoE layer, captured CUDA graphs included.
Arguments RaMP does not know are accepted only at their defaults; anything RaMP does not
run (quantization, biases, other activations, expert parallelism, ...) goes to the
original function.

Activation, one of:

- SGLang >= 0.5.23 loads general plugins in every process: with ``pip install ramp``
  the ``sglang.srt.plugins`` entry point calls ``register``, which reads ``RAMP_MODE``::

      RAMP_MODE=dispatch python -m sglang.launch_server --model-path Qwen/Qwen3-30B-A3B

- any SGLang: start the server through this module, which enables RaMP in the launcher
  and, being the main module, again in every scheduler process SGLang spawns::

      RAMP_MODE=record RAMP_TRACE=qwen3.rank{rank}.jsonl \\
          python -m ramp.adapters.sglang --model-path Qwen/Qwen3-30B-A3B

- or a three-line launcher of your own (``enable`` at module level runs again in the
  spawned scheduler processes, which re-import the main script)::

      import ramp.adapters.sglang as ramp_sglang
      ramp_sglang.enable(mode="dispatch")
      if __name__ == "__main__": ramp_sglang.main()
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import runpy
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ramp.adapters.runtime import (
    EngineVersionError,
    RampConfig,
    RampMoERuntime,
    register_from_env,
)

logger = logging.getLogger("ramp.adapters")

TESTED_VERSIONS = ("0.5.23",)
HOOK_MODULES = (
    "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe",  # 0.5.23
    "sglang.srt.layers.moe.fused_moe_triton.fused_moe",         # earlier 0.5 layout
)
HOOK_FUNCTION = "fused_experts"
REQUIRED = ("hidden_states", "w1", "w2", "topk_output", "moe_runner_config")
# Optional arguments RaMP understands, with the value under which it runs the call.
NEUTRAL: dict[str, Any] = {
    "b1": None, "b2": None, "use_fp8_w8a8": False, "use_int8_w8a8": False,
    "use_int8_w8a16": False, "use_int4_w4a16": False, "per_channel_quant": False,
    "w1_scale": None, "w2_scale": None, "w1_zp": None, "w2_zp": None, "a1_scale": None,
    "a2_scale": None, "block_shape": None, "a1_q": None, "fuse_swiglu_interleaved": False,
}
# MoeRunnerConfig fields and the values that mean a plain gated SiLU MoE.
PLAIN_RUNNER: dict[str, Any] = {
    "activation": "silu", "is_gated": True, "apply_router_weight_on_input": False,
    "no_combine": False, "gemm1_alpha": None, "gemm1_beta": None,
    "gemm1_clamp_limit": None, "swiglu_limit": None, "silu_mul_keep_fp32": False,
}

_installed: list[tuple[Any, Any]] = []   # (module, original function) pairs patched
_runtime: RampMoERuntime | None = None


def register() -> None:
    """The ``sglang.srt.plugins`` entry point: ``enable()`` from ``RAMP_*`` variables.

    Never raises: a RaMP problem is logged and SGLang runs as if RaMP were absent.
    """
    register_from_env(enable, "SGLang")


def enable(mode: str | None = None, *, trace_path: str | None = None,
           profile_dir: str | None = None, gpu: str | None = None,
           model: str | None = None) -> RampMoERuntime:
    """Hook RaMP into SGLang in this process; the settings go to the environment for the
    processes SGLang spawns. Arguments left None come from ``RAMP_*`` variables.
    Raises ``EngineVersionError`` when SGLang or its hook point is missing or changed."""
    global _runtime
    config = RampConfig.from_env(mode=mode, trace_path=trace_path, profile_dir=profile_dir,
                                 gpu=gpu, model=model)
    config.export()
    module, original = find_hook()
    engine_version = sglang_version()
    if engine_version not in TESTED_VERSIONS:
        logger.warning("RaMP: SGLang %s is not among the tested versions %s; its hook "
                       "signature matches, so RaMP is enabled", engine_version,
                       TESTED_VERSIONS)
    disable()
    _runtime = RampMoERuntime(config, engine="sglang", engine_version=engine_version)
    wrapper = _wrap(original, _runtime)
    # The package re-exports the function: patch every module that holds the original
    # (or a RaMP wrapper of it, left by another copy of this module: see the end).
    for name in (module.__name__, module.__name__.rsplit(".", 1)[0]):
        current = getattr(sys.modules.get(name), HOOK_FUNCTION, None)
        if current is original or getattr(current, "__wrapped__", None) is original:
            setattr(sys.modules[name], HOOK_FUNCTION, wrapper)
            _installed.append((sys.modules[name], original))
    logger.info("RaMP %s mode hooked into SGLang %s (%s.%s)", config.mode, engine_version,
                module.__name__, HOOK_FUNCTION)
    return _runtime


def disable() -> None:
    """Restore SGLang's own ``fused_experts`` and close the runtime."""
    global _runtime
    while _installed:
        holder, original = _installed.pop()
        setattr(holder, HOOK_FUNCTION, original)
    if _runtime is not None:
        _runtime.close()
        _runtime = None


def main() -> None:
    """Run ``sglang.launch_server`` as ``python -m sglang.launch_server`` would, with the
    command-line arguments of this process. This module stays the ``__main__`` module,
    so SGLang's spawned processes re-import it and enable RaMP there too."""
    runpy.run_module("sglang.launch_server", run_name="__main__")


def sglang_version() -> str:
    try:
        return version("sglang")
    except PackageNotFoundError:
        raise EngineVersionError("SGLang is not installed") from None


def find_hook() -> tuple[Any, Any]:
    """The module holding SGLang's Triton ``fused_experts`` and the function, checked."""
    errors = []
    for name in HOOK_MODULES:
        try:
            module = importlib.import_module(name)
            function = getattr(module, HOOK_FUNCTION)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        original = getattr(function, "__wrapped__", function)  # enable() called twice
        problem = signature_problem(inspect.signature(original).parameters)
        if problem:
            raise EngineVersionError(f"{name}.{HOOK_FUNCTION}: {problem}; RaMP supports "
                                     f"SGLang {', '.join(TESTED_VERSIONS)}")
        return module, original
    raise EngineVersionError("SGLang's Triton fused_experts not found: " + "; ".join(errors))


def signature_problem(parameters: Any) -> str | None:
    """Why a ``fused_experts`` with these ``inspect.Parameter``s cannot be wrapped: a
    required argument RaMP needs is missing, or one it does not know has no default
    (so no call can be shown to leave it unused)."""
    missing = [p for p in REQUIRED if p not in parameters]
    unknown = [p for p, param in parameters.items()
               if p not in REQUIRED and p not in NEUTRAL and param.default is param.empty]
    if missing or unknown:
        return f"missing parameters {missing}, unknown required parameters {unknown}"
    return None


def unsupported_reason(call: dict[str, Any], unknown_defaults: dict[str, Any]
                       ) -> str | None:
    """Why RaMP cannot run this ``fused_experts`` call (bound arguments), or None."""
    for name, neutral in NEUTRAL.items():
        value = call.get(name, neutral)
        if (value is not None) if neutral is None else value != neutral:
            return f"SGLang argument {name} (quantization, biases or fused activation)"
    for name, default in unknown_defaults.items():
        if name in call and call[name] is not default:
            return f"SGLang argument {name} unknown to RaMP is set"
    config = call["moe_runner_config"]
    for name, plain in PLAIN_RUNNER.items():
        value = getattr(config, name, plain)
        if value != plain:
            return f"SGLang MoE runner {name}={value!r}"
    if config.num_experts is None or config.num_experts != config.num_local_experts:
        return "SGLang expert parallelism (rank-local expert ids)"
    return None


def _wrap(original: Any, runtime: RampMoERuntime) -> Any:
    signature = inspect.signature(original)
    unknown_defaults = {p: param.default for p, param in signature.parameters.items()
                        if p not in REQUIRED and p not in NEUTRAL}

    @functools.wraps(original)
    def fused_experts(*args: Any, **kwargs: Any) -> Any:
        try:
            call = signature.bind(*args, **kwargs).arguments
            config = call["moe_runner_config"]
            hidden = call["hidden_states"]
            topk = call["topk_output"]
            ids, weights = topk.topk_ids, topk.topk_weights
            reason = unsupported_reason(call, unknown_defaults)
        except Exception as exc:  # an argument layout this adapter does not know
            runtime.log_fallback(f"SGLang call not understood ({type(exc).__name__}: {exc})")
            return original(*args, **kwargs)
        return runtime.fused_moe(
            hidden, call["w1"], call["w2"], ids, weights, lambda: original(*args, **kwargs),
            layer=getattr(config, "layer_id", None), unsupported=reason,
            out=hidden if getattr(config, "inplace", False) else None,
            scale=getattr(config, "routed_scaling_factor", None))

    return fused_experts


if __name__ == "__mp_main__":  # a scheduler process spawned by `python -m` of this module
    register()

if __name__ == "__main__":
    register()
    main()
