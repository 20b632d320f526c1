"""Timing GPU calls the way a serving engine runs them: replayed from a CUDA graph.

Decode-sized MoE GEMMs last tens of microseconds, about what a Python launch costs, so
timing eager launches measures the host. Each measurement captures ``inner`` calls in a
graph, replays it, and reports the median replay over ``inner`` (after a warm-up replay).
Callers pass a function of the repetition index so that consecutive calls can read
different weight copies and the L2 cache never serves a repeated expert for free.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch


def time_graph(
    fn: Callable[[int], object],
    *,
    target_us: float = 1000.0,
    max_inner: int = 16,
    replays: int = 5,
) -> float:
    """Median microseconds of one ``fn(i)`` call, timed inside a CUDA graph."""
    fn(0)  # compile / autotune outside the graph
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    eager = []
    for i in range(1, 4):
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        eager.append(start.elapsed_time(end) * 1e3)
        # A call far above the launch cost is timed eagerly: a graph adds nothing there.
        if eager[-1] > 4 * target_us and len(eager) == 3:
            return sorted(eager)[1]
        if eager[-1] <= 4 * target_us:
            break
    estimate_us = max(eager[-1], 1.0)
    inner = int(min(max_inner, max(1, target_us // estimate_us)))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for i in range(inner):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    samples = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / inner)
    del graph
    samples.sort()
    return samples[len(samples) // 2]


def read_bandwidth(gib: float = 4.0, replays: int = 10) -> float:
    """Read-only HBM bandwidth in bytes/s: the floor for weight-streaming decode GEMMs.

    A reduction over a buffer far larger than L2 reads every byte once and writes almost
    nothing; a copy would count writes too and understate what a GEMM can read.
    """
    x = torch.rand(int(gib * 2**30) // 2, device="cuda", dtype=torch.bfloat16)
    x.sum(dtype=torch.float32)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(replays):
        start.record()
        x.sum(dtype=torch.float32)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e-3)
    samples.sort()
    return x.numel() * x.element_size() / samples[len(samples) // 2]


def matmul_flops(size: int = 8192, replays: int = 10) -> float:
    """Dense bf16 matmul FLOP/s on random data: the compute ceiling for prefill GEMMs."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(replays):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e-3)
    samples.sort()
    return 2.0 * size**3 / samples[len(samples) // 2]


def device_info() -> dict[str, Any]:
    """Provenance of a timing: the GPU, its driver and the library versions."""
    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "sms": props.multi_processor_count,
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "driver": _driver_version(),
        "torch": torch.__version__,
        "triton": _version("triton", "triton"),
        # The CuTe family's runs carry the DSL without pip metadata: ask the module too.
        "nvidia_cutlass_dsl": _version("nvidia-cutlass-dsl", "cutlass"),
        "cuda": torch.version.cuda,
    }


def _version(distribution: str, module: str) -> str | None:
    """Installed version of ``distribution``, else ``module.__version__`` if imported."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return getattr(sys.modules.get(module), "__version__", None)


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
