"""Where a MoE layer's time goes, stage by stage, for RaMP's Triton and grouped_mm paths
and vLLM's kernel: what a fusion could save before anyone writes it (issue 12's "fusion
where it pays").

    # on the GPU, with vLLM carried (docs/engine.md), from the checkout's root
    source bench/engine/env.sh; source bench/device_env.sh
    python3 bench/layer_parts.py --model deepseek-v2-lite --out $OUT
    python3 bench/layer_parts.py --model qwen3-30b-a3b --tokens 1024,4096,16384 \
        --tag prefill --out $OUT                          # <gpu>_<model>_layer-parts_prefill
    python3 bench/layer_parts.py --report FILE       # any machine: table and plot again

Each stage is timed alone, replayed from a CUDA graph (``kernels.cuda_timing``), on the
same inputs as the whole layer: RaMP's routing (histogram and counting sort, one
kernel), its w13 GEMM (SiLU*mul fused), its w2 GEMM (weighting and scatter fused) and
the top-k sum, with the configurations the Triton path runs at that T (each GEMM's
static-table configuration, as the layer plan times it); vLLM's expert assignment
(``moe_align_block_size``, none at T*k*4 <= E) and its two GEMMs with the config it
picks (``bench/vllm_baseline.py``), next to its whole ``fused_experts``; the grouped_mm
path's routing, gather, two ``torch._grouped_mm`` GEMMs, SiLU*mul and gathering top-k
sum (``kernels.layers.grouped_mm_path``), next to that path whole and to the same GEMMs
with the torch-op glue it replaced (``torch_glue_grouped_mm_layer``: index_select,
silu, mul, weighting, index_copy, torch.sum; the twelfth session's path). Consecutive
calls read alternating weight copies, as the profiler's timers do, so no stage is
timed from L2. ``rest`` is the whole layer minus its timed stages: what the
stages not timed alone cost (vLLM's SiLU*mul and moe_sum) plus the gaps between
kernels. A stage fused away saves at most its own time and one gap. Writes
``<gpu>_<model>_layer-parts.json`` and a stacked-bar plot beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# ``bench.vllm_baseline`` is a sibling script: the checkout's root must be importable,
# after the installed packages (its ramp/ alone lacks ramp.kernels, ramp.sim, ...)
sys.path.append(str(Path(__file__).resolve().parents[1]))

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RAMP_STAGES = ("route", "w13", "w2", "top_k_sum")
VLLM_STAGES = ("assign", "w13", "w2")
GROUPED_MM_STAGES = ("route", "gather", "w13", "silu_mul", "w2", "top_k_sum")
PATHS = (("ramp", "RaMP triton", RAMP_STAGES), ("vllm", "vLLM", VLLM_STAGES),
         ("grouped_mm", "grouped_mm", GROUPED_MM_STAGES))


def measure(model_name: str, tokens: Sequence[int], routing: str, seed: int,
            profile_dir: str | None) -> dict[str, Any]:
    """Every stage's and both whole layers' median microseconds per T (needs a GPU and
    vLLM)."""
    from ramp.adapters.plan import make_inputs, ramp_layers, vllm_engine_layer
    from ramp.adapters.runtime import config_entry
    from ramp.hardware import detect_gpu
    from ramp.kernels.cuda_timing import device_info
    from ramp.kernels.workload import make_weights, weight_copies
    from ramp.models import get_model

    spec = get_model(model_name)
    problems = (spec.problem("w13"), spec.problem("w2"))
    gpu = detect_gpu()
    engine_name, engine_run = vllm_engine_layer()
    triton_layer, configs_of = ramp_layers(gpu.name, problems, profile_dir)["triton"]
    copies = max(2, *(weight_copies(p) for p in problems))
    w13 = make_weights(problems[0], copies, seed=seed)
    w2 = make_weights(problems[1], copies, seed=seed + 1)
    calls = []
    for t in tokens:
        x, ids, weights = make_inputs(problems, t, routing, seed + t)
        call = time_stages(problems, x, w13, w2, ids, weights, config_entry(configs_of(t)),
                           gpu.sms, triton_layer, engine_run)
        calls.append({"tokens": t, **call})
        print(f"T={t:>5}: RaMP {call['ramp_whole']:7.1f} us ("
              + ", ".join(f"{k} {v:.1f}" for k, v in call["ramp"].items())
              + f"); vLLM {call['vllm_whole']:7.1f} us ("
              + ", ".join(f"{k} {v:.1f}" for k, v in call["vllm"].items())
              + f"); grouped_mm {call['grouped_mm_whole']:7.1f} us (torch glue "
              + f"{call['grouped_mm_torch_glue_whole']:.1f})", flush=True)
    return {"device": device_info(), "engine": engine_name, "model": spec.name,
            "routing": routing, "seed": seed,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "calls": with_rest(calls)}


def time_stages(problems, x, w13s, w2s, ids, weights, configs, sms: int, triton_layer,
                engine_run) -> dict[str, Any]:
    """One T: RaMP's and vLLM's stages alone and their whole layers, on the same inputs;
    call ``i`` of a timing reads weight copy ``i mod copies``."""
    import torch

    from bench.vllm_baseline import expert_assignment, vllm_config, vllm_gemm
    from ramp.kernels.cuda_timing import time_graph
    from ramp.kernels.grouped_mm import expert_offsets, grouped_mm
    from ramp.kernels.layers import (
        SortedRows,
        gather_sorted,
        grouped_mm_path,
        silu_mul,
        top_k_sum,
    )
    from ramp.kernels.routing import local_routing
    from ramp.kernels.triton.fused_moe import moe_gemm

    cfg13, cfg2, occ13, occ2 = configs
    t, top_k = ids.shape
    n = len(w13s)
    w13, w2 = w13s[0], w2s[0]
    experts = w13.shape[0]
    routing = local_routing(ids, weights, experts, None)
    inter = x.new_empty(ids.numel(), w2.shape[2])
    down = x.new_empty(ids.numel(), w2.shape[1])
    out = x.new_empty(t, w2.shape[1])
    ramp = {
        "route": time_graph(lambda i: local_routing(ids, weights, experts, None)),
        "w13": time_graph(lambda i: moe_gemm(x, w13s[i % n], routing, cfg13, inter,
                                             gemm="w13", num_sms=sms, occupancy=occ13)),
        "w2": time_graph(lambda i: moe_gemm(inter, w2s[i % n], routing, cfg2, down, gemm="w2",
                                            num_sms=sms, occupancy=occ2)),
        "top_k_sum": time_graph(lambda i: top_k_sum(down, top_k, out)),
    }
    ramp_whole = time_graph(lambda i: triton_layer(x, w13s[i % n], w2s[i % n], ids, weights,
                                                   out))
    cfg = vllm_config(problems[0], t)
    prep = expert_assignment(ids, cfg, experts)
    c13 = x.new_empty(t, top_k, w13.shape[1])
    a2 = torch.randn_like(inter)
    c2 = x.new_empty(t, top_k, w2.shape[1])
    tw = weights.float().contiguous()
    vllm = {
        "assign": time_graph(lambda i: expert_assignment(ids, cfg, experts)),
        "w13": time_graph(lambda i: vllm_gemm(problems[0], x, w13s[i % n], tw, cfg, c13, prep)),
        "w2": time_graph(lambda i: vllm_gemm(problems[1], a2, w2s[i % n], tw, cfg, c2, prep)),
    }
    vllm_whole = time_graph(lambda i: engine_run(x, w13s[i % n], w2s[i % n], ids, weights,
                                                 None))
    offs = expert_offsets(routing.counts)
    a_sorted, row_of = gather_sorted(x, routing)
    gate_up = grouped_mm(a_sorted, w13, offs)
    act = silu_mul(gate_up)
    sorted_down = grouped_mm(act, w2, offs)
    sorted_rows = SortedRows(row_of, routing.topk_weights, offs[-1:])
    gmm = {
        "route": ramp["route"],
        "gather": time_graph(lambda i: gather_sorted(x, routing)),
        "w13": time_graph(lambda i: grouped_mm(a_sorted, w13s[i % n], offs)),
        "silu_mul": time_graph(lambda i: silu_mul(gate_up)),
        "w2": time_graph(lambda i: grouped_mm(act, w2s[i % n], offs)),
        "top_k_sum": time_graph(lambda i: top_k_sum(sorted_down, top_k, out, sorted_rows)),
    }
    gmm_whole = time_graph(lambda i: grouped_mm_path(x, w13s[i % n], w2s[i % n], ids, weights,
                                                     out))
    torch_glue = time_graph(lambda i: torch_glue_grouped_mm_layer(
        x, w13s[i % n], w2s[i % n], ids, weights, out))
    return {"ramp": ramp, "ramp_whole": ramp_whole,
            "ramp_configs": {"w13": cfg13.name, "w2": cfg2.name},
            "grouped_mm": gmm, "grouped_mm_whole": gmm_whole,
            "grouped_mm_torch_glue_whole": torch_glue,
            "vllm": vllm, "vllm_whole": vllm_whole, "vllm_config": cfg,
            "vllm_naive_assignment": prep[0] is None}


def torch_glue_grouped_mm_layer(hidden, w13, w2, ids, weights, out):
    """The grouped_mm path as torch ops composed it before its Triton glue (the baseline
    the glue is measured against): index_select gather, silu and mul, the routing weight
    as a multiply, index_copy back to slot order, torch.sum over the top-k axis."""
    import torch

    from ramp.kernels.grouped_mm import expert_offsets, grouped_mm
    from ramp.kernels.routing import route

    routing = route(ids, weights, w13.shape[0])
    slots = routing.sorted_slots.long()
    offs = expert_offsets(routing.counts)
    gate_up = grouped_mm(hidden.index_select(0, slots // routing.top_k), w13, offs)
    inter = gate_up.shape[1] // 2
    act = torch.nn.functional.silu(gate_up[:, :inter]).mul_(gate_up[:, inter:])
    down = grouped_mm(act, w2, offs)
    down.mul_(routing.topk_weights.index_select(0, slots).unsqueeze(1).to(down.dtype))
    rows = torch.empty_like(down).index_copy_(0, slots, down)
    return torch.sum(rows.view(routing.num_tokens, routing.top_k, -1), dim=1, out=out)


def with_rest(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each call's ``<path>_rest``: the whole layer minus its timed stages
    (never below 0: stages timed alone may overlap less than in the layer)."""
    for c in calls:
        for who, _, _ in PATHS:
            if who in c:  # files before the grouped_mm stages have only RaMP's and vLLM's
                c[f"{who}_rest"] = max(0.0, c[f"{who}_whole"] - sum(c[who].values()))
    return calls


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['model']} ({result['routing']} routing), us: "
             "RaMP whole = route + w13 + w2 + top_k_sum + rest | vLLM whole = assign + w13 "
             "+ w2 + rest (SiLU*mul, moe_sum, gaps)"]
    for c in result["calls"]:
        r, v = c["ramp"], c["vllm"]
        lines.append(f"T={c['tokens']:>5}  RaMP {c['ramp_whole']:7.1f} = "
                     + " + ".join(f"{r[k]:.1f}" for k in RAMP_STAGES)
                     + f" + {c['ramp_rest']:.1f}   vLLM {c['vllm_whole']:7.1f} = "
                     + " + ".join(f"{v[k]:.1f}" for k in VLLM_STAGES)
                     + f" + {c['vllm_rest']:.1f}")
        if "grouped_mm" in c:
            g = c["grouped_mm"]
            lines.append(f"{'':9}grouped_mm {c['grouped_mm_whole']:7.1f} = "
                         + " + ".join(f"{g[k]:.1f}" for k in GROUPED_MM_STAGES)
                         + f" + {c['grouped_mm_rest']:.1f}   (torch glue "
                         + f"{c['grouped_mm_torch_glue_whole']:.1f})")
    if any("grouped_mm" in c for c in result["calls"]):
        lines.insert(1, "grouped_mm whole = " + " + ".join(GROUPED_MM_STAGES) + " + rest")
    return "\n".join(lines)


STAGE_COLORS = {"route": "C0", "assign": "C0", "gather": "C9", "w13": "C1",
                "silu_mul": "C6", "w2": "C2", "top_k_sum": "C3", "rest": "C7"}
PATH_HATCHES = ("", "//", "..")


def plot(result: dict[str, Any], path: Path) -> Path:
    """Stacked bars per T, one per path (RaMP's Triton, vLLM's, grouped_mm where measured),
    as a share of vLLM's whole layer (so the bars compare across T): colour is the stage,
    hatching the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    calls = result["calls"]
    paths = [p for p in PATHS if all(p[0] in c for c in calls)]
    width = 0.8 / len(paths)
    x = np.arange(len(calls))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(calls) + 3), 5.2))
    for n, (who, _, stages) in enumerate(paths):
        offset = (n - (len(paths) - 1) / 2) * width
        bottom = np.zeros(len(calls))
        for stage in (*stages, "rest"):
            vals = np.array([(c[who][stage] if stage != "rest" else c[f"{who}_rest"])
                             / c["vllm_whole"] for c in calls])
            ax.bar(x + offset, vals, width * 0.95, bottom=bottom, color=STAGE_COLORS[stage],
                   hatch=PATH_HATCHES[n], edgecolor="k", linewidth=0.3)
            bottom += vals
    ax.set_xticks(x, [str(c["tokens"]) for c in calls])
    ax.set_xlabel("tokens per step T")
    ax.set_ylabel("share of vLLM's whole layer")
    ax.set_title(f"MoE layer stages: {result['model']}, {result['device'].get('device', '?')}, "
                 f"{result['routing']} routing", fontsize=10)
    used = [s for s in STAGE_COLORS if any(s in (*st, "rest") for _, _, st in paths)]
    handles = [Patch(facecolor=STAGE_COLORS[s], edgecolor="k", linewidth=0.3,
                     label="route / assign" if s == "route" else s)
               for s in used if s != "assign"]
    handles += [Patch(facecolor="white", edgecolor="k", hatch=PATH_HATCHES[n], label=label)
                for n, (_, label, _) in enumerate(paths)]
    ax.legend(handles=handles, fontsize=7, ncol=min(6, len(handles)), loc="upper center",
              bbox_to_anchor=(0.5, -0.13))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from ramp.clitools import positive_ints
    from ramp.errors import InputError
    from ramp.plaindata import read_json

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--routing", default="uniform", help="a ramp.histograms routing spec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-dir", default=None)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tag", default=None, help="suffix of the results file's name")
    ap.add_argument("--report", type=Path, metavar="FILE")
    args = ap.parse_args(argv)
    try:
        if args.report:
            result = read_json(args.report, "layer-parts result")
            if not isinstance(result, dict) or not isinstance(result.get("calls"), list):
                raise InputError(f"{args.report}: field 'calls' must be a list")
            for i, c in enumerate(result["calls"]):
                for key in ("tokens", "ramp", "ramp_whole", "vllm", "vllm_whole"):
                    if not isinstance(c, dict) or key not in c:
                        raise InputError(f"{args.report}: calls[{i}]: missing field {key!r}")
            with_rest(result["calls"])
            print(table(result))
            plot(result, args.report.with_suffix(".png"))
            return 0
        if not args.model or not args.out:
            raise InputError("options --model and --out are required (or --report FILE)")
        tokens = positive_ints(args.tokens, "--tokens")
        result = measure(args.model, tokens, args.routing, args.seed, args.profile_dir)
        result["command"] = "python3 bench/layer_parts.py " + " ".join(argv)
        args.out.mkdir(parents=True, exist_ok=True)
        gpu = "H200" if "H200" in result["device"]["device"] else "gpu"
        tag = f"_{args.tag}" if args.tag else ""
        path = args.out / f"{gpu}_{result['model']}_layer-parts{tag}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(table(result))
        print(f"wrote {path} and {plot(result, path.with_suffix('.png')).name}")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
