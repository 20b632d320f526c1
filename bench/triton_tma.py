"""The Triton family's TMA variant against its pointer-load twin, tile for tile, per GEMM.

    # on the GPU (no vLLM needed)
    python3 bench/triton_tma.py --models qwen3-30b-a3b deepseek-v2-lite mixtral-8x7b \
        --out $OUT

The ``tma`` variant (``kernels/triton/moe_gemm.py``, ``_tile_body``) loads the weight
tiles, and w2's activation tiles, through TMA tensor descriptors; w13's activation rows
are gathered by token and stay pointer loads. For each model's two GEMMs and each T of
``--tokens`` under the ``realistic`` routing generator, this times the configurations the
shipped layer plan's triton path runs at those sizes plus a few deeper-pipeline tiles,
each as it is and as its TMA twin. ``TritonTimer`` checks every one against float32 on
fresh random inputs with NaN-poisoned outputs first and drops the wrong ones; each round
times every configuration once on the same call (cold L2: rotating weight copies), and
the file keeps each configuration's median over ``--rounds`` rounds. Writes
``<gpu>_triton-tma.json``: per shape and T the medians, the twin ratios (TMA / plain, < 1
is TMA faster) and the best of each side; prints a table.

    # any machine: the plot of a results file (best of each side, TFLOP/s per GEMM and T)
    python3 bench/triton_tma.py plot bench/results/H200/H200_triton-tma.json \
        --out bench/results/H200/H200_triton-tma.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ramp.config import KernelConfig
from ramp.histograms import parse_histogram_spec
from ramp.layerplan import find_layer_plan
from ramp.models import get_model

TOKENS = (512, 1024, 2048, 4096, 8192)
DENSE_BF16_TFLOPS = 790  # the H200's dense bf16 matmul rate the roofline run measured
# deeper pipelines than the plans' picks: TMA frees the registers and issue slots that
# pointer loads of the weight tiles take
EXTRA = (
    KernelConfig("triton", 128, 256, 64, 8, 4, persistent=True, group_m=8),
    KernelConfig("triton", 128, 128, 64, 4, 4, persistent=True, group_m=8),
    KernelConfig("triton", 128, 128, 128, 8, 3, persistent=True, group_m=8),
    KernelConfig("triton", 64, 256, 64, 8, 4, persistent=True, group_m=8),
)


def plan_configs(model: str, gemm: str, gpu: str, tokens: tuple[int, ...]
                 ) -> list[KernelConfig]:
    """The triton path's configurations of the shipped layer plan at the plan sizes
    nearest ``tokens`` (none where this GPU has no plan for the model)."""
    spec = get_model(model)
    plan = find_layer_plan(gpu, spec.problem("w13"), "vllm")
    if plan is None:
        return []
    found = []
    for t in tokens:
        entry = plan.config("triton", t)
        if entry is not None:
            found.append(KernelConfig.from_dict(entry[gemm], gemm))
    return found


def twins(configs: list[KernelConfig]) -> list[KernelConfig]:
    """Each distinct plain configuration, then its TMA twin."""
    from ramp.kernels.triton.configs import TMA

    plain = list(dict.fromkeys(dataclasses.replace(c, variant="") for c in configs))
    return [v for c in plain for v in (c, dataclasses.replace(c, variant=TMA))]


def measure_shape(model: str, gemm: str, tokens: tuple[int, ...], rounds: int,
                  gpu: str) -> dict[str, Any]:
    from ramp.kernels.triton.timer import TritonTimer

    problem = get_model(model).problem(gemm)
    configs = twins(plan_configs(model, gemm, gpu, tokens) + list(EXTRA))
    timer = TritonTimer(problem, configs)
    names = [c.name for c in timer.bank.configs]
    by_tokens = {}
    for t in tokens:
        hist = parse_histogram_spec(f"realistic:tokens={t},seed={t}", problem.num_experts,
                                    problem.top_k)
        samples = np.array([timer.time_all(hist) for _ in range(rounds)])
        med = {n: float(v) for n, v in zip(names, np.nanmedian(samples, axis=0))}
        pairs = {n: med[f"{n}-tma"] / med[n] for n in med
                 if not n.endswith("-tma") and f"{n}-tma" in med}
        plain = {n: v for n, v in med.items() if not n.endswith("-tma")}
        tma = {n: v for n, v in med.items() if n.endswith("-tma")}
        best = {side: min(d, key=d.get) if d else None
                for side, d in (("plain", plain), ("tma", tma))}
        by_tokens[str(t)] = {
            "median_us": med, "tma_over_plain": pairs,
            **{f"best_{side}": {"config": n, "us": med[n]} if n else None
               for side, n in best.items()},
            "best_ratio": (med[best["tma"]] / med[best["plain"]]
                           if best["tma"] and best["plain"] else None)}
        print(f"{model} {gemm} T={t}: best plain {best['plain']} "
              f"{plain.get(best['plain'], float('nan')):.1f} us, best TMA {best['tma']} "
              f"{tma.get(best['tma'], float('nan')):.1f} us", flush=True)
    result = {"problem": problem.to_dict(), "configs": [c.to_dict() for c in configs],
              "dropped": timer.dropped, "verify_errors": timer.verify_errors,
              "tokens": by_tokens}
    timer.close()
    return result


def tflops(problem: dict[str, Any], tokens: int, us: float) -> float:
    """Useful TFLOP/s of one GEMM call of ``tokens`` tokens taking ``us``."""
    return 2 * tokens * problem["top_k"] * problem["n"] * problem["k"] / us / 1e6


def plot(results: dict[str, Any], path: Path) -> Path:
    """Best pointer-load and best TMA configuration per GEMM and T, in TFLOP/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = results["shapes"]
    fig, axes = plt.subplots(1, len(shapes), figsize=(2.6 * len(shapes), 3.6), sharey=True)
    for ax, (name, shape) in zip(np.atleast_1d(axes), shapes.items()):
        tokens = sorted(shape["tokens"], key=int)
        x = np.arange(len(tokens))
        for offset, side, color in ((-0.2, "best_plain", "tab:gray"),
                                    (0.2, "best_tma", "tab:blue")):
            vals = [tflops(shape["problem"], int(t), shape["tokens"][t][side]["us"])
                    if shape["tokens"][t][side] else np.nan for t in tokens]
            ax.bar(x + offset, vals, 0.4, color=color,
                   label="pointer loads" if side == "best_plain" else "TMA")
        ax.axhline(DENSE_BF16_TFLOPS, ls="--", lw=0.8, color="k",
                   label=f"dense bf16 ({DENSE_BF16_TFLOPS}, fifth session)")
        ax.set_xticks(x, [f"T={t}" for t in tokens], fontsize=8)
        ax.set_title(name.replace("/", " "), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("TFLOP/s (best configuration)")
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Triton grouped GEMM, pointer loads vs TMA: {results['device']['device']}, "
                 f"{results['routing']} routing, median of {results['rounds']} rounds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        ap = argparse.ArgumentParser(prog="triton_tma.py plot")
        ap.add_argument("results", type=Path)
        ap.add_argument("--out", type=Path, required=True)
        a = ap.parse_args(argv[1:])
        print(f"wrote {plot(json.loads(a.results.read_text()), a.out)}")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["qwen3-30b-a3b", "deepseek-v2-lite"])
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from ramp.hardware import detect_gpu
    from ramp.kernels.cuda_timing import device_info

    gpu = detect_gpu()
    if gpu is None:
        raise SystemExit("bench/triton_tma.py: no CUDA GPU visible")
    t0 = time.monotonic()
    shapes = {}
    for model in args.models:
        for gemm in ("w13", "w2"):
            shapes[f"{model}/{gemm}"] = measure_shape(model, gemm, tuple(args.tokens),
                                                      args.rounds, gpu.name)
    out = {"schema": "ramp-triton-tma/1", "device": device_info(),
           "command": "python3 bench/triton_tma.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "routing": "realistic", "rounds": args.rounds,
           "seconds": round(time.monotonic() - t0, 1), "shapes": shapes}
    path = Path(args.out) / f"{gpu.name}_triton-tma.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
