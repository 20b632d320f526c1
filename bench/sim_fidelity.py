"""How well ``ramp-sim`` predicts measured vLLM serving runs, before and after calibration.

For every engine results file (``bench/results/engine/<GPU>_<model>_<workload>.json``,
written by ``bench/engine/bench.py``), each ``ramp_mode`` is simulated with the same
requests. The MoE is costed ``--moe-costs plan`` (default) from the measured layer plan
the engine's dispatch mode ran (``ramp/data/plans``): off and record runs under
``plan-engine`` (the plan's times of vLLM's own kernel), dispatch runs under ``plan``
(the plan's chosen path per batch size), so the dispatch/off ratio comes from one
measured source; or ``--moe-costs model``, per GEMM from the cost model (off and record:
``static``, dispatch: ``ramp``). The other way is computed too (``alternative``: its
summary and RaMP gains; ``--no-alternative`` skips it). Runs are simulated with (prompt and
output lengths, arrival offsets or all at once), ``max_num_seqs`` and
``max_num_batched_tokens``, the GPU's profiles where ``ramp.profile`` has them (the
analytic wave model otherwise; each row names its source), the largest CUDA-graph capture size
(larger steps run eager), and
the routing of the run's weights: dummy weights without re-spread routers send every
token to experts ``0 .. top_k-1`` (``collapsed_pool``), else the model's shipped routing
trace (its synthetic default routing where none is shipped). The engine's
``gpu_memory_utilization`` (``engine_config.engine_args``) sizes the simulated KV cache,
unless the file says the KV cache the engine allocated (``kv_cache_tokens`` per mode,
``bench.py`` since the thirteenth session): then that is the simulated capacity.
Runs of ``bench.py --concurrent`` (two engines sharing one GPU, each with half its
memory) are simulated as one engine alone on the GPU and flagged ``concurrent``: their
measured times include the other engine's contention, which the simulator does not model.

Held out by workload: the calibration that predicts model ``M``'s runs of workload ``W``
is fitted (``ramp.sim.calibrate.calibrate_runs``) on ``M``'s runs of every other
workload (``--across-models``: every model's), so no prediction has seen its own run.
With a single workload in the directory the folds are by model instead; a fold with
nothing to train on gets no calibrated prediction (null). Uncalibrated = the default
``Calibration``.

    python bench/sim_fidelity.py [--dir bench/results/engine] [--out .../sim_fidelity.json]
                                 [--across-models] [--model NAME] [--trace FILE]

``--trace`` adds a recorded trace's measured step times (``step_ms``) to every fold that
trains on its model, each step an equation as ``ramp-sim calibrate`` takes them: the
overheads are then pinned by thousands of steps of another run (DeepSeek-V2-Lite's
recorded trace: ``docs/sim.md`` for what that did to the held-out errors).

writes one row per (run, metric): ``model``, ``workload``, ``policy``, ``metric``,
``measured``, ``predicted_uncalibrated``, ``predicted_calibrated``, ``error`` (relative,
calibrated: predicted / measured - 1), ``error_uncalibrated``, ``held_out_by``,
``trained_on``, ``routing``; a summary of mean absolute errors per metric; and
``ramp_gain``: per model and workload, dispatch / off throughput and off / dispatch TPOT
p50, measured and predicted (calibrated); ``ttft_by_state``: per online run whose
results file keeps each request's times, where the TTFT error sits (``ttft_by_state()``);
``decode_gaps``: per online run whose file pools its token gaps, their quantiles measured
and predicted (``decode_gaps()``).
CPU only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError, RampError
from ramp.models import get_model
from ramp.sim.calibrate import (
    FITTED,
    MODES,
    MOE_COSTS,
    RUN_ROUTINGS,
    EngineRun,
    EquationsAt,
    Simulated,
    calibrate_runs,
    closed_loop,
    load_engine_results,
    simulate_run,
    trace_fit,
)
from ramp.sim.costs import EAGER_STEPS, Calibration
from ramp.sim.routing import RoutingPool
from ramp.trace import TraceReader

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "engine"
OUTPUT_NAME = "sim_fidelity.json"
DEFAULT_CALIBRATION = Calibration()


def _folds(runs: Sequence[EngineRun], across_models: bool = False
           ) -> tuple[str, dict[tuple[str, str], list[EngineRun]]]:
    """(axis, {held-out (model, value): runs}) for leave-one-workload-out (else -model-out).
    Per model by default (a calibration belongs to one engine, model and GPU: the
    host path and attention kernels differ between, say, MLA and GQA models); with
    ``across_models`` every model's runs of the other workloads train together (model
    ``"*"`` in the key)."""
    axis = "workload" if len({r.workload for r in runs}) > 1 else "model"
    if axis == "model":
        across_models = True  # one workload: hold out by model, trained on the others
    folds: dict[tuple[str, str], list[EngineRun]] = {}
    for run in runs:
        folds.setdefault(("*" if across_models else run.model, getattr(run, axis)),
                         []).append(run)
    return axis, folds


def ramp_gain(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, workload): RaMP's dispatch / off gain in throughput and TPOT p50 (both
    ``> 1`` is better), measured and predicted (calibrated), from the rows of the
    results files that ran both modes. A file whose dispatch engine served no RaMP call
    (simulated with the engine's policy, like its off runs) has no gain to predict: its
    pair is an A/A check of the harness and is left out."""
    by: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["source"], r["model"], r["workload"]), {})[
            f"{r['ramp_mode']}:{r['metric']}"] = r
    out = []
    for (source, model, workload), got in by.items():
        entry: dict[str, Any] = {"model": model, "workload": workload,
                                 "source": Path(source).name}
        for metric, invert in (("throughput_tok_s", False), ("tpot_p50_s", True)):
            off, on = got.get(f"off:{metric}"), got.get(f"dispatch:{metric}")
            if off is None or on is None or on["policy"] == off["policy"]:
                continue
            for what in ("measured", "predicted_calibrated"):
                a, b = off[what], on[what]
                entry[f"{metric}_{what}"] = (None if a is None or b is None
                                             else (a / b if invert else b / a))
        if len(entry) > 3:
            out.append(entry)
    return out


def fidelity(runs: Sequence[EngineRun], base: Calibration = DEFAULT_CALIBRATION,
             profiles: Sequence[str] = (), across_models: bool = False,
             steps: dict[str, list[EquationsAt]] | None = None) -> dict[str, Any]:
    """Rows and summary (module docstring) for measured engine ``runs``; ``steps``:
    per model, recorded traces' measured step times (``trace_fit``), added to every fold
    that trains on that model."""
    pools: dict[str, RoutingPool] = {}
    axis, folds = _folds(runs, across_models)
    rows: list[dict[str, Any]] = []
    ttft_states: list[dict[str, Any]] = []
    token_gaps: list[dict[str, Any]] = []
    calibrations: dict[str, Any] = {}
    for (model, held), tested in folds.items():
        train = [r for r in runs if getattr(r, axis) != held and model in ("*", r.model)]
        extra = [e for m, eqs in (steps or {}).items() if model in ("*", m) for e in eqs]
        cal = (calibrate_runs(train, base, profiles, extra=extra, pools=pools) if train
               else None)
        calibrations[held if model == "*" else f"{model}/{held}"] = (
            None if cal is None else {k: getattr(cal, k) for k in FITTED})
        for run in tested:
            before = simulate_run(run, base, pools, profiles)
            calibrated = simulate_run(run, cal, pools, profiles) if cal else None
            after = calibrated.metrics if calibrated else None
            states = ttft_by_state(run, calibrated) if calibrated else None
            if states:
                ttft_states.append({"source": run.source, "ramp_mode": run.ramp_mode,
                                    "model": run.model, "groups": states})
            gaps = decode_gaps(run, calibrated) if calibrated else None
            if gaps:
                token_gaps.append({"source": run.source, "ramp_mode": run.ramp_mode,
                                   "model": run.model, **gaps})
            source = " | ".join(lay.moe_source for lay in before.coster.layouts.values())
            for metric, measured in run.measured.items():
                pred = after[metric] if after else None
                rows.append({
                    "model": run.model, "workload": run.workload, "policy": run.policy,
                    "ramp_mode": run.ramp_mode,
                    "source": run.source, "metric": metric, "measured": measured,
                    "predicted_uncalibrated": before.metrics[metric],
                    "predicted_calibrated": pred,
                    "error": None if pred is None else pred / measured - 1,
                    "error_uncalibrated": before.metrics[metric] / measured - 1,
                    "held_out_by": axis, "trained_on": "all models" if model == "*" else model,
                    "moe_cost_source": source, "routing": run.routing,
                    "concurrent": run.concurrent,
                })
    summary: dict[str, dict[str, float | None]] = {}
    for metric in dict.fromkeys(r["metric"] for r in rows):
        sel = [r for r in rows if r["metric"] == metric]
        cal_err = [abs(r["error"]) for r in sel if r["error"] is not None]
        summary[metric] = {
            "runs": len(sel),
            "mean_abs_error_uncalibrated": float(np.mean([abs(r["error_uncalibrated"])
                                                          for r in sel])),
            "mean_abs_error_calibrated": float(np.mean(cal_err)) if cal_err else None,
        }
    return {"held_out_by": axis, "across_models": across_models,
            "base_calibration": dataclasses.asdict(base),
            "calibrations_by_fold": calibrations, "summary": summary,
            "ramp_gain": ramp_gain(rows), "ttft_by_state": ttft_states,
            "decode_gaps": token_gaps, "rows": rows}


@functools.lru_cache(maxsize=8)
def measured_runs(source: str) -> list[dict[str, Any]]:
    """A results file's ``runs`` (read once for both of its modes)."""
    return json.loads(Path(source).read_text()).get("runs", [])


def decode_gaps(run: EngineRun, sim: Simulated) -> dict[str, Any] | None:
    """The gaps between a request's tokens, measured (``bench.py``'s pooled
    ``itl_ms_quantiles``, median over the mode's repeats) against the calibrated
    simulation's (every step's time once per request it decoded): which steps a TPOT
    error comes from, decode-only ones (the low quantiles) or those that also prefill
    (the high ones). None where the results file has no gaps for this run's mode."""
    measured = [r["itl_ms_quantiles"] for r in measured_runs(run.source)
                if r.get("ramp_mode") == run.ramp_mode and r.get("itl_ms_quantiles")]
    res = sim.run
    if not measured or not res.step_decode.any():
        return None
    quantiles = list(measured[0])
    gaps = np.repeat(res.step_time, res.step_decode) * 1e3
    return {"quantiles": [float(q) for q in quantiles],
            "measured_ms": [float(np.median([m[q] for m in measured])) for q in quantiles],
            "predicted_ms": [float(np.percentile(gaps, float(q))) for q in quantiles]}


def ttft_by_state(run: EngineRun, sim: Simulated) -> list[dict[str, Any]] | None:
    """Where a run's TTFT error sits, from its measured per-request times (``bench.py``
    keeps each online request's arrival, first-token and done times): medians of
    measured and calibrated-predicted TTFT, and of their per-request gap, over the
    requests that arrived to an idle engine (every earlier request done, as measured),
    and over the others by prompt length: at most the largest CUDA-graph size or above
    (a busy step's size also counts its decodes, so this is the prompt's size, not the
    step's kind). ``gap_ms_p50`` is the median of per-request gaps. None where the
    results file has no per-request times for this run's mode, or a repeat holds
    another count of requests."""
    repeats = [r["requests"] for r in measured_runs(run.source)
               if r.get("ramp_mode") == run.ramp_mode and r.get("requests")]
    if not repeats or any(len(reqs) != len(run.inputs) for reqs in repeats):
        return None
    # a file's requests are in request order; the simulator's run in arrival order (a
    # stable sort of the same offsets): pair them by that permutation
    offsets = run.arrivals if run.arrivals is not None else [0.0] * len(run.inputs)
    order = np.argsort(np.asarray(offsets, dtype=float), kind="stable")
    times = {key: np.array([[reqs[i][key] for i in order] for reqs in repeats])
             for key in ("arrival", "first", "done")}
    arrival, done = times["arrival"][0], times["done"][0]
    done_before = np.concatenate([[-np.inf], np.maximum.accumulate(done)[:-1]])
    idle = done_before < arrival
    long = np.asarray(run.inputs)[order] > sim.coster.graph_tokens
    measured = np.median(times["first"] - times["arrival"], axis=0) * 1e3
    res = sim.run
    predicted = (res.first_token - res.arrival) * 1e3
    served = res.first_token >= 0  # a request the simulator rejected has no TTFT
    groups = []
    for state, sel in (("idle", idle), ("busy, prompt <= graph size", ~idle & ~long),
                       ("busy, prompt > graph size", ~idle & long)):
        sel = sel & served
        if sel.any():
            groups.append({"state": state, "requests": int(sel.sum()),
                           "measured_ms_p50": float(np.median(measured[sel])),
                           "predicted_ms_p50": float(np.median(predicted[sel])),
                           "gap_ms_p50": float(np.median(measured[sel] - predicted[sel]))})
    return groups


def trace_steps(traces: Sequence[str], runs: Sequence[EngineRun], moe_costs: str,
                args: argparse.Namespace) -> dict[str, list[EquationsAt]]:
    """Per model, the step equations of ``traces`` around any calibration (recorded in
    record mode: the engine's own kernel ran, costed like the off runs), on the GPU of
    that model's runs."""
    out: dict[str, list[EquationsAt]] = {}
    for path in traces:
        with TraceReader(path) as reader:
            model = get_model(reader.header.model).name
        gpus = {r.gpu for r in runs if r.model == model}
        if len(gpus) != 1:
            raise InputError(f"--trace {path}: its model {model} has runs on {sorted(gpus)} "
                             "here; need exactly one GPU")
        out.setdefault(model, []).append(trace_fit(
            path, gpus.pop(), MODES[moe_costs]["record"], args.profile, args.plan))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="folder of engine results files (default: %(default)s)")
    parser.add_argument("--out", type=Path, help=f"default: DIR/{OUTPUT_NAME}")
    parser.add_argument("--profile", action="append", default=[],
                        help="profile JSON for the simulated GPU (repeatable)")
    parser.add_argument("--moe-costs", choices=MOE_COSTS, default="plan",
                        help="MoE from the layer plan (per layer, measured) or the cost "
                             "model (per GEMM) (default: %(default)s)")
    parser.add_argument("--no-alternative", action="store_true",
                        help="skip the other --moe-costs way (its summary and RaMP gains)")
    parser.add_argument("--plan", action="append", default=[],
                        help="layer plan JSON before the embedded ones (repeatable)")
    parser.add_argument("--trace", action="append", default=[], metavar="FILE",
                        help="a recorded trace whose steps carry step_ms (repeatable): its "
                             "steps join every fold that trains on its model (a trace has "
                             "no context lengths, so it informs the overheads, not "
                             "attention)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="only this catalog model's runs (repeatable)")
    parser.add_argument("--routing", choices=("all", *RUN_ROUTINGS), default="all",
                        help="only the runs of this routing: 'trace' (spread routers or "
                             "real weights, what serving sees) or 'collapsed' (dummy "
                             "weights, every token on the same experts)")
    parser.add_argument("--across-models", action="store_true",
                        help="train each fold on every model's other workloads (default: "
                             "the held-out run's own model only)")
    parser.add_argument("--eager-host-fraction", type=float,
                        default=DEFAULT_CALIBRATION.eager_host_fraction, metavar="F",
                        help="share of a plan path's host time beyond the engine's per "
                             "eager MoE call that an eager step pays (Calibration; "
                             "default %(default)s)")
    parser.add_argument("--eager-step", choices=EAGER_STEPS,
                        default=DEFAULT_CALIBRATION.eager_step,
                        help="how an eager step's host and GPU time combine (Calibration; "
                             "max: the longer of the two; default %(default)s)")
    args = parser.parse_args(argv)
    paths = []
    for p in sorted(args.dir.glob("*.json")):
        if p.name.startswith(OUTPUT_NAME.removesuffix(".json")):  # this script's outputs
            continue
        if closed_loop(json.loads(p.read_text()).get("workload") or {}):
            print(f"{p.name}: closed-loop workload, not simulated (load_engine_results)")
            continue
        paths.append(p)
    if not paths:
        print(f"{args.dir}: no engine results files (*.json)", file=sys.stderr)
        return 2
    try:
        base = dataclasses.replace(DEFAULT_CALIBRATION,
                                   eager_host_fraction=args.eager_host_fraction,
                                   eager_step=args.eager_step)
        runs = [r for p in paths for r in load_engine_results(p, args.moe_costs, args.plan)]
        if args.model:
            wanted = {get_model(m).name for m in args.model}
            runs = [r for r in runs if r.model in wanted]
        if args.routing != "all":
            runs = [r for r in runs if r.routing == args.routing]
        paths = [p for p in paths if any(r.source == str(p) for r in runs)]
        if not runs:
            print(f"{args.dir}: no runs of the chosen models and routing", file=sys.stderr)
            return 2
        result = {"moe_costs": args.moe_costs, "traces": [str(t) for t in args.trace],
                  **fidelity(runs, base, profiles=args.profile,
                             across_models=args.across_models,
                             steps=trace_steps(args.trace, runs, args.moe_costs, args))}
        if not args.no_alternative:
            other = next(m for m in MOE_COSTS if m != args.moe_costs)
            alt = fidelity([r.with_moe_costs(other, args.plan) for r in runs], base,
                           profiles=args.profile, across_models=args.across_models,
                           steps=trace_steps(args.trace, runs, other, args))
            result["alternative"] = {"moe_costs": other, "summary": alt["summary"],
                                     "ramp_gain": alt["ramp_gain"],
                                     "calibrations_by_fold": alt["calibrations_by_fold"]}
    except RampError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.dir / OUTPUT_NAME
    devices = sorted({json.dumps(json.loads(p.read_text()).get("device"), sort_keys=True)
                      for p in paths})
    result = {"command": "python3 bench/sim_fidelity.py " + " ".join(argv or sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": [json.loads(d) for d in devices],  # of the measured runs
              "sources": [p.name for p in paths], **result}
    out.write_text(json.dumps(result, indent=1) + "\n")
    for part in (result, result.get("alternative")):
        if part is None:
            continue
        print(f"MoE costs: {part['moe_costs']}")
        for metric, s in part["summary"].items():
            cal = s["mean_abs_error_calibrated"]
            print(f"{metric:>18}: {s['runs']} runs, mean |error| uncalibrated "
                  f"{s['mean_abs_error_uncalibrated']:.1%}, calibrated (held out by "
                  f"{result['held_out_by']}"
                  + (", all models" if result["across_models"] else ", per model") + ") "
                  + ("-" if cal is None else f"{cal:.1%}"))
        for t in part.get("ttft_by_state", []):
            print(f"  TTFT {Path(t['source']).name} {t['ramp_mode']}: " + "; ".join(
                f"{g['state']} ({g['requests']}) measured {g['measured_ms_p50']:.0f} ms, "
                f"predicted {g['predicted_ms_p50']:.0f}" for g in t["groups"]))
        for t in part.get("decode_gaps", []):
            print(f"  token gaps {Path(t['source']).name} {t['ramp_mode']} (quantile: "
                  "measured / predicted ms): " + ", ".join(
                      f"p{q:g} {m:.1f} / {p:.1f}" for q, m, p in
                      zip(t["quantiles"], t["measured_ms"], t["predicted_ms"])))
        for g in part["ramp_gain"]:
            fmt = (lambda v: "-" if v is None else f"{v:.3f}x")  # noqa: E731
            print(f"  RaMP gain {g['source']}: throughput measured "
                  f"{fmt(g.get('throughput_tok_s_measured'))}, predicted "
                  f"{fmt(g.get('throughput_tok_s_predicted_calibrated'))}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
