"""Profiling the CuTe family on a GPU: compile (timed), verify, time.

Implements ``ramp.profiler.Timer`` through ``BankTimer``. nvidia-cutlass-dsl 4.3 cannot
hand a compiled kernel to another process, so a ``CuteTimer`` compiles serially in its
own process (with every shape dynamic, one compilation per configuration and GEMM
serves all calls); ``cute_timer`` spreads the bank over several such processes
(``ramp.kernels.sharded_timer``) when compile time matters.
"""

from __future__ import annotations

import os

import torch
from tqdm import tqdm

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.families import TimerOptions
from ramp.kernels.bank_timer import BankTimer, probe_call
from ramp.kernels.cute.configs import FAMILY, FAMILY_VERSION, cute_configs
from ramp.kernels.cute.launch import check_shapes, compiled_gemm, gather_rows, moe_gemm
from ramp.kernels.sharded_timer import ShardedTimer
from ramp.problem import MoEProblem


class CuteTimer(BankTimer):
    """Times every configuration of the CuTe bank for one problem on this GPU."""

    family = FAMILY
    family_version = FAMILY_VERSION

    def __init__(self, problem: MoEProblem, configs: list[KernelConfig], *, seed: int = 0,
                 verify: bool = True, progress: bool = True) -> None:
        if not torch.cuda.is_available():
            raise InputError("profiling needs a CUDA GPU: none is visible to torch")
        call, routing = probe_call(problem)
        a = gather_rows(call.activations, routing) if problem.gemm == "w13" else call.activations
        kept, dropped, self.compile_seconds = [], {}, {}
        for cfg in tqdm(configs, desc=f"compile {FAMILY} {problem.gemm}", disable=not progress):
            try:
                check_shapes(cfg, problem.gemm, problem.n, problem.k, problem.num_experts)
                compiled = compiled_gemm(cfg, problem.gemm, a, call.weights[0], routing, call.out)
            except Exception as exc:  # an invalid configuration is dropped, not fatal
                dropped[cfg.name] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            self.compile_seconds[cfg.name] = round(compiled.seconds, 3)
            kept.append(cfg)
        num_sms = torch.cuda.get_device_properties(0).multi_processor_count
        super().__init__(problem, KernelBank.build(kept, [1] * len(kept)), moe_gemm,
                         num_sms=num_sms, seed=seed, verify=verify, dropped=dropped)


def default_jobs() -> int:
    """Worker processes for profiling: half the cores (tracing is CPU-bound), at most 4
    (each holds its own copies of the weights on the GPU: 7.5 GB for Mixtral's w13)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def cute_timer(problem: MoEProblem, configs: list[KernelConfig], *, jobs: int = 1,
               progress: bool = True, **options) -> CuteTimer | ShardedTimer:
    """A timer over ``configs``: in this process (``jobs`` 1), else over ``jobs`` worker
    processes that compile at the same time (silently) and keep their kernels for later
    timers."""
    if jobs == 1:
        return CuteTimer(problem, configs, progress=progress, **options)
    return ShardedTimer("ramp.kernels.cute.timer:CuteTimer", problem, configs, jobs=jobs,
                        progress=False, **options)


def make_timer(problem: MoEProblem, configs: list[KernelConfig] | None,
               options: TimerOptions) -> CuteTimer | ShardedTimer:
    """The family's registry entry (``ramp.families``)."""
    return cute_timer(problem, configs or cute_configs(), jobs=options.jobs or default_jobs(),
                      progress=options.progress)
