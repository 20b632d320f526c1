"""Profiling the Triton family on a GPU: compile, measure occupancy, verify, time.

Implements ``ramp.profiler.Timer``. Compilation runs in a process pool first (Triton's
on-disk cache then serves this process), because compiling a 160-configuration bank
serially costs minutes of GPU-machine time.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.families import TimerOptions
from ramp.hardware import detect_gpu
from ramp.kernels.bank_timer import BankTimer, probe_call
from ramp.kernels.triton.configs import (
    FAMILY,
    FAMILY_VERSION,
    TILES_FAMILY,
    TILES_FAMILY_VERSION,
    triton_configs,
    triton_tiles_configs,
)
from ramp.kernels.triton.fused_moe import compile_gemm, moe_gemm
from ramp.problem import MoEProblem


def _compile_chunk(problem_dict: dict, config_dicts: list[dict]) -> list[dict]:
    """Pool worker: compile configurations, report their resources (or the error)."""
    problem = MoEProblem.from_dict(problem_dict)
    call, routing = probe_call(problem)
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = []
    for d in config_dicts:
        cfg = KernelConfig.from_dict(d)
        try:
            k = compile_gemm(call.activations, call.weights[0], routing, cfg, call.out,
                             gemm=problem.gemm, num_sms=num_sms)
            k._init_handles()
            out.append({"n_regs": k.n_regs, "shared": k.metadata.shared,
                        "spills": k.n_spills})
        except Exception as exc:  # an invalid configuration is dropped, not fatal
            out.append({"error": f"{type(exc).__name__}: {exc}"[:300]})
    return out


class TritonTimer(BankTimer):
    """Times every configuration of the Triton bank for one problem on this GPU."""

    family = FAMILY
    family_version = FAMILY_VERSION

    def __init__(self, problem: MoEProblem, configs: list[KernelConfig], *,
                 workers: int | None = None, seed: int = 0, verify: bool = True) -> None:
        if not torch.cuda.is_available():
            raise InputError("profiling needs a CUDA GPU: none is visible to torch")
        self.problem = problem
        gpu = detect_gpu()  # catalog entry with the live device's SMs, memory, registers
        num_sms = gpu.sms
        resources = self._compile_all(configs, workers)
        kept, occ, dropped = [], [], {}
        for cfg, res in zip(configs, resources):
            if "error" in res:
                dropped[cfg.name] = res["error"]
                continue
            kept.append(cfg)
            occ.append(gpu.occupancy(cfg.num_warps, res["shared"], res["n_regs"]))
        self.resources = {c.name: r for c, r in zip(configs, resources)}
        super().__init__(problem, KernelBank.build(kept, occ), moe_gemm, num_sms=num_sms,
                         seed=seed, verify=verify, dropped=dropped)

    def _compile_all(self, configs: list[KernelConfig], workers: int | None) -> list[dict]:
        workers = workers or max(1, min(12, (os.cpu_count() or 2) - 1))
        chunks = [configs[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_compile_chunk, self.problem.to_dict(),
                                   [c.to_dict() for c in chunk]) for chunk in chunks]
            results = [f.result() for f in futures]
        by_name = {}
        for chunk, res in zip(chunks, results):
            by_name.update({c.name: r for c, r in zip(chunk, res)})
        return [by_name[c.name] for c in configs]


def make_timer(problem: MoEProblem, configs: list[KernelConfig] | None,
               options: TimerOptions) -> TritonTimer:
    """The family's registry entry (``ramp.families``): the bank over ``configs``."""
    return TritonTimer(problem, configs or triton_configs(), workers=options.jobs)


class TilesTimer(TritonTimer):
    """The ``triton-tiles`` family: the same launcher, its own name and version."""

    family = TILES_FAMILY
    family_version = TILES_FAMILY_VERSION


def make_tiles_timer(problem: MoEProblem, configs: list[KernelConfig] | None,
                     options: TimerOptions) -> TilesTimer:
    """The two-class family's registry entry: the bank over ``configs``."""
    return TilesTimer(problem, configs or triton_tiles_configs(), workers=options.jobs)
