"""MoE GEMM cost under a dispatch policy: the wave cost model of a profile (measured, or
analytic from hardware constants when no profile matches the simulated GPU and shape)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ramp.costmodel import WaveCostModel
from ramp.dispatch import Dispatcher, StaticDispatcher
from ramp.errors import InputError, ProfileMismatchError
from ramp.families import get_family, installed_family_versions
from ramp.hardware import GPUSpec
from ramp.layerplan import ENGINE, LayerPlan, find_layer_plan, load_layer_plan
from ramp.problem import MoEProblem
from ramp.profile import Profile, embedded_profile_paths, find_profile, load_profile
from ramp.sim.routing import rebatch

# plan policies cost a whole MoE layer from a measured layer plan (``LayerPlanCost``):
# ``plan`` the path the engine's dispatch mode runs, ``plan-engine`` the engine's own kernel
PLAN_POLICIES = ("plan", "plan-engine")
SIM_POLICIES = ("static", "ramp", "ramp-unguarded", *PLAN_POLICIES)
PLAN_ENGINE = "vllm"  # the engine whose layer plans the plan policies look up


@dataclass
class GemmCost:
    """One grouped GEMM (w13 or w2) of the simulated shard: cost model + policies."""

    profile: Profile
    dispatchers: dict[str, Dispatcher]
    source: str  # where the cost model comes from, shown in every report

    def costs(self, hists: np.ndarray) -> dict[str, np.ndarray]:
        """Microseconds per histogram [H, E] under every policy, from one prediction.

        The model is the simulator's ground truth, so ``ramp-unguarded`` (the model's
        argmin) costs the row minimum and ``ramp`` (guarded) what the model predicts for
        its choice: the simulator predicts what RaMP gains *if the model is right*
        (measured regret is reported by ``ramp evaluate``).
        """
        pred = self.profile.model.predict(hists)
        rows = np.arange(len(hists))
        out = {}
        for name, dispatcher in self.dispatchers.items():
            out[name] = (pred.min(axis=1) if name == "ramp-unguarded" else pred[
                rows, dispatcher.choose_predicted(hists, self.profile.model, pred)])
        return out


@dataclass(frozen=True)
class LayerPlanCost:
    """Whole-MoE-layer time of a step from a measured layer plan (``ramp.layerplan``).

    ``plan`` runs the plan's guarded choice at the bucket of the step's tokens (what the
    engine's dispatch mode runs), ``plan-engine`` the engine's own kernel (off mode), both
    timed side by side in one process, so their ratio is a measured one. Time at ``T``
    tokens: the chosen path's measured times interpolated linearly in ``T`` between the
    measured sizes around it (a layer's time is piecewise linear in its row tiles; exact at
    measured sizes; where the lower size was not timed, the upper size's time: a larger
    call bounds a smaller one); beyond the largest measured size the last size's time per
    token (at 16k tokens a layer is compute-bound, its time linear in tokens). The plan's
    ``times_us`` (the summary over its measured routings) is used: the plan cannot see a
    step's histogram, and neither can the host that runs it.
    """

    plan: LayerPlan
    source: str

    def path(self, policy: str, tokens: int, eager: bool = False) -> str:
        """The path ``policy`` runs for a ``tokens``-token call, in a CUDA graph or
        (``eager``) not: the plan's eager choice weighs the host's cost too."""
        return self.plan.choose(tokens, eager) if policy == "plan" else ENGINE

    def host_us(self, policy: str, tokens: int) -> float | None:
        """Host microseconds of one eager MoE call of ``tokens`` tokens under ``policy``
        (the path it runs eagerly; the plan's ``host_us`` at the bucket of ``tokens``),
        None where the plan has no host time for it."""
        times = self.plan.host_us.get(self.path(policy, tokens, eager=True))
        return None if times is None else times[self.plan.bucket(tokens)]

    def eager_host_delta_us(self, policy: str, tokens: int) -> float:
        """Host microseconds one eager MoE call of ``tokens`` tokens costs under ``policy``
        beyond the engine's kernel (negative where it costs the host less). 0 for the
        engine's kernel and where the plan has no host time (such a plan gives eager
        calls to the engine anyway)."""
        host, engine = self.host_us(policy, tokens), self.host_us("plan-engine", tokens)
        return 0.0 if host is None or engine is None else host - engine

    def layer_us(self, policy: str, tokens: int, eager: bool = False) -> float:
        """Microseconds of one MoE layer of ``tokens`` tokens under ``policy``."""
        plan, path = self.plan, self.path(policy, tokens, eager)
        times, sizes = plan.times_us[path], plan.tokens
        hi = plan.bucket(tokens)
        if times[hi] is None:
            raise InputError(f"layer plan {plan.key}: path {path!r} has no time at "
                             f"{sizes[hi]} tokens")
        if tokens >= sizes[hi]:  # at a measured size, or beyond the last one
            return times[hi] * tokens / sizes[hi]
        lo = hi - 1
        if lo < 0 or times[lo] is None:
            return times[hi]
        frac = (tokens - sizes[lo]) / (sizes[hi] - sizes[lo])
        return times[lo] + frac * (times[hi] - times[lo])


def resolve_plan(gpu: GPUSpec, model: str, problem: MoEProblem, ep: int,
                 plan_paths: Sequence[str | Path] = ()) -> LayerPlanCost:
    """The layer plan of ``problem`` (a layer's w13 problem, as plans are keyed) on
    ``gpu`` for the ``PLAN_ENGINE`` engine: a user plan, else an embedded one."""
    extra = {str(p): load_layer_plan(p) for p in plan_paths}
    plan = find_layer_plan(gpu.name, problem, PLAN_ENGINE, list(extra.values()), ep)
    if plan is None:
        raise InputError(f"no {PLAN_ENGINE} layer plan for {gpu.name} {problem.key}"
                         + (f" ep={ep}" if ep > 1 else "") + " (plan policies "
                         f"{PLAN_POLICIES}); measure one on that GPU with `python -m "
                         f"ramp.adapters.plan --model {model} --out DIR`"
                         + (f" --ep {ep}" if ep > 1 else "") + " and pass it with --plan")
    where = next((p for p, c in extra.items() if c is plan), None)
    return LayerPlanCost(plan, f"layer plan {where}" if where
                         else f"embedded layer plan {plan.key}")


def _analytic_profile(gpu: GPUSpec, problem: MoEProblem) -> Profile:
    """A profile from hardware constants, over the bank of an embedded profile of the
    Triton family (or the family's default bank); static dispatch tuned on uniform
    routing predicted by the same model, as an offline tuner would do."""
    from ramp.profiler import PROFILE_TOKENS

    bank, family, version = None, "triton", "analytic"
    for path in embedded_profile_paths():
        embedded = load_profile(path)
        if embedded.family == family:
            bank, version = embedded.model.bank, embedded.family_version
            break
    if bank is None:
        triton = get_family(family)
        bank, version = triton.default_bank(problem.dtype_bytes), triton.family_version()
    model = WaveCostModel.analytic(bank, problem, gpu)
    rng = np.random.default_rng(0)
    uniform = np.full((1, problem.num_experts), problem.top_k / problem.num_experts)
    by_tokens = {}
    for t in PROFILE_TOKENS:
        hists = np.concatenate([rebatch(uniform, 1, t, problem.top_k, rng) for _ in range(4)])
        by_tokens[t] = model.predict(hists)
    static = StaticDispatcher.tune(by_tokens, problem.top_k)
    return Profile(gpu.name, problem, family, version, model, static.table,
                   {"analytic": True, "bank_configs": len(bank)})


def check_policies(policies: Sequence[str]) -> None:
    """Every policy is one the simulator runs (exact names: 'RAMP' is not 'ramp')."""
    unknown = [p for p in policies if p not in SIM_POLICIES]
    if unknown:
        raise InputError(f"policy {unknown[0]!r}: the simulator runs {SIM_POLICIES} (an "
                         "oracle needs measured times; under the model it equals ramp)")


def gemm_policies(policies: Sequence[str]) -> tuple[str, ...]:
    """The policies costed per GEMM by the cost model (not from a layer plan)."""
    return tuple(p for p in policies if p not in PLAN_POLICIES)


def resolve_gemm(gpu: GPUSpec, problem: MoEProblem, policies: Sequence[str],
                 profile_paths: Sequence[str | Path] = ()) -> GemmCost:
    """The cost model for ``problem`` on ``gpu``: a user profile, else an embedded one,
    else the analytic model (the ``source`` field says which)."""
    check_policies(policies)
    profile, source = None, ""
    for path in profile_paths:
        candidate = load_profile(path)
        if candidate.problem != problem:
            continue
        if candidate.gpu != gpu.name:
            raise ProfileMismatchError(f"{path}: measured on {candidate.gpu}, the simulated "
                                       f"GPU is {gpu.name}; drop --profile to use the "
                                       "analytic model")
        installed = installed_family_versions().get(candidate.family)
        if installed is not None and candidate.family_version != installed:
            raise ProfileMismatchError(f"{path}: field 'family_version' is "
                                       f"{candidate.family_version!r}, the {candidate.family} "
                                       f"kernels of this RaMP are version {installed!r}; "
                                       "profile them again")
        profile, source = candidate, f"profile {path}"
        break
    if profile is None:
        profile = find_profile(gpu.name, problem)
        source = f"embedded profile {profile.key}" if profile else ""
    if profile is None:
        profile = _analytic_profile(gpu, problem)
        source = (f"analytic model (no profile for {gpu.name} {problem.key}; "
                  f"{profile.provenance['bank_configs']} {profile.family} configs)")
    return GemmCost(profile, {p: profile.dispatcher(p) for p in gemm_policies(policies)},
                    source)
