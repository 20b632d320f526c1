"""Profiling the Triton family on a GPU: compile, measure occupancy, verify, time.

Implements ``ramp.profiler.Timer``. Compilation runs in a process pool first (Triton's
on-disk cache then serves this process), because compiling a 160-configuration bank
serially costs minutes of GPU-machine time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.kernels.cuda_timing import device_info, time_graph
from ramp.kernels.triton.configs import FAMILY, FAMILY_VERSION
from ramp.kernels.triton.fused_moe import compile_gemm, moe_gemm, route
from ramp.kernels.workload import make_call, make_weights
from ramp.problem import MoEProblem

WEIGHT_COPIES = 4
REGS_PER_SM = 65536
WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
PROBE_TOKENS = 64


def occupancy_of(n_regs: int, shared: int, num_warps: int, smem_per_sm: int) -> int:
    """CTAs per SM from a compiled kernel's registers per thread and shared memory."""
    regs_per_warp = math.ceil(max(n_regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (regs_per_warp * num_warps)
    by_smem = smem_per_sm // shared if shared else MAX_CTAS_PER_SM
    return max(1, min(by_regs, by_smem, WARPS_PER_SM // num_warps, MAX_CTAS_PER_SM))


def _probe_call(problem: MoEProblem, seed: int = 0):
    """A small workload that compiles the same specialisation as every real call.

    Triton specialises integer arguments only on divisibility by 16 (and == 1), so a
    256x256 weight per expert compiles the kernel the full shape runs, as long as the
    EVEN_K constexpr agrees (it does when K is a multiple of 128, as in every catalog
    model); compile workers then need megabytes, not a copy of the full weights each.
    """
    from ramp.histograms import sample_histograms

    if problem.k % 128 == 0:
        problem = dataclasses.replace(problem, n=256, k=256)
    hist = sample_histograms("uniform", problem.num_experts, PROBE_TOKENS, problem.top_k,
                             seed=seed)[0]
    weights = make_weights(problem, 1, seed=seed)
    call = make_call(problem, weights, hist, seed=seed)
    return call, route(call.topk_ids, call.topk_weights, problem.num_experts)


def _compile_chunk(problem_dict: dict, config_dicts: list[dict]) -> list[dict]:
    """Pool worker: compile configurations, report their resources (or the error)."""
    problem = MoEProblem.from_dict(problem_dict)
    call, routing = _probe_call(problem)
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


class TritonTimer:
    """Times every configuration of the Triton bank for one problem on this GPU."""

    family = FAMILY
    family_version = FAMILY_VERSION

    def __init__(self, problem: MoEProblem, configs: list[KernelConfig], *,
                 workers: int | None = None, seed: int = 0, verify: bool = True) -> None:
        if not torch.cuda.is_available():
            raise InputError("profiling needs a CUDA GPU: none is visible to torch")
        self.problem = problem
        props = torch.cuda.get_device_properties(0)
        self.num_sms = props.multi_processor_count
        smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
        resources = self._compile_all(configs, workers)
        kept, occ, self.dropped = [], [], {}
        for cfg, res in zip(configs, resources):
            if "error" in res:
                self.dropped[cfg.name] = res["error"]
                continue
            kept.append(cfg)
            occ.append(occupancy_of(res["n_regs"], res["shared"], cfg.num_warps, smem_per_sm))
        self.resources = {c.name: r for c, r in zip(configs, resources)}
        self.bank = KernelBank.build(kept, occ)
        self.weights = make_weights(problem, WEIGHT_COPIES, seed=seed)
        self.seed = seed
        self.verify_errors = self.verify() if verify else {}

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

    def verify(self, tokens: int = 77) -> dict[str, float]:
        """Relative error of every configuration vs float32 on fresh random inputs with
        poisoned outputs. A configuration that is wrong or leaves a row unwritten is
        removed from the bank (and listed in ``dropped``): it is never timed or chosen."""
        from ramp.histograms import sample_histograms

        hist = sample_histograms("zipf", self.problem.num_experts, tokens, self.problem.top_k,
                                 seed=self.seed + 99, s=1.2)[0]
        call = make_call(self.problem, self.weights, hist, seed=self.seed + 99)
        routing = route(call.topk_ids, call.topk_weights, self.problem.num_experts)
        ref = reference_gemm(self.problem, call, routing)
        errors, keep = {}, []
        for i, (cfg, occ) in enumerate(zip(self.bank.configs, self.bank.occupancy)):
            call.out.fill_(float("nan"))
            moe_gemm(call.activations, call.weights[0], routing, cfg, call.out,
                     gemm=self.problem.gemm, num_sms=self.num_sms, occupancy=occ)
            if torch.isnan(call.out).any():
                self.dropped[cfg.name] = "rows left unwritten"
                continue
            err = float((call.out.float() - ref).norm() / ref.norm())
            if not err < 2e-2:
                self.dropped[cfg.name] = f"relative error {err:.3g} vs float32"
                continue
            errors[cfg.name] = err
            keep.append(i)
        self.bank = self.bank.subset(keep)
        return errors

    def time_all(self, hist: np.ndarray) -> np.ndarray:
        call = make_call(self.problem, self.weights, hist, seed=self.seed)
        routing = route(call.topk_ids, call.topk_weights, self.problem.num_experts)
        times = np.full(len(self.bank), np.nan)
        for c, (cfg, occ) in enumerate(zip(self.bank.configs, self.bank.occupancy)):
            def run(i, cfg=cfg, occ=occ):
                moe_gemm(call.activations, self.weights[i % WEIGHT_COPIES], routing, cfg,
                         call.out, gemm=self.problem.gemm, num_sms=self.num_sms,
                         occupancy=occ)
            try:
                times[c] = time_graph(run)
            except RuntimeError:  # e.g. out of resources at launch: leave NaN, keep going
                torch.cuda.synchronize()
        return times

    def device_info(self) -> dict[str, Any]:
        return device_info()


def reference_gemm(problem: MoEProblem, call, routing) -> torch.Tensor:
    """float32 result of one GEMM for ``call``, in the layout the kernel writes (w13:
    expert-sorted rows as ``routing`` permuted them; w2: slot order, weight-scaled)."""
    ids = call.topk_ids.reshape(-1)
    w = call.weights[0].float()
    acts = call.activations.float()
    out = torch.empty(call.out.shape, dtype=torch.float32, device=acts.device)
    if problem.gemm == "w13":
        half = problem.n // 2
        x = acts[torch.arange(ids.numel(), device=ids.device) // problem.top_k]
        for e in torch.unique(ids).tolist():
            rows = ids == e
            g = x[rows] @ w[e, :half].T
            u = x[rows] @ w[e, half:].T
            out[rows] = torch.nn.functional.silu(g) * u
        return out[routing.sorted_slots.long()]
    # w2 reads its input in expert-sorted order (as w13 wrote it) and scatters to slots.
    slots = routing.sorted_slots.long()
    expert_at = ids[slots]
    scale = call.topk_weights.reshape(-1).float()[slots, None]
    for e in torch.unique(ids).tolist():
        pos = torch.nonzero(expert_at == e).flatten()
        out[slots[pos]] = (acts[pos] @ w[e].T) * scale[pos]
    return out
