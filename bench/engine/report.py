"""Summarise the engine results files: a markdown table and a plot of every run.

    python3 bench/engine/report.py [bench/results/engine] [--plot engine.png]

Reads every ``H200_<model>_<workload>[_<tag>].json`` that ``bench/engine/bench.py``
wrote and prints, per file, the median total throughput of each mode, the ratio of the
second mode to ``off`` with the range of all repeats, TTFT/TPOT medians for online runs,
RaMP's served calls and whether greedy tokens matched. The plot shows every repeat, so
the noise is visible next to the medians.

From the layer plans' details (``DIR/layer/*_layer.json``) it adds the kernel-level
check of the shipped path: per T and routing, the whole-layer time of the path the plan
chooses over the best of the engine's kernel and ``torch._grouped_mm`` (issue 12's
bound: at most 1.02). Files that record it get each mode's KV cache and RaMP's warm-up
peak-memory rise.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ramp.layerplan import LayerPlan, find_layer_plan
from ramp.queueing import queue_growth

ROOT = Path(__file__).resolve().parents[2]


def load(directory: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "runs" in data and "ratio" in data:
            out.append((path.name, data))
    return out


def served(data: dict) -> str:
    calls = data.get("ramp_calls") or {}
    eager = sum(n for per in calls.get("eager", {}).values() for p, n in per.items()
                if p != "engine")
    captured = sum(n for per in calls.get("captured", {}).values() for p, n in per.items()
                   if p != "engine")
    return f"{eager} eager / {captured} captured" if eager or captured else "-"


def overloaded(run: dict) -> bool:
    """``ramp.queueing``'s verdict on an online run, from its requests where the run
    predates the ``overloaded`` field."""
    if "overloaded" in run or "requests" not in run:
        return bool(run.get("overloaded"))
    reqs = run["requests"]
    return queue_growth(np.array([r["arrival"] for r in reqs]),
                        np.array([r["first"] - r["arrival"] for r in reqs]))["overloaded"]


def table(results: list[tuple[str, dict]]) -> str:
    lines = ["| file | modes | median tok/s | ratio (range of repeats) | online TTFT / TPOT "
             "p50 ms | RaMP calls (eager / graph captures) | tokens match |",
             "|---|---|---|---|---|---|---|"]
    for name, d in results:
        modes = d["modes"]
        base, other = modes[0], "dispatch" if "dispatch" in modes else modes[-1]
        med = d["median_total_tok_per_s"]
        rng = {m: d["range_total_tok_per_s"][m] for m in (base, other)}
        ratio_lo, ratio_hi = rng[other][0] / rng[base][1], rng[other][1] / rng[base][0]
        online = ""
        if "median_ttft_ms_p50" in d:
            online = " / ".join(f"{d['median_ttft_ms_p50'][m]:.0f}, {d['median_tpot_ms_p50'][m]:.1f}"
                                for m in (base, other)) + f" ({base} / {other})"
            over = sum(overloaded(r) for r in d["runs"])
            if over:  # TTFT then measures a queue (ramp.queueing)
                online += f"; {over} of {len(d['runs'])} runs overloaded"
        ratio = f"**{d['ratio']:.3f}x** ({ratio_lo:.2f}-{ratio_hi:.2f})"
        if d.get("paired_ratio_median") is not None:
            ratio += f"; paired {d['paired_ratio_median']:.3f}x"
        if len(d.get("paired_ratios") or {}) > 1:  # more labels (eager variants)
            ratio += "; paired per mode " + ", ".join(
                f"{m} {'-' if r is None else f'{r:.3f}x'}" for m, r in d["paired_ratios"].items())
        if "ratio_by_call" in d:  # pooled calls (engine starts)
            ratio += "; by call " + ", ".join("-" if r is None else f"{r:.3f}"
                                              for r in d["ratio_by_call"])
        lines.append(f"| `{name}` | {base} vs {other} | {med[base]:.0f} / {med[other]:.0f} | "
                     f"{ratio} | {online or '-'} | "
                     f"{served(d)} | {d['tokens_match']} |")
    return "\n".join(lines)


def plot(results: list[tuple[str, dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.55 * len(results) + 1.6))
    for i, (_, d) in enumerate(results):
        modes = d["modes"]
        base = modes[0]
        base_med = d["median_total_tok_per_s"][base]
        for j, m in enumerate(modes):
            xs = [r["total_tok_per_s"] / base_med for r in d["runs"] if r["ramp_mode"] == m]
            ax.scatter(xs, [i + 0.18 * (j - (len(modes) - 1) / 2)] * len(xs), s=22,
                       label=m if i == 0 or m not in ax.get_legend_handles_labels()[1] else None,
                       color={"off": "0.45", "dispatch": "tab:blue", "record": "tab:orange"}
                       .get(m, "tab:green"))
        ax.text(1.0 + 0.002, i + 0.32, f"ratio {d['ratio']:.3f}", fontsize=8, color="tab:blue")
    ax.axvline(1.0, color="0.7", lw=1)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels([n.removesuffix(".json") for n, _ in results], fontsize=8)
    ax.set_xlabel("total tokens/s of each repeat / median of RaMP off (same engine runs)")
    ax.set_title("RaMP in vLLM 0.26 on the H200: every repeat, off vs on", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def with_shipped_host_times(plan: LayerPlan) -> LayerPlan:
    """``plan`` with the host times of the shipped plan at the sizes whose GPU times it
    shares, where it has none: a full measurement's details carry none when
    ``--host-times`` added them to the shipped plan later, and without them every eager
    call would be the engine's. Sizes the shipped plan re-measured since (``--remeasure``)
    keep none: their host times were measured beside other GPU times."""
    shipped = find_layer_plan(plan.gpu, plan.problem, plan.engine.split()[0], ep=plan.ep)
    if plan.host_us or shipped is None or shipped.tokens != plan.tokens or set(
            shipped.times_us) != set(plan.times_us):
        return plan
    same = [all(shipped.times_us[p][i] == plan.times_us[p][i] for p in plan.times_us)
            for i in range(len(plan.tokens))]
    if not any(same):
        return plan
    host = {p: tuple(t if same[i] else None for i, t in enumerate(v))
            for p, v in shipped.host_us.items()}
    return replace(plan, host_us=host, eager_graphs=shipped.eager_graphs)


def shipped_vs_best(details: dict, eager: bool = False) -> list[tuple[int, str, float, str]]:
    """Per (T, routing): (T, routing, chosen path's time / best of engine and
    grouped_mm, the faster of those two), for calls in CUDA graphs or, with ``eager``,
    eager calls (the plan's choices under this RaMP's rule, re-derived from its times
    and the shipped host times, ``with_shipped_host_times``; sizes without the engine's
    host time are left out: no eager choice was measured there)."""
    plan = with_shipped_host_times(LayerPlan.from_dict(details["plan"], "layer plan details"))
    per_routing = plan.times_us_by_routing
    engine_host = plan.host_us.get("engine", (None,) * len(plan.tokens))
    out = []
    for routing, times in per_routing.items():
        choices = plan.eager_choices if eager else plan.choices
        for i, (tokens, path) in enumerate(zip(plan.tokens, choices)):
            if eager and engine_host[i] is None:
                continue
            rivals = {p: times[p][i] for p in ("engine", "grouped_mm")
                      if p in times and times[p][i] is not None}
            rival = min(rivals, key=rivals.get)
            out.append((tokens, routing, times[path][i] / rivals[rival], rival))
    return out


def layer_table(directory: Path) -> str:
    lines = ["| layer plan | calls | worst shipped / best of (engine, grouped_mm) | where | "
             "(T, routing) above 1.02 |", "|---|---|---|---|---|"]
    for path in sorted((directory / "layer").glob("*_layer.json")):
        details = json.loads(path.read_text())
        for eager in (False, True):
            rows = shipped_vs_best(details, eager)
            if not rows:
                continue
            worst = max(rows, key=lambda r: r[2])
            over = [f"{t} {r} {x:.3f} ({rival})" for t, r, x, rival in rows if x > 1.02]
            lines.append(f"| `{path.name}` | {'eager' if eager else 'in CUDA graphs'} | "
                         f"{worst[2]:.3f} | T={worst[0]} {worst[1]} ({worst[3]}) | "
                         f"{'; '.join(over) or 'none'} |")
    return "\n".join(lines)


PAIR_PARTS = 5  # arrival-order slices of an online run's requests


def paired_tpot(data: dict, parts: int = PAIR_PARTS) -> list[dict]:
    """Per repeat of an online file: the TPOT p50 of each mode and RaMP / off per
    slice of the requests in arrival order. Both modes serve the same requests at the same
    arrival times, so a slice compares like with like: the first slices decode while few
    prefills run, the later ones carry the queue's prefill chunks (which steps RaMP
    loses in)."""
    modes = data["modes"]
    base, other = modes[0], "dispatch" if "dispatch" in modes else modes[-1]
    by_repeat: dict[int, dict[str, dict]] = {}
    for run in data["runs"]:
        if "requests" in run:
            by_repeat.setdefault(run["repeat"], {})[run["ramp_mode"]] = run
    out = []
    for repeat, runs in sorted(by_repeat.items()):
        if base not in runs or other not in runs:
            continue
        reqs = {m: runs[m]["requests"] for m in (base, other)}
        arrival = np.array([r["arrival"] for r in reqs[base]])
        if len(reqs[other]) != arrival.size or not np.allclose(
                arrival, [r["arrival"] for r in reqs[other]]):
            continue  # not the same requests: nothing to pair
        tpot = {m: np.array([(r["done"] - r["first"]) / (r["output"] - 1)
                             if r["output"] > 1 else np.nan for r in reqs[m]]) * 1e3
                for m in (base, other)}
        slices = np.array_split(np.argsort(arrival, kind="stable"), parts)
        out.append({"repeat": repeat,
                    "tpot_ms_p50": {m: [float(np.nanmedian(tpot[m][i])) for i in slices]
                                    for m in (base, other)},
                    "ratio": [float(np.nanmedian(tpot[other][i] / tpot[base][i]))
                              for i in slices]})
    return out


def paired_table(results: list[tuple[str, dict]]) -> str:
    lines = ["| online file, repeat | TPOT p50 ms off, per fifth of the requests in arrival order | RaMP / off "
             "TPOT (paired requests) |", "|---|---|---|"]
    for name, d in results:
        for row in paired_tpot(d):
            base = d["modes"][0]
            lines.append(f"| `{name}` {row['repeat']} | "
                         + ", ".join(f"{v:.1f}" for v in row["tpot_ms_p50"][base]) + " | "
                         + ", ".join(f"{v:.3f}" for v in row["ratio"]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def memory_table(results: list[tuple[str, dict]]) -> str:
    """Per file that says so: each mode's KV cache (tokens) and, for RaMP's engine, the
    first call's size and how far its warm-up raised the peak memory then (what vLLM
    sizes the KV cache from)."""
    lines = ["| file | KV cache tokens per mode | RaMP warm-up: first call T, peak rise MiB |",
             "|---|---|---|"]
    for name, d in results:
        kv = {m: t for m, t in (d.get("kv_cache_tokens") or {}).items() if t}
        if not kv:
            continue
        warm = sorted({(e.get("warm_up_tokens"), e.get("warm_up_peak_rise_mib"))
                       for entries in (d.get("ramp_plans") or {}).values()
                       for e in (entries if isinstance(entries, list) else [entries])
                       if isinstance(e, dict) and "warm_up_tokens" in e})
        lines.append(f"| `{name}` | " + ", ".join(f"{m} {t:,}" for m, t in kv.items())
                     + " | " + ("; ".join(f"T={t}, {r} MiB" for t, r in warm) or "-") + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", nargs="?", default=str(ROOT / "bench/results/engine"))
    ap.add_argument("--plot", default=None, help="PNG to write (default: DIR/engine.png)")
    args = ap.parse_args()
    directory = Path(args.directory)
    results = load(directory)
    if not results:
        raise SystemExit(f"report.py: no engine results files in {directory}")
    print(table(results))
    print()
    print(layer_table(directory))
    for extra in (paired_table(results), memory_table(results)):
        if extra:
            print()
            print(extra)
    print(f"wrote {plot(results, Path(args.plot or directory / 'engine.png'))}")


if __name__ == "__main__":
    main()
