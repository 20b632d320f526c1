"""Roofline side by side: every family's best, RaMP's cross-family choice, vLLM's fused_moe
GEMM, torch._grouped_mm and the floor, per GEMM call (the measurement of issue 13).

    # on the GPU: the CuTe DSL (carry [".whl"], source bench/device_env.sh) and vLLM
    # (bench/engine/env.sh) where they are carried; families without them are skipped
    python3 bench/roofline.py measure --model deepseek-v2-lite --gemm w13 w2 \
        --data .carry/routing --out $OUT
    # any machine: the results file, its targets and a plot
    python3 bench/roofline.py report $OUT/*roofline*.json --out bench/results/H200/roofline.json

``measure`` times, for each GEMM of the model, on the same calls: T in ``--tokens``
(1 .. 8192) under uniform, Zipf-1.2 and real routing (a seeded (batch, layer) pick of the
``--data`` recordings, consecutive tokens, when they are of this model's architecture;
else the ``realistic`` generator fitted to them), every family with a shipped profile of
the problem (``--families`` to name them). Each family times the configurations its
profile ranks in the ``--top`` fastest for some call, plus the static table's picks (all
of them with ``--top 0``, or for a family without a profile): RaMP's cross-family choice
is always among them, and a family's best is the best of what it timed. The timers check
every configuration against float32 first and drop the wrong ones. vLLM's GEMM
(``bench/vllm_baseline.py``) and the machine's ceilings (HBM read bandwidth, dense
matmul FLOP/s) are measured in the same process. Writes ``<gpu>_<problem>_<family>.roofline
.json`` (``ramp-measurements/1``) per family and ``<gpu>_<problem>_roofline-baselines.json``.

``report`` turns those files into ``roofline.json``: ``device``, ``command``,
``read_bandwidth_bytes_per_s``, ``matmul_flops`` (the median over the shapes' runs; each
shape keeps its own), ``calls`` (per call: ``shape``, ``tokens``, ``routing``,
``floor_us``, ``ramp_us`` with ``ramp_family``/``ramp_config``, ``best_us``,
``vllm_us``, ``grouped_mm_us``, ``family_best_us``) and ``targets`` per shape (issue 13:
RaMP >= 80% of the floor at every T >= 1024 call and >= 85% geomean there, >= 90% at
T = 4..256, >= 85% at T = 1; >= 1.3x vLLM geomean over T >= 1024 and never slower;
never slower than torch._grouped_mm), and a plot of RaMP, the best, vLLM and grouped_mm
as a fraction of the floor per T. RaMP's choice is the guarded dispatcher over the
concatenated cost models of the profiled families, with the Triton family's static
table as its fallback, as ``ramp evaluate --with-family`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# ``bench.vllm_baseline`` is a sibling script: the checkout's root must be importable,
# after the installed packages (its ramp/ alone lacks ramp.kernels, ramp.sim, ...)
sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

from ramp.clitools import positive_ints
from ramp.errors import InputError, RampError
from ramp.evaluation import Ceilings, floor_us
from ramp.histograms import parse_histogram_spec
from ramp.models import MoEModel, get_model
from ramp.plaindata import read_json
from ramp.problem import MoEProblem
from ramp.profile import Profile, find_profile
from ramp.profiler import Measurements
from ramp.regret import geomean

TOKENS = (1, 4, 16, 64, 256, 512, 1024, 2048, 4096, 8192)
SYNTHETIC = ("uniform", "zipf:s=1.2")
FAMILIES = ("triton", "cute", "grouped_mm", "triton-tiles")
PRIMARY = "triton"  # its static table is the engine-like fallback of RaMP's choice
BASELINES = "roofline-baselines"
# issue 13's targets: fractions of the floor and ratios to the baselines
PREFILL_T, PREFILL_MIN, PREFILL_GEOMEAN = 1024, 0.80, 0.85
DECODE_T, DECODE_MIN, T1_MIN = (4, 256), 0.90, 0.85
VS_VLLM_GEOMEAN = 1.3
MAX_REL_ERR = 2e-2  # vLLM's output vs float32, as the families' timers check theirs


def roofline_calls(model: MoEModel, problem: MoEProblem, tokens: Sequence[int],
                   recordings: Sequence[tuple[str, Any]] = (), seed: int = 0
                   ) -> tuple[np.ndarray, list[str]]:
    """[H, E] histograms and labels of the roofline grid: every T under uniform and
    Zipf-1.2 (``ramp.histograms`` specs), and real routing: a seeded (batch, layer) pick
    of consecutive tokens from the first recording of this model's expert count, else
    the ``realistic`` generator. Labels name the routing first (``routing_name``)."""
    real = next((r for _, r in recordings if r.num_experts == problem.num_experts
                 and r.top_k == problem.top_k), None)
    hists, labels = [], []
    for i, t in enumerate(tokens):
        for j, spec in enumerate((*SYNTHETIC, "realistic")):
            s = seed * 1000 + i * 10 + j
            if spec == "realistic" and real is not None and t <= real.tokens:
                batches, _ = real.batches(t, "consecutive", s)
                rng = np.random.default_rng([seed, t])
                b, layer = rng.integers(batches.shape[0]), rng.integers(real.layers)
                hists.append(batches[b, layer])
                labels.append(f"real:tokens={t},batch={b},layer={layer}")
                continue
            label = f"{spec}{',' if ':' in spec else ':'}tokens={t},seed={s}"
            hists.append(parse_histogram_spec(label, problem.num_experts, problem.top_k))
            labels.append(label)
    return np.stack(hists).astype(np.int64), labels


def routing_name(label: str) -> str:
    """``"zipf:s=1.2,tokens=64,seed=3"`` -> ``"zipf:s=1.2"``; ``"real:tokens=..."`` -> ``"real"``."""
    head = label.split(",tokens=")[0]
    return head.split(":tokens=")[0]


def configs_to_time(profile: Profile, hists: np.ndarray, top: int) -> list[int]:
    """Bank indices of ``profile`` to time: every configuration its model ranks among the
    ``top`` fastest for some call, and the static table's picks (all with ``top`` 0)."""
    n = len(profile.model.bank)
    if top <= 0 or top >= n:
        return list(range(n))
    ranked = np.argsort(profile.model.predict(hists), axis=1)[:, :top]
    static = profile.dispatcher("static").choose_batch(hists)
    return sorted({*ranked.ravel().tolist(), *static.tolist()})


def measure_shape(problem: MoEProblem, model: MoEModel, families: Sequence[str],
                  args: argparse.Namespace, recordings, out: Path, command: str) -> None:
    """Every family, vLLM's GEMM and the ceilings on one problem's roofline calls."""
    from ramp.families import TimerOptions, get_family
    from ramp.hardware import detect_gpu
    from ramp.kernels.cuda_timing import device_info, matmul_flops, read_bandwidth
    from ramp.profiler import measure

    gpu = detect_gpu().name
    hists, labels = roofline_calls(model, problem, args.tokens, recordings, args.seed)
    stem = f"{gpu}_{problem.key}"
    # the baselines first: a family that fails or a call cut at its limit keeps them
    base: dict[str, Any] = {"schema": BASELINES, "gpu": gpu, "problem": problem.to_dict(),
                            "labels": labels, "command": command, "device": device_info(),
                            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "read_bandwidth_bytes_per_s": read_bandwidth(),
                            "matmul_flops": matmul_flops()}
    try:
        from bench.vllm_baseline import vllm_times
    except ImportError as exc:
        base["vllm"] = f"not run: {exc}"
        print(f"{problem.key} vLLM: {base['vllm']}", flush=True)
    else:
        base["vllm"] = vllm_times(problem, hists)
    (out / f"{stem}_{BASELINES}.json").write_text(json.dumps(base, indent=1) + "\n")
    for family in families:
        profile = find_profile(gpu, problem, family=family)
        if profile is not None:  # the bank the profile ranks
            space = list(profile.model.bank.configs)
            picked = configs_to_time(profile, hists, args.top)
        else:
            space = get_family(family).configs(problem.dtype_bytes)
            picked = list(range(len(space)))
        t0 = time.monotonic()
        try:
            timer = get_family(family).make_timer(problem, [space[i] for i in picked],
                                                  TimerOptions(jobs=args.jobs, progress=False))
            print(f"{problem.key} {family}: {len(timer.bank)} of {len(space)} configurations "
                  f"compiled and checked in {time.monotonic() - t0:.0f} s", flush=True)
            meas = measure(timer, gpu, problem, hists, labels, progress=False)
        except Exception as exc:  # e.g. the CuTe DSL not carried: the other families go on
            print(f"{problem.key} {family}: not measured ({type(exc).__name__}: {exc})",
                  flush=True)
            continue
        meas.provenance.update(command=command, configs_picked=len(timer.bank), top=args.top,
                               profile=None if profile is None else profile.key)
        meas.save(out / f"{stem}_{family}.roofline.json")
        getattr(timer, "close", lambda: None)()
    print(f"{problem.key}: wrote {stem}_*.roofline.json and {stem}_{BASELINES}.json",
          flush=True)


# --- report (any machine) ------------------------------------------------------------------

def load_inputs(paths: Sequence[Path]) -> dict[str, tuple[dict[str, Any], dict[str, Measurements]]]:
    """Shape key -> (baselines, family -> measurements); every family's calls must be the
    baselines' calls."""
    shapes: dict[str, tuple[dict[str, Any] | None, dict[str, Measurements]]] = {}
    for path in paths:
        data = read_json(path, "roofline input")
        if isinstance(data, dict) and data.get("schema") == BASELINES:
            for name in ("gpu", "problem", "labels", "read_bandwidth_bytes_per_s",
                         "matmul_flops", "vllm"):
                if name not in data:
                    raise InputError(f"{path}: missing field {name!r}")
            key = f"{data['gpu']}_{MoEProblem.from_dict(data['problem']).key}"
            shapes.setdefault(key, (None, {}))
            shapes[key] = (data | {"path": str(path)}, shapes[key][1])
            continue
        meas = Measurements.load(path)
        key = f"{meas.gpu}_{meas.problem.key}"
        shapes.setdefault(key, (None, {}))[1][meas.family] = meas
    out = {}
    for key, (base, per_family) in shapes.items():
        if base is None:
            raise InputError(f"{key}: no {BASELINES} file among the inputs")
        if PRIMARY not in per_family:
            raise InputError(f"{key}: no {PRIMARY} measurements among the inputs")
        for family, meas in per_family.items():
            if meas.labels != base["labels"]:
                raise InputError(f"{key}: the {family} measurements are of other calls than "
                                 f"{base['path']}")
        if not isinstance(base["vllm"], str) and len(base["vllm"]) != len(base["labels"]):
            raise InputError(f"{base['path']}: field 'vllm' has {len(base['vllm'])} entries "
                             f"for {len(base['labels'])} calls")
        out[key] = (base, per_family)
    return out


def ramp_choice(per_family: dict[str, Measurements]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """RaMP across the families with a shipped profile: per call the chosen family, the
    chosen configuration's measured time (NaN where it was not timed) and its name.
    The primary family's static table and measured error guard the choice."""
    primary = per_family[PRIMARY]
    profiles = {f: find_profile(m.gpu, m.problem, family=f) for f, m in per_family.items()}
    if profiles[PRIMARY] is None:
        raise InputError(f"no shipped {PRIMARY} profile for {primary.gpu} {primary.problem.key}")
    names = [PRIMARY] + [f for f in per_family if f != PRIMARY and profiles[f] is not None]
    ramp = profiles[PRIMARY].across_families([profiles[f] for f in names[1:]])
    model = ramp.ramp.model
    picks = ramp.choose_batch(primary.hists)
    owner = [f for f in names for _ in profiles[f].model.bank.configs]
    columns = {f: {c: j for j, c in enumerate(per_family[f].bank.configs)} for f in names}
    families, times, configs = [], np.full(len(picks), np.nan), []
    for i, k in enumerate(picks):
        family, cfg = owner[k], model.bank.configs[k]
        col = columns[family].get(cfg)
        families.append(family)
        configs.append(cfg.name)
        if col is not None:
            times[i] = per_family[family].times[i, col]
    return families, times, np.array(configs)


def report(paths: Sequence[Path], command: str) -> dict[str, Any]:
    """The results file: every call of every shape, and the targets per shape."""
    calls, targets, ceilings, devices = [], {}, {}, []
    for base, per_family in load_inputs(paths).values():
        primary = per_family[PRIMARY]
        shape = primary.problem.key
        ceil = Ceilings(float(base["read_bandwidth_bytes_per_s"]), float(base["matmul_flops"]))
        ceilings[shape] = {"read_bandwidth_bytes_per_s": ceil.read_bandwidth,
                           "matmul_flops": ceil.matmul_flops}
        devices.append(base.get("device"))
        floors = floor_us(primary, ceil)
        fam, ramp_us, ramp_cfg = ramp_choice(per_family)
        best = {f: np.where(np.isfinite(m.times).any(axis=1),
                            np.nanmin(np.where(np.isfinite(m.times), m.times, np.inf), axis=1),
                            np.nan) for f, m in per_family.items()}
        vllm = base["vllm"]
        rows = []
        for i, label in enumerate(base["labels"]):
            fam_best = {f: (None if not np.isfinite(b[i]) else float(b[i]))
                        for f, b in best.items()}
            measured = [v for v in fam_best.values() if v is not None]
            rows.append({
                "shape": shape, "tokens": int(primary.tokens[i]), "routing": routing_name(label),
                "label": label, "active_experts": int(np.count_nonzero(primary.hists[i])),
                "floor_us": float(floors[i]),
                "ramp_us": None if not np.isfinite(ramp_us[i]) else float(ramp_us[i]),
                "ramp_family": fam[i], "ramp_config": str(ramp_cfg[i]),
                "best_us": min(measured) if measured else None,
                "vllm_us": None if isinstance(vllm, str) or not _checked(vllm[i])
                else float(vllm[i]["us"]),
                "vllm_rel_err": None if isinstance(vllm, str) else vllm[i].get("rel_err"),
                "vllm_config": None if isinstance(vllm, str) else vllm[i]["config"],
                "grouped_mm_us": fam_best.get("grouped_mm"),
                "family_best_us": fam_best,
            })
        calls += rows
        targets[shape] = shape_targets(rows, vllm if isinstance(vllm, str) else None)
    return {"device": devices[0] if devices else None, "command": command,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "read_bandwidth_bytes_per_s": _median(c["read_bandwidth_bytes_per_s"]
                                                  for c in ceilings.values()),
            "matmul_flops": _median(c["matmul_flops"] for c in ceilings.values()),
            "ceilings_by_shape": ceilings, "targets": targets, "calls": calls}


def _checked(entry: dict[str, Any]) -> bool:
    """A vLLM time counts only where its output matched float32 (as every family's)."""
    err = entry.get("rel_err")
    return isinstance(err, (int, float)) and np.isfinite(err) and err < MAX_REL_ERR


def _median(values) -> float | None:
    v = list(values)
    return float(np.median(v)) if v else None


def shape_targets(rows: Sequence[dict[str, Any]], vllm_missing: str | None) -> dict[str, Any]:
    """Issue 13's targets on one shape's calls: each figure, and whether it is met (None
    where nothing was measured to say)."""
    def of_floor(sel):
        return [r["floor_us"] / r["ramp_us"] for r in sel if r["ramp_us"]]

    prefill = of_floor([r for r in rows if r["tokens"] >= PREFILL_T])
    decode = of_floor([r for r in rows if DECODE_T[0] <= r["tokens"] <= DECODE_T[1]])
    t1 = of_floor([r for r in rows if r["tokens"] == 1])
    vs_vllm = [r["vllm_us"] / r["ramp_us"] for r in rows if r["ramp_us"] and r["vllm_us"]]
    vs_vllm_prefill = [r["vllm_us"] / r["ramp_us"] for r in rows
                       if r["ramp_us"] and r["vllm_us"] and r["tokens"] >= PREFILL_T]
    vs_gmm = [r["grouped_mm_us"] / r["ramp_us"] for r in rows
              if r["ramp_us"] and r["grouped_mm_us"]]
    out = {
        "unmeasured_ramp_picks": sum(r["ramp_us"] is None for r in rows),
        "prefill_floor_fraction_min": min(prefill, default=None),
        "prefill_floor_fraction_geomean": geomean(prefill),
        "decode_floor_fraction_min": min(decode, default=None),
        "t1_floor_fraction_min": min(t1, default=None),
        "vs_vllm_prefill_geomean": geomean(vs_vllm_prefill),
        "vs_vllm_min": min(vs_vllm, default=None),
        "vs_grouped_mm_min": min(vs_gmm, default=None),
        "vllm": vllm_missing or "measured",
    }
    checks = {"prefill_floor_fraction_min": PREFILL_MIN,
              "prefill_floor_fraction_geomean": PREFILL_GEOMEAN,
              "decode_floor_fraction_min": DECODE_MIN, "t1_floor_fraction_min": T1_MIN,
              "vs_vllm_prefill_geomean": VS_VLLM_GEOMEAN, "vs_vllm_min": 1.0,
              "vs_grouped_mm_min": 1.0}
    out["met"] = {k: None if out[k] is None else bool(out[k] >= v) for k, v in checks.items()}
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per shape: RaMP, the best measured, vLLM and grouped_mm as a fraction of the floor
    (geomean over the routings) per T, with the targets as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(c["shape"] for c in result["calls"]))
    cols = min(3, len(shapes))
    rows = -(-len(shapes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.8 * rows), squeeze=False,
                             sharey=True)
    for ax, shape in zip(axes.ravel(), shapes):
        sel = [c for c in result["calls"] if c["shape"] == shape]
        tokens = sorted({c["tokens"] for c in sel})
        for key, name, style in (("ramp_us", "RaMP", "C0o-"), ("best_us", "best measured",
                                                               "k^--"),
                                 ("vllm_us", "vLLM fused_moe", "C3s-"),
                                 ("grouped_mm_us", "torch._grouped_mm", "C2d:")):
            ys = [geomean([c["floor_us"] / c[key] for c in sel if c["tokens"] == t and c[key]])
                  for t in tokens]
            if any(y is not None for y in ys):
                ax.plot(tokens, [np.nan if y is None else y for y in ys], style, ms=4,
                        label=name)
        ax.axhline(PREFILL_GEOMEAN, color="C7", lw=0.8, ls="--", label="target T>=1024")
        ax.axhline(DECODE_MIN, color="C7", lw=0.8, ls=":", label="target T=4..256")
        ax.set_xscale("log", base=2)
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("tokens per call T")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of the floor")
    for ax in axes.ravel()[len(shapes):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    device = (result.get("device") or {}).get("device", "?")
    fig.suptitle(f"MoE GEMMs vs the roofline floor: {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="on the GPU")
    m.add_argument("--model", required=True)
    m.add_argument("--gemm", nargs="+", choices=["w13", "w2"], default=["w13", "w2"])
    m.add_argument("--families", default=None,
                   help=f"comma-separated (default: those of {FAMILIES} with a shipped "
                        "profile of the problem)")
    m.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    m.add_argument("--data", type=Path,
                   help="folder of *.npz routing recordings of this model's architecture "
                        "(real routing; without it the realistic generator)")
    m.add_argument("--top", type=int, default=16,
                   help="time each family's configurations its model ranks in the top N "
                        "for some call (0: all)")
    m.add_argument("--jobs", type=int, default=None)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="any machine")
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--out", type=Path, required=True, help="roofline.json (and .png beside)")
    args = ap.parse_args(argv)
    command = "python3 bench/roofline.py " + " ".join(argv)
    try:
        if args.cmd == "report":
            result = report(args.files, command)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
            plot(result, args.out.with_suffix(".png"))
            for shape, t in result["targets"].items():
                print(f"{shape}: " + ", ".join(
                    f"{k} {v:.3f}" + ("" if t["met"].get(k) is None else
                                      " (met)" if t["met"][k] else " (missed)")
                    for k, v in t.items() if isinstance(v, float)))
            print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")
            return 0
        model = get_model(args.model)
        args.tokens = positive_ints(args.tokens, "--tokens")
        families = (args.families.split(",") if args.families else None)
        for f in families or ():
            if f not in FAMILIES:
                raise InputError(f"option --families: {f!r} is not one of {FAMILIES}")
        recordings = _recordings(args.data, model)
        args.out.mkdir(parents=True, exist_ok=True)
        from ramp.hardware import detect_gpu

        gpu = detect_gpu().name
        for gemm in args.gemm:
            problem = model.problem(gemm)
            names = families or [f for f in FAMILIES
                                 if find_profile(gpu, problem, family=f) is not None]
            measure_shape(problem, model, names, args, recordings, args.out, command)
    except RampError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _recordings(data: Path | None, model: MoEModel) -> list[tuple[str, Any]]:
    """The ``--data`` recordings (none without the option); a recording of another
    architecture is an error (``read_recording``), so pass it with its model only."""
    if data is None:
        return []
    from ramp.traces.real import read_recording

    paths = sorted(data.glob("*.npz")) if data.is_dir() else []
    if not paths:
        raise InputError(f"option --data: {data}: no *.npz routing recordings")
    return [(p.stem, read_recording(p, model)) for p in paths]


if __name__ == "__main__":
    sys.exit(main())
