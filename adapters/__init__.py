"""Engine glue: RaMP inside vLLM and SGLang.

- ``ramp.adapters.runtime``: the engine-neutral per-call logic (modes ``off``,
  ``record``, ``dispatch``; fallback to the engine's kernel on any RaMP failure).
- ``ramp.adapters.recorder``: routing traces recorded on the GPU, CUDA-graph safe.
- ``ramp.adapters.vllm``, ``ramp.adapters.sglang``: the hooks into each engine.

Nothing is imported here, so ``import ramp.adapters`` pulls in neither torch nor an
engine; see docs/adapters.md.
"""
