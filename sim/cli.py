"""``ramp-sim``: replay routing traces through the serving simulator, sweep what-ifs,
and make, convert and inspect traces."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from ramp.clitools import (
    ErrorGroup,
    FilePath,
    FiniteFloat,
    check_output_dir,
    check_output_file,
    check_plot_file,
    positive_ints,
)
from ramp.errors import InputError
from ramp.expert_parallel import PLACEMENTS
from ramp.histograms import MAX_TOKENS
from ramp.plaindata import from_mapping, read_yaml, write_atomically
from ramp.sim.calibrate import MOE_COSTS
from ramp.sim.costs import EAGER_STEPS, Calibration
from ramp.sim.engine import MAX_BATCHED_TOKENS, MODES, EngineConfig, SwitchConfig
from ramp.sim.metrics import SLO, plot_runs
from ramp.sim.moe import SIM_POLICIES
from ramp.sim.routing import MAX_SAMPLES
from ramp.sim.runner import MAX_GPUS, SimConfig, build_layouts, load_pool, resolve_model, run_study
from ramp.sim.whatif import format_results, run_scenario
from ramp.sim.workload import (
    DEFAULT_ARRIVALS,
    MAX_REQUESTS,
    LengthDist,
    SyntheticWorkload,
    embedded_names,
    load_arrivals,
    resolve_path,
)

SEED = click.IntRange(0, 2 ** 63 - 1)
POSITIVE = FiniteFloat(0, low_open=True)
STEPS = click.IntRange(0, 100_000)
TOKENS = click.IntRange(1, MAX_TOKENS)


@click.group(cls=ErrorGroup)
def main() -> None:
    """Trace-driven MoE serving simulator: what RaMP dispatch gains end to end."""


def _new_output(out: str, force: bool, inputs: tuple[str, ...] = ()) -> None:
    """A converter's OUT: never one of its inputs, and an existing file only with
    ``--force`` (what was there is not lost by a mistyped argument)."""
    target = Path(out).resolve()
    if any(Path(i).resolve() == target for i in inputs):
        raise InputError(f"{out}: is also an input of this command; write elsewhere")
    if target.exists() and not force:
        raise InputError(f"{out}: exists; pass --force to replace it")
    check_output_file(out, "OUT")


FORCE = click.option("--force", is_flag=True, help="Replace OUT if it exists.")


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        text = json.dumps(data, indent=1, default=float) + "\n"
        write_atomically(path, lambda tmp: tmp.write_text(text), "JSON")
        click.echo(f"wrote {path}")


@main.command()
@click.argument("trace")
@click.option("--arrivals", default=DEFAULT_ARRIVALS, show_default=True,
              help="Request arrivals: RaMP arrivals JSONL, Azure LLM trace CSV, or a shipped "
                   "name. The default is the Azure 2023 conversation trace (1 hour, 19366 "
                   "requests).")
@click.option("--time-scale", type=POSITIVE, default=1.0, show_default=True,
              help="Multiply arrival times (0.5 = twice the load).")
@click.option("--requests", type=click.IntRange(1, MAX_REQUESTS),
              help="Use only the first N arrivals.")
@click.option("--rate", type=POSITIVE,
              help="Instead of --arrivals: Poisson arrivals at this rate (req/s); "
                   "--requests of them (default 1000), lognormal lengths.")
@click.option("--prompt-mean", type=FiniteFloat(1), default=1024, show_default=True)
@click.option("--output-mean", type=FiniteFloat(1), default=256, show_default=True)
@click.option("--gpu", default="H100-SXM", show_default=True)
@click.option("--gpus", type=click.IntRange(1, MAX_GPUS),
              help="GPUs of the replica (default: fewest that fit).")
@click.option("--model", "model_name", help="Catalog model (default: the trace's).")
@click.option("--mode", type=click.Choice(MODES), default="tp", show_default=True,
              help="Layout: tensor-parallel, expert-parallel (DP attention), or switching "
                   "between them with load.")
@click.option("--ep-placement", type=click.Choice(PLACEMENTS), default="contiguous",
              show_default=True,
              help="Expert placement under EP: contiguous id blocks, or balanced per layer "
                   "by the trace's load (EPLB-style greedy).")
@click.option("--policy", "policies", default="static,ramp", show_default=True,
              help="Comma-separated dispatch policies: per GEMM from the cost model "
                   "(static, ramp, ramp-unguarded) or whole layers from a measured layer "
                   "plan (plan: RaMP's dispatch mode, plan-engine: the engine's kernel).")
@click.option("--plan", "plans", multiple=True, type=FilePath(exists=True, dir_okay=False),
              help="Layer plan JSON for the plan policies (repeatable; default: embedded).")
@click.option("--profile", "profiles", multiple=True,
              help="Profile JSON (repeatable); default: embedded, else analytic.")
@click.option("--max-batched-tokens", type=click.IntRange(1, MAX_BATCHED_TOKENS),
              default=8192, show_default=True)
@click.option("--max-seqs", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--no-chunked-prefill", is_flag=True)
@click.option("--no-async-scheduling", is_flag=True,
              help="Plan each step after the last one ends (vLLM --no-async-scheduling); "
                   "by default the next step is planned while one runs, as vLLM 0.26 does.")
@click.option("--kv-capacity", type=click.IntRange(min=1),
              help="KV-cache tokens (default: from GPU memory).")
@click.option("--cuda-graph-tokens", type=click.IntRange(min=0),
              help="Largest CUDA-graph step in tokens; larger steps run eager (default: "
                   "vLLM's min(2 x max-seqs, 512); 0: --enforce-eager).")
@click.option("--switch-cost", type=FiniteFloat(0), default=0.3, show_default=True,
              help="Seconds per TP/EP switch (mode switch).")
@click.option("--slo-ttft", type=POSITIVE, default=2.0, show_default=True)
@click.option("--slo-tpot", type=POSITIVE, default=0.1, show_default=True)
@click.option("--calibration", "calibration_path", type=FilePath(exists=True),
              help="YAML of Calibration fields fitted to your engine (docs/sim.md).")
@click.option("--samples", type=click.IntRange(1, MAX_SAMPLES), default=16, show_default=True,
              help="Routing samples per token count.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--lenient", is_flag=True, help="Skip malformed trace lines (counted).")
@click.option("--json", "json_out", type=FilePath(), help="Write the report as JSON.")
@click.option("--plot-dir", type=FilePath(), help="Write timeline.png and cdf.png here.")
@click.option("--no-progress", is_flag=True)
def replay(trace, arrivals, time_scale, requests, rate, prompt_mean, output_mean, gpu, gpus,
           model_name, mode, ep_placement, policies, plans, profiles, max_batched_tokens, max_seqs,
           no_chunked_prefill, no_async_scheduling, kv_capacity, cuda_graph_tokens, switch_cost,
           slo_ttft, slo_tpot, calibration_path, samples, seed, lenient, json_out, plot_dir, no_progress):
    """Replay a routing TRACE (path or shipped name) under a request workload."""
    check_output_file(json_out, "--json")
    check_output_dir(plot_dir, "--plot-dir")
    config = SimConfig(
        gpu=gpu, model=model_name, gpus=gpus, mode=mode,
        policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
        engine=EngineConfig(max_batched_tokens, max_seqs, not no_chunked_prefill,
                            kv_capacity=kv_capacity, cuda_graph_tokens=cuda_graph_tokens,
                            async_scheduling=not no_async_scheduling),
        calibration=_calibration(calibration_path), switch=SwitchConfig(cost_s=switch_cost),
        slo=SLO(slo_ttft, slo_tpot),
        profiles=tuple(profiles), ep_placement=ep_placement, plans=tuple(plans),
    )
    pool = load_pool(trace, seed=seed, samples=samples, strict=not lenient)
    if rate is not None:
        arrival_list = SyntheticWorkload(
            rate=rate, requests=1000 if requests is None else requests,
            prompt=LengthDist("lognormal", prompt_mean, 1.0),
            output=LengthDist("lognormal", output_mean, 1.0)).arrivals(seed)
    else:
        arrival_list = load_arrivals(arrivals, time_scale, requests)
    progress = not no_progress and sys.stderr.isatty()
    report = run_study(config, pool, arrival_list, progress=progress)
    click.echo(report.format())
    _write_json(json_out, report.to_dict())
    if plot_dir:
        for path in plot_runs(report.runs, plot_dir, report.title(), config.slo):
            click.echo(f"wrote {path}")


@main.command()
@click.argument("scenario", type=FilePath(exists=True, dir_okay=False))
@click.option("--jobs", type=click.IntRange(1, 1024),
              help="Worker processes (default: all cores).")
@click.option("--json", "json_out", type=FilePath(), help="Write all results as JSON.")
@click.option("--plot", "plot_path", type=FilePath(dir_okay=False),
              help="Write the sweep's TTFT p99 / TPOT p99 / throughput bars here (PNG); "
                   "with --json and no --plot: beside the JSON, same name.")
@click.option("--no-progress", is_flag=True)
def whatif(scenario, jobs, json_out, plot_path, no_progress):
    """Sweep a SCENARIO YAML (GPU, model, load, parallelism) over local cores.

    A point that fails is reported with its point and the others still run; their
    results are printed, written and plotted, then the command exits with status 2."""
    from ramp.sim.metrics import plot_sweep

    check_output_file(json_out, "--json")
    if plot_path is None and json_out:
        plot_path = str(Path(json_out).with_suffix(".png"))
    check_plot_file(plot_path, "--plot")
    results = run_scenario(scenario, jobs, progress=not no_progress and sys.stderr.isatty())
    click.echo(format_results(results))
    _write_json(json_out, results)
    if plot_path and any("error" not in r for r in results["points"]):
        click.echo(f"wrote {plot_sweep(results, plot_path)}")
    failed = [p["error"] for p in results["points"] if "error" in p]
    if failed:
        for message in failed:
            click.echo(f"error: {message}", err=True)
        sys.exit(2)


def _calibration(path: str | None) -> Calibration:
    """A Calibration from a YAML of its fields (``--calibration``), else the defaults."""
    if not path:
        return Calibration()
    return from_mapping(Calibration, read_yaml(path, "calibration", mapping=True), path)


@main.command()
@click.argument("sources", nargs=-1, required=True,
                type=FilePath(exists=True, dir_okay=False))
@click.option("--out", "out_path", required=True, type=FilePath(dir_okay=False),
              help="Calibration YAML to write (for --calibration / a scenario's calibration:).")
@click.option("--gpu", default="H100-SXM", show_default=True,
              help="GPU the traces were recorded on (results files name their device).")
@click.option("--base", "base_path", type=FilePath(exists=True, dir_okay=False),
              help="Calibration YAML to start from and keep the unfitted fields of.")
@click.option("--policy", type=click.Choice(SIM_POLICIES), default="static",
              show_default=True, help="Dispatch the traces' engine ran (results files say).")
@click.option("--moe-costs", type=click.Choice(MOE_COSTS), default="model", show_default=True,
              help="Results files' MoE costs: per GEMM from the cost model, or whole layers "
                   "from the layer plan (off/record: plan-engine, dispatch: plan).")
@click.option("--profile", "profiles", multiple=True, help="Profile JSON (repeatable).")
@click.option("--plan", "plans", multiple=True, type=FilePath(exists=True, dir_okay=False),
              help="Layer plan JSON for the plan policies (repeatable; default: embedded).")
@click.option("--eager-step", type=click.Choice(EAGER_STEPS), default=None,
              help="How an eager step's host and GPU time combine (default: the base "
                   "calibration's, additive); max: the longer of the two.")
def calibrate(sources, out_path, gpu, base_path, policy, moe_costs, profiles, plans,
              eager_step):
    """Fit step overheads and dense/attention efficiencies to SOURCES: engine results
    files (*.json, bench/results/engine schema) and traces whose steps carry step_ms."""
    from ramp.sim.calibrate import FITTED, calibrate_sources, calibration_yaml

    if any(Path(src).resolve() == Path(out_path).resolve() for src in sources):
        raise InputError(f"{out_path}: --out is also a source to fit; write elsewhere")
    base = _calibration(base_path)
    if eager_step:
        base = dataclasses.replace(base, eager_step=eager_step)
    cal = calibrate_sources(sources, gpu, base, policy, profiles, moe_costs, plans)
    text = calibration_yaml(cal, [str(s) for s in sources])
    write_atomically(out_path, lambda tmp: tmp.write_text(text), "calibration")
    for name in FITTED:
        click.echo(f"{name}: {getattr(base, name):.4g} -> {getattr(cal, name):.4g}")
    click.echo(f"wrote {out_path}")


@main.command()
@click.argument("model_name")
@click.option("--gpu", default="H200", show_default=True)
@click.option("--gpus", type=int, help="GPUs per replica (default: fewest that fit).")
@click.option("--mode", type=click.Choice(["tp", "ep"]), default="tp", show_default=True)
@click.option("--routing", help="Routing trace (default: the model's shipped trace, else "
                                "its synthetic default).")
@click.option("--arrivals", help="Recorded arrivals (file or shipped name), time-scaled to "
                                 "each rate tried; default: Poisson with the lengths below.")
@click.option("--duration", type=POSITIVE, default=60.0, show_default=True,
              help="Seconds of arrivals per trial (rate x duration requests).")
@click.option("--prompt-mean", type=POSITIVE, default=1024, show_default=True)
@click.option("--output-mean", type=POSITIVE, default=256, show_default=True)
@click.option("--length-cv", type=FiniteFloat(0), default=1.0, show_default=True,
              help="Coefficient of variation of the lognormal lengths (0: fixed).")
@click.option("--slo-ttft", type=POSITIVE, default=2.0, show_default=True, help="TTFT p99, s.")
@click.option("--slo-tpot", type=POSITIVE, default=0.05, show_default=True, help="TPOT p99, s.")
@click.option("--rate", type=POSITIVE, help="Target req/s: answer how many GPUs it needs "
                                         "(and stop at the first GPU count that serves it).")
@click.option("--gpu-counts", help="Comma-separated GPU counts (default: the replica size "
                                   "times 1, 2, 4, 8, 16 up to --max-gpus).")
@click.option("--max-gpus", type=click.IntRange(1), default=16, show_default=True)
@click.option("--router", "routers", default="round-robin,least-outstanding",
              show_default=True, help="Comma-separated routers.")
@click.option("--policy", type=click.Choice(SIM_POLICIES), default="static",
              show_default=True)
@click.option("--prices", "prices_path", type=FilePath(exists=True, dir_okay=False),
              help="Price table YAML (default: the shipped EXAMPLE prices; edit a copy).")
@click.option("--calibration", "calibration_path", type=FilePath(exists=True),
              help="Calibration YAML (ramp-sim calibrate).")
@click.option("--profile", "profiles", multiple=True, help="Profile JSON (repeatable).")
@click.option("--plan", "plans", multiple=True, type=FilePath(exists=True, dir_okay=False),
              help="Layer plan JSON for the plan policies (repeatable; default: embedded).")
@click.option("--max-batched-tokens", type=int, default=8192, show_default=True)
@click.option("--max-seqs", type=int, default=256, show_default=True)
@click.option("--tolerance", type=POSITIVE, default=0.02, show_default=True,
              help="Relative precision of the max rate (in (0, 1)).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--plot", "plot_path", default="capacity.png", show_default=True,
              type=FilePath(dir_okay=False))
@click.option("--json", "json_out", type=FilePath(), help="Write the plan as JSON.")
def capacity(model_name, gpu, gpus, mode, routing, arrivals, duration, prompt_mean,
             output_mean, length_cv, slo_ttft, slo_tpot, rate, gpu_counts, max_gpus, routers,
             policy, prices_path, calibration_path, profiles, plans, max_batched_tokens, max_seqs,
             tolerance, seed, plot_path, json_out):
    """Largest request rate within TTFT/TPOT p99 SLOs per GPU count, replicas behind a
    router, and cost per million output tokens."""
    if tolerance >= 1:
        raise click.BadParameter(f"{tolerance} must be below 1 (a relative precision)",
                                 param_hint="'--tolerance'")
    check_plot_file(plot_path, "--plot")
    check_output_file(json_out, "--json")
    counts_asked = positive_ints(gpu_counts, "--gpu-counts") if gpu_counts else None
    from ramp.sim.capacity import (
        Workload,
        default_prices_path,
        load_prices,
        plan_capacity,
        plot_capacity,
    )
    from ramp.sim.runner import routing_for

    config = SimConfig(gpu=gpu, model=model_name, gpus=gpus, mode=mode, policies=(policy,),
                       engine=EngineConfig(max_batched_tokens, max_seqs),
                       calibration=_calibration(calibration_path), slo=SLO(slo_ttft, slo_tpot),
                       profiles=tuple(profiles), plans=tuple(plans))
    pool = load_pool(routing, seed=seed) if routing else routing_for(model_name, seed)
    if arrivals:
        workload = Workload(recorded=tuple(load_arrivals(arrivals)), duration_s=duration,
                            seed=seed)
    else:
        dist = "lognormal" if length_cv > 0 else "fixed"
        workload = Workload(SyntheticWorkload(
            1.0, 1, LengthDist(dist, prompt_mean, length_cv),
            LengthDist(dist, output_mean, length_cv)), duration_s=duration, seed=seed)
    size = build_layouts(config, resolve_model(model_name, pool.header, pool.where))[0]
    counts = (counts_asked or
              [size * m for m in (1, 2, 4, 8, 16) if size * m <= max(max_gpus, size)])
    prices = load_prices(prices_path or default_prices_path())
    plan = plan_capacity(config, pool, workload, counts,
                         [r.strip() for r in routers.split(",") if r.strip()], prices, rate,
                         policy, tolerance)
    click.echo(plan.format())
    click.echo(f"prices: {prices.source}"
               + ("" if prices_path else " (EXAMPLE prices: edit a copy, pass --prices)"))
    click.echo(f"wrote {plot_capacity(plan, plot_path)}")
    _write_json(json_out, plan.to_dict())


@main.command(name="list")
def list_shipped() -> None:
    """Shipped traces, arrival streams and example scenarios."""
    from importlib import resources

    click.echo("traces and arrivals (ramp/data/traces):")
    for name in embedded_names():
        click.echo(f"  {name}")
    root = resources.files("ramp.sim") / "scenarios"
    click.echo("scenarios (ramp.sim/scenarios):")
    for item in sorted(root.iterdir(), key=lambda p: p.name) if root.is_dir() else []:
        if item.name.endswith(".yaml"):
            click.echo(f"  {item}")


@main.group()
def trace() -> None:
    """Make, convert and inspect traces."""


@trace.command()
@click.argument("model_name")
@click.argument("out", type=FilePath(dir_okay=False))
@click.option("--preset", help="Routing preset: realistic (the default: fitted to real "
              "routing, ramp.realistic) or a skew preset (uniform, balanced, skewed, hot).")
@click.option("--decode-steps", type=STEPS, default=40, show_default=True)
@click.option("--decode-tokens", type=TOKENS, default=64, show_default=True)
@click.option("--prefill-steps", type=STEPS, default=16, show_default=True)
@click.option("--prefill-tokens", type=TOKENS, default=1024, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@FORCE
def generate(model_name, out, preset, decode_steps, decode_tokens, prefill_steps,
             prefill_tokens, seed, force):
    """Write a synthetic routing trace for a catalog MODEL_NAME."""
    from ramp.models import get_model
    from ramp.trace import write_trace
    from ramp.traces.generators import DEFAULT_PRESET, serving_schedule, synthetic_trace

    _new_output(out, force)
    if decode_steps + prefill_steps == 0:
        raise click.BadParameter("no steps: --decode-steps and --prefill-steps are both 0",
                                 param_hint="'--decode-steps'")
    check_output_file(out, "OUT")
    model = get_model(model_name)
    tokens, phases = serving_schedule(decode_steps, decode_tokens, prefill_steps,
                                      prefill_tokens)
    write_trace(out, *synthetic_trace(model, preset, tokens, phases, seed))
    click.echo(f"wrote {out} ({len(tokens)} steps, preset {preset or DEFAULT_PRESET})")


@trace.command()
@click.argument("path")
@click.option("--lenient", is_flag=True, help="Skip malformed lines (counted).")
@click.option("--ep", type=click.IntRange(min=2), multiple=True,
              help="Also show the expert-parallel views at this EP degree (repeatable; "
                   "holds the trace's histograms in memory).")
def info(path, lenient, ep):
    """Header and measured routing statistics of a trace (streamed), and with --ep each
    rank's local load under contiguous and balanced expert placement."""
    from ramp.trace import PHASES, TraceReader
    from ramp.traces.generators import RoutingSummary

    summary = RoutingSummary()
    phases = dict.fromkeys(PHASES, 0)
    kept = []
    with TraceReader(resolve_path(path, "trace"), strict=not lenient) as reader:
        for step in reader:  # one step in memory at a time (unless --ep)
            phases[step.phase] += 1
            summary.add(step)
            if ep:
                kept.append(step)
    click.echo(json.dumps(reader.header.to_dict(), indent=1))
    click.echo(f"steps: {summary.steps} {phases}; skipped {reader.skipped}; torn {reader.torn}"
               + ("; gzip" if reader.gzipped else ""))
    if summary.steps:
        click.echo(json.dumps(summary.result(), indent=1))
    if kept:
        _echo_ep_views(kept, ep)


def _echo_ep_views(steps, degrees) -> None:
    """Busiest rank's local T*k over the mean rank's, per EP degree and placement."""
    import numpy as np

    from ramp.expert_parallel import ExpertPlacement

    hists = np.stack([s.hists for s in steps])              # [S, L, E]
    load = hists.sum(axis=0) / sum(s.tokens for s in steps)
    for degree in degrees:
        for name in PLACEMENTS:
            placement = ExpertPlacement.make(name, hists.shape[2], degree, load)
            view = placement.view(hists)
            rows = view.rows                                  # [S, L, ep]
            click.echo(f"ep={degree} {name:<10} busiest/mean rank rows "
                       f"{float(view.imbalance.mean()):.3f} (max "
                       f"{float(view.imbalance.max()):.3f}); local T*k per rank mean "
                       f"{float(rows.mean()):.1f}, max {int(rows.max())}")


@trace.command()
@click.argument("csv_path", type=FilePath(exists=True, dir_okay=False))
@click.argument("out", type=FilePath(dir_okay=False))
@FORCE
def azure(csv_path, out, force):
    """Convert an Azure LLM inference trace CSV to a RaMP arrivals file."""
    from ramp.trace import write_arrivals
    from ramp.traces.converters import AZURE_PROVENANCE, read_azure_csv

    _new_output(out, force, (csv_path,))
    write_arrivals(out, read_azure_csv(csv_path), source=f"converted:azure:{Path(csv_path).name}",
                   meta=AZURE_PROVENANCE)
    click.echo(f"wrote {out}")


def _recording_options(func):
    """Options shared by the converters of token-level routing recordings."""
    for option in reversed((
        click.option("--model", "model_name", default="deepseek-v2-lite", show_default=True,
                     help="Catalog model the routing was recorded on."),
        click.option("--tokens", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Tokens per step T."),
        click.option("--batching", type=click.Choice(["consecutive", "shuffled"]),
                     default="consecutive", show_default=True,
                     help="Steps of T consecutive tokens (prefill-like) or T tokens drawn "
                          "across sequences (decode-like)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the shuffled batching."),
        click.option("--no-ids", is_flag=True, help="Leave out the token-level top-k ids."),
    )):
        func = option(func)
    return func


def _convert_recording(origin, source, out, model_name, tokens, batching, seed, no_ids,
                       force):
    from ramp.models import get_model
    from ramp.trace import write_trace
    from ramp.traces.real import read_recording, recording_header, routing_steps

    _new_output(out, force, (source,))
    model = get_model(model_name)
    routing = read_recording(source, model)
    header = recording_header(model, origin, Path(source), tokens, batching, seed, routing)
    write_trace(out, header, routing_steps(routing, tokens, batching, seed, not no_ids))
    click.echo(f"wrote {out}: {routing.tokens // tokens} steps of {tokens} {batching} tokens "
               f"from {routing.tokens} recorded in {routing.seq_lens.size} sequences")


@trace.command()
@click.argument("source", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@_recording_options
@FORCE
def esft(source, out, **options):
    """Convert ESFT expert scores (a directory of expert_weights_L.txt, one per MoE
    layer) to a trace."""
    _convert_recording("esft", source, out, **options)


@trace.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@_recording_options
@FORCE
def npz(source, out, **options):
    """Convert a routing .npz (topk_ids [tokens, layers, top_k], seq_lens) to a trace."""
    _convert_recording("npz", source, out, **options)


@trace.command()
@click.argument("dumps", nargs=-1, required=True, type=FilePath(exists=True, dir_okay=False))
@click.argument("out", type=FilePath(dir_okay=False))
@click.option("--model", "model_name", required=True, help="Catalog model of the dump.")
@click.option("--replicas", default=1, show_default=True,
              help="TP ranks that all counted the same tokens (stat dumps are summed)")
@FORCE
def sglang(dumps, out, model_name, replicas, force):
    """Convert SGLang expert-distribution dumps (stat, per_pass or per_token .pt files,
    one per rank; needs torch) to a trace."""
    from ramp.traces.sglang_dump import convert_sglang_dump

    _new_output(out, force, dumps)
    summary = convert_sglang_dump(dumps, out, model_name, replicas=replicas)
    click.echo(f"wrote {out}: {summary.steps} steps from {summary.mode} dumps")


if __name__ == "__main__":
    main()
