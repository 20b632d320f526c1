"""What-if sweeps: one YAML scenario, the cartesian product of its ``sweep`` axes, each
point simulated (all policies) in a worker process.

Scenario keys (see sim/scenarios/*.yaml)::

    name: str
    seed: int                      # routing and workload seed
    routing: {trace: NAME|PATH} | {synthetic: PRESET|null}   # null: preset realistic
    workload: {arrivals: NAME|PATH, time_scale: 1.0, limit: N}
            | {rate: R, requests: N, process: poisson|gamma, cv: 1.0,
               prompt: {dist, mean, cv, low, high, max}, output: {...}}
    base: {gpu, model, gpus, mode, policies, engine: {...}, calibration: {...},
           switch: {...}, slo: {...}, profiles: [...], plans: [...]}
    sweep: {dotted.key: [values, ...]}   # "mode", "gpu", "workload.rate", "engine.max_seqs"

A sweep key starting with ``workload.`` or ``routing.`` sets that section; any other
key sets ``base``. Every point is checked before any runs (a bad value is reported with
its point and field); a point that fails while running is reported with its point,
and the finished points are kept.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ramp.errors import InputError, RampError
from ramp.hardware import get_gpu
from ramp.models import get_model
from ramp.plaindata import (
    YamlMap,
    from_mapping,
    locate,
    locate_error,
    read_yaml,
    relocate,
    type_name,
)
from ramp.sim.routing import RoutingPool
from ramp.sim.runner import SimConfig, load_pool, run_study, synthetic_pool
from ramp.sim.workload import SyntheticWorkload, check_arrival_options, load_arrivals
from ramp.trace import Arrival

SECTIONS = ("name", "seed", "routing", "workload", "base", "sweep")
_ARRIVALS_KEYS = ("arrivals", "time_scale", "limit")


def sim_config(base: Any, where: str) -> SimConfig:
    """A SimConfig from a scenario's ``base`` mapping (nested sections as mappings)."""
    return from_mapping(SimConfig, base, where)


def workload_spec(spec: Any, where: str) -> SyntheticWorkload | dict[str, Any]:
    """A scenario's ``workload`` section checked: a SyntheticWorkload, or the
    ``arrivals`` mapping (its file is read when the point runs)."""
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected a mapping, got {type_name(spec)}")
    if "arrivals" not in spec:
        return from_mapping(SyntheticWorkload, spec, where)
    extra = [key for key in spec if key not in _ARRIVALS_KEYS]
    if extra:
        raise InputError(locate(f"{where}: unknown key(s) {sorted(map(str, extra))} beside "
                                "'arrivals'", spec, extra[0]))
    try:
        check_arrival_options(spec.get("time_scale", 1.0), spec.get("limit"))
    except InputError as exc:
        raise InputError(locate_error(where, exc, spec)) from None
    if not isinstance(spec["arrivals"], str):
        raise InputError(locate(f"{where}: field 'arrivals' must be a file path or shipped "
                                "name", spec, "arrivals"))
    return spec


def workload_arrivals(spec: Any, seed: int, where: str) -> list[Arrival]:
    """Arrivals of a scenario's ``workload`` section."""
    work = workload_spec(spec, where)
    if isinstance(work, SyntheticWorkload):
        return work.arrivals(seed)
    try:
        return load_arrivals(work["arrivals"], work.get("time_scale", 1.0), work.get("limit"))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _routing_spec(spec: Any, model_name: str | None, where: str) -> tuple[str, Any]:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in (
            "trace", "synthetic"):
        raise InputError(f"{where}: expected {{trace: NAME}} or {{synthetic: PRESET}}")
    kind, value = next(iter(spec.items()))
    if kind == "trace" and not isinstance(value, str):
        raise InputError(locate(f"{where}: field 'trace' must be a file path or shipped name",
                                spec, kind))
    if kind == "synthetic":
        if model_name is None:
            raise InputError(f"{where}: synthetic routing needs base.model")
        if value is not None and not isinstance(value, str):
            raise InputError(locate(f"{where}: field 'synthetic' must be a preset name or "
                                    "null", spec, kind))
    return kind, value


def routing_pool(spec: Any, model_name: str | None, seed: int, where: str) -> RoutingPool:
    """Routing of a scenario's ``routing`` section for the point's model."""
    kind, value = _routing_spec(spec, model_name, where)
    if kind == "trace":
        return load_pool(value, seed=seed)
    return synthetic_pool(get_model(model_name), value, seed=seed)


def load_scenario(path: str | Path) -> dict[str, Any]:
    """A scenario file, its sections and sweep keys checked (not yet its points); errors
    name the line of the offending value."""
    path = Path(path)
    data = read_yaml(path, "scenario", mapping=True)
    unknown = [key for key in data if key not in SECTIONS]
    if unknown:
        raise InputError(locate(f"{path}: unknown section(s) {sorted(map(str, unknown))}; "
                                f"known: {SECTIONS}", data, unknown[0]))
    for key in ("routing", "workload"):
        if key not in data:
            raise InputError(locate(f"{path}: missing section {key!r}", data))
    sweep = data.get("sweep") or {}
    bad = ([key for key, values in sweep.items() if not (isinstance(values, list) and values)]
           if isinstance(sweep, dict) else [None])
    if bad:
        raise InputError(locate(f"{path}: 'sweep' maps keys to non-empty lists",
                                *((data, "sweep") if bad[0] is None else (sweep, bad[0]))))
    for key in sweep:
        parts = key.split(".") if isinstance(key, str) else [""]
        if not all(parts) or (parts[0] in ("routing", "workload") and len(parts) < 2):
            raise InputError(locate(f"{path}: sweep key {key!r} must name a field (e.g. "
                                    "'mode', 'workload.rate', 'engine.max_seqs')", sweep, key))
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(locate(f"{path}: field 'seed' must be an int >= 0, got {seed!r}",
                                data, "seed"))
    data["base"] = data.get("base") or YamlMap()  # a YamlMap keeps where sweeps set values
    if not isinstance(data["base"], dict):
        raise InputError(locate(f"{path}: section 'base' must be a mapping, got "
                                f"{type_name(data['base'])}", data, "base"))
    data["name"] = str(data.get("name", path.stem))
    data["where"] = str(path)
    return data


def expand(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per point of the sweep: the scenario with that point's values set (each
    remembers its line in the sweep, for errors about it)."""
    sweep = scenario.get("sweep") or {}
    keys = list(sweep)
    jobs = []
    for indices in itertools.product(*(range(len(sweep[k])) for k in keys)):
        job = copy.deepcopy(scenario)  # its sections keep their places in the file
        for key, index in zip(keys, indices):
            parts = key.split(".")
            section = parts.pop(0) if parts[0] in ("routing", "workload") else "base"
            *inner, last = parts
            node = job[section]
            for part in inner:
                if not isinstance(node, dict):
                    break
                if part not in node:
                    node[part] = {}
                    relocate(node, part, sweep[key], index)
                node = node[part]
            if isinstance(node, dict):  # else the point's check below names the section
                node[last] = sweep[key][index]
                relocate(node, last, sweep[key], index)
        job.update(point={k: sweep[k][i] for k, i in zip(keys, indices)},
                   seed=scenario.get("seed", 0), where=scenario["where"])
        jobs.append(job)
    return jobs


_POOLS: dict[str, RoutingPool] = {}  # per worker process: routing reused across points


def _where(job: dict[str, Any]) -> str:
    return f"{job['where']} point {job['point']}"


def check_job(job: dict[str, Any]) -> SimConfig:
    """A point's sections checked without running it (its SimConfig), its GPU and model
    names too; errors name the line of the offending value."""
    where = _where(job)
    base = locate(f"{where} base", job, "base")
    config = sim_config(job["base"], base)
    for name, lookup in (("gpu", get_gpu), ("model", get_model)):
        if getattr(config, name) is not None:
            try:
                lookup(getattr(config, name))
            except InputError as exc:
                raise InputError(locate(f"{base}: {exc}", job["base"], name)) from None
    _routing_spec(job["routing"], config.model, locate(f"{where} routing", job, "routing"))
    workload_spec(job["workload"], locate(f"{where} workload", job, "workload"))
    return config


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Simulate one sweep point; returns its point, summaries and speedup, or its point
    and the error (one line naming the point) when RaMP refused it."""
    where = _where(job)
    try:
        config = check_job(job)
        key = repr((job["routing"], config.model, job["seed"]))
        if key not in _POOLS:
            _POOLS[key] = routing_pool(job["routing"], config.model, job["seed"],
                                       f"{where} routing")
        arrivals = workload_arrivals(job["workload"], job["seed"], f"{where} workload")
        report = run_study(config, _POOLS[key], arrivals)
    except RampError as exc:
        message = str(exc)
        return {"point": job["point"],
                "error": message if message.startswith(where) else f"{where}: {message}"}
    return {"point": job["point"], **report.to_dict()}


def run_job_kept(job: dict[str, Any]) -> dict[str, Any]:
    """``run_job``, with a point that cannot run (a model that does not fit, a bad
    value) reported as ``{"point", "error"}`` so that the sweep keeps the others."""
    try:
        return run_job(job)
    except RampError as exc:
        return {"point": job["point"], "error": str(exc)}


def run_scenario(path: str | Path, jobs: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run every point of a scenario over ``jobs`` processes (default: all cores).

    All points are checked first (InputError naming the first bad point); a point that
    fails while running has an ``error`` instead of results, the others still run."""
    scenario = load_scenario(path)
    points = expand(scenario)
    for job in points:
        check_job(job)
    workers = max(1, min(jobs or multiprocessing.cpu_count(), len(points)))
    bar = tqdm(total=len(points), desc=scenario["name"], unit="point", disable=not progress)
    results = []
    if workers == 1:
        for job in points:
            results.append(run_job_kept(job))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(run_job_kept, points):
                results.append(result)
                bar.update()
    bar.close()
    if all("error" in r for r in results):  # nothing to keep: the scenario itself is wrong
        raise InputError(results[0]["error"] if len(results) == 1 else
                         f"every point failed; the first: {results[0]['error']}")
    return {"scenario": scenario["name"], "source": scenario["where"], "points": results}


def format_results(results: dict[str, Any]) -> str:
    """One line per (point, policy): the sweep values and the headline metrics; a failed
    point gets one line with its error; overloaded runs are flagged."""
    rows, notes = [], []
    for res in results["points"]:
        if "error" in res:
            continue
        point = " ".join(f"{k}={v}" for k, v in res["point"].items()) or "-"
        if "error" in res:
            notes.append(f"FAILED {point}: {res['error']}")
            continue
        for s in res["runs"]:
            rows.append([point, s["policy"], f"{res['config']['gpus']}x{res['config']['gpu']}",
                         f"{1e3 * s['ttft_p50_s']:.0f}", f"{1e3 * s['ttft_p99_s']:.0f}",
                         f"{1e3 * s['tpot_mean_s']:.1f}", f"{1e3 * s['tpot_p99_s']:.1f}",
                         f"{s['throughput_tok_s']:.0f}", f"{s['goodput_req_s']:.2f}",
                         f"{s['moe_share']:.0%}", str(s["switches"])])
            if s.get("overloaded"):
                notes.append(f"WARNING {point} {s['policy']}: offered load exceeds capacity "
                             f"(TTFT p50 {s['ttft_p50_first_tenth_s']:.2f} s -> "
                             f"{s['ttft_p50_last_tenth_s']:.2f} s from the first to the last "
                             "tenth of arrivals)")
        if res["ramp_vs_static"]:
            g = res["ramp_vs_static"]
            rows.append([point, "ramp/static", "", f"{g['ttft_p50']:.3f}x", "",
                         f"{g['tpot_mean']:.3f}x", "", f"{g['throughput']:.3f}x",
                         f"{g['goodput']:.3f}x", "", ""])
    header = ["point", "policy", "gpus", "TTFT p50 ms", "TTFT p99 ms", "TPOT ms",
              "TPOT p99 ms", "tok/s", "goodput r/s", "MoE share", "switches"]
    if not rows:
        return "no point finished"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines + notes)
