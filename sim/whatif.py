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
           switch: {...}, slo: {...}, profiles: [...]}
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
from ramp.models import get_model
from ramp.plaindata import from_mapping, read_yaml
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
        raise InputError(f"{where}: expected a mapping, got {type(spec).__name__}")
    if "arrivals" not in spec:
        return from_mapping(SyntheticWorkload, spec, where)
    extra = set(spec) - set(_ARRIVALS_KEYS)
    if extra:
        raise InputError(f"{where}: unknown key(s) {sorted(map(str, extra))} beside "
                         "'arrivals'")
    try:
        check_arrival_options(spec.get("time_scale", 1.0), spec.get("limit"))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if not isinstance(spec["arrivals"], str):
        raise InputError(f"{where}: field 'arrivals' must be a file path or shipped name")
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
        raise InputError(f"{where}: field 'trace' must be a file path or shipped name")
    if kind == "synthetic":
        if model_name is None:
            raise InputError(f"{where}: synthetic routing needs base.model")
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: field 'synthetic' must be a preset name or null")
    return kind, value


def routing_pool(spec: Any, model_name: str | None, seed: int, where: str) -> RoutingPool:
    """Routing of a scenario's ``routing`` section for the point's model."""
    kind, value = _routing_spec(spec, model_name, where)
    if kind == "trace":
        return load_pool(value, seed=seed)
    return synthetic_pool(get_model(model_name), value, seed=seed)


def load_scenario(path: str | Path) -> dict[str, Any]:
    """A scenario file, its sections and sweep keys checked (not yet its points)."""
    path = Path(path)
    data = read_yaml(path, "scenario")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a scenario is a mapping")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise InputError(f"{path}: unknown section(s) {sorted(unknown)}; known: {SECTIONS}")
    for key in ("routing", "workload"):
        if key not in data:
            raise InputError(f"{path}: missing section {key!r}")
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise InputError(f"{path}: 'sweep' maps keys to non-empty lists")
    for key in sweep:
        parts = key.split(".") if isinstance(key, str) else [""]
        if not all(parts) or (parts[0] in ("routing", "workload") and len(parts) < 2):
            raise InputError(f"{path}: sweep key {key!r} must name a field (e.g. 'mode', "
                             "'workload.rate', 'engine.max_seqs')")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{path}: field 'seed' must be an int >= 0, got {seed!r}")
    data["base"] = data.get("base") or {}
    if not isinstance(data["base"], dict):
        raise InputError(f"{path}: section 'base' must be a mapping, got "
                         f"{type(data['base']).__name__}")
    data["name"] = str(data.get("name", path.stem))
    data["where"] = str(path)
    return data


def expand(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per point of the sweep: the scenario with that point's values set."""
    sweep = scenario.get("sweep") or {}
    keys = list(sweep)
    jobs = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        job = {s: copy.deepcopy(scenario.get(s, {})) for s in ("routing", "workload", "base")}
        for key, value in zip(keys, values):
            parts = key.split(".")
            section = parts.pop(0) if parts[0] in ("routing", "workload") else "base"
            node = job[section]
            for part in parts[:-1]:
                if not isinstance(node, dict):
                    break
                node = node.setdefault(part, {})
            if isinstance(node, dict):  # else the point's check below names the section
                node[parts[-1]] = value
        job.update(point=dict(zip(keys, values)), seed=scenario.get("seed", 0),
                   where=scenario["where"])
        jobs.append(job)
    return jobs


_POOLS: dict[str, RoutingPool] = {}  # per worker process: routing reused across points


def _where(job: dict[str, Any]) -> str:
    return f"{job['where']} point {job['point']}"


def check_job(job: dict[str, Any]) -> SimConfig:
    """A point's sections checked without running it (its SimConfig)."""
    where = _where(job)
    config = sim_config(job["base"], f"{where} base")
    _routing_spec(job["routing"], config.model, f"{where} routing")
    workload_spec(job["workload"], f"{where} workload")
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
