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
from ramp.sim.costs import Calibration
from ramp.sim.engine import MODES, EngineConfig, SwitchConfig
from ramp.sim.metrics import SLO, plot_runs
from ramp.sim.runner import SimConfig, build_layouts, load_pool, resolve_model, run_study
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
           model_name, mode, policies, profiles, max_batched_tokens, max_seqs,
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
        profiles=tuple(profiles),
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
        for path in plot_runs(report.runs, plot_dir, report.title(), config.slo):
            click.echo(f"wrote {path}")


@main.command()
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--jobs", type=int, help="Worker processes (default: all cores).")
@click.option("--json", "json_out", type=click.Path(), help="Write all results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the sweep's TTFT p99 / TPOT p99 / throughput bars here (PNG); "
                   "with --json and no --plot: beside the JSON, same name.")
@click.option("--no-progress", is_flag=True)
def whatif(scenario, jobs, json_out, plot_path, no_progress):
    """Sweep a SCENARIO YAML (GPU, model, load, parallelism) over local cores."""
    from ramp.sim.metrics import plot_sweep

    results = run_scenario(scenario, jobs, progress=not no_progress and sys.stderr.isatty())
    click.echo(format_results(results))
    _write_json(json_out, results)
    if plot_path is None and json_out:
        plot_path = str(Path(json_out).with_suffix(".png"))
    if plot_path and any("error" not in r for r in results["points"]):
        click.echo(f"wrote {plot_sweep(results, plot_path)}")


def _calibration(path: str | None) -> Calibration:
    """A Calibration from a YAML of its fields (``--calibration``), else the defaults."""
    if not path:
        return Calibration()
    return from_mapping(Calibration, yaml.safe_load(Path(path).read_text()) or {}, path)


@main.command()
@click.argument("sources", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Calibration YAML to write (for --calibration / a scenario's calibration:).")
@click.option("--gpu", default="H100-SXM", show_default=True,
              help="GPU the traces were recorded on (results files name their device).")
@click.option("--base", "base_path", type=click.Path(exists=True, dir_okay=False),
              help="Calibration YAML to start from and keep the unfitted fields of.")
@click.option("--policy", type=click.Choice(["static", "ramp"]), default="static",
              show_default=True, help="Dispatch the traces' engine ran (results files say).")
@click.option("--profile", "profiles", multiple=True, help="Profile JSON (repeatable).")
def calibrate(sources, out_path, gpu, base_path, policy, profiles):
    """Fit step overheads and dense/attention efficiencies to SOURCES: engine results
    files (*.json, bench/results/engine schema) and traces whose steps carry step_ms."""
    from ramp.sim.calibrate import FITTED, calibrate_sources, calibration_yaml

    base = _calibration(base_path)
    cal = calibrate_sources(sources, gpu, base, policy, profiles)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(calibration_yaml(cal, [str(s) for s in sources]))
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
@click.option("--duration", type=float, default=60.0, show_default=True,
              help="Seconds of arrivals per trial (rate x duration requests).")
@click.option("--prompt-mean", type=float, default=1024, show_default=True)
@click.option("--output-mean", type=float, default=256, show_default=True)
@click.option("--length-cv", type=float, default=1.0, show_default=True,
              help="Coefficient of variation of the lognormal lengths (0: fixed).")
@click.option("--slo-ttft", type=float, default=2.0, show_default=True, help="TTFT p99, s.")
@click.option("--slo-tpot", type=float, default=0.05, show_default=True, help="TPOT p99, s.")
@click.option("--rate", type=float, help="Target req/s: answer how many GPUs it needs "
                                         "(and stop at the first GPU count that serves it).")
@click.option("--gpu-counts", help="Comma-separated GPU counts (default: the replica size "
                                   "times 1, 2, 4, 8, 16 up to --max-gpus).")
@click.option("--max-gpus", type=int, default=16, show_default=True)
@click.option("--router", "routers", default="round-robin,least-outstanding",
              show_default=True, help="Comma-separated routers.")
@click.option("--policy", type=click.Choice(["static", "ramp"]), default="static",
              show_default=True)
@click.option("--prices", "prices_path", type=click.Path(exists=True, dir_okay=False),
              help="Price table YAML (default: the shipped EXAMPLE prices; edit a copy).")
@click.option("--calibration", "calibration_path", type=click.Path(exists=True),
              help="Calibration YAML (ramp-sim calibrate).")
@click.option("--profile", "profiles", multiple=True, help="Profile JSON (repeatable).")
@click.option("--max-batched-tokens", type=int, default=8192, show_default=True)
@click.option("--max-seqs", type=int, default=256, show_default=True)
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="Relative precision of the max rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", default="capacity.png", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--json", "json_out", type=click.Path(), help="Write the plan as JSON.")
def capacity(model_name, gpu, gpus, mode, routing, arrivals, duration, prompt_mean,
             output_mean, length_cv, slo_ttft, slo_tpot, rate, gpu_counts, max_gpus, routers,
             policy, prices_path, calibration_path, profiles, max_batched_tokens, max_seqs,
             tolerance, seed, plot_path, json_out):
    """Largest request rate within TTFT/TPOT p99 SLOs per GPU count, replicas behind a
    router, and cost per million output tokens."""
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
                       profiles=tuple(profiles))
    pool = load_pool(routing, seed=seed) if routing else routing_for(model_name, seed)
    if arrivals:
        workload = Workload(recorded=tuple(load_arrivals(arrivals)), duration_s=duration,
                            seed=seed)
    else:
        dist = "lognormal" if length_cv > 0 else "fixed"
        workload = Workload(SyntheticWorkload(
            1.0, 1, LengthDist(dist, prompt_mean, length_cv),
            LengthDist(dist, output_mean, length_cv)), duration_s=duration, seed=seed)
    size = build_layouts(config, resolve_model(model_name, pool.header))[0]
    counts = ([int(c) for c in gpu_counts.split(",") if c.strip()] if gpu_counts else
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
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--preset", help="Routing preset (default: by model granularity).")
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
    from ramp.traces.generators import (
        default_preset,
        generate_steps,
        get_preset,
        serving_schedule,
        synthetic_header,
    )

    model = get_model(model_name)
    stats = get_preset(preset) if preset else default_preset(model)
    tokens, phases = serving_schedule(decode_steps, decode_tokens, prefill_steps,
                                      prefill_tokens)
    write_trace(out, synthetic_header(model, stats, seed),
                generate_steps(model, stats, tokens, phases, seed))
    click.echo(f"wrote {out} ({len(tokens)} steps, preset {stats.name})")


@trace.command()
@click.argument("path")
@click.option("--lenient", is_flag=True, help="Skip malformed lines (counted).")
def info(path, lenient):
    """Header and measured routing statistics of a trace (streamed)."""
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
