"""What every RaMP-written kernel family shares when it is profiled: check, then time.

A family's one-GEMM launcher follows ``ramp.kernels.triton.fused_moe.moe_gemm``'s
contract (same arguments, same output layout), so verification against float32 and the
per-histogram timing loop are written once here; a family's timer only builds its bank
(compiling, measuring occupancy, dropping what fails) and names its launcher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ramp.bank import KernelBank
from ramp.kernels.cuda_timing import device_info, time_graph
from ramp.kernels.workload import make_call, make_weights, weight_copies
from ramp.problem import MoEProblem

MAX_RELATIVE_ERROR = 2e-2

PROBE_TOKENS = 64


def probe_call(problem: MoEProblem, seed: int = 0):
    """A small workload that compiles the same specialisation as every real call.

    Triton specialises integer arguments only on divisibility by 16 (and == 1) and the
    CuTe kernels on none, so a 256x256 weight per expert compiles the kernel the full
    shape runs, as long as K is a multiple of 128 (every catalog model); compile
    workers then need megabytes, not a copy of the full weights each.
    """
    from ramp.histograms import sample_histograms

    if problem.k % 128 == 0:
        problem = dataclasses.replace(problem, n=256, k=256)
    hist = sample_histograms("uniform", problem.num_experts, PROBE_TOKENS, problem.top_k,
                             seed=seed)[0]
    weights = make_weights(problem, 1, seed=seed)
    call = make_call(problem, weights, hist, seed=seed)
    return call, call.routing()


class BankTimer:
    """Implements ``ramp.profiler.Timer`` given a bank and the family's launcher."""

    family: str
    family_version: str

    def __init__(self, problem: MoEProblem, bank: KernelBank, launcher: Callable, *,
                 num_sms: int, seed: int = 0, verify: bool = True,
                 dropped: dict[str, str] | None = None) -> None:
        self.problem = problem
        self.bank = bank
        self.launcher = launcher
        self.num_sms = num_sms
        self.seed = seed
        self.dropped = dict(dropped or {})
        self.weights = make_weights(problem, weight_copies(problem), seed=seed)
        self.verify_errors = self.verify() if verify else {}

    def run(self, call, routing, cfg, occupancy: int, weights: torch.Tensor) -> None:
        self.launcher(call.activations, weights, routing, cfg, call.out,
                      gemm=self.problem.gemm, num_sms=self.num_sms, occupancy=occupancy)

    def verify(self, tokens: int = 77) -> dict[str, float]:
        """Relative error of every configuration vs float32 on fresh random inputs with
        poisoned outputs. A configuration that is wrong or leaves a row unwritten is
        removed from the bank (and listed in ``dropped``): it is never timed or chosen."""
        from ramp.histograms import sample_histograms

        hist = sample_histograms("zipf", self.problem.num_experts, tokens, self.problem.top_k,
                                 seed=self.seed + 99, s=1.2)[0]
        call = make_call(self.problem, self.weights, hist, seed=self.seed + 99)
        routing = call.routing()
        ref = reference_gemm(self.problem, call, routing)
        errors, keep = {}, []
        for i, (cfg, occ) in enumerate(zip(self.bank.configs, self.bank.occupancy)):
            call.out.fill_(float("nan"))
            self.run(call, routing, cfg, occ, call.weights[0])
            if torch.isnan(call.out).any():
                self.dropped[cfg.name] = "rows left unwritten"
                continue
            err = float((call.out.float() - ref).norm() / ref.norm())
            if not err < MAX_RELATIVE_ERROR:
                self.dropped[cfg.name] = f"relative error {err:.3g} vs float32"
                continue
            errors[cfg.name] = err
            keep.append(i)
        self.bank = self.bank.subset(keep)
        return errors

    def time_all(self, hist: np.ndarray) -> np.ndarray:
        call = make_call(self.problem, self.weights, hist, seed=self.seed)
        return self.time_call(call, call.routing())

    def time_call(self, call, routing) -> np.ndarray:
        """Microseconds of every configuration of the bank on one routed call (NaN where
        a launch failed); each configuration compiles once per process, so calls after
        the first only capture and replay."""
        times = np.full(len(self.bank), np.nan)
        for c, (cfg, occ) in enumerate(zip(self.bank.configs, self.bank.occupancy)):
            def one(i, cfg=cfg, occ=occ):
                self.run(call, routing, cfg, occ, self.weights[i % len(self.weights)])
            try:
                times[c] = time_graph(one)
            except RuntimeError:  # e.g. out of resources at launch: leave NaN, keep going
                torch.cuda.synchronize()
        return times

    def device_info(self) -> dict[str, Any]:
        return device_info()

    def close(self) -> None:
        """Free the weights (GPU memory) once this timer's measurements are done."""
        self.weights = None
        torch.cuda.empty_cache()


def reference_gemm(problem: MoEProblem, call, routing) -> torch.Tensor:
    """float32 result of one GEMM for ``call``, in the layout the kernel writes (w13:
    expert-sorted rows as ``routing`` permuted them; w2: slot order, weight-scaled). Of a
    local view's call only its experts' rows: the spare id's slots (other ranks') stay
    as ``torch.empty`` left them, as the kernels leave them unwritten."""
    ids = call.topk_ids.reshape(-1)
    local = [e for e in torch.unique(ids).tolist() if e < problem.num_experts]
    w = call.weights[0].float()
    acts = call.activations.float()
    out = torch.empty(call.out.shape, dtype=torch.float32, device=acts.device)
    if problem.gemm == "w13":
        half = problem.n // 2
        x = acts[torch.arange(ids.numel(), device=ids.device) // problem.top_k]
        for e in local:
            rows = ids == e
            g = x[rows] @ w[e, :half].T
            u = x[rows] @ w[e, half:].T
            out[rows] = torch.nn.functional.silu(g) * u
        return out[routing.sorted_slots.long()]
    # w2 reads its input in expert-sorted order (as w13 wrote it) and scatters to slots.
    slots = routing.sorted_slots.long()
    expert_at = ids[slots]
    scale = call.topk_weights.reshape(-1).float()[slots, None]
    for e in local:
        pos = torch.nonzero(expert_at == e).flatten()
        out[slots[pos]] = (acts[pos] @ w[e].T) * scale[pos]
    return out
