"""Compile CuTe configurations for sm_90a on a machine without a GPU (MLIR -> cubin).

    python bench/compile_cute.py [substring ...]   # every configuration, or those named

Catches what the DSL rejects (layouts, shared memory, verifier errors) before device
time is spent. Only the final load into a CUDA context is skipped, which needs a GPU.
Tracing is single-threaded and serial: about 1.5 s per configuration and GEMM.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

import cuda.bindings.driver as cuda
import torch
from cutlass.base_dsl.compiler import Compiler

from ramp.kernels.cute.configs import cute_configs
from ramp.kernels.cute.launch import compile_gemm
from ramp.kernels.routing import Routing

EXPERTS, HIDDEN, INTER, TOKENS, TOP_K = 16, 512, 256, 64, 2


def main(names: list[str]) -> int:
    Compiler.jit = lambda self, *args, **kwargs: None  # the load that needs a GPU
    slots = TOKENS * TOP_K
    routing = Routing(torch.zeros(EXPERTS, dtype=torch.int32),
                      torch.zeros(slots, dtype=torch.int32), torch.zeros(slots),
                      TOKENS, TOP_K, EXPERTS)
    failed = 0
    for cfg in cute_configs():
        if names and not any(n in cfg.name for n in names):
            continue
        for gemm in ("w13", "w2"):
            n, k = (2 * INTER, HIDDEN) if gemm == "w13" else (HIDDEN, INTER)
            out_cols = n // 2 if gemm == "w13" else n
            a = torch.zeros(slots, k, dtype=torch.bfloat16)
            w = torch.zeros(EXPERTS, n, k, dtype=torch.bfloat16)
            out = torch.zeros(slots, out_cols, dtype=torch.bfloat16)
            start = time.perf_counter()
            try:
                compile_gemm(cfg, gemm, a, w, routing, out, cuda.CUstream(0))
            except Exception as exc:  # report every failure, keep going
                failed += 1
                print(f"FAIL {cfg.name} {gemm}: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            print(f"ok   {cfg.name} {gemm} {time.perf_counter() - start:.2f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
