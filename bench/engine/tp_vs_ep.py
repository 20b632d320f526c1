"""TP vs EP in vLLM with RaMP off and on, per concurrency, on one host of several GPUs.

    python3 bench/engine/tp_vs_ep.py --model qwen3-235b-a22b --gpus 8 --out $OUT

For each layout (``tp``: tensor parallelism over the GPUs; ``ep``: the same plus vLLM's
expert parallelism) and RaMP mode (off, dispatch) one engine is started (every engine
takes all the GPUs, so they run one after another) and runs closed-loop workloads of
``concurrency:C`` (``bench.py``: 3 x C requests of 512 in / 256 out, at most C in
flight) for each C. Writes ``<gpu>x<N>_<model>_tp-vs-ep.json`` with ``device``,
``command``, ``points`` (per concurrency, layout and mode: ``tok_per_s``,
``tpot_ms_p50``, ``ttft_ms_p50``, ``ramp_mode``) and the measured crossover: the smallest
concurrency from which EP's throughput beats TP's, per mode. NCCL's NVLink multicast
stays off (``NCCL_NVLS_ENABLE=0``, set by bench/engine/env.sh and here).

Dispatch under EP needs layer plans of each rank's local layer (``python -m
ramp.adapters.plan --model M --ep N``); without them every call falls back to vLLM's
kernel, which the per-mode ``ramp_calls`` show.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # bench/engine/bench.py (Worker, passthrough, read_stats), not the bench package

LAYOUTS = {"tp": (), "ep": ("--enable-expert-parallel",)}


def crossover(points: list[dict], mode: str) -> int | None:
    """Smallest concurrency from which EP's throughput stays above TP's (None: never)."""
    by = {(p["layout"], p["concurrency"]): p["tok_per_s"] for p in points
          if p["ramp_mode"] == mode}
    levels = sorted({c for _, c in by})
    for i, c in enumerate(levels):
        if all(by.get(("ep", d), 0) > by.get(("tp", d), float("inf")) for d in levels[i:]):
            return c
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--concurrency", default="1,8,32,128,512")
    ap.add_argument("--modes", default="off,dispatch")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    args = ap.parse_args()
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    worker_args = bench.parser(worker=False).parse_args(
        ["--model", args.model, "--out", args.out, "--tensor-parallel-size", str(args.gpus),
         "--max-model-len", "2048", "--max-num-seqs", str(max(256, *map(
             int, args.concurrency.split(","))))])
    worker_args.passthrough = bench.passthrough(worker_args)
    out = Path(args.out)
    stats_dir = out / f"stats-{args.model}-tp-vs-ep"
    stats_dir.mkdir(parents=True, exist_ok=True)
    points, calls, t0 = [], {}, time.monotonic()
    for layout, extra in LAYOUTS.items():
        for mode in args.modes.split(","):
            worker = bench.Worker(mode, worker_args, args.gpu_memory_utilization, stats_dir,
                                  extra)
            try:
                for c in (int(x) for x in args.concurrency.split(",")):
                    r = worker.run(f"concurrency:{c}", seed=c)
                    points.append({"layout": layout, "ramp_mode": mode, "concurrency": c,
                                   "tok_per_s": r["total_tok_per_s"],
                                   "out_tok_per_s": r["out_tok_per_s"],
                                   "tpot_ms_p50": r["tpot_ms_p50"],
                                   "ttft_ms_p50": r["ttft_ms_p50"]})
                    print(f"{layout} {mode:<8} C={c:<4} {r['total_tok_per_s']:9.0f} tok/s, "
                          f"TPOT p50 {r['tpot_ms_p50']:.1f} ms "
                          f"({time.monotonic() - t0:.0f} s)", flush=True)
            finally:
                worker.stop()
            calls[f"{layout}/{mode}"] = bench.read_stats(stats_dir, mode)
            for f in stats_dir.glob(f"{mode}.*.json"):
                f.unlink()
    from ramp.kernels.cuda_timing import device_info

    device = device_info()
    gpu = "H200" if "H200" in device["device"] else device["device"].replace(" ", "_")
    result = {"model": args.model, "gpus": args.gpus, "device": device,
              "command": "python3 bench/engine/tp_vs_ep.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "workload": {"input_len": bench.CONCURRENCY_IN,
                           "output_len": bench.CONCURRENCY_OUT,
                           "requests_per_concurrency": bench.CONCURRENCY_WAVES},
              "points": points, "ramp_calls": calls,
              "crossover_concurrency": {m: crossover(points, m)
                                        for m in args.modes.split(",")}}
    path = out / f"{gpu}x{args.gpus}_{args.model}_tp-vs-ep.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}: crossover {result['crossover_concurrency']}")


if __name__ == "__main__":
    main()
