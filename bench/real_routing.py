"""Every Triton configuration timed on real routing: RaMP, static and the oracle per call.

    source bench/device_env.sh
    python3 bench/real_routing.py --data DIR --gemm w13 --out $OUT     # on the GPU
    python3 bench/real_routing.py --report OUT/real-routing-w13.json.gz # any machine
    python3 bench/real_routing.py --report FILE --repick   # picks made again by this RaMP

``DIR`` holds routing recordings (``*.npz``, the repack of ``../shared/data/routing/
esft-dsv2lite``; never committed: the device call carries a copy in an ignored folder).
From each recording, at every T, consecutive (prefill-like) and shuffled (decode-like)
batching, ``--samples`` seeded (batch, layer) picks give one global histogram each,
seen in every view:

- ``full``: the whole layer on one GPU (E experts, the batch's real top-k ids);
- ``epN``: expert parallelism over N ranks (``--placement``, contiguous by default as
  in the engines): the busiest rank's local call, its ``E/N`` experts and the tokens
  that reach it, routed with an expert map as RaMP's EP layer does
  (``ramp.kernels.routing.local_routing``). The layer waits for its slowest rank, and
  the rank with the most rows is the one that bounds it for any configuration (time
  grows with rows), so timing the others would cost N times the device time for
  ranks that do not set the layer's time. What this misses: a less loaded rank whose
  choice is much worse than the busiest rank's.

Every configuration of the Triton bank (and of each ``--extra-families`` family, e.g. the
two-row-tile-class ``triton-tiles``, whose oracle then joins the oracle and is also
summarised alone) is timed on every call (CUDA graphs; the timer
first checks every configuration against float32 and drops the wrong ones), one timer
per local problem, so each configuration compiles once per process. Per call:
``ramp_us`` (the configuration the profile's default, guarded policy picks for that
histogram; under EP, ``Dispatcher.choose_view`` on the rank's local histogram; across
the Triton bank and every extra family with a shipped profile of the same problem,
``Profile.across_families``),
``static_us`` (the profile's batch-size table) and ``oracle_us`` (best measured). The
profile is the shipped one of the local problem, or the full problem's where no EP
profile exists (its features, tiles, waves, active experts and rows, are histogram-
level). Writes ``real-routing-<gemm>.json.gz`` (every call's histogram and every
configuration's time, so ``--report`` recomputes the summary and the plot anywhere) and
``real-routing-<gemm>.png``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ramp.clitools import positive_ints
from ramp.errors import InputError, RampError
from ramp.expert_parallel import ExpertPlacement
from ramp.models import MoEModel, get_model
from ramp.problem import MoEProblem
from ramp.profile import Profile, find_profile
from ramp.regret import chosen_times, geomean
from ramp.tokenrouting import BATCHINGS, TokenRouting, count_experts
from ramp.traces.real import read_recording

TOKENS = (1, 4, 16, 64, 256, 1024, 4096)
# The family whose shipped profile gives static's picks and guards RaMP's; ``--extra-families``
# are timed beside it on the same calls, so the oracle is the best of all of them, and
# those with a profile join RaMP's choice.
PROFILED = "triton"
VIEWS = ("full", "ep4", "ep8")


def output_name(gemm: str) -> str:
    """One results file per GEMM, so the w13 and w2 runs can share a folder; compressed
    (every configuration's time on every call: 2.4 MB of JSON each, ~10x less gzipped,
    and every committed byte travels to the GPU machine with each device call)."""
    return f"real-routing-{gemm}.json.gz"


def plot_path(path: Path) -> Path:
    """The plot beside a results file (``real-routing-w13.json[.gz]`` ->
    ``real-routing-w13.png``)."""
    name = path.name.removesuffix(".gz").removesuffix(".json")
    return path.with_name(name + ".png")


# Device-time estimate: seconds per (configuration, call) and per timer (compile and
# verify the bank, make the weights), from the H200 profiling runs of this shape (42 s
# for 196 configurations x 28 histograms; 17 s compile and verify).
SECONDS_PER_TIMING = 0.0077
SECONDS_PER_TIMER = 25.0


def view_degree(view: str) -> int:
    """``"full"`` -> 1, ``"ep4"`` -> 4."""
    if view == "full":
        return 1
    if view.startswith("ep") and view[2:].isdigit() and int(view[2:]) > 1:
        return int(view[2:])
    raise InputError(f"option --views: {view!r} is not 'full' or 'epN' (N > 1)")


@dataclass(frozen=True)
class RealCall:
    """One GEMM call to time: the histogram a GPU sees and the top-k ids that make it.

    ``ids`` are global expert ids ``[tokens, top_k]`` of the tokens that reach this GPU;
    under EP ``expert_map`` [E] maps them to local ids or -1 (other ranks' slots), the
    engine convention ``local_routing`` follows; ``hist`` counts the local experts."""

    label: str
    recording: str
    tokens: int
    order: str
    view: str
    layer: int
    batch: int
    rank: int
    hist: np.ndarray
    ids: np.ndarray
    expert_map: np.ndarray | None


def local_call(ids: np.ndarray, experts: np.ndarray, num_experts: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rank holding global ``experts`` (local order): the tokens of ``ids`` [T, k] with
    at least one slot there, the expert map, and the local histogram."""
    expert_map = np.full(num_experts, -1, dtype=np.int64)
    expert_map[experts] = np.arange(experts.size)
    local = expert_map[ids]
    reach = (local >= 0).any(axis=1)
    hist = np.bincount(local[local >= 0], minlength=experts.size)
    return ids[reach], expert_map, hist


def build_calls(recordings: Sequence[tuple[str, TokenRouting]], tokens: Sequence[int],
                views: Sequence[str], placement: str = "contiguous", samples: int = 1,
                seed: int = 0) -> list[RealCall]:
    """The calls of every recording, T, batching, sample and view (sizes larger than a
    recording are left out for it). A sample is a seeded (batch, layer) pick shared by
    the views, so they see the same global histogram."""
    calls = []
    for rec_index, (name, routing) in enumerate(recordings):
        load = count_experts(routing.topk_ids[:, :, None], routing.num_experts).sum(axis=1)
        placements = {v: ExpertPlacement.make(placement, routing.num_experts, view_degree(v),
                                              load) for v in views if v != "full"}
        for t in tokens:
            if t > routing.tokens:
                continue
            for order in BATCHINGS:
                hists, ids = routing.batches(t, order, seed, with_ids=True)
                rng = np.random.default_rng([seed, rec_index, t, BATCHINGS.index(order)])
                for _ in range(samples):
                    b, layer = int(rng.integers(hists.shape[0])), int(rng.integers(routing.layers))
                    label = f"{name}:{order}:T={t}:L{layer}:b{b}"
                    for view in views:
                        calls.append(_view_call(label, name, t, order, view, layer, b,
                                                hists[b], ids[b, layer], placements.get(view)))
    return calls


def _view_call(label, name, tokens, order, view, layer, batch, hists, ids,
               placement: ExpertPlacement | None) -> RealCall:
    if placement is None:
        return RealCall(label, name, tokens, order, view, layer, batch, 0, hists[layer],
                        ids.astype(np.int64), None)
    ep_view = placement.view(hists)                       # [L, ep, E/ep]
    rank = int(ep_view.busiest_rank[layer])
    experts = placement.experts[layer if placement.experts.shape[0] > 1 else 0, rank]
    local_ids, expert_map, hist = local_call(ids.astype(np.int64), experts,
                                             placement.num_experts)
    assert np.array_equal(hist, ep_view.hists[layer, rank])  # the core's view, recomputed
    return RealCall(label, name, tokens, order, view, layer, batch, rank, hist, local_ids,
                    expert_map)


def view_problem(model: MoEModel, gemm: str, view: str, dtype: str | None = None) -> MoEProblem:
    """The GEMM one GPU of this view runs (``E/ep`` experts under EP)."""
    return model.problem(gemm, ep=view_degree(view), dtype=dtype)


def _find_view_profile(gpu: str, model: MoEModel, gemm: str, view: str,
                       family: str) -> Profile | None:
    for problem in (view_problem(model, gemm, view), model.problem(gemm)):
        profile = find_profile(gpu, problem, family=family)
        if profile is not None:
            return profile
    return None


def view_profile(gpu: str, model: MoEModel, gemm: str, view: str) -> Profile:
    """The shipped Triton profile of the view's local problem, else the full problem's."""
    profile = _find_view_profile(gpu, model, gemm, view, PROFILED)
    if profile is None:
        raise InputError(f"no shipped triton profile for {gpu} {model.problem(gemm).key}; "
                         "profile it first (bench/run_gpu.py)")
    return profile


def view_profiles(primary: Profile, families: Sequence[str]) -> list[Profile]:
    """The shipped profiles of ``families`` for the problem ``primary`` profiles (the
    view's local problem where the Triton bank has a profile of it, else the full one):
    the extra families RaMP chooses across beside the Triton bank (one without such a
    profile is timed, not dispatched)."""
    found = [find_profile(primary.gpu, primary.problem, family=f) for f in families]
    return [p for p in found if p is not None]


def choices(profile: Profile, calls: Sequence[RealCall], others: Sequence[Profile] = ()
            ) -> tuple[np.ndarray, np.ndarray]:
    """Bank indices the default (guarded) policy and the static table pick per call.
    The calls' histograms are the local ones, so this is ``choose_view`` of the rank.
    With ``others`` (profiles of more families) RaMP chooses across all of them and its
    indices run over the combined bank, ``profile``'s first (``Profile.across_families``)."""
    return picks(profile, np.stack([c.hist for c in calls]), others)


def picks(profile: Profile, hists: np.ndarray, others: Sequence[Profile] = ()
          ) -> tuple[np.ndarray, np.ndarray]:
    """``choices`` on the histograms [calls, E] themselves."""
    hists = hists.astype(np.int64)
    ramp = profile.across_families(others) if others else profile.dispatcher("ramp")
    return ramp.choose_batch(hists), profile.dispatcher("static").choose_batch(hists)


def unguarded_picks(profile: Profile, hists: np.ndarray, others: Sequence[Profile] = ()
                    ) -> np.ndarray:
    """The plain argmin of the same (combined) model: what the guard's margins cost, and
    what they save, beside RaMP's default picks."""
    hists = hists.astype(np.int64)
    if others:
        return profile.across_families(others).ramp.choose_batch(hists)
    return profile.dispatcher("ramp-unguarded").choose_batch(hists)


def configs_to_time(num_configs: int, must: np.ndarray, cap: int | None) -> list[int]:
    """Bank indices to time: all, or the dispatchers' picks plus evenly spaced others up
    to ``cap`` (the oracle is then the best of those only)."""
    if cap is None or cap >= num_configs:
        return list(range(num_configs))
    keep = {int(i) for i in must}
    everything = np.arange(num_configs)
    order = np.concatenate([everything[::max(1, num_configs // cap)], everything])  # spread
    for i in order:
        if len(keep) >= cap:
            break
        keep.add(int(i))
    return sorted(keep)


def estimate_seconds(calls_per_view: dict[str, int], configs_per_view: dict[str, int],
                     timers_per_view: int = 1) -> float:
    """Expected device seconds: the timers of every view (one per family) plus every
    (configuration, call)."""
    return sum(timers_per_view * SECONDS_PER_TIMER
               + calls_per_view[v] * configs_per_view[v] * SECONDS_PER_TIMING
               for v in calls_per_view)


def extra_families(text: str | None) -> list[str]:
    """``--extra-families``: names of profilable families other than the profiled one."""
    from ramp.families import get_family

    names = [n for n in (text or "").split(",") if n]
    for name in names:
        if name == PROFILED:
            raise InputError(f"option --extra-families: {PROFILED!r} is always timed")
        get_family(name).configs()  # unknown name or no fixed space: a clear InputError
    return names


def time_view(problem: MoEProblem, family: str, configs: list, calls: Sequence[RealCall],
              seed: int, progress: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Times [calls, configs] of every configuration of ``family`` on every call (NaN:
    dropped by the float32 check or failed at launch), and the timer's check results.
    Needs a GPU."""
    import torch

    from ramp.families import TimerOptions, get_family
    from ramp.kernels.routing import local_routing
    from ramp.kernels.workload import make_call_for_ids

    t0 = time.monotonic()
    timer = get_family(family).make_timer(problem, configs, TimerOptions(progress=False))
    check = {"compile_and_verify_seconds": round(time.monotonic() - t0, 1),
             "max_verify_error": max(timer.verify_errors.values(), default=None),
             "dropped": timer.dropped, "device": timer.device_info()}
    print(f"{progress}{problem.key} {family}: {len(timer.bank)} configs compiled and checked against "
          f"float32 in {check['compile_and_verify_seconds']} s (max rel err "
          f"{check['max_verify_error']}, dropped {len(timer.dropped)})", flush=True)
    col = {cfg: c for c, cfg in enumerate(timer.bank.configs)}
    times = np.full((len(calls), len(configs)), np.nan)
    for i, c in enumerate(calls):
        call = make_call_for_ids(problem, timer.weights, c.ids, seed=seed)
        emap = None if c.expert_map is None else torch.as_tensor(c.expert_map, device="cuda")
        routing = local_routing(call.topk_ids, call.topk_weights, problem.num_experts, emap)
        measured = timer.time_call(call, routing)
        for j, cfg in enumerate(configs):
            if cfg in col:
                times[i, j] = measured[col[cfg]]
        print(f"{progress}{c.view} {i + 1}/{len(calls)} {c.label}: best "
              f"{np.nanmin(times[i]):.1f} us ({time.monotonic() - t0:.0f} s)", flush=True)
    timer.close()
    return times, check


def call_record(c: RealCall, times: np.ndarray, configs: Sequence[str],
                families: Sequence[str], ramp_config: str, static_config: str,
                unguarded_config: str) -> dict[str, Any]:
    """One call of the JSON: what was timed (each configuration's family), every time,
    the picks of RaMP, static and the unguarded argmin."""
    return {"label": c.label, "recording": c.recording, "tokens": c.tokens, "view": c.view,
            "order": c.order, "layer": c.layer, "batch": c.batch, "rank": c.rank,
            "local_rows": int(c.hist.sum()), "local_tokens": int(c.ids.shape[0]),
            "active_experts": int(np.count_nonzero(c.hist)), "hist": c.hist.tolist(),
            "configs": list(configs), "families": list(families),
            "times_us": [None if not math.isfinite(x) else float(x) for x in times],
            "ramp_config": ramp_config, "static_config": static_config,
            "ramp_unguarded_config": unguarded_config}


def combined_bank(profile: Profile, others: Sequence[Profile]) -> list:
    """The configurations RaMP's indices run over when it chooses across families:
    ``profile``'s bank first, then each of ``others``' (``Profile.across_families``)."""
    return [*profile.model.bank.configs, *(c for o in others for c in o.model.bank.configs)]


def call_families(call: dict[str, Any]) -> list[str]:
    """Each timed configuration's family in a call of a results file (files from before
    ``--extra-families`` timed the profiled family only and do not say so)."""
    return call.get("families") or [PROFILED] * len(call["configs"])


def repick(result: dict[str, Any]) -> dict[str, list[str]]:
    """Every call's RaMP and static picks made again, from its stored local histogram, by
    this RaMP's dispatchers over the shipped profiles of the view (the Triton bank's, and
    those of the file's extra families that now have one: RaMP then chooses across
    them), so that a new profile or cost model is judged on timings already measured
    (a pick that was not timed counts as unmeasured). Returns the families RaMP chose
    across per view."""
    prov = result.get("provenance") or {}
    for name in ("gpu", "model", "gemm"):
        if name not in prov:
            raise InputError(f"--repick: field 'provenance.{name}' missing (a file that "
                             "measure() did not write?)")
    for i, c in enumerate(result["calls"]):
        if not isinstance(c.get("hist"), list):
            raise InputError(f"--repick: calls[{i}]: field 'hist' missing or not a list")
    model = get_model(prov["model"])
    across: dict[str, list[str]] = {}
    for view in dict.fromkeys(c["view"] for c in result["calls"]):
        rows = [c for c in result["calls"] if c["view"] == view]
        profile = view_profile(prov["gpu"], model, prov["gemm"], view)
        others = view_profiles(profile, prov.get("extra_families") or [])
        hists = np.array([c["hist"] for c in rows])
        ramp_idx, static_idx = picks(profile, hists, others)
        combined = combined_bank(profile, others)
        for c, r, st, u in zip(rows, ramp_idx, static_idx,
                               unguarded_picks(profile, hists, others)):
            c["ramp_config"] = combined[r].name
            c["static_config"] = profile.model.bank.configs[st].name
            c["ramp_unguarded_config"] = combined[u].name
        across[view] = [PROFILED, *(o.family for o in others)]
    return across


def finish_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill each call's ``ramp_us``, ``static_us``, ``ramp_unguarded_us``, ``oracle_us``
    and ``oracle_config`` from its measured times (None where a pick was not measured,
    or, in files from before it, not made)."""
    for c in calls:
        times = np.array([np.nan if x is None else x for x in c["times_us"]], dtype=float)
        if not np.isfinite(times).any():
            raise InputError(f"call {c['label']} ({c['view']}): no configuration measured")
        col = {name: j for j, name in enumerate(c["configs"])}
        picks = [col.get(c.get(f"{p}_config"), -1) for p in ("ramp", "static", "ramp_unguarded")]
        oracle = int(np.nanargmin(times))
        # A pick that was not timed (-1) reads the NaN appended after the last column.
        chosen = chosen_times(np.append(times, np.nan)[None, :], np.array([[*picks, oracle]]))
        for name, t in zip(("ramp", "static", "ramp_unguarded", "oracle"), chosen[0]):
            c[f"{name}_us"] = float(t) if np.isfinite(t) else None
        c["oracle_config"] = c["configs"][oracle]
        families = np.array(call_families(c))
        c["oracle_us_by_family"] = {
            f: float(np.nanmin(times[families == f])) if np.isfinite(times[families == f]).any()
            else None for f in dict.fromkeys(families.tolist())}
    return calls


def tuned_table_us(rows: Sequence[dict[str, Any]], held_out: str = "call",
                   family: str | None = None) -> list[float | None]:
    """Per call of one view: the time of the configuration that a table tuned on real
    routing per T picks, the table tuned on the view's *other* calls of that T (leave one
    out: no call picks with its own timings; ``held_out="recording"``: only calls of the
    other recordings, so the table never saw this call's data set): the configuration of
    the lowest geometric mean, over those calls, of its time relative to each call's
    best, among those timed on all of them (of ``family`` only, given one: the family
    RaMP dispatches, for a like-for-like bar). What a measured per-T table blind to the
    histogram reaches, the bar a routing-aware choice has to clear; None without such a
    call at that T."""
    out: list[float | None] = []
    for c in rows:
        others = [o for o in rows if o["tokens"] == c["tokens"] and o is not c
                  and (held_out == "call" or o["recording"] != c["recording"])]
        if not others:
            out.append(None)
            continue
        rel: dict[str, list[float]] = {}
        for o in others:
            best = min(t for t in o["times_us"] if t is not None)
            for name, t in zip(o["configs"], o["times_us"]):
                if t is not None:
                    rel.setdefault(name, []).append(math.log(t / best))
        mine = {n: t for n, t, f in zip(c["configs"], c["times_us"], call_families(c))
                if t is not None and family in (None, f)}
        scores = {n: float(np.mean(v)) for n, v in rel.items()
                  if len(v) == len(others) and n in mine}
        out.append(mine[min(scores, key=scores.get)] if scores else None)
    return out


def summarize(calls: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per view: RaMP's and the oracle's geomean speedup over static (``ramp_vs_static``,
    ``oracle_vs_static``; ``oracle_vs_static_by_family``: the best of each timed family
    alone), mean regrets against the oracle, the worst T bucket of RaMP over static, the
    fraction of the oracle's (log) gain RaMP captures, the same speedups per T, and a
    per-T table tuned on the view's other calls, one tuned on the other recordings' calls
    only, and one of the profiled family's configurations only, which RaMP chooses among
    (``tuned_table_us``: their mean regrets and RaMP's speedups over them).
    Calls whose picks were not measured are counted, not used."""
    out = {}
    for view in dict.fromkeys(c["view"] for c in calls):
        rows = [c for c in calls if c["view"] == view]
        ok = [c for c in rows if None not in (c["ramp_us"], c["static_us"], c["oracle_us"])]
        ramp, static, oracle = (np.array([c[k] for c in ok], dtype=float)
                                for k in ("ramp_us", "static_us", "oracle_us"))
        tokens = np.array([c["tokens"] for c in ok])
        families = list(dict.fromkeys(f for c in ok for f in c["oracle_us_by_family"]))
        by_tokens = {int(t): {"calls": int(np.sum(tokens == t)),
                              "ramp_vs_static": geomean((static / ramp)[tokens == t]),
                              "oracle_vs_static": geomean((static / oracle)[tokens == t]),
                              "oracle_vs_static_by_family": _family_gains(
                                  [c for c in ok if c["tokens"] == t], families)}
                     for t in np.unique(tokens)}
        g_ramp, g_oracle = geomean(static / ramp), geomean(static / oracle)
        free = [(c["static_us"], c["ramp_unguarded_us"], c["oracle_us"], c["tokens"])
                for c in ok if c.get("ramp_unguarded_us") is not None]
        free_by_tokens = {t: geomean([s / u for s, u, _, tt in free if tt == t])
                          for t in dict.fromkeys(f[3] for f in free)}
        tables = {name: [(t, c) for t, c in zip(tuned_table_us(ok, held_out, family), ok)
                         if t is not None]
                  for name, held_out, family in (
                      ("tuned_table", "call", None),
                      ("tuned_table_other_recording", "recording", None),
                      (f"tuned_table_{PROFILED}", "call", PROFILED))}
        worst = min(by_tokens, key=lambda t: by_tokens[t]["ramp_vs_static"]) if ok else None
        out[view] = {
            "calls": len(ok), "unmeasured_picks": len(rows) - len(ok),
            "ramp_vs_static": g_ramp, "oracle_vs_static": g_oracle,
            "oracle_vs_static_by_family": _family_gains(ok, families),
            "ramp_mean_regret": float(np.mean(ramp / oracle - 1)) if ok else None,
            "static_mean_regret": float(np.mean(static / oracle - 1)) if ok else None,
            "ramp_vs_static_worst_tokens": None if worst is None
            else by_tokens[worst]["ramp_vs_static"],
            "worst_tokens": worst,
            # the plain argmin of the same model, over the calls whose pick of it was
            # timed (older files: none)
            "ramp_unguarded_calls": len(free),
            "ramp_unguarded_vs_static": geomean([s / u for s, u, _, _ in free])
            if free else None,
            "ramp_unguarded_mean_regret": float(np.mean([u / o - 1 for _, u, o, _ in free]))
            if free else None,
            "ramp_unguarded_vs_static_worst_tokens": min(free_by_tokens.values())
            if free else None,
            "oracle_gain_captured": math.log(g_ramp) / math.log(g_oracle)
            if g_oracle is not None and g_oracle > 1 + 1e-9 else None,
            **{f"{name}_mean_regret": float(np.mean([t / c["oracle_us"] - 1 for t, c in got]))
               if got else None for name, got in tables.items()},
            **{f"ramp_vs_{name}": geomean([t / c["ramp_us"] for t, c in got]) if got else None
               for name, got in tables.items()},
            "by_tokens": by_tokens,
        }
    return out


def _family_gains(calls: Sequence[dict[str, Any]], families: Sequence[str]
                  ) -> dict[str, float | None]:
    """Geomean of static / the best configuration of each family, over ``calls``."""
    return {f: geomean([c["static_us"] / c["oracle_us_by_family"][f] for c in calls
                        if c["oracle_us_by_family"].get(f) is not None]) for f in families}


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as text: one block per view, one line per T."""
    lines = []
    for view, s in summary.items():
        lines.append(f"{view}: ramp/static {_f(s['ramp_vs_static'])}x, oracle/static "
                     f"{_f(s['oracle_vs_static'])}x, RaMP mean regret "
                     f"{_pct(s['ramp_mean_regret'])} (static {_pct(s['static_mean_regret'])}), "
                     f"worst T={s['worst_tokens']} {_f(s['ramp_vs_static_worst_tokens'])}x, "
                     f"oracle gain captured {_pct(s['oracle_gain_captured'])}; a per-T "
                     f"table tuned on the other calls: regret "
                     f"{_pct(s.get('tuned_table_mean_regret'))}, RaMP / it "
                     f"{_f(s.get('ramp_vs_tuned_table'))}x (tuned on the other recordings: "
                     f"{_pct(s.get('tuned_table_other_recording_mean_regret'))}, "
                     f"{_f(s.get('ramp_vs_tuned_table_other_recording'))}x; of {PROFILED} "
                     f"only: {_pct(s.get(f'tuned_table_{PROFILED}_mean_regret'))}, "
                     f"{_f(s.get(f'ramp_vs_tuned_table_{PROFILED}'))}x); unguarded: "
                     f"{_f(s.get('ramp_unguarded_vs_static'))}x, regret "
                     f"{_pct(s.get('ramp_unguarded_mean_regret'))}, worst T "
                     f"{_f(s.get('ramp_unguarded_vs_static_worst_tokens'))}x")
        families = list(s.get("oracle_vs_static_by_family") or {})
        extra = families if len(families) > 1 else []  # one family: its oracle is the oracle
        lines.append(f"  {'T':>5} {'calls':>5} {'ramp/static':>11} {'oracle/static':>13}"
                     + "".join(f" {f + ' alone':>18}" for f in extra))
        for t, b in s["by_tokens"].items():
            alone = b.get("oracle_vs_static_by_family") or {}
            lines.append(f"  {t:>5} {b['calls']:>5} {_f(b['ramp_vs_static']):>11} "
                         f"{_f(b['oracle_vs_static']):>13}"
                         + "".join(f" {_f(alone.get(f)):>18}" for f in extra))
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Per view: geomean microseconds per T of static, RaMP and the oracle (top) and
    their speedups over static, per batching (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [c for c in result["calls"] if c["ramp_us"] is not None and c["static_us"]
             is not None]
    views = list(dict.fromkeys(c["view"] for c in calls))
    fig, axes = plt.subplots(2, len(views), figsize=(4.4 * len(views), 6.8), sharex=True,
                             sharey="row", squeeze=False)
    for col, view in enumerate(views):
        rows = [c for c in calls if c["view"] == view]
        top, bottom = axes[0][col], axes[1][col]
        tokens = sorted({c["tokens"] for c in rows})
        for key, name, style in (("static_us", "static", "C1s-"), ("ramp_us", "RaMP", "C0o-"),
                                 ("oracle_us", "oracle", "k^--")):
            top.plot(tokens, [geomean([c[key] for c in rows if c["tokens"] == t])
                              for t in tokens], style, label=name, ms=4)
        families = list(dict.fromkeys(f for c in rows for f in c.get("oracle_us_by_family", {})))
        for k, family in enumerate(families if len(families) > 1 else []):
            top.plot(tokens, [geomean([c["oracle_us_by_family"][family] for c in rows
                                       if c["tokens"] == t
                                       and c["oracle_us_by_family"][family] is not None])
                              for t in tokens], color=f"C{k + 2}", ls=":", marker="v", ms=3,
                     label=f"best {family}")
        for order, dash in (("consecutive", "-"), ("shuffled", ":")):
            sel = [c for c in rows if c["order"] == order]
            ts = sorted({c["tokens"] for c in sel})
            for key, name, color in (("ramp_us", "RaMP", "C0"), ("oracle_us", "oracle", "k")):
                bottom.plot(ts, [geomean([c["static_us"] / c[key] for c in sel
                                          if c["tokens"] == t]) for t in ts],
                            color=color, ls=dash, marker="o", ms=3, label=f"{name}, {order}")
        bottom.axhline(1.0, color="C1", lw=1, label="static")
        bottom.axhline(0.995, color="C3", lw=0.8, ls="--", label="guard 0.995")
        top.set_yscale("log")
        top.set_title(view)
        bottom.set_xlabel("tokens per step T")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("microseconds (geomean)")
    axes[1][0].set_ylabel("speedup over static")
    axes[0][-1].legend(fontsize=7)
    axes[1][-1].legend(fontsize=6)
    device = result.get("device", {})
    fig.suptitle(f"real routing: {device.get('device', '?')} {result.get('problem', '')}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


REQUIRED = ("label", "tokens", "view", "order", "configs", "times_us", "ramp_config",
            "static_config")


def report(path: Path, again: bool = False) -> dict[str, Any]:
    """Recompute every call's picks' times, the summary and the plot from a result file;
    rewrites its ``summary`` (and ``calls`` times) in place. ``again``: the picks are
    made anew first (``repick``)."""
    from ramp.plaindata import read_json

    result = read_json(path, "real-routing result")
    calls = result.get("calls") if isinstance(result, dict) else None
    if not isinstance(calls, list) or not calls:
        raise InputError(f"{path}: field 'calls' must be a non-empty list")
    for i, c in enumerate(calls):
        missing = [k for k in REQUIRED if not isinstance(c, dict) or k not in c]
        if missing:
            raise InputError(f"{path}: calls[{i}]: missing field {missing[0]!r}")
        for key in ("times_us", "families"):
            if key in c and len(c[key]) != len(c["configs"]):
                raise InputError(f"{path}: calls[{i}]: field {key!r} has {len(c[key])} "
                                 f"entries for {len(c['configs'])} configs")
    if again:
        for view, families in repick(result).items():
            result.setdefault("views", {}).setdefault(view, {})["ramp_families"] = families
    result["summary"] = summarize(finish_calls(calls))
    write(result, path)
    return result


def write(result: dict[str, Any], path: Path) -> None:
    """The JSON (gzip-compressed for a ``.gz`` name, reproducibly: no time stamp in the
    stream), and the plot beside it."""
    text = (json.dumps(result, indent=1) + "\n").encode()
    path.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
    plot(result, plot_path(path))


def load_recordings(data: Path, model: MoEModel) -> list[tuple[str, TokenRouting]]:
    """Every ``*.npz`` recording of ``data``, by name."""
    paths = sorted(data.glob("*.npz")) if data.is_dir() else []
    if not paths:
        raise InputError(f"option --data: {data}: no *.npz routing recordings")
    return [(p.stem, read_recording(p, model)) for p in paths]


def measure(args: argparse.Namespace, command: str) -> Path:
    """Build the calls, print the estimate, time every view, write the result."""
    from ramp.families import get_family
    from ramp.hardware import detect_gpu

    model = get_model(args.model)
    views = args.views.split(",")
    for v in views:
        view_degree(v)
    recordings = load_recordings(Path(args.data), model)
    calls = build_calls(recordings, positive_ints(args.tokens, "--tokens"), views, args.placement,
                        args.samples, args.seed)
    gpu = detect_gpu().name
    extra = args.extra_families
    plan = {}
    for view in views:
        sel = [c for c in calls if c.view == view]
        profile = view_profile(gpu, model, args.gemm, view)
        others = view_profiles(profile, extra)
        ramp_idx, static_idx = choices(profile, sel, others)
        free = unguarded_picks(profile, np.stack([c.hist for c in sel]), others)
        own = len(profile.model.bank)
        must = np.concatenate([ramp_idx[ramp_idx < own], free[free < own], static_idx])
        timed = configs_to_time(own, must, args.max_configs)
        combined = combined_bank(profile, others)
        plan[view] = (sel, profile, (ramp_idx, static_idx, free), timed, combined, others)
    problem_of = {v: view_problem(model, args.gemm, v) for v in views}
    extra_configs = {f: get_family(f).configs(problem_of[views[0]].dtype_bytes) for f in extra}
    n_extra = sum(len(c) for c in extra_configs.values())
    est = estimate_seconds({v: len(p[0]) for v, p in plan.items()},
                           {v: len(p[4]) + n_extra for v, p in plan.items()}, 1 + len(extra))
    print(f"{len(calls)} calls ({', '.join(f'{v}: {len(p[0])} x {len(p[4])} configs' for v, p in plan.items())}"
          + (f", plus {n_extra} of {', '.join(extra)}" if extra else "")
          + f"); expected device time ~{est / 60:.1f} min", flush=True)
    t0 = time.monotonic()
    records, views_info, device = [], {}, None
    for n, (view, (sel, profile, (ramp_idx, static_idx, free), timed, combined, others)) in \
            enumerate(plan.items()):
        problem, bank = problem_of[view], profile.model.bank.configs
        progress = f"[{n + 1}/{len(plan)}] "
        times, check = time_view(problem, PROFILED, [bank[k] for k in timed], sel, args.seed,
                                 progress)
        device = check.pop("device")
        names, families = [bank[k].name for k in timed], [PROFILED] * len(timed)
        extra_checks = {}
        for family, configs in extra_configs.items():
            more, extra_checks[family] = time_view(problem, family, configs, sel, args.seed,
                                                   progress)
            extra_checks[family].pop("device")
            times = np.concatenate([times, more], axis=1)
            names += [c.name for c in configs]
            families += [family] * len(configs)
        records += [call_record(c, times[i], names, families, combined[ramp_idx[i]].name,
                                bank[static_idx[i]].name, combined[free[i]].name)
                    for i, c in enumerate(sel)]
        views_info[view] = {"problem": problem.key, "profile": profile.key,
                            "ramp_families": [PROFILED, *(o.family for o in others)],
                            "placement": None if view == "full" else args.placement,
                            "configs_timed": len(timed), "bank_configs": len(bank), **check,
                            "extra_families": {f: {"configs_timed": len(extra_configs[f]),
                                                   **extra_checks[f]} for f in extra}}
    finish_calls(records)
    result = {
        "device": device, "command": command,
        "provenance": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "gpu": gpu, "data": sorted(p.name for p in Path(args.data).glob("*.npz")),
                       "model": model.name, "gemm": args.gemm, "seed": args.seed,
                       "samples": args.samples, "max_configs": args.max_configs,
                       "extra_families": extra,
                       "wall_seconds": round(time.monotonic() - t0, 1),
                       "estimated_seconds": round(est, 1)},
        "problem": model.problem(args.gemm).key, "views": views_info, "calls": records,
    }
    result["summary"] = summarize(records)
    out = Path(args.out) / output_name(args.gemm)
    out.parent.mkdir(parents=True, exist_ok=True)
    write(result, out)
    print(table(result["summary"]))
    print(f"wrote {out} and {plot_path(out).name} in {time.monotonic() - t0:.0f} s "
          f"(estimated {est:.0f} s)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder of *.npz routing recordings")
    ap.add_argument("--gemm", choices=["w13", "w2"], default="w13")
    ap.add_argument("--model", default="deepseek-v2-lite", help="catalog model of the routing")
    ap.add_argument("--out", help="output folder (real-routing-<gemm>.json and .png)")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="T values")
    ap.add_argument("--views", default=",".join(VIEWS), help="full and/or epN")
    ap.add_argument("--placement", choices=["contiguous", "balanced"], default="contiguous",
                    help="expert placement of the EP views (balanced: EPLB-style greedy on "
                         "the recording's own load)")
    ap.add_argument("--samples", type=int, default=1,
                    help="(batch, layer) picks per recording, T and batching")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-configs", type=int, default=None,
                    help="time at most this many configurations per view (always the "
                         "dispatchers' picks); the oracle is then over those only")
    ap.add_argument("--extra-families", default=None, metavar="NAMES",
                    help="comma-separated families timed beside the Triton bank on every "
                         "call (e.g. triton-tiles); the oracle is the best of all, and "
                         "oracle_vs_static_by_family says what each family alone reaches")
    ap.add_argument("--report", type=Path, metavar="FILE",
                    help="no GPU: recompute summary, table and plot of a result file")
    ap.add_argument("--repick", action="store_true",
                    help="with --report: RaMP's and static's picks made again by this "
                         "RaMP and the shipped profiles (e.g. a new family's), on the "
                         "histograms and timings in the file")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    try:
        if args.report:
            print(table(report(args.report, args.repick)["summary"]))
            print(f"rewrote {args.report} and {plot_path(args.report).name}")
            return 0
        for option in ("data", "out"):
            if getattr(args, option) is None:
                raise InputError(f"option --{option} is required (or --report FILE)")
        if args.samples < 1 or (args.max_configs is not None and args.max_configs < 1):
            raise InputError("options --samples and --max-configs must be >= 1")
        args.extra_families = extra_families(args.extra_families)
        measure(args, "python3 bench/real_routing.py " + " ".join(argv))
    except RampError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
