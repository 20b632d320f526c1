"""Host time the vLLM hook adds to an MoE call that RaMP hands to the engine's kernel.

Inside CUDA graphs the hook runs only at capture; eager steps (vLLM: more than 512
tokens, so every prefill step of 2,048 batched tokens) pay it on every MoE layer. This
times ``TritonExperts.apply`` wrapped by ``ramp.adapters.vllm`` against the bare method
(an empty body: only the host work around it), called as vLLM 0.26 calls it (keywords:
``FusedMoEModularKernel`` in ``fused_moe/modular_kernel.py``; positional too), for a
real layer shape under a layer plan that gives every size to the engine's kernel (so no
RaMP kernel is built or compiled: the hand-off alone). CPU only; the weights are stride-0
views (the hook reads shapes, never data).

    python3 bench/hook_overhead.py [--model deepseek-v2-lite] [--tokens 2048] [--out FILE]
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ramp.adapters import vllm as vllm_adapter
from ramp.adapters.runtime import RampConfig, RampMoERuntime
from ramp.layerplan import LayerPlan
from ramp.models import get_model

ROOT = Path(__file__).resolve().parents[1]


class TritonExperts:
    """vLLM 0.26's ``TritonExperts.apply`` signature with an empty body."""

    def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation,
              global_num_experts, expert_map, a1q_scale, a2_scale, workspace13,
              workspace2, expert_tokens_meta, apply_router_weight_on_input):
        return None


def per_call_us(fn, calls: int, rounds: int = 5) -> float:
    """Median over rounds of the mean time per call, microseconds."""
    for _ in range(calls // 10):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[len(times) // 2]


def measure(model_name: str, tokens: int, calls: int) -> dict:
    model = get_model(model_name)
    w13p, w2p = model.problem("w13"), model.problem("w2")
    dtype = torch.bfloat16
    hidden = torch.zeros(tokens, w13p.k, dtype=dtype)
    w13 = torch.zeros(1, dtype=dtype).expand(w13p.num_experts, w13p.n, w13p.k)
    w2 = torch.zeros(1, dtype=dtype).expand(w2p.num_experts, w2p.n, w2p.k)
    ids = torch.zeros(tokens, model.top_k, dtype=torch.int32)
    weights = torch.zeros(tokens, model.top_k)
    out = torch.empty_like(hidden)
    with tempfile.TemporaryDirectory() as tmp:
        LayerPlan("H200", w13p, "vllm 0.26.0", (1, tokens), {"engine": (1.0, 1.0)}).save(
            Path(tmp) / f"H200_{w13p.key}_layer.json")
        runtime = RampMoERuntime(RampConfig(mode="dispatch", gpu="H200", profile_dir=tmp,
                                            stats_path=str(Path(tmp) / "stats.json")),
                                 engine="vllm", engine_version="0.26.0")
        wrapped = vllm_adapter._wrap(TritonExperts, TritonExperts.apply, runtime)
        experts = TritonExperts()
        args = (out, hidden, w13, w2, weights, ids, "silu", -1, None, None, None, None,
                None, None, False)
        names = list(inspect.signature(TritonExperts.apply).parameters)[1:]
        kwargs = dict(zip(names, args))
        result = {
            "bare_us": per_call_us(lambda: TritonExperts.apply(experts, *args), calls),
            "hook_positional_us": per_call_us(lambda: wrapped(experts, *args), calls),
            "hook_keywords_us": per_call_us(lambda: wrapped(experts, **kwargs), calls),
        }
        paths = {p for (_, p) in runtime.stats.eager}
    if paths != {"engine"}:  # e.g. a fallback: then this measured another path
        raise SystemExit(f"hook_overhead.py: the calls ran {paths or 'a fallback'}, not the "
                         "engine hand-off")
    result["added_per_call_us"] = result["hook_keywords_us"] - result["bare_us"]
    result["added_per_eager_step_us"] = result["added_per_call_us"] * model.moe_layers
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deepseek-v2-lite")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hook_overhead.json"))
    args = ap.parse_args(argv)
    result = measure(args.model, args.tokens, args.calls)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    doc = {"command": f"python3 bench/hook_overhead.py --model {args.model} --tokens "
                      f"{args.tokens} --calls {args.calls}",
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu": platform.processor() or platform.machine(),
                       "python": platform.python_version(), "torch": torch.__version__},
           "commit": commit, "model": args.model, "tokens": args.tokens, **result}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{args.model} T={args.tokens}: hook adds {result['added_per_call_us']:.2f} us per "
          f"MoE call (as vLLM calls it; positional "
          f"{result['hook_positional_us'] - result['bare_us']:.2f}),"
          f" {result['added_per_eager_step_us']:.0f} us per eager step of "
          f"{get_model(args.model).moe_layers} MoE layers; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
