"""The ``ramp`` command: profile a GPU, inspect profiles, explain choices, regions.

Bad input ends with a one-line error naming the file/field, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from ramp.clitools import ErrorGroup, FilePath, FiniteFloat, check_output_dir, check_output_file
from ramp.errors import InputError
from ramp.families import TimerOptions, get_family, profilable_families

GEMM_CHOICE = click.Choice(["w13", "w2"])
PARALLEL = click.IntRange(1, 1024)


@click.group(cls=ErrorGroup)
@click.version_option(package_name="ramp")
def main() -> None:
    """RaMP: routing-aware choice of MoE GEMM kernel configurations."""


@main.command()
@click.option("--gpu", default="H100-SXM", show_default=True, help="hardware catalog name")
@click.option("--model", "model_name", default="qwen3-30b-a3b", show_default=True)
@click.option("--gemm", type=GEMM_CHOICE, default="w13", show_default=True)
@click.option("--tp", type=PARALLEL, default=1, show_default=True)
@click.option("--ep", type=PARALLEL, default=1, show_default=True)
@click.option("--plot", type=FilePath(dir_okay=False), help="write a PNG heat map")
@click.option("--json", "json_out", type=FilePath(dir_okay=False), help="write the cells")
def regions(gpu, model_name, gemm, tp, ep, plot, json_out) -> None:
    """Which optimisation wins where, predicted from hardware constants alone."""
    check_output_file(plot, "--plot")
    check_output_file(json_out, "--json")
    from ramp.hardware import get_gpu
    from ramp.models import get_model
    from ramp.regions import analyze_regions, plot_regions

    spec = get_gpu(gpu)
    problem = get_model(model_name).problem(gemm, tp=tp, ep=ep)
    report = analyze_regions(spec, problem)
    click.echo(report.format_table())
    if plot:
        click.echo(f"wrote {plot_regions(report, plot)}")
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        click.echo(f"wrote {json_out}")


@main.command("profile-info")
@click.argument("profile_path", type=FilePath(dir_okay=False))
def profile_info(profile_path) -> None:
    """Summarise a profile: key, provenance, fit quality, static table."""
    from ramp.profile import load_profile

    p = load_profile(profile_path)
    stats = [s for s in p.model.fit_stats if s is not None]
    click.echo(f"profile   {p.key}")
    click.echo(f"configs   {len(p.model.bank)} ({', '.join(p.model.bank.families)}), "
               f"features {', '.join(p.model.features)}")
    if stats:
        r2 = np.array([s.r2 for s in stats])
        mape = np.array([s.mape for s in stats])
        click.echo(f"fit       median R^2 {np.median(r2):.4f} (min {r2.min():.4f}), "
                   f"median MAPE {100 * np.median(mape):.2f}% (max {100 * mape.max():.2f}%)")
    error = p.error
    click.echo(f"error     {error.statistic}: " + ", ".join(
        f"T={t} {100 * e:.1f}%" for t, e in zip(error.tokens, error.error)))
    for key in ("device", "driver", "torch", "triton", "date", "profiling_seconds", "command"):
        if key in p.provenance:
            click.echo(f"{key:<9} {p.provenance[key]}")
    table = ", ".join(f"{t}:{p.model.bank.configs[i].name}" for t, i in
                      sorted(p.static_table.items()))
    click.echo(f"static    {table}")


@main.command()
@click.option("--profile", "profile_path", required=True, type=FilePath(dir_okay=False))
@click.option("--hist", "hist_spec", required=True,
              help="'zipf:s=1.2,tokens=64,seed=3', 'uniform:tokens=1' or counts '3,0,5,...'")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="configurations to list")
@click.option("--local", is_flag=True,
              help="the counts are one EP rank's view (a profile of --ep N): any sum")
def explain(profile_path, hist_spec, top, local) -> None:
    """Show the features, predicted times and the choice for one histogram."""
    from ramp.histograms import parse_histogram_spec, skew_stats
    from ramp.profile import load_profile

    p = load_profile(profile_path)
    hist = parse_histogram_spec(hist_spec, p.problem.num_experts, p.problem.top_k, local)
    model = p.model
    pred = model.predict(hist)
    geo = model.plan.geometry(hist)
    stats = skew_stats(hist)
    tokens = max(int(hist.sum()) // p.problem.top_k, 1)  # a local view's bucket too
    click.echo(f"problem {p.problem.key}  T={tokens} ({int(hist.sum())} rows)  active experts "
               f"{int(stats['active_experts'])}  max/mean load {stats['max_mean_ratio']:.2f}")
    static = p.dispatcher("static").choose(hist)
    order = np.argsort(pred)
    click.echo(f"{'config':<34} {'pred us':>9} {'tiles':>6} {'waves':>5} {'fill':>5}")
    for rank, c in enumerate(order[:top]):
        mark = " <- ramp" if rank == 0 else ""
        mark += " <- static" if c == static else ""
        click.echo(f"{model.bank.configs[c].name:<34} {pred[c]:9.1f} {int(geo.tiles[0, c]):6d} "
                   f"{int(geo.waves[0, c]):5d} {geo.last_wave_fill[0, c]:5.2f}{mark}")
    if static not in order[:top]:
        click.echo(f"static choice {model.bank.configs[static].name}: {pred[static]:.1f} us "
                   f"predicted, {pred[static] / pred[order[0]]:.3f}x the ramp choice")
    best = order[0]
    terms = ", ".join(f"{f}={v:.2f}*{x:.3g}" for f, v, x in zip(
        model.features, model.params[best], geo.features(model.features)[0, best]))
    click.echo(f"why: {model.bank.configs[best].name} = {terms}")


@main.command()
@click.option("--model", "model_name", required=True, help="model catalog name")
@click.option("--gemm", type=GEMM_CHOICE, required=True)
@click.option("--tp", type=PARALLEL, default=1, show_default=True)
@click.option("--ep", type=PARALLEL, default=1, show_default=True,
              help="profile one rank's local problem (E/EP experts) on the busiest rank's "
                   "share of the whole layer's sampled routing")
@click.option("--budget", type=FiniteFloat(0, low_open=True), default=600.0,
              show_default=True, help="seconds of timing")
@click.option("--out", "out_dir", default="profiles", show_default=True,
              type=FilePath(file_okay=False))
@click.option("--tokens", default=None,
              help="comma list of the layer's T (default 1..8192, powers of 2)")
@click.option("--routings", default=None, help="';'-separated specs, e.g. 'uniform;zipf:s=1.0'")
@click.option("--seed", type=click.IntRange(0, 2 ** 63 - 1), default=0, show_default=True)
@click.option("--family", type=click.Choice(profilable_families()),
              default="triton", show_default=True,
              help="kernel family (ramp.families; cute: needs nvidia-cutlass-dsl and sm90; "
                   "grouped_mm: torch's, as a black box)")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="processes that compile the bank at once (default: the family's; cute: "
                   "half the cores, at most 4)")
@click.option("--no-progress", is_flag=True)
def profile(model_name, gemm, tp, ep, budget, out_dir, tokens, routings, seed, family,
            jobs, no_progress):
    """Time every configuration of a kernel family on sampled histograms, fit, write
    the profile.

    Resumable: measurements are checkpointed after each histogram in OUT; rerunning the
    same command continues where it stopped. Needs a CUDA GPU.
    """
    from ramp.hardware import detect_gpu
    from ramp.models import get_model
    from ramp.profiler import SamplePlan, fit_profile, measure, timer_provenance

    check_output_dir(out_dir, "--out")
    token_list = _int_list(tokens, "--tokens") if tokens else None
    gpu = detect_gpu()
    if gpu is None:
        raise click.ClickException("no CUDA GPU visible: profiling times kernels on a GPU")
    model = get_model(model_name)
    problem = model.problem(gemm, tp=tp, ep=ep)
    plan = SamplePlan(seed=seed)
    if tokens:
        plan = SamplePlan(token_list, plan.routings, seed)
    if routings:
        plan = SamplePlan(plan.tokens, tuple(routings.split(";")), seed)
    # under EP the samples are the busiest rank's share of the whole layer's routing
    hists, labels = plan.histograms(model.problem(gemm, tp=tp), ep=ep)
    timer = get_family(family).make_timer(problem, None, TimerOptions(jobs, not no_progress))
    if getattr(timer, "dropped", None):
        click.echo(f"dropped {len(timer.dropped)} configurations that do not compile or "
                   f"verify: {timer.dropped}")
    out = Path(out_dir)
    stem = f"{gpu.name}_{problem.key}_{timer.family}"
    meas = measure(timer, gpu.name, problem, hists, labels, budget_s=budget,
                   checkpoint=out / f"{stem}.measurements.json", progress=not no_progress)
    meas.provenance["command"] = " ".join(["ramp", *sys.argv[1:]])
    meas.provenance.update(timer_provenance(timer))
    meas.save(out / f"{stem}.measurements.json")  # the checkpoint, with how it was made
    prof = fit_profile(meas, gpu.sms)
    path = prof.save(out / f"{stem}.json")
    click.echo(f"wrote {path} ({len(meas.labels)} histograms x {len(timer.bank)} configs, "
               f"{meas.provenance['profiling_seconds']} s)")


@main.command()
@click.option("--profile", "profile_path", required=True, type=FilePath(dir_okay=False))
@click.option("--holdout", required=True, type=FilePath(dir_okay=False),
              help="exhaustive measurements on held-out histograms")
@click.option("--baselines", type=FilePath(dir_okay=False),
              help="side-by-side baselines (vLLM, torch._grouped_mm) and ceilings")
@click.option("--sync-free", "sync_free", type=FilePath(dir_okay=False),
              help="held-out timings of the polymorphic sync-free kernel")
@click.option("--with-family", "families", multiple=True, nargs=2,
              type=FilePath(dir_okay=False), metavar="PROFILE HOLDOUT",
              help="another kernel family RaMP may choose per call (repeatable)")
@click.option("--out", required=True, type=FilePath(dir_okay=False))
@click.option("--plot", type=FilePath(dir_okay=False), help="write a PNG of every call")
def evaluate(profile_path, holdout, baselines, sync_free, families, out, plot) -> None:
    """Regret vs exhaustive search, speedup over static dispatch and the baselines."""
    from ramp.evaluation import (
        evaluate_profile,
        evaluate_sync_free,
        load_baselines,
        plot_evaluation,
        write_result,
    )
    from ramp.plaindata import read_json
    from ramp.profile import load_profile
    from ramp.profiler import Measurements

    check_output_file(out, "--out")
    check_output_file(plot, "--plot")
    held = Measurements.load(holdout)
    base = load_baselines(baselines, len(held.labels)) if baselines else None
    extra = [(load_profile(p), Measurements.load(h)) for p, h in families]
    result = evaluate_profile(load_profile(profile_path), held, base, extra)
    if sync_free:
        poly = read_json(sync_free, "sync-free timings")
        try:
            result["sync_free"] = evaluate_sync_free(poly, result, held)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{sync_free}: malformed sync-free timings "
                             f"({type(exc).__name__}: {exc})") from None
    result["command"] = " ".join(["ramp", *sys.argv[1:]])
    write_result(result, out)
    ramp, static = result["regret"]["ramp"], result["regret"]["static"]
    click.echo(f"{result['profile']}: {ramp['calls']} held-out calls")
    for label, key in (("RaMP  ", "ramp"), ("unguarded", "ramp_unguarded")):
        r = result["regret"][key]
        click.echo(f"  {label} regret mean {100 * r['mean_regret']:.2f}%  p95 "
                   f"{100 * r['p95_regret']:.2f}%  max {100 * r['max_regret']:.2f}%  "
                   f"top-1 {100 * r['top1_accuracy']:.0f}%")
    click.echo(f"  static regret mean {100 * static['mean_regret']:.2f}%  p95 "
               f"{100 * static['p95_regret']:.2f}%")
    for key, value in result["summary"].items():
        if value is not None:
            click.echo(f"  {key:<36} {value:.3f}")
    for key, value in result.get("sync_free", {}).items():
        if isinstance(value, float):
            click.echo(f"  sync-free {key:<36} {value:.4f}")
    if plot:
        click.echo(f"wrote {out} and {plot_evaluation(result, plot)}")
    else:
        click.echo(f"wrote {out}")


@main.command()
@click.argument("measurements", type=FilePath(dir_okay=False))
@click.option("--out", required=True, type=FilePath(dir_okay=False))
def fit(measurements, out) -> None:
    """Fit a profile from a measurements file (e.g. a black-box family's timings)."""
    from ramp.profiler import Measurements, fit_profile

    check_output_file(out, "--out")
    meas = Measurements.load(measurements)
    sms = meas.provenance.get("sms")
    if isinstance(sms, bool) or not isinstance(sms, int) or sms < 1:
        raise InputError(f"{measurements}: field 'provenance.sms' (the GPU's SM count) "
                         f"must be an int >= 1, got {sms!r}")
    profile = fit_profile(meas, sms)
    if "command" in meas.provenance:  # the command that timed them, kept beside this one
        profile.provenance["measured_by"] = meas.provenance["command"]
    profile.provenance["command"] = " ".join(["ramp", *sys.argv[1:]])
    stats = [s for s in profile.model.fit_stats if s is not None]
    click.echo(f"wrote {profile.save(out)}: {len(stats)} configs, median MAPE "
               f"{100 * float(np.median([s.mape for s in stats])):.2f}%")


@main.command("model-error")
@click.argument("profile_path", type=FilePath(dir_okay=False))
@click.argument("measurements", type=FilePath(dir_okay=False))
@click.option("--out", required=True, type=FilePath(dir_okay=False),
              help="the profile with the re-measured error (may be PROFILE_PATH itself)")
def model_error(profile_path, measurements, out) -> None:
    """Re-measure a profile's model error (what the guarded dispatcher trusts) from the
    measurements it was fitted on, its fitted parameters and static table kept: for a
    new error statistic, without the refit `ramp fit` would make."""
    from ramp.costmodel import ModelError
    from ramp.profile import load_profile
    from ramp.profiler import Measurements

    profile = load_profile(profile_path)
    meas = Measurements.load(measurements)
    if (meas.gpu, meas.problem, meas.family) != (profile.gpu, profile.problem,
                                                 profile.family):
        raise InputError(f"{measurements}: measured {meas.family} on {meas.gpu} for "
                         f"{meas.problem.key}, the profile is {profile.key}")
    column = {cfg: i for i, cfg in enumerate(meas.bank.configs)}
    missing = [c.name for c in profile.model.bank.configs if c not in column]
    if missing:
        raise InputError(f"{measurements}: has no timings of the profile's configurations "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    keep = [column[c] for c in profile.model.bank.configs]
    model = profile.model
    profile.model_error = ModelError.measure(model.bank, model.problem, model.num_sms,
                                             meas.hists, meas.times[:, keep], model.features)
    profile.provenance["model_error"] = (
        f"{profile.model_error.statistic} measured from {measurements} by `ramp model-error` "
        "(parameters unchanged)")
    errors = profile.model_error.error
    click.echo(f"wrote {profile.save(out)}: {profile.model_error.statistic} over "
               f"{len(errors)} T buckets, {100 * min(errors):.1f}-{100 * max(errors):.1f}%")


def _int_list(text: str, option: str) -> tuple[int, ...]:
    """A comma list of positive ints (ASCII digits), or BadParameter naming ``option``."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isascii() and p.isdigit() and len(p) <= 9 and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{text!r} is not a comma list of ints > 0", param_hint=f"'{option}'")
    return tuple(int(p) for p in parts)
