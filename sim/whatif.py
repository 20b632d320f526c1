"""What-if sweeps: one YAML scenario, the cartesian product of its ``sweep`` axes, each
point simulated (all policies) in a worker process.

Scenario keys (see sim/scenarios/*.yaml)::

    name: str
    seed: int                      # routing and workload seed
    routing: {trace: NAME|PATH} | {synthetic: PRESET|null}   # null: the model's default
    workload: {arrivals: NAME|PATH, time_scale: 1.0, limit: N}
            | {rate: R, requests: N, process: poisson|gamma, cv: 1.0,
               prompt: {dist, mean, cv, low, high, max}, output: {...}}
    base: {gpu, model, gpus, mode, policies, engine: {...}, calibration: {...},
           switch: {...}, slo: {...}, profiles: [...]}
    sweep: {dotted.key: [values, ...]}   # "mode", "gpu", "workload.rate", "engine.max_seqs"

A sweep key starting with ``workload.`` or ``routing.`` sets that section; any other
key sets ``base``.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from ramp.errors import InputError, RampError
from ramp.models import get_model
from ramp.plaindata import from_mapping
from ramp.sim.costs import Calibration
from ramp.sim.engine import EngineConfig, SwitchConfig
from ramp.sim.metrics import SLO
from ramp.sim.routing import RoutingPool
from ramp.sim.runner import SimConfig, load_pool, run_study, synthetic_pool
from ramp.sim.workload import LengthDist, SyntheticWorkload, load_arrivals
from ramp.trace import Arrival

SECTIONS = ("name", "seed", "routing", "workload", "base", "sweep")
_NESTED = {"engine": EngineConfig, "calibration": Calibration, "switch": SwitchConfig,
           "slo": SLO}


def sim_config(base: dict[str, Any], where: str) -> SimConfig:
    """A SimConfig from a scenario's ``base`` mapping (nested sections as mappings)."""
    data = dict(base)
    for key, cls in _NESTED.items():
        if key in data:
            data[key] = from_mapping(cls, data[key], f"{where}.{key}")
    for key in ("policies", "profiles"):
        if key in data:
            data[key] = tuple(data[key])
    return from_mapping(SimConfig, data, where)


def workload_arrivals(spec: dict[str, Any], seed: int, where: str) -> list[Arrival]:
    """Arrivals of a scenario's ``workload`` section."""
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected a mapping")
    if "arrivals" in spec:
        extra = set(spec) - {"arrivals", "time_scale", "limit"}
        if extra:
            raise InputError(f"{where}: unknown key(s) {sorted(extra)} beside 'arrivals'")
        return load_arrivals(spec["arrivals"], spec.get("time_scale", 1.0), spec.get("limit"))
    data = dict(spec)
    for key in ("prompt", "output"):
        if key in data:
            data[key] = from_mapping(LengthDist, data[key], f"{where}.{key}")
    return from_mapping(SyntheticWorkload, data, where).arrivals(seed)


def routing_pool(spec: dict[str, Any], model_name: str | None, seed: int,
                 where: str) -> RoutingPool:
    """Routing of a scenario's ``routing`` section for the point's model."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in (
            "trace", "synthetic"):
        raise InputError(f"{where}: expected {{trace: NAME}} or {{synthetic: PRESET}}")
    if "trace" in spec:
        return load_pool(spec["trace"], seed=seed)
    if model_name is None:
        raise InputError(f"{where}: synthetic routing needs base.model")
    return synthetic_pool(get_model(model_name), spec["synthetic"], seed=seed)


def load_scenario(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read scenario ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
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
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        job.update(point=dict(zip(keys, values)), seed=int(scenario.get("seed", 0)),
                   where=scenario["where"])
        jobs.append(job)
    return jobs


_POOLS: dict[str, RoutingPool] = {}  # per worker process: routing reused across points


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Simulate one sweep point; returns its point, summaries and speedup."""
    where = f"{job['where']} point {job['point']}"
    config = sim_config(job["base"], f"{where} base")
    key = repr((job["routing"], config.model, job["seed"]))
    if key not in _POOLS:
        _POOLS[key] = routing_pool(job["routing"], config.model, job["seed"],
                                   f"{where} routing")
    arrivals = workload_arrivals(job["workload"], job["seed"], f"{where} workload")
    report = run_study(config, _POOLS[key], arrivals)
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
    """Run every point of a scenario over ``jobs`` processes (default: all cores)."""
    scenario = load_scenario(path)
    points = expand(scenario)
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
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))] if rows else []
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines + notes)
