"""``ramp-sim``: replay routing traces through the serving simulator, sweep what-ifs,
and make, convert and inspect traces."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from ramp.errors import RampError
from ramp.expert_parallel import PLACEMENTS
from ramp.sim.costs import Calibration
from ramp.sim.engine import MODES, EngineConfig, SwitchConfig
from ramp.sim.metrics import SLO, plot_runs
from ramp.sim.runner import SimConfig, load_pool, run_study
from ramp.sim.whatif import format_results, from_mapping, run_scenario
from ramp.sim.workload import (
    DEFAULT_ARRIVALS,
    LengthDist,
    SyntheticWorkload,
    embedded_names,
    load_arrivals,
    resolve_path,
)


class _Group(click.Group):
    """Report RaMP errors as one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RampError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
def main() -> None:
    """Trace-driven MoE serving simulator: what RaMP dispatch gains end to end."""


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1, default=float) + "\n")
        click.echo(f"wrote {path}")


@main.command()
@click.argument("trace")
@click.option("--arrivals", default=DEFAULT_ARRIVALS, show_default=True,
              help="Request arrivals: RaMP arrivals JSONL, Azure LLM trace CSV, or a shipped "
                   "name. The default is the Azure 2023 conversation trace (1 hour, 19366 "
                   "requests).")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Multiply arrival times (0.5 = twice the load).")
@click.option("--requests", type=int, help="Use only the first N arrivals.")
@click.option("--rate", type=float,
              help="Instead of --arrivals: Poisson arrivals at this rate (req/s); "
                   "--requests of them (default 1000), lognormal lengths.")
@click.option("--prompt-mean", type=float, default=1024, show_default=True)
@click.option("--output-mean", type=float, default=256, show_default=True)
@click.option("--gpu", default="H100-SXM", show_default=True)
@click.option("--gpus", type=int, help="GPUs of the replica (default: fewest that fit).")
@click.option("--model", "model_name", help="Catalog model (default: the trace's).")
@click.option("--mode", type=click.Choice(MODES), default="tp", show_default=True,
              help="Layout: tensor-parallel, expert-parallel (DP attention), or switching "
                   "between them with load.")
@click.option("--ep-placement", type=click.Choice(PLACEMENTS), default="contiguous",
              show_default=True,
              help="Expert placement under EP: contiguous id blocks, or balanced per layer "
                   "by the trace's load (EPLB-style greedy).")
@click.option("--policy", "policies", default="static,ramp", show_default=True,
              help="Comma-separated dispatch policies.")
@click.option("--profile", "profiles", multiple=True,
              help="Profile JSON (repeatable); default: embedded, else analytic.")
@click.option("--max-batched-tokens", type=int, default=8192, show_default=True)
@click.option("--max-seqs", type=int, default=256, show_default=True)
@click.option("--no-chunked-prefill", is_flag=True)
@click.option("--kv-capacity", type=int, help="KV-cache tokens (default: from GPU memory).")
@click.option("--switch-cost", type=float, default=0.3, show_default=True,
              help="Seconds per TP/EP switch (mode switch).")
@click.option("--slo-ttft", type=float, default=2.0, show_default=True)
@click.option("--slo-tpot", type=float, default=0.1, show_default=True)
@click.option("--calibration", "calibration_path", type=click.Path(exists=True),
              help="YAML of Calibration fields fitted to your engine (docs/sim.md).")
@click.option("--samples", type=int, default=16, show_default=True,
              help="Routing samples per token count.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lenient", is_flag=True, help="Skip malformed trace lines (counted).")
@click.option("--json", "json_out", type=click.Path(), help="Write the report as JSON.")
@click.option("--plot-dir", type=click.Path(), help="Write timeline.png and cdf.png here.")
@click.option("--no-progress", is_flag=True)
def replay(trace, arrivals, time_scale, requests, rate, prompt_mean, output_mean, gpu, gpus,
           model_name, mode, ep_placement, policies, profiles, max_batched_tokens, max_seqs,
           no_chunked_prefill, kv_capacity, switch_cost, slo_ttft, slo_tpot, calibration_path,
           samples, seed, lenient, json_out, plot_dir, no_progress):
    """Replay a routing TRACE (path or shipped name) under a request workload."""
    cal = Calibration()
    if calibration_path:
        cal = from_mapping(Calibration, yaml.safe_load(Path(calibration_path).read_text()) or {},
                     calibration_path)
    config = SimConfig(
        gpu=gpu, model=model_name, gpus=gpus, mode=mode,
        policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
        engine=EngineConfig(max_batched_tokens, max_seqs, not no_chunked_prefill,
                            kv_capacity=kv_capacity),
        calibration=cal, switch=SwitchConfig(cost_s=switch_cost), slo=SLO(slo_ttft, slo_tpot),
        profiles=tuple(profiles), ep_placement=ep_placement,
    )
    pool = load_pool(trace, seed=seed, samples=samples, strict=not lenient)
    if rate is not None:
        arrival_list = SyntheticWorkload(
            rate=rate, requests=requests or 1000,
            prompt=LengthDist("lognormal", prompt_mean, 1.0),
            output=LengthDist("lognormal", output_mean, 1.0)).arrivals(seed)
    else:
        arrival_list = load_arrivals(arrivals, time_scale, requests)
    progress = not no_progress and sys.stderr.isatty()
    report = run_study(config, pool, arrival_list, progress=progress)
    click.echo(report.format())
    _write_json(json_out, report.to_dict())
    if plot_dir:
        for path in plot_runs(report.runs, plot_dir):
            click.echo(f"wrote {path}")


@main.command()
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--jobs", type=int, help="Worker processes (default: all cores).")
@click.option("--json", "json_out", type=click.Path(), help="Write all results as JSON.")
@click.option("--no-progress", is_flag=True)
def whatif(scenario, jobs, json_out, no_progress):
    """Sweep a SCENARIO YAML (GPU, model, load, parallelism) over local cores."""
    results = run_scenario(scenario, jobs, progress=not no_progress and sys.stderr.isatty())
    click.echo(format_results(results))
    _write_json(json_out, results)


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
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--preset", help="Routing preset: realistic (the default: fitted to real "
              "routing, ramp.realistic) or a skew preset (uniform, balanced, skewed, hot).")
@click.option("--decode-steps", type=int, default=40, show_default=True)
@click.option("--decode-tokens", type=int, default=64, show_default=True)
@click.option("--prefill-steps", type=int, default=16, show_default=True)
@click.option("--prefill-tokens", type=int, default=1024, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def generate(model_name, out, preset, decode_steps, decode_tokens, prefill_steps,
             prefill_tokens, seed):
    """Write a synthetic routing trace for a catalog MODEL_NAME."""
    from ramp.models import get_model
    from ramp.trace import write_trace
    from ramp.traces.generators import DEFAULT_PRESET, serving_schedule, synthetic_trace

    model = get_model(model_name)
    tokens, phases = serving_schedule(decode_steps, decode_tokens, prefill_steps,
                                      prefill_tokens)
    write_trace(out, *synthetic_trace(model, preset, tokens, phases, seed))
    click.echo(f"wrote {out} ({len(tokens)} steps, preset {preset or DEFAULT_PRESET})")


@trace.command()
@click.argument("path")
@click.option("--lenient", is_flag=True, help="Skip malformed lines (counted).")
@click.option("--ep", type=click.IntRange(min=2), multiple=True,
              help="Also show the expert-parallel views at this EP degree (repeatable).")
def info(path, lenient, ep):
    """Header and measured routing statistics of a trace (streamed), and with --ep each
    rank's local load under contiguous and balanced expert placement."""
    from ramp.trace import TraceReader
    from ramp.traces.generators import routing_summary

    with TraceReader(resolve_path(path, "trace"), strict=not lenient) as reader:
        header = reader.header
        steps = list(reader)
    click.echo(json.dumps(header.to_dict(), indent=1))
    phases = {p: sum(s.phase == p for s in steps) for p in ("prefill", "decode", "mixed")}
    click.echo(f"steps: {len(steps)} {phases}; skipped {reader.skipped}; torn {reader.torn}")
    if steps:
        click.echo(json.dumps(routing_summary(steps), indent=1))
    if steps and ep:
        _echo_ep_views(steps, ep)


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
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def azure(csv_path, out):
    """Convert an Azure LLM inference trace CSV to a RaMP arrivals file."""
    from ramp.trace import write_arrivals
    from ramp.traces.converters import AZURE_PROVENANCE, read_azure_csv

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


def _convert_recording(origin, source, out, model_name, tokens, batching, seed, no_ids):
    from ramp.models import get_model
    from ramp.trace import write_trace
    from ramp.traces.real import read_recording, recording_header, routing_steps

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
def esft(source, out, **options):
    """Convert ESFT expert scores (a directory of expert_weights_L.txt, one per MoE
    layer) to a trace."""
    _convert_recording("esft", source, out, **options)


@trace.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@_recording_options
def npz(source, out, **options):
    """Convert a routing .npz (topk_ids [tokens, layers, top_k], seq_lens) to a trace."""
    _convert_recording("npz", source, out, **options)


@trace.command()
@click.argument("dumps", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", required=True, help="Catalog model of the dump.")
@click.option("--replicas", default=1, show_default=True,
              help="TP ranks that all counted the same tokens (stat dumps are summed)")
def sglang(dumps, out, model_name, replicas):
    """Convert SGLang expert-distribution dumps (stat, per_pass or per_token .pt files,
    one per rank; needs torch) to a trace."""
    from ramp.traces.sglang_dump import convert_sglang_dump

    summary = convert_sglang_dump(dumps, out, model_name, replicas=replicas)
    click.echo(f"wrote {out}: {summary.steps} steps from {summary.mode} dumps")


if __name__ == "__main__":
    main()
