"""End-to-end serving benchmark: a real vLLM with RaMP off and on, alternating.

    python3 bench/engine/bench.py --model qwen3-30b-a3b --out $OUT [--concurrent]

One engine process per RaMP mode (``RAMP_MODE`` is read when vLLM's worker loads the
plugin, so a mode cannot change inside an engine). The coordinator starts a worker per
mode and sends it workloads one at a time over stdin; the worker runs them on vLLM's
async engine (dummy weights, token-id prompts, greedy, ``ignore_eos``) and writes one JSON
result per run. With ``--concurrent`` both engines are alive at once (each with half the
GPU memory) and every repeat alternates off/dispatch; otherwise the modes run one after
the other (``--blocks`` splits the repeats into alternating engine starts). A mode
``dispatch:V`` (``--concurrent``) shares the dispatch engine and runs with its eager calls
set to V first (``plan``, ``engine``, ``launch``: ``RAMP_EAGER_VARIANT_FILE``), so that
ways of running eager steps compare within one engine start, free of the ~15% between
starts; graphs keep what they captured (the plan's choice). Every engine
start first runs each workload ``--warmup`` times (default 1) unsummarised: an engine's
first run of a workload is the slow one (Mixtral decode-heavy: 8,089 then 8,723 tok/s).

Workloads: ``prefill-heavy`` (256 prompts x 1024 in / 128 out), ``decode-heavy``
(256 x 128 / 512), ``online`` (requests of the shipped Azure conversation trace, at its
arrival times compressed by ``--time-scale``, lengths capped), ``match`` (16 prompts x
32 greedy tokens: the token ids of both modes are compared), ``record-cost`` is
measured by running ``--modes off,record``.

Writes ``H200_<model>_<workload>.json`` per workload into ``--out`` (other ``--modes``
than off,dispatch add a suffix, e.g. ``_record``) with ``device``,
``engine``, ``command``, ``runs`` (per repeat: ``ramp_mode``, ``total_tok_per_s``,
``out_tok_per_s``, ``elapsed_s``, ``gpu_before``/``gpu_after`` (SM and memory clocks,
temperature, power from nvidia-smi), ``host_before``/``host_after`` (load average, CPU
clock) and for online runs TTFT/TPOT p50/p99 and every request's arrival, sent, first
token and done times), ``ratio``
(median of the second mode / median of ``off``), ``ramp_calls``, ``ramp_fallbacks``,
``ramp_plans`` (the plan that served each layer shape: key, dates, eager graphs),
``ramp_eager_graphs`` (their captures, replays and failures), ``tokens_match``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ramp.adapters import eager_variant as variant_file
from ramp.queueing import queue_growth

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MARK = "RAMP-BENCH "
ARRIVALS = ROOT / "ramp" / "data" / "traces" / "azure-conv-2023.arrivals.jsonl"


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: int
    input_len: int
    output_len: int


OFFLINE = {w.name: w for w in (Workload("prefill-heavy", 256, 1024, 128),
                               Workload("decode-heavy", 256, 128, 512),
                               Workload("match", 16, 256, 32))}
# ``concurrency:C``: CONCURRENCY_WAVES * C requests of these lengths, C in flight at most
CONCURRENCY_IN, CONCURRENCY_OUT, CONCURRENCY_WAVES = 512, 256, 3
ITL_QUANTILES = (10, 25, 50, 75, 90, 95, 99)  # of the gaps between a request's tokens
PROFILE_TABLE_LINES = 120  # of vLLM's profiler table (sorted by CUDA time) kept per run
PROFILE_COST = 2.0  # a profiled run's time in unprofiled runs (tracing, export, table)


# --- worker: one engine, one RaMP mode ---------------------------------------------------

def engine_args(model: str, args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        model=str(HERE / "models" / model), load_format="dummy", skip_tokenizer_init=True,
        dtype="bfloat16", max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization, seed=0,
        enable_prefix_caching=False, disable_log_stats=True)
    if model.startswith("deepseek"):
        kwargs["attention_backend"] = "TRITON_MLA"
    elif args.attention_backend:
        kwargs["attention_backend"] = args.attention_backend
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.max_cudagraph_capture_size:
        kwargs["max_cudagraph_capture_size"] = args.max_cudagraph_capture_size
    if args.tensor_parallel_size > 1:
        kwargs["tensor_parallel_size"] = args.tensor_parallel_size
    if args.enable_expert_parallel:
        kwargs["enable_expert_parallel"] = True
    return kwargs


def prompts_for(vocab: int, count: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, length).tolist() for _ in range(count)]


def online_requests(count: int, time_scale: float, max_in: int, max_out: int
                    ) -> list[tuple[float, int, int]]:
    """(arrival s, prompt tokens, output tokens) of the first ``count`` requests of the
    shipped Azure conversation trace, arrivals divided by ``time_scale``."""
    rows = []
    with ARRIVALS.open() as f:
        for line in f:
            d = json.loads(line)
            if "time" not in d:
                continue  # the header
            rows.append((d["time"] / time_scale, min(int(d["prompt"]), max_in),
                         min(int(d["output"]), max_out)))
            if len(rows) == count:
                break
    t0 = rows[0][0]
    return [(t - t0, p, o) for t, p, o in rows]


async def run_requests(engine, vocab: int, requests: list[tuple[float, int, int]],
                       seed: int, want_tokens: bool, concurrency: int | None = None
                       ) -> dict[str, Any]:
    """Submit each request at its arrival time (at most ``concurrency`` in flight, when
    given); per request: first-token and finish times, output tokens (and their ids and
    logprobs when ``want_tokens``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = np.random.default_rng(seed)
    rng_prompts = [rng.integers(0, vocab, n_in).tolist() for _, n_in, _ in requests]
    results: list[dict[str, Any]] = [{} for _ in requests]
    slots = asyncio.Semaphore(concurrency or len(requests))

    async def one(i: int, arrival: float, n_in: int, n_out: int) -> None:
        async with slots:
            await one_request(i, arrival, n_in, n_out)

    async def one_request(i: int, arrival: float, n_in: int, n_out: int) -> None:
        delay = arrival - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        ids = rng_prompts[i]
        params = SamplingParams(max_tokens=n_out, temperature=0.0, ignore_eos=True,
                                logprobs=1 if want_tokens else None)
        sent = time.perf_counter()
        # when each output reached the client: one per engine step, except where the
        # front end merged several steps' tokens into one yield under load
        stamps: list[float] = []
        final = None
        async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                         request_id=f"r{seed}-{i}"):
            if out.outputs and len(out.outputs[0].token_ids) > 0:
                stamps.append(time.perf_counter())
            final = out
        done = time.perf_counter()
        comp = final.outputs[0]
        r = {"arrival": arrival, "sent": sent - start,
             "first": (stamps[0] if stamps else done) - start, "done": done - start,
             "prompt": len(ids), "output": len(comp.token_ids),
             "gaps": np.diff(stamps).tolist()}
        if want_tokens:
            r["token_ids"] = list(comp.token_ids)
            r["logprobs"] = [float(lp[tok].logprob) for tok, lp in
                             zip(comp.token_ids, comp.logprobs or [])]
        results[i] = r

    start = time.perf_counter()  # after the prompts are made: only serving is timed
    await asyncio.gather(*(one(i, *req) for i, req in enumerate(requests)))
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "requests": results}


def summarize(raw: dict[str, Any], online: bool, closed_loop: bool = False
              ) -> dict[str, Any]:
    """Throughput of a run; with ``online`` TTFT (from arrival; ``closed_loop``: from
    when the client sent it) and TPOT percentiles."""
    reqs = raw["requests"]
    n_in = sum(r["prompt"] for r in reqs)
    n_out = sum(r["output"] for r in reqs)
    out: dict[str, Any] = {"elapsed_s": round(raw["elapsed_s"], 3),
                           "total_tok_per_s": (n_in + n_out) / raw["elapsed_s"],
                           "out_tok_per_s": n_out / raw["elapsed_s"],
                           "prompt_tokens": n_in, "output_tokens": n_out}
    if online:
        since = "sent" if closed_loop else "arrival"
        ttft = np.array([r["first"] - r[since] for r in reqs]) * 1e3
        tpot = np.array([(r["done"] - r["first"]) / (r["output"] - 1) for r in reqs
                         if r["output"] > 1]) * 1e3
        for name, values in (("ttft_ms", ttft), ("tpot_ms", tpot)):
            out[f"{name}_p50"] = float(np.percentile(values, 50))
            out[f"{name}_p99"] = float(np.percentile(values, 99))
        # TPOT is each request's mean gap between tokens; the pooled gaps say which steps
        # moved: decode-only steps make the low quantiles, steps that also prefill the
        # high ones (DeepSeek online TPOT p50 was 6-8% worse with RaMP in two sessions
        # while closed-loop decode at 32 sequences was 1.5% better)
        gaps = np.concatenate([np.asarray(r.get("gaps", []), float) for r in reqs]) * 1e3
        if gaps.size:
            out["itl_ms_quantiles"] = {str(q): float(np.percentile(gaps, q))
                                       for q in ITL_QUANTILES}
        if not closed_loop:
            arrivals = np.array([r["arrival"] for r in reqs])
            span = max(float(arrivals.max()), 1e-9)
            out["request_rate"] = len(reqs) / span
            # above capacity a queue grows through the run and TTFT measures its length
            # at the end (DeepSeek at 12.6k offered / 10.3k served: TTFT p50 39 ms in the
            # first quarter of arrivals, 348 in the last): the offered load, TTFT per
            # quarter of the arrivals and ramp.queueing's verdict say which runs were
            # over capacity
            out["offered_tok_per_s"] = (n_in + n_out) / span
            order = np.argsort(arrivals, kind="stable")
            out["ttft_ms_p50_by_quarter"] = [float(np.median(ttft[q])) for q in
                                             np.array_split(order, 4) if len(q)]
            out.update(queue_growth(arrivals, ttft / 1e3))
        # per request, for what the percentiles hide: how late the client sent it
        # (sent - arrival), how long the engine took to the first token, the lengths
        out["requests"] = [{k: round(r[k], 5) for k in ("arrival", "sent", "first", "done")}
                           | {"prompt": r["prompt"], "output": r["output"]} for r in reqs]
    return out


def spread_router(worker, seed: int, logit_std: float) -> int:
    """Run inside vLLM's worker (``collective_rpc``): give every MoE router random
    weights scaled so its logits have about ``logit_std`` standard deviation.

    Dummy weights are uniform(-1e-3, 1e-3): the router's logits are then nearly equal
    and top-k picks the first expert ids for every token (seen in a trace recorded in
    vLLM 0.26). The gate's input is RMSNorm(x) * w_norm, about rms(w_norm) per element,
    so a gate of N(0, 1) / (sqrt(hidden) * rms(w_norm)) gives logits of unit scale.
    Both modes of a benchmark apply the same seed. Returns the routers changed.
    """
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    changed = 0
    for layer in worker.model_runner.get_model().modules():
        norm = getattr(layer, "post_attention_layernorm", None)
        if norm is None:
            continue
        hidden = norm.weight.numel()
        scale = logit_std / (hidden**0.5 * float(norm.weight.detach().float().pow(2).mean().sqrt()))
        for name, sub in layer.named_modules():
            weight = getattr(sub, "weight", None)
            if (name.split(".")[-1] == "gate" and weight is not None and weight.dim() == 2
                    and weight.shape[1] == hidden):
                with torch.no_grad():
                    fresh = torch.randn(weight.shape, device=weight.device, generator=gen)
                    weight.copy_(fresh * scale)
                changed += 1
    return changed


def kv_cache_tokens(cache: Any) -> int | None:
    """The KV cache the engine core allocated, in tokens (vLLM 0.26 syncs it back to the
    front end's cache config after start), so that the simulator replays the run with
    the engine's capacity, not its own memory model's; None where it does not say."""
    tokens = getattr(cache, "kv_cache_size_tokens", None)
    if tokens is None and getattr(cache, "num_gpu_blocks", None):
        tokens = cache.num_gpu_blocks * cache.block_size
    return int(tokens) if tokens else None


async def worker_main(args: argparse.Namespace) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    vocab = json.loads((HERE / "models" / args.model / "config.json").read_text())["vocab_size"]
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.profile_dir:  # torch profiler in the engine core, started per profiled run
        from vllm.config import ProfilerConfig

        extra["profiler_config"] = ProfilerConfig(
            profiler="torch", torch_profiler_dir=str(Path(args.profile_dir).resolve()),
            torch_profiler_with_stack=False, ignore_frontend=True,
            max_iterations=args.profile_iterations)
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(args.model, args), **extra))
    sched = engine.vllm_config.scheduler_config
    comp = engine.vllm_config.compilation_config
    info = {"event": "ready", "start_s": round(time.perf_counter() - t0, 1),
            "max_num_seqs": sched.max_num_seqs,
            "max_num_batched_tokens": sched.max_num_batched_tokens,
            "cudagraph_capture_sizes": list(getattr(comp, "cudagraph_capture_sizes", []) or []),
            "kv_cache_tokens": kv_cache_tokens(engine.vllm_config.cache_config),
            "engine_args": engine_args(args.model, args)}
    if args.router_logit_std:
        import cloudpickle

        changed = await engine.collective_rpc(cloudpickle.dumps(spread_router),
                                              args=(1234, args.router_logit_std))
        info["routers_respread"] = changed
    print(MARK + json.dumps(info), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        if cmd["workload"] == "quit":
            break
        name, seed = cmd["workload"], cmd["seed"]
        concurrency = None
        if name == "online":
            reqs = online_requests(args.online_requests, args.time_scale, args.online_max_in,
                                   args.online_max_out)
        elif name.startswith("concurrency:"):
            concurrency = int(name.split(":")[1])
            reqs = [(0.0, CONCURRENCY_IN, CONCURRENCY_OUT)] * (CONCURRENCY_WAVES * concurrency)
        else:
            w = OFFLINE[name]
            reqs = [(0.0, w.input_len, w.output_len)] * w.prompts
        if cmd.get("profile"):
            await engine.start_profile()
        raw = await run_requests(engine, vocab, reqs, seed, want_tokens=name == "match",
                                 concurrency=concurrency)
        if cmd.get("profile"):
            await engine.stop_profile()
        result = summarize(raw, online=name == "online" or concurrency is not None,
                           closed_loop=concurrency is not None)
        if name == "match":
            result["sequences"] = [{"token_ids": r["token_ids"], "logprobs": r["logprobs"]}
                                   for r in raw["requests"]]
        print(MARK + json.dumps({"event": "result", "workload": name, **result}), flush=True)
    engine.shutdown()


# --- coordinator -------------------------------------------------------------------------

def engine_mode(label: str) -> str:
    """The RaMP mode of the engine a ``--modes`` label runs on (``dispatch:launch``:
    ``dispatch``)."""
    return label.split(":")[0]


def eager_variant(label: str) -> str:
    """How a label's eager calls run on its engine (``RAMP_EAGER_VARIANT_FILE``)."""
    return label.split(":", 1)[1] if ":" in label else "plan"


def engines_of(modes: list[str]) -> list[str]:
    """The engines (RaMP modes) that ``--modes``' labels run on, in order."""
    return list(dict.fromkeys(engine_mode(m) for m in modes))


def check_modes(modes: list[str], concurrent: bool) -> str | None:
    """What is wrong with ``--modes`` (None: nothing): labels repeat, or a variant is
    unknown, not on the dispatch engine, or without ``--concurrent``. One mode is a
    call of one engine (for models of which two engines do not fit the GPU, nor two
    starts one call): it writes its raw log only, for ``bench.py summarize`` to pool
    with a call of the other mode."""
    if len(set(modes)) != len(modes) or len(modes) < (2 if concurrent else 1):
        return (f"--modes {','.join(modes)}: each once, and at least two with --concurrent")
    for label in modes:
        if ":" not in label:
            continue
        if (engine_mode(label) != "dispatch"
                or eager_variant(label) not in variant_file.VARIANTS):
            return (f"--modes: {label!r} is not dispatch:V with V one of "
                    f"{', '.join(variant_file.VARIANTS)}")
        if not concurrent:
            return f"--modes {label}: eager variants share one engine, so need --concurrent"
    return None


class Worker:
    """One engine process in one RaMP mode, driven over stdin, read over stdout;
    ``variant_path``: the file its RaMP reads the eager variant from."""

    def __init__(self, mode: str, args: argparse.Namespace, util: float, stats_dir: Path,
                 extra: tuple[str, ...] = (), variant_path: Path | None = None) -> None:
        self.mode = mode
        self.variant_path = variant_path
        if variant_path is not None:  # an earlier call's file must not reach this engine
            variant_file.write(variant_path, "plan", wait=False)
        env = dict(os.environ, RAMP_MODE=mode,
                   RAMP_STATS=str(stats_dir / f"{mode}.{{pid}}.json"),
                   RAMP_TRACE=str(stats_dir / f"trace.{mode}.rank{{rank}}.jsonl"),
                   RAMP_MODEL=args.model, RAMP_HOLD_SECONDS="5",
                   **({"RAMP_EAGER_VARIANT_FILE": str(variant_path)} if variant_path else {}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--model", args.model,
               "--gpu-memory-utilization", str(util), *args.passthrough, *extra]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        self.info = self._wait("ready")

    def _wait(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                msg = json.loads(line[len(MARK):])
                if msg.get("event") == event:
                    return msg
            elif any(k in line for k in ("Error", "error", "RaMP", "Traceback", "WARNING")):
                print(f"[{self.mode}] {line}", end="", flush=True)
        raise RuntimeError(f"{self.mode} engine exited (code {self.proc.wait()}) before "
                           f"'{event}'")

    def run(self, workload: str, seed: int, profile: bool = False) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"workload": workload, "seed": seed,
                                          "profile": profile}) + "\n")
        self.proc.stdin.flush()
        result = self._wait("result")
        result["ramp_mode"] = self.mode
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"workload": "quit"}) + "\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the engine's shutdown lines (RaMP's summary)
            if "RaMP" in line or "Traceback" in line:
                print(f"[{self.mode}] {line}", end="", flush=True)


@dataclass
class VariantRun:
    """A ``--modes`` label on a shared engine: its runs with the engine's eager calls set
    to ``variant`` first, labelled ``mode``."""

    mode: str
    worker: Worker
    variant: str

    @property
    def info(self) -> dict[str, Any]:
        return self.worker.info

    def run(self, workload: str, seed: int, profile: bool = False) -> dict[str, Any]:
        assert self.worker.variant_path is not None
        variant_file.write(self.worker.variant_path, self.variant)
        result = self.worker.run(workload, seed, profile)
        result["ramp_mode"] = self.mode
        return result


def gpu_state() -> dict[str, float] | None:
    """SM and memory clocks (MHz), temperature (C) and power (W) of GPU 0 from
    nvidia-smi, or None where it is missing or fails."""
    fields = ("sm_mhz", "mem_mhz", "temp_c", "power_w")
    try:
        out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=clocks.sm,clocks.mem,"
                              "temperature.gpu,power.draw", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return dict(zip(fields, (float(v) for v in out.strip().split(","))))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def host_state() -> dict[str, float]:
    """1-minute load average and mean CPU clock (MHz, where /proc/cpuinfo says): steps
    above the CUDA-graph sizes are host-bound, so the host's state is half the drift."""
    state = {"load_1min": os.getloadavg()[0]}
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text()
               .splitlines() if line.startswith("cpu MHz")]
    except (OSError, ValueError, IndexError):
        mhz = []
    if mhz:
        state["cpu_mhz_mean"] = sum(mhz) / len(mhz)
    return state


def read_stats(stats_dir: Path, mode: str) -> dict[str, Any]:
    """Sum of the RAMP_STATS files the mode's engine processes wrote."""
    total = no_served_calls()
    for path in sorted(stats_dir.glob(f"{mode}.*.json")):
        add_served_calls(total, {**json.loads(path.read_text()), "files": 1})
    return total


def no_served_calls() -> dict[str, Any]:
    """An empty sum of RaMP's served calls (``read_stats``' shape)."""
    return {"eager": {}, "captured": {}, "fallbacks": {}, "plans": {}, "eager_graphs": {},
            "files": 0}


def add_served_calls(total: dict[str, Any], more: dict[str, Any]) -> None:
    """Add one count of RaMP's served calls (per shape and path, eager and captured;
    fallbacks per reason; files; eager graphs' captures, replays and failures per shape)
    into ``total``, and the plans that served each shape."""
    total["files"] += more.get("files", 0)
    for shape, served in more.get("plans", {}).items():  # every distinct plan per shape:
        plans = total.setdefault("plans", {}).setdefault(shape, [])  # pooled calls may
        for entry in served if isinstance(served, list) else [served]:  # have run others
            if entry not in plans:
                plans.append(entry)
    for kind in ("eager", "captured", "eager_graphs"):  # shape -> path (or count) -> n
        for shape, per in more.get(kind, {}).items():
            dst = total.setdefault(kind, {}).setdefault(shape, {})
            for name, n in per.items():
                dst[name] = dst.get(name, 0) + n
    for reason, n in more.get("fallbacks", {}).items():
        total["fallbacks"][reason] = total["fallbacks"].get(reason, 0) + n


def compare_tokens(a: list[dict], b: list[dict], tol: float) -> dict[str, Any]:
    """Greedy sequences of two modes: equal, or where they first differ, and whether
    the first-step logprobs agree within ``tol``."""
    first_diff = []
    for x, y in zip(a, b):
        diff = next((i for i, (s, t) in enumerate(zip(x["token_ids"], y["token_ids"]))
                     if s != t), None)
        first_diff.append(diff)
    step0 = [abs(x["logprobs"][0] - y["logprobs"][0]) for x, y in zip(a, b)
             if x["logprobs"] and y["logprobs"]]
    return {"tokens_match": all(d is None for d in first_diff),
            "first_divergence": first_diff,
            "sequences_equal": sum(d is None for d in first_diff), "sequences": len(a),
            "step0_logprob_max_abs_diff": max(step0) if step0 else None,
            "step0_logprob_tolerance": tol,
            "step0_logprobs_agree": bool(step0) and max(step0) <= tol}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        args = parser(worker=True).parse_args(sys.argv[2:])
        asyncio.run(worker_main(args))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        summarize_log(sys.argv[2:])
        return
    ap = parser(worker=False)
    args = ap.parse_args()
    args.workloads = ",".join(w for item in args.workloads for w in item.split(",") if w)
    workloads = args.workloads.split(",")
    profiled = [w for w in (args.profile_workloads or "").split(",") if w]
    stray = [w for w in profiled if w not in workloads]
    if stray:  # a profiled run reuses the workload's warm-up and its timed length
        ap.error(f"--profile-workloads {','.join(stray)}: not in --workloads")
    if args.time_budget is not None and not args.concurrent and (
            "," in args.modes or args.blocks > 1):
        ap.error("--time-budget needs --concurrent, or one mode in one block: one engine "
                 "start after the other, the first would spend the budget before the "
                 "next starts")
    args.passthrough = passthrough(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats_dir = Path(args.stats_dir or out / f"stats-{args.model}")
    stats_dir.mkdir(parents=True, exist_ok=True)
    for old in stats_dir.glob("*.json"):
        old.unlink()
    modes = args.modes.split(",")
    wrong = check_modes(modes, args.concurrent)
    if wrong:
        ap.error(wrong)
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in workloads}
    matches: dict[str, list[dict]] = {}
    infos: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    raw_log = out / f"runs-{args.model}.jsonl"
    meta = run_meta(args)
    append(raw_log, {"event": "start", **meta})

    def measure(w: Worker, wl: str, seed: int, repeat: int | None) -> dict[str, Any]:
        """One run with the GPU's clocks, temperature and power before and after (drift
        between engine starts is what limits these comparisons); ``repeat`` None: a
        warm-up, logged but not summarised."""
        before, host = gpu_state(), host_state()
        res = w.run(wl, seed=seed)
        res.update(repeat=repeat, gpu_before=before, gpu_after=gpu_state(), host_before=host,
                   host_after=host_state())
        append(raw_log, {"workload": wl, "warmup": repeat is None, **res})
        print(f"{args.model} {wl:<14} {w.mode:<15} "
              + ("warm-up" if repeat is None else f"rep {repeat}")
              + f": {res['total_tok_per_s']:9.0f} tok/s total ({time.monotonic() - t0:.0f} s)"
              + (f", SM {before['sm_mhz']} MHz, {before['temp_c']} C" if before else "")
              + (f"; overloaded: TTFT p50 {res['ttft_p50_first_tenth_s']:.2f} s in the "
                 f"first tenth of arrivals, {res['ttft_p50_last_tenth_s']:.2f} s in the last "
                 f"({res['offered_tok_per_s']:.0f} tok/s offered)"
                 if res.get("overloaded") else ""),
              flush=True)
        return res

    longest: dict[str, float] = {}  # each workload's longest run so far, seconds

    def fits(wl: str, runs_needed: int) -> bool:
        """Whether ``runs_needed`` more runs of ``wl`` end inside ``--time-budget``
        (judged from its longest run so far), so that a call near its limit stops early
        and still writes its results files instead of being killed mid-run."""
        if args.time_budget is None:
            return True
        left = args.time_budget - (time.monotonic() - t0)
        if left >= runs_needed * longest.get(wl, 0.0):
            return True
        print(f"time budget: {left:.0f} s left, skipping further {wl} runs", flush=True)
        return False

    def timed(w: Worker, wl: str, seed: int, repeat: int | None) -> dict[str, Any]:
        start = time.monotonic()
        res = measure(w, wl, seed, repeat)
        longest[wl] = max(longest.get(wl, 0.0), time.monotonic() - start)
        return res

    def run_block(workers: dict[str, Worker], repeats: range) -> None:
        for mode, w in workers.items():
            for wl in workloads:  # every engine start: its first runs are the slow ones
                for _ in range(args.warmup):
                    timed(w, wl, seed=999, repeat=None)
            if mode not in matches:  # after the warm-up: its 2,048-token prefill steps
                # then replay the eager graphs the warm-up captured, and are checked too
                matches[mode] = w.run("match", seed=12345)["sequences"]
                append(raw_log, {"workload": "match", "ramp_mode": mode,
                                 "sequences": matches[mode]})
        for r in repeats:
            for wl in workloads:
                order = list(workers) if r % 2 == 0 else list(workers)[::-1]
                if not fits(wl, len(order)):  # a repeat is summarised only with every mode
                    continue
                for mode in order:
                    runs[wl].append(timed(workers[mode], wl, seed=1000 * r + 7, repeat=r))

    trace_root = Path(f"/tmp/ramp-traces-{args.model}")

    def profile_one(w: Worker, wl: str) -> None:
        """One run of ``wl`` under vLLM's torch profiler, after the timed repeats (the
        profiler slows what it records): its kernels summed by name into
        ``profile-<model>-<mode>-<workload>.json``. A failure here is logged and loses
        nothing else of the call."""
        folder = trace_root / engine_mode(w.mode)
        before, started = set(folder.rglob("*.json.gz")), time.time()
        try:
            res = w.run(wl, seed=4242, profile=True)
            traces = sorted(set(folder.rglob("*.json.gz")) - before)
            summary = {"model": args.model, "ramp_mode": w.mode, "workload": wl,
                       **{k: meta[k] for k in ("command", "device", "engine")},
                       "date": utc_now(), "iterations": args.profile_iterations,
                       "total_tok_per_s_profiled": res["total_tok_per_s"],
                       "traces": [t.name for t in traces],
                       **(kernel_summary(trace_events(traces)) if traces else {})}
            path = out / f"profile-{args.model}-{w.mode.replace(':', '-')}-" \
                f"{wl.replace(':', '-')}.json"
            path.write_text(json.dumps(summary, indent=1) + "\n")
            for table in folder.glob("profiler_out_*.txt"):  # vLLM's table, CPU ops too
                if table.stat().st_mtime >= started:  # not an earlier run's
                    lines = table.read_text().splitlines()[:PROFILE_TABLE_LINES]
                    path.with_suffix(f".{table.stem}.txt").write_text("\n".join(lines) + "\n")
            print(f"wrote {path.name}: " + (
                f"GPU busy {summary['busy_fraction']:.0%} of {summary['span_ms']:.0f} ms, "
                f"MoE kernels {summary['moe_fraction']:.0%} by name, "
                f"{summary['moe_op_fraction']:.0%} inside the MoE ops (eager steps)"
                if "busy_fraction" in summary
                else "no GPU kernels in a trace" if traces else "no trace written"), flush=True)
        except Exception as exc:  # the timed results must still be written
            print(f"profiled {wl} run of {w.mode} failed: {type(exc).__name__}: {exc}",
                  flush=True)

    def profile_runs(workers: dict[str, Worker]) -> None:
        """Each profiled workload on every engine in turn (so that a budget cut leaves
        pairs), while its runs, at twice their unprofiled time, fit the budget."""
        for wl in profiled:
            if fits(wl, PROFILE_COST * len(workers)):
                for w in workers.values():
                    profile_one(w, wl)

    def profile_args(mode: str) -> tuple[str, ...]:
        return (f"--profile-dir={trace_root / mode}",) if profiled else ()

    if args.concurrent:
        engines = engines_of(modes)
        varied = {engine_mode(m) for m in modes if ":" in m}  # engines with a variant file
        started: dict[str, Worker] = {}
        workers: dict[str, Worker | VariantRun] = {}
        try:
            for e in engines:
                started[e] = Worker(e, args, args.gpu_memory_utilization / len(engines),
                                    stats_dir, extra=profile_args(e),
                                    variant_path=(stats_dir / f"eager-variant.{e}"
                                                  if e in varied else None))
            for m in modes:
                w = started[engine_mode(m)]
                workers[m] = VariantRun(m, w, eager_variant(m)) if w.variant_path else w
                infos[m] = w.info
                append(raw_log, {"event": "engine", "ramp_mode": m, "info": infos[m]})
            run_block(workers, range(args.repeats))
            profile_runs(workers)
        finally:
            for w in started.values():
                w.stop()
    else:
        per_block = -(-args.repeats // args.blocks)
        for b in range(args.blocks):
            reps = range(b * per_block, min(args.repeats, (b + 1) * per_block))
            for m in (modes if b % 2 == 0 else modes[::-1]):
                w = Worker(m, args, args.gpu_memory_utilization, stats_dir,
                           extra=profile_args(m) if b == args.blocks - 1 else ())
                if m not in infos:
                    infos[m] = w.info
                    append(raw_log, {"event": "engine", "ramp_mode": m, "info": w.info})
                try:
                    run_block({m: w}, reps)
                    if b == args.blocks - 1:
                        profile_runs({m: w})
                finally:
                    w.stop()
    stats = read_all_stats(stats_dir, engines_of(modes))
    if stats:  # in the raw log too: ``summarize`` pools it with other calls' counts
        append(raw_log, {"event": "stats", "stats": stats})
    write_results(meta, out, runs, matches, infos, stats)


def append(raw_log: Path, record: dict[str, Any]) -> None:
    """One line of the raw log, written at once: a call cut at its limit keeps every
    line so far, and ``bench.py summarize`` rebuilds the results files from them."""
    with raw_log.open("a") as f:
        f.write(json.dumps(record) + "\n")


def trace_events(paths: list[Path]) -> list[dict[str, Any]]:
    """The events of torch profiler traces (``*.pt.trace.json.gz``)."""
    import gzip

    events: list[dict[str, Any]] = []
    for path in paths:
        with gzip.open(path, "rt") as f:
            events += json.load(f).get("traceEvents", [])
    return events


MOE_OP_PREFIX = "vllm::moe_forward"  # vLLM's MoE custom ops (moe_forward, moe_forward_shared)
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")  # cudaLaunchKernel; Triton's cuLaunchKernel
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def moe_op_kernels(events: list[dict[str, Any]]) -> set[int]:
    """Correlation ids of the GPU work launched inside vLLM's MoE custom ops: every kernel
    of the layer's routed experts whatever its name (SiLU, top-k sum, routing included)
    and, for ``moe_forward_shared``, its shared experts. Only eager steps count: a CUDA
    graph's kernels share the correlation of the graph launch, outside any op."""
    windows: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "cpu_op" and \
                str(e.get("name", "")).startswith(MOE_OP_PREFIX):
            windows.setdefault((e.get("pid"), e.get("tid")), []).append(
                (e["ts"], e["ts"] + e["dur"]))
    starts: dict[tuple[Any, Any], list[float]] = {}
    ends: dict[tuple[Any, Any], list[float]] = {}
    for thread, spans in windows.items():  # merged, so that one bisect finds the window
        merged: list[list[float]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        starts[thread], ends[thread] = [m[0] for m in merged], [m[1] for m in merged]
    ids: set[int] = set()
    for e in events:
        thread = (e.get("pid"), e.get("tid"))
        if thread in starts and e.get("ph") == "X" and e.get("cat") in LAUNCH_CATEGORIES \
                and "correlation" in e.get("args", {}):
            i = bisect.bisect_right(starts[thread], e["ts"]) - 1
            if i >= 0 and e["ts"] <= ends[thread][i]:
                ids.add(e["args"]["correlation"])
    return ids


def kernel_summary(events: list[dict[str, Any]], top: int = 40) -> dict[str, Any]:
    """GPU kernels (and copies and memsets) of a profiled run, summed by name: the ``top``
    largest, how busy the GPU was over the span from the first kernel to the last (the
    profiler slows the host several times over, so this describes the profiled run
    only), and the MoE share two ways: ``moe_op_ms``, the kernels launched inside vLLM's MoE custom ops in eager steps
    (all of the layer's kernels, shared experts included where the op runs them), and
    ``moe_ms``, kernels with ``moe`` in their name (also in CUDA graphs, but blind to
    activations and top-k sums run through other kernels)."""
    kernels = sorted(((e["ts"], e["ts"] + e["dur"], e["name"],
                       e.get("args", {}).get("correlation"))
                      for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATEGORIES),
                     key=lambda k: k[0])
    if not kernels:
        return {"kernel_count": 0}
    in_moe_op = moe_op_kernels(events)
    by_name: dict[str, list[float]] = {}
    busy, end, moe_op = 0.0, -np.inf, 0.0
    for start, stop, name, correlation in kernels:
        entry = by_name.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += stop - start
        busy += max(0.0, stop - max(start, end))  # the union of the kernels' intervals
        end = max(end, stop)
        moe_op += (stop - start) if correlation in in_moe_op else 0.0
    span = end - kernels[0][0]
    total = sum(v[1] for v in by_name.values())
    moe = sum(v[1] for n, v in by_name.items() if "moe" in n.lower())
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {"kernel_count": len(kernels), "span_ms": span / 1e3, "gpu_busy_ms": busy / 1e3,
            "busy_fraction": busy / span if span > 0 else float("nan"),
            "kernel_ms": total / 1e3, "moe_ms": moe / 1e3,
            "moe_fraction": moe / total if total > 0 else float("nan"),
            "moe_op_ms": moe_op / 1e3,
            "moe_op_fraction": moe_op / total if total > 0 else float("nan"),
            "kernels": [{"name": n[:160], "calls": c, "total_ms": t / 1e3}
                        for n, (c, t) in ranked]}


def utc_now() -> str:
    """The results files' timestamp: UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_meta(args: argparse.Namespace) -> dict[str, Any]:
    """What the results files say of the whole run: the command and its options, the
    GPU and the engine's version (read once, before the engines start)."""
    from importlib.metadata import version

    from ramp.kernels.cuda_timing import device_info

    options = {k: v for k, v in vars(args).items() if k != "passthrough"}
    return {"command": "python3 bench/engine/bench.py " + " ".join(sys.argv[1:]),
            "date": utc_now(), "options": options, "device": device_info(),
            "engine": {"name": "vllm", "version": version("vllm")}}


def read_all_stats(stats_dir: Path, modes: list[str]) -> dict[str, dict[str, Any]] | None:
    """Every engine's (RaMP mode's) RAMP_STATS sums, or None where no engine left a stats
    file (a call cut before the engines' exit, or a raw log summarised elsewhere)."""
    stats = {m: read_stats(stats_dir, m) for m in modes}
    return stats if any(s["files"] for s in stats.values()) else None


def bad_input(message: str) -> None:
    """The project's rule for bad input: one line naming the file, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def need(record: dict[str, Any], where: str, *fields: str) -> None:
    """A raw-log line's required fields, else ``bad_input`` naming the first missing."""
    for name in fields:
        if name not in record:
            bad_input(f"{where}: missing field {name!r}")


# Options that change how long a call runs, not what its engines serve: logs that differ
# only in these pool into one results file (``summarize --allow-differing`` adds others).
RUN_LENGTH_OPTIONS = ("repeats", "warmup", "time_budget", "out", "stats_dir", "workloads")
# a raw log read: its start line, the engines' infos and token checks by mode, runs by workload
RawLog = tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]


def read_raw_log(raw: Path, call: int = 0) -> RawLog:
    """One raw log's header, engine infos, token checks and summarised runs by workload;
    each run is tagged with ``call`` (which log it came from when pooled). The header
    gets ``stats``: the RAMP_STATS sums per mode its call logged at the end (None where
    it logged none: cut at its limit, or written before 2026-12-02)."""
    meta, infos, matches, runs, stats = None, {}, {}, {}, None
    for number, line in enumerate(raw.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            bad_input(f"{raw}:{number}: not JSON ({exc.msg})")
        where = f"{raw}:{number}"
        if rec.get("event") == "start":
            if meta is not None:
                bad_input(f"{where}: a second 'start' line: one call per log (pool several "
                          "logs instead)")
            need(rec, where, "command", "date", "options", "device", "engine")
            need(rec["options"], f"{where} options", "workloads", "modes")
            meta = {k: v for k, v in rec.items() if k != "event"}
            runs = {w: [] for w in meta["options"]["workloads"].split(",")}
        elif rec.get("event") == "engine":
            need(rec, where, "ramp_mode", "info")
            infos[rec["ramp_mode"]] = rec["info"]
        elif rec.get("event") == "stats":
            need(rec, where, "stats")
            stats = rec["stats"]
        elif rec.get("workload") == "match":
            need(rec, where, "ramp_mode", "sequences")
            matches[rec["ramp_mode"]] = rec["sequences"]
        elif meta is not None and not rec.get("warmup"):
            need(rec, where, "workload", "ramp_mode", "total_tok_per_s")
            if rec["workload"] not in runs:
                bad_input(f"{where}: field 'workload' is {rec['workload']!r}, not "
                          f"one of the start line's {sorted(runs)}")
            runs[rec["workload"]].append(dict(rec, call=call))
    if meta is None:
        bad_input(f"{raw}: no 'start' line (logs of bench.py before 2026-12-01 lack it)")
    meta["stats"] = stats
    return meta, infos, matches, runs


def add_stats(into: dict[str, dict[str, Any]] | None, more: dict[str, dict[str, Any]] | None
              ) -> dict[str, dict[str, Any]] | None:
    """Two calls' RAMP_STATS sums per mode (``read_stats``' shape) added together."""
    if not more:
        return into
    out: dict[str, dict[str, Any]] = {}
    for stats in (into or {}, more):
        for mode, per in stats.items():
            add_served_calls(out.setdefault(mode, no_served_calls()), per)
    return out


def call_key(record: dict[str, Any]) -> tuple[str, str]:
    """Which call wrote a raw log's start line or a results file: its command and date."""
    return json.dumps(record["command"]), record["date"]


def stats_of_results(paths: list[Path], mode: str, logged: frozenset = frozenset()
                     ) -> tuple[dict[str, dict[str, Any]] | None, int]:
    """The served calls that calls' own results files recorded (``ramp_calls``,
    ``ramp_fallbacks``: the ``mode`` engine's), summed once per call (a call's files of
    several workloads repeat its counts), and how many calls gave them. A file of a
    call in ``logged`` (``call_key``s of raw logs with a stats line) is refused: its
    counts are in the pool already and would count twice."""
    seen, total = set(), None
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            bad_input(f"{path}: not a results file ({exc})")
        need(data, str(path), "command", "date", "ramp_calls")
        call = call_key(data)
        if call in logged:
            bad_input(f"{path}: field 'ramp_calls' is its call's, whose raw log has a stats "
                      "line already: it would count twice (leave it out of --stats-from)")
        if call in seen or not data["ramp_calls"]:
            continue
        seen.add(call)
        total = add_stats(total, {mode: {**data["ramp_calls"],
                                         "fallbacks": data.get("ramp_fallbacks") or {},
                                         "files": 1}})
    return total, len(seen)


def pool_raw_logs(raws: list[Path], allowed: tuple[str, ...] = ()) -> RawLog:
    """Several calls' raw logs as one, each call's repeats tagged with its index. The
    logs must agree on the device, the engine and every option but ``RUN_LENGTH_OPTIONS``
    and ``allowed``; every log's token check is kept (``token_checks``). With ``modes``
    allowed to differ, the pooled log's modes are all the logs' labels (e.g. one call's
    ``off,dispatch`` and another's ``off,dispatch,dispatch:launch``)."""
    if len({r.resolve() for r in raws}) < len(raws):
        bad_input(f"{' '.join(map(str, raws))}: a log named twice would count twice")
    meta, infos, matches, runs = read_raw_log(raws[0])
    skip = set(RUN_LENGTH_OPTIONS) | set(allowed)
    commands, all_matches = [meta["command"]], [dict(matches)]  # per call, not merged
    stats_calls = int(meta["stats"] is not None)
    logged = {call_key(meta)} if meta["stats"] is not None else set()
    for call, raw in enumerate(raws[1:], 1):
        other, more_infos, more_matches, more = read_raw_log(raw, call)
        for mode, info in more_infos.items():  # a mode the first call did not start
            infos.setdefault(mode, info)
        meta["stats"] = add_stats(meta["stats"], other["stats"])
        stats_calls += other["stats"] is not None
        if other["stats"] is not None:
            logged.add(call_key(other))
        for key in sorted((set(meta["options"]) | set(other["options"])) - skip):
            mine, theirs = meta["options"].get(key), other["options"].get(key)
            if mine != theirs:
                bad_input(f"{raw}: field 'options.{key}' is {theirs!r}, {raws[0]} has "
                          f"{mine!r}: not the same engines, not pooled (--allow-differing "
                          f"{key} if it does not change them)")
        for key in ("device", "engine"):
            if other[key] != meta[key]:
                bad_input(f"{raw}: field {key!r} differs from {raws[0]}'s: not pooled")
        commands.append(other["command"])
        all_matches.append(more_matches)
        for mode, sequences in more_matches.items():  # a mode the first call did not run:
            matches.setdefault(mode, sequences)       # its check is across calls
        if "modes" in allowed:  # every log's labels, the baseline (off) first, else the
            # first log's first: one-mode calls may be named in any order
            labels = meta["options"]["modes"].split(",") + other["options"]["modes"].split(",")
            labels = sorted(dict.fromkeys(labels), key=lambda m: m != "off")
            meta["options"] = dict(meta["options"], modes=",".join(labels))
        for wl, rows in more.items():
            runs.setdefault(wl, []).extend(rows)
    if len(raws) > 1:
        meta = dict(meta, command=commands, calls=len(raws), token_checks=all_matches,
                    allowed_differing=sorted(allowed))
    meta["stats_calls"] = stats_calls
    meta["stats_logged"] = frozenset(logged)
    return meta, infos, matches, runs


def summarize_log(argv: list[str]) -> None:
    """``bench.py summarize RAW... --out DIR [--stats-dir DIR] [--stats-from FILE...]
    [--tag TAG]``: the results files of raw logs (``runs-<model>.jsonl``), for a call
    that ended before writing them, or to pool the repeats of several calls (engine
    starts) of one configuration. RaMP's served calls come from the raw logs' stats
    lines, ``--stats-dir`` (RAMP_STATS files) and ``--stats-from`` (calls' own results
    files, for logs written before the stats line), summed; ``ramp_calls_calls`` says
    how many calls they cover."""
    ap = argparse.ArgumentParser(prog="bench.py summarize", description=summarize_log.__doc__)
    ap.add_argument("raw", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats-dir", type=Path, default=None)
    ap.add_argument("--stats-from", type=Path, nargs="+", default=[], metavar="RESULTS",
                    help="calls' own results files whose ramp_calls to add (one per call "
                         "is enough; a call's repeated counts are taken once)")
    ap.add_argument("--tag", default="",
                    help="appended to the results files' names (e.g. capture2048)")
    ap.add_argument("--allow-differing", action="append", default=[], metavar="OPTION",
                    help="pool logs that differ in this bench.py option too (e.g. "
                         "profile_workloads: a call that ends with profiled runs)")
    a = ap.parse_args(argv)
    meta, infos, matches, runs = pool_raw_logs(a.raw, tuple(a.allow_differing))
    if "calls" in meta:
        meta["summarize_command"] = "python3 bench/engine/bench.py summarize " + " ".join(argv)
    modes = meta["options"]["modes"].split(",")
    other = "dispatch" if "dispatch" in modes else modes[-1]
    from_results, result_calls = stats_of_results(a.stats_from, engine_mode(other),
                                                  meta.pop("stats_logged"))
    stats = add_stats(add_stats(meta["stats"], from_results),
                      read_all_stats(a.stats_dir, engines_of(modes)) if a.stats_dir else None)
    meta["stats_calls"] += result_calls
    a.out.mkdir(parents=True, exist_ok=True)
    write_results(meta, a.out, runs, matches, infos, stats, a.tag)


def write_results(meta: dict[str, Any], out: Path, runs, matches, infos,
                  stats: dict[str, dict[str, Any]] | None, tag: str = "") -> None:
    args = argparse.Namespace(**meta["options"])
    modes = args.modes.split(",")
    device = meta["device"]
    if len(modes) < 2:
        print(f"one mode ({modes[0]}): no ratio, no results file; pool this call's raw log "
              "with a call of the other mode: bench.py summarize RAW RAW --allow-differing "
              "modes", flush=True)
        return
    base = modes[0]
    other = "dispatch" if "dispatch" in modes else modes[-1]
    token_check = (compare_tokens(matches[base], matches[other], args.logprob_tol)
                   if base in matches and other in matches else None)
    gpu = "H200" if "H200" in device["device"] else device["device"].replace(" ", "_")
    for wl, rows in runs.items():
        if {r["ramp_mode"] for r in rows} != set(modes):
            print(f"{wl}: no repeat with every mode, no results file", flush=True)
            continue
        med = {m: float(np.median([r["total_tok_per_s"] for r in rows if r["ramp_mode"] == m]))
               for m in modes}
        spread = {m: [float(min(r["total_tok_per_s"] for r in rows if r["ramp_mode"] == m)),
                      float(max(r["total_tok_per_s"] for r in rows if r["ramp_mode"] == m))]
                  for m in modes}
        served = stats.get(engine_mode(other)) if stats else None
        # labels sharing the engine: its counts cover all their runs, warm-ups too
        cover = [m for m in modes if engine_mode(m) == engine_mode(other)]
        result = {
            "model": args.model, "workload": workload_spec(wl, args, infos.get(base, {})),
            "device": device, "engine": meta["engine"], "command": meta["command"],
            "date": meta["date"], "modes": modes, "concurrent": bool(args.concurrent),
            "engine_config": infos.get(base),
            # each mode's engine, as it first started (pooled logs: in the first log
            # that started it)
            "kv_cache_tokens": {m: infos.get(m, {}).get("kv_cache_tokens") for m in modes},
            "runs": rows, "median_total_tok_per_s": med, "range_total_tok_per_s": spread,
            "ratio": same_calls_ratio(rows, base, other),
            "ratios": {m: same_calls_ratio(rows, base, m) for m in modes[1:]},
            # None: no RAMP_STATS file came back (the call ended before the engines did)
            "ramp_calls": ({"eager": served["eager"], "captured": served["captured"]}
                           if served else None),
            "ramp_fallbacks": served["fallbacks"] if served else None,
            # which plan served each shape, and its eager graphs' captures and replays
            "ramp_plans": served.get("plans") if served else None,
            "ramp_eager_graphs": served.get("eager_graphs") if served else None,
            **({"ramp_calls_cover": cover} if len(cover) > 1 else {}),
            # pooled logs: how many of the calls those counts cover
            **({"ramp_calls_calls": meta["stats_calls"]} if "calls" in meta else {}),
            "tokens_match": token_check["tokens_match"] if token_check else None,
            "token_check": token_check,
        }
        # alternating pairs share the machine's drift only when both engines are alive
        result["paired_ratio_median"] = (paired_ratio_median(rows, base, other)
                                         if args.concurrent else None)
        if args.concurrent and len(modes) > 2:
            result["paired_ratios"] = {m: paired_ratio_median(rows, base, m)
                                       for m in modes[1:]}
            # every call's token check that has both labels (pooled logs: not only the
            # first call's, which may lack a label)
            per_call = meta.get("token_checks", [matches])
            result["tokens_match_by_mode"] = {
                m: all(compare_tokens(t[base], t[m], args.logprob_tol)["tokens_match"]
                       for t in per_call if base in t and m in t)
                for m in modes[1:] if any(base in t and m in t for t in per_call)}
        if "calls" in meta:  # pooled logs: how far apart the calls (engine starts) are
            by_call = [call_ratio(rows, c, base, other) for c in range(meta["calls"])]
            checks = [compare_tokens(m[base], m[other], args.logprob_tol)["tokens_match"]
                      for m in meta["token_checks"] if base in m and other in m]
            apart = ran_apart(rows, base, other)
            if not checks and base in matches:  # no call ran both: each call of ``other``
                checks = [compare_tokens(matches[base], m[other],  # against the baseline's
                                         args.logprob_tol)["tokens_match"]
                          for m in meta["token_checks"] if other in m]
                result["token_check_across_calls"] = bool(checks)
            result.update(calls=meta["calls"] if apart else sum(r is not None for r in by_call),
                          ratio_by_call=by_call,
                          summarize_command=meta["summarize_command"],
                          allowed_differing=meta["allowed_differing"],
                          tokens_match=all(checks) if checks else None,
                          token_checks_per_call=checks)
            if apart:
                result["ratio_across_calls"] = True
        if "tpot_ms_p50" in rows[0]:  # online and concurrency:C
            for key in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99"):
                result[f"median_{key}"] = {m: float(np.median(
                    [r[key] for r in rows if r["ramp_mode"] == m])) for m in modes}
        suffix = ("" if modes == ["off", "dispatch"]
                  else "_" + "-".join(modes[1:]).replace(":", "-"))
        suffix += f"_{tag}" if tag else ""
        path = out / f"{gpu}_{args.model}_{wl.replace(':', '-')}{suffix}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        ratio = "-" if result["ratio"] is None else f"{result['ratio']:.3f}"
        print(f"wrote {path}: ratio {ratio} ({other}/{base}), tokens_match "
              f"{result['tokens_match']}", flush=True)


def same_calls_ratio(rows: list[dict[str, Any]], base: str, other: str) -> float | None:
    """Median ``other`` over median ``base`` throughput, ``base`` taken from the calls
    (engine starts) that ran ``other`` only: pooled logs whose modes differ would
    otherwise set one start's label against every start's baseline. Where no call ran
    both (calls of one mode each, ``ran_apart``), over all the calls."""
    calls = {r.get("call", 0) for r in rows if r["ramp_mode"] == other}
    if ran_apart(rows, base, other):
        calls |= {r.get("call", 0) for r in rows}
    return median_ratio(rows, base, other, calls)


def ran_apart(rows: list[dict[str, Any]], base: str, other: str) -> bool:
    """Whether no call (engine start) ran both modes: their ratio is then across calls,
    with the drift between engine starts in it."""
    return not ({r.get("call", 0) for r in rows if r["ramp_mode"] == base}
                & {r.get("call", 0) for r in rows if r["ramp_mode"] == other})


def median_ratio(rows: list[dict[str, Any]], base: str, other: str,
                 calls: set[int]) -> float | None:
    """Median ``other`` over median ``base`` throughput among the runs of ``calls``,
    None where those runs lack either mode."""
    med = {}
    for mode in (base, other):
        tps = [r["total_tok_per_s"] for r in rows
               if r.get("call", 0) in calls and r["ramp_mode"] == mode]
        if not tps:
            return None
        med[mode] = float(np.median(tps))
    return med[other] / med[base]


def paired_ratio_median(rows: list[dict[str, Any]], base: str, other: str) -> float | None:
    """The median over repeats of ``other`` / ``base`` within each repeat (runs that
    alternate back to back share the machine's drift, which a ratio of medians over
    engine starts does not cancel); None where no repeat has both modes."""
    by_pair: dict[tuple[int, int], dict[str, float]] = {}
    for r in rows:
        if "repeat" in r:
            by_pair.setdefault((r.get("call", 0), r["repeat"]), {})[r["ramp_mode"]] = \
                r["total_tok_per_s"]
    ratios = [p[other] / p[base] for p in by_pair.values() if base in p and other in p]
    return float(np.median(ratios)) if ratios else None


def call_ratio(rows: list[dict[str, Any]], call: int, base: str, other: str) -> float | None:
    """Median ``other`` over median ``base`` throughput among one pooled call's runs,
    None where that call lacks a mode (or the workload)."""
    return median_ratio(rows, base, other, {call})


def workload_spec(name: str, args, info: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "max_num_seqs": info.get("max_num_seqs"),
                            "max_num_batched_tokens": info.get("max_num_batched_tokens")}
    if name == "online":
        reqs = online_requests(args.online_requests, args.time_scale, args.online_max_in,
                               args.online_max_out)
        spec.update(num_prompts=len(reqs), time_scale=args.time_scale,
                    source=str(ARRIVALS.relative_to(ROOT)),
                    max_input_len=args.online_max_in, max_output_len=args.online_max_out,
                    arrivals=[round(t, 4) for t, _, _ in reqs],
                    input_lens=[p for _, p, _ in reqs], output_lens=[o for _, _, o in reqs])
    elif name.startswith("concurrency:"):
        c = int(name.split(":")[1])
        spec.update(num_prompts=CONCURRENCY_WAVES * c, concurrency=c,
                    input_len=CONCURRENCY_IN, output_len=CONCURRENCY_OUT, arrivals=None)
    else:
        w = OFFLINE[name]
        spec.update(num_prompts=w.prompts, input_len=w.input_len, output_len=w.output_len,
                    arrivals=None)
    return spec


PASSTHROUGH = ("max_model_len", "max_num_seqs", "max_num_batched_tokens",
               "max_cudagraph_capture_size", "attention_backend",
               "online_requests", "time_scale", "online_max_in", "online_max_out",
               "router_logit_std", "tensor_parallel_size", "profile_iterations")


def passthrough(args: argparse.Namespace) -> list[str]:
    """The coordinator's options that its workers take too."""
    out = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
           if k in PASSTHROUGH and v is not None]
    return out + (["--enable-expert-parallel"] if args.enable_expert_parallel else [])


def parser(worker: bool) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(
        p.name for p in (HERE / "models").iterdir() if p.is_dir()))
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--max-cudagraph-capture-size", type=int, default=None,
                    help="vLLM's largest CUDA-graph size (default min(2 x max_num_seqs, "
                         "512)): steps above it run eager, an estimated ~50 ms of host time "
                         "each for DeepSeek (the simulator's fit, docs/engine.md)")
    ap.add_argument("--attention-backend", default=None,
                    help="FLASH_ATTN (GQA, needs the FA3 extension) or TRITON_ATTN; "
                         "DeepSeek always TRITON_MLA")
    ap.add_argument("--online-requests", type=int, default=200)
    ap.add_argument("--time-scale", type=float, default=2.0,
                    help="online: arrival times of the Azure trace divided by this")
    ap.add_argument("--online-max-in", type=int, default=2048)
    ap.add_argument("--online-max-out", type=int, default=256)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--enable-expert-parallel", action="store_true",
                    help="vLLM's expert parallelism across the tensor-parallel GPUs")
    ap.add_argument("--router-logit-std", type=float, default=None,
                    help="re-draw every MoE router so its logits have this std (dummy "
                         "weights route every token to the same experts); 1.0 spread "
                         "DeepSeek-V2-Lite's routing in vLLM 0.26 (docs/engine.md)")
    ap.add_argument("--profile-iterations", type=int, default=300,
                    help="engine steps each profiled run records (vLLM's ProfilerConfig."
                         "max_iterations)")
    if worker:
        ap.add_argument("--profile-dir", default=None)
        return ap
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile-workloads", default=None, metavar="W1,W2",
                    help="after the repeats, one run of each under vLLM's torch profiler "
                         "per mode: profile-<model>-<mode>-<workload>.json (kernels by name, "
                         "GPU busy fraction, MoE share)")
    ap.add_argument("--modes", default="off,dispatch",
                    help="first is the baseline; ratio = dispatch (else the last) / first; "
                         "add record to measure recording's cost; dispatch:V (V: "
                         f"{', '.join(variant_file.VARIANTS)}; --concurrent) runs on the "
                         "dispatch engine with its eager calls set to V")
    ap.add_argument("--workloads", nargs="+", default=["prefill-heavy,decode-heavy,online"],
                    help="comma- or space-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1,
                    help="runs of each workload per engine start before the repeats, "
                         "not summarised (in runs-<model>.jsonl as warmup)")
    ap.add_argument("--blocks", type=int, default=1,
                    help="engine starts per mode, alternating (sequential mode)")
    ap.add_argument("--concurrent", action="store_true",
                    help="both engines alive at once, half the memory each")
    ap.add_argument("--stats-dir", default=None)
    ap.add_argument("--time-budget", type=float, default=None, metavar="S",
                    help="skip repeats that would end later than S seconds after the start "
                         "(the device call's limit less the engines' shutdown), so the "
                         "results files are written")
    ap.add_argument("--logprob-tol", type=float, default=0.05)
    return ap


if __name__ == "__main__":
    main()
