"""Continuous-batching serving engine (vLLM V1-like scheduler) as a simpy process.

One simpy event per forward step and one per arrival, never per token: decoding
requests advance implicitly (a request that started decoding at step ``s0`` with ``g0``
tokens has ``g0 + s - s0`` at step ``s``) and are finished from a bucket keyed by the
step they end on. Each step the scheduler, like vLLM's:

1. reserves one KV slot per decoding request, preempting the latest-admitted running
   request (recompute preemption: its KV is freed and it re-enters the queue head to
   prefill prompt + generated tokens again) until the KV cache has room;
2. gives running prefills their next chunk, then admits waiting requests FIFO while the
   token budget (``max_batched_tokens``), ``max_seqs`` and KV capacity allow; a prompt
   longer than the remaining budget is chunked (``chunked_prefill``) or waits;
3. costs the step (``StepCoster``) and advances simulated time by it.

Under ``async_scheduling`` (vLLM's default since V1 0.11, and SGLang's overlap
scheduler) the engine plans step N+1 while step N runs, so a request that arrives during a
busy step N is admitted no earlier than step N+2: admission sees the arrivals up to the
start of the step that just ended, unless nothing else could run (then the scheduler has
blocked on that step and admits what has arrived since).

A request whose prefill completes emits its first token at the end of that step; each
later step emits one token. Under the ``switch`` layout policy the replica moves between
the TP and EP layouts when the number of requests in the system crosses thresholds,
stalling for ``SwitchConfig.cost_s`` per switch (Moebius: 215-434 ms on 8xH200).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import simpy
from tqdm import tqdm

from ramp.errors import InputError
from ramp.sim.costs import Layout
from ramp.sim.routing import DECODE, PREFILL
from ramp.trace import Arrival

MODES = ("tp", "ep", "switch")
MAX_BATCHED_TOKENS = 1 << 20  # tokens of one scheduled step


class StepCosts(Protocol):
    """What the engine needs from a cost model (``StepCoster``, or a stub in tests)."""

    layouts: dict[str, Layout]
    samples: int  # routing samples: step ``s`` uses sample ``s % samples``

    def step_seconds(self, layout: Layout, policy: str, tokens: int, pairs: float,
                     context: float, phase_class: int, sample: int) -> tuple[float, float]:
        """(step time, routed-expert part) in seconds."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler limits, as the engine's flags of the same names."""

    max_batched_tokens: int = 8192
    max_seqs: int = 256
    chunked_prefill: bool = True
    block_size: int = 16            # KV block: each running sequence may waste up to one
    kv_capacity: int | None = None  # KV tokens of the replica; None: from GPU memory
    # largest step replayed from a CUDA graph (vLLM's max_cudagraph_capture_size); None:
    # vLLM's default min(2 * max_seqs, 512); 0: every step eager (--enforce-eager)
    cuda_graph_tokens: int | None = None
    # step N+1 planned while step N runs (vLLM 0.26: a queue of two batches, on unless
    # speculative decoding or a pooling model turns it off): a new arrival waits a step more
    async_scheduling: bool = True

    @property
    def graph_tokens(self) -> int:
        """Largest step (tokens) that replays a CUDA graph."""
        if self.cuda_graph_tokens is not None:
            return self.cuda_graph_tokens
        return min(2 * self.max_seqs, 512)

    def __post_init__(self) -> None:
        if self.max_batched_tokens > MAX_BATCHED_TOKENS:
            raise InputError(f"engine: max_batched_tokens={self.max_batched_tokens} above "
                             f"{MAX_BATCHED_TOKENS}")
        if self.max_seqs < 1 or self.block_size < 1:
            raise InputError("engine: max_seqs and block_size must be >= 1")
        if self.max_batched_tokens < self.max_seqs:
            raise InputError(f"engine: max_batched_tokens={self.max_batched_tokens} < "
                             f"max_seqs={self.max_seqs} (every decoding sequence needs a token)")
        if self.kv_capacity is not None and self.kv_capacity < 1:
            raise InputError("engine: kv_capacity must be >= 1 token")
        if self.cuda_graph_tokens is not None and self.cuda_graph_tokens < 0:
            raise InputError("engine: cuda_graph_tokens must be >= 0 (0: no CUDA graphs)")


@dataclass(frozen=True)
class SwitchConfig:
    """When the ``switch`` mode moves between layouts: to EP at ``up`` requests in the
    system (running + waiting) or more, back to TP at ``down`` or fewer. ``up=None``: the
    decode batch at which EP steps become faster than TP steps (``crossover``, searched
    up to max_batched_tokens); ``down=None``: up/2."""

    cost_s: float = 0.3
    up: int | None = None
    down: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.cost_s < math.inf:
            raise InputError(f"switch: cost_s must be finite and >= 0, got {self.cost_s}")
        for name in ("up", "down"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"switch: {name} must be >= 1 request, got {value}")
        if self.up is not None and self.down is not None and self.down >= self.up:
            raise InputError("switch: down must be below up (hysteresis)")


class _Req:
    __slots__ = ("admit", "arrival", "ctx0", "decode_start", "finish", "first_token",
                 "gen0", "generated", "output", "preemptions", "prefilled", "prompt",
                 "rid", "target", "version")

    def __init__(self, rid: int, arrival: Arrival) -> None:
        self.rid = rid
        self.arrival = arrival.time
        self.prompt = arrival.prompt
        self.output = arrival.output
        self.target = arrival.prompt  # tokens to prefill (prompt + generated after preemption)
        self.prefilled = 0
        self.generated = 0
        self.first_token = -1.0
        self.finish = -1.0
        self.preemptions = 0
        self.admit = 0
        self.version = 0
        self.decode_start = self.ctx0 = self.gen0 = 0


@dataclass
class RunResult:
    """Everything one simulated run produced: per request, per step, per switch."""

    policy: str
    mode: str
    kv_capacity: int
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    first_token: np.ndarray  # -1: rejected (does not fit the KV cache)
    finish: np.ndarray
    preemptions: np.ndarray
    step_start: np.ndarray
    step_time: np.ndarray
    step_tokens: np.ndarray
    step_decode: np.ndarray
    step_moe: np.ndarray
    step_layout: np.ndarray  # index into LAYOUT_NAMES order ("tp"=0, "ep"=1)
    step_pairs: np.ndarray    # attention (query, context) pairs
    step_context: np.ndarray  # KV tokens read
    step_waiting: np.ndarray  # requests queued (not admitted) when the step was scheduled
    step_kv_used: np.ndarray  # KV-cache tokens in use during the step
    preempt_steps: np.ndarray  # step index of every preemption
    # (time, to layout, requests decoding, stall seconds) per layout switch
    switches: list[tuple[float, str, int, float]] = field(default_factory=list)
    thresholds: tuple[int | None, int | None] = (None, None)
    replicas: int = 1  # step logs are the replicas' one after the other
    stopped: bool = False  # stopped early: the SLOs could no longer be met


class _Engine:
    def __init__(self, env: simpy.Environment, coster: StepCosts, layouts: dict[str, Layout],
                 policy: str, config: EngineConfig, mode: str, switch: SwitchConfig,
                 thresholds: tuple[int | None, int | None], watch: _Watch | None) -> None:
        self.env = env
        self.watch = watch
        self.coster = coster
        self.layouts = layouts
        self.policy = policy
        self.cfg = config
        self.mode = mode
        self.switch = switch
        self.up, self.down = thresholds
        self.layout = layouts["ep" if mode == "ep" else "tp"]
        self.capacity = config.kv_capacity or min(lay.kv_capacity for lay in layouts.values())
        self.samples = coster.samples
        self.waiting: deque[_Req] = deque()
        self.prefilling: list[_Req] = []
        self.decoding: dict[int, _Req] = {}
        self.finish_at: dict[int, list[tuple[_Req, int]]] = {}
        self.kv_used = 0
        self.ctx_sum = 0
        self.admitted = 0
        self.step = 0
        self.last_start = -math.inf  # start of the step that ended last
        self.idle: simpy.Event | None = None
        # per step: start, duration, tokens, decoding requests, MoE part, layout (1: ep),
        # attention pairs, context tokens, requests waiting, KV tokens in use
        self.log: list[tuple[float, ...]] = []
        self.switches: list[tuple[float, str, int, float]] = []
        self.preempted_at: list[int] = []  # step index of every preemption

    # --- processes ----------------------------------------------------------------------

    def offer(self, req: _Req) -> None:
        """Queue an arriving request, or reject one that could never be scheduled (its
        first_token stays -1)."""
        cfg = self.cfg
        size = req.prompt + req.output
        if size + cfg.block_size > self.capacity or (
                not cfg.chunked_prefill and size > cfg.max_batched_tokens):
            if self.watch is not None:
                self.watch.rejected()
            return
        self.waiting.append(req)
        if self.idle is not None and not self.idle.triggered:
            self.idle.succeed()

    @property
    def outstanding(self) -> int:
        """Requests in this replica: waiting, prefilling and decoding."""
        return len(self.waiting) + len(self.prefilling) + len(self.decoding)

    def engine(self, env: simpy.Environment, bar: tqdm | None):
        while True:
            if not (self.decoding or self.prefilling or self.waiting):
                self.idle = env.event()
                yield self.idle
                self.idle = None
            if self.mode == "switch":
                target = self._target_layout()
                if target != self.layout.name:
                    self.switches.append((env.now, target, len(self.decoding), self.switch.cost_s))
                    yield env.timeout(self.switch.cost_s)
                    self.layout = self.layouts[target]
                    self.last_start = env.now  # the stall drained the planned batch
            n_dec, chunks, tokens, pairs, context = self._schedule(env.now)
            self.last_start = env.now
            phase = PREFILL if chunks else DECODE
            dt, moe = self.coster.step_seconds(self.layout, self.policy, tokens, pairs, context,
                                               phase, self.step % self.samples)
            self.log.append((env.now, dt, tokens, n_dec, moe, self.layout.name == "ep",
                             pairs, context, len(self.waiting), self.kv_used))
            yield env.timeout(dt)
            self._commit(n_dec, chunks, env.now)
            self.step += 1
            if bar is not None and self.step % 512 == 0:
                bar.update(int(env.now) - bar.n)

    # --- scheduling ---------------------------------------------------------------------

    def _target_layout(self) -> str:
        load = len(self.decoding) + len(self.prefilling) + len(self.waiting)
        if self.layout.name == "tp":
            return "ep" if self.up is not None and load >= self.up else "tp"
        return "tp" if self.down is not None and load <= self.down else "ep"

    def _preempt_latest(self) -> None:
        block = self.cfg.block_size
        last_dec = next(reversed(self.decoding.values())) if self.decoding else None
        if self.prefilling and (last_dec is None or self.prefilling[-1].admit > last_dec.admit):
            req = self.prefilling.pop()
            self.kv_used -= req.prefilled + block
        else:
            assert last_dec is not None
            req = last_dec
            del self.decoding[req.rid]
            done = self.step - req.decode_start
            ctx = req.ctx0 + done
            self.kv_used -= ctx + block
            self.ctx_sum -= ctx
            req.generated = req.gen0 + done
            req.target = req.prompt + req.generated
            req.version += 1  # invalidates its finish bucket entry
        req.prefilled = 0
        req.preemptions += 1
        self.preempted_at.append(self.step)
        self.waiting.appendleft(req)

    def _schedule(self, now: float) -> tuple[int, list[tuple[_Req, int]], int, float, float]:
        cfg, cap, block = self.cfg, self.capacity, self.cfg.block_size
        # the arrivals the scheduler saw when it planned this step (async: at the start
        # of the step before)
        seen = self.last_start if cfg.async_scheduling else now
        while True:
            while self.decoding and self.kv_used + len(self.decoding) > cap:
                self._preempt_latest()
            n_dec = len(self.decoding)
            budget = cfg.max_batched_tokens - n_dec
            chunks: list[tuple[_Req, int]] = []
            for req in self.prefilling:
                rest = req.target - req.prefilled
                c = min(rest, budget)
                if c <= 0 or self.kv_used + c > cap:
                    break
                if c < rest and not cfg.chunked_prefill:
                    continue
                chunks.append((req, c))
                self.kv_used += c
                budget -= c
            seqs = n_dec + len(self.prefilling)
            while self.waiting and budget > 0 and seqs < cfg.max_seqs:
                req = self.waiting[0]
                if req.arrival > seen:  # FIFO: every later request arrived later too
                    break
                c = min(req.target, budget)
                if (c < req.target and not cfg.chunked_prefill) or self.kv_used + c + block > cap:
                    break
                self.waiting.popleft()
                self.admitted += 1
                req.admit = self.admitted
                self.prefilling.append(req)
                chunks.append((req, c))
                self.kv_used += c + block
                budget -= c
                seqs += 1
            if n_dec or chunks:
                break
            if seen < now:  # nothing was planned: the scheduler waited, and admits at once
                seen = now
                continue
            self._preempt_latest()  # prefills hold the whole cache and none can grow
        self.kv_used += n_dec
        pairs = float(self.ctx_sum + n_dec)
        context = float(self.ctx_sum)
        tokens = n_dec
        for req, c in chunks:
            pairs += c * req.prefilled + c * (c + 1) / 2
            context += req.prefilled
            tokens += c
        return n_dec, chunks, tokens, pairs, context

    def _commit(self, n_dec: int, chunks: list[tuple[_Req, int]], now: float) -> None:
        block, s = self.cfg.block_size, self.step
        self.ctx_sum += n_dec
        for req, version in self.finish_at.pop(s, ()):
            if req.version != version:
                continue
            ctx = req.ctx0 + s - req.decode_start + 1
            self.kv_used -= ctx + block
            self.ctx_sum -= ctx
            del self.decoding[req.rid]
            req.generated = req.output
            req.finish = now
            if self.watch is not None:
                self.watch.finished(req)
        for req, c in chunks:
            req.prefilled += c
            if req.prefilled < req.target:
                continue
            self.prefilling.remove(req)
            req.generated += 1
            if req.first_token < 0:
                req.first_token = now
                if self.watch is not None:
                    self.watch.first_token(req)
            if req.generated >= req.output:
                self.kv_used -= req.target + block
                req.finish = now
                if self.watch is not None:
                    self.watch.finished(req)
                continue
            req.decode_start, req.ctx0, req.gen0 = s + 1, req.target, req.generated
            self.finish_at.setdefault(s + req.output - req.generated, []).append(
                (req, req.version))
            self.decoding[req.rid] = req
            self.ctx_sum += req.target


def crossover(coster: StepCosts, policy: str, limit: int, context: int = 1024) -> int | None:
    """Smallest decode batch (up to ``limit``) at which an EP step is faster than a TP
    step, or None. Used as the requests-in-system threshold of the ``switch`` mode: below
    it every request can decode in a TP batch that is faster; above ``max_seqs`` it is
    reached only while a queue builds up. ``context``: assumed mean context length.
    """
    tp, ep = coster.layouts["tp"], coster.layouts["ep"]
    batch = 1
    while batch <= limit:
        pairs = float(batch * (context + 1))
        t_tp = coster.step_seconds(tp, policy, batch, pairs, batch * context, DECODE, 0)[0]
        t_ep = coster.step_seconds(ep, policy, batch, pairs, batch * context, DECODE, 0)[0]
        if t_ep < t_tp:
            return batch
        batch = max(batch + 1, int(batch * 1.25))
    return None


ROUTERS = ("round-robin", "least-outstanding")


class _Watch:
    """Ends a run once every request is finished or rejected, or as soon as the run
    cannot meet its SLOs at quantile ``q``: more than ``(1 - q)`` of all requests have a
    TTFT (or a TPOT) above the objective or were rejected (``failed``). A capacity search
    needs only that verdict, and an overloaded run would otherwise simulate its whole
    growing queue."""

    def __init__(self, env: simpy.Environment, ttft_s: float, tpot_s: float, requests: int,
                 q: float = 0.99) -> None:
        self.env, self.ttft_s, self.tpot_s, self.requests = env, ttft_s, tpot_s, requests
        self.limit = int((1 - q) * requests)
        self.late_first = self.slow_decode = self.done = 0
        self.failed = False
        self.stop = env.event()

    def _check(self) -> None:
        self.failed = max(self.late_first, self.slow_decode) > self.limit
        if (self.failed or self.done == self.requests) and not self.stop.triggered:
            self.stop.succeed()

    def rejected(self) -> None:
        self.late_first += 1
        self.done += 1
        self._check()

    def first_token(self, req: _Req) -> None:
        if self.env.now - req.arrival > self.ttft_s:
            self.late_first += 1
            self._check()

    def finished(self, req: _Req) -> None:
        self.done += 1
        if req.output > 1 and (self.env.now - req.first_token) / (req.output - 1) > self.tpot_s:
            self.slow_decode += 1
        self._check()


def _route(env: simpy.Environment, reqs: Sequence[_Req], engines: Sequence[_Engine],
           router: str):
    """Send each request, at its arrival, to a replica: in turn (``round-robin``) or
    to the one with the fewest requests in it (``least-outstanding``, ties to the
    lowest index)."""
    for i, req in enumerate(reqs):
        if req.arrival > env.now:
            yield env.timeout(req.arrival - env.now)
        if router == "round-robin":
            target = engines[i % len(engines)]
        else:
            target = min(engines, key=lambda e: e.outstanding)
        target.offer(req)


def simulate(arrivals: Sequence[Arrival], coster: StepCosts, policy: str,
             config: EngineConfig = EngineConfig(), mode: str = "tp",
             switch: SwitchConfig = SwitchConfig(), progress: bool = False,
             replicas: int = 1, router: str = "round-robin",
             stop_slo: tuple[float, float] | None = None) -> RunResult:
    """Serve ``arrivals`` to completion under dispatch ``policy`` and layout ``mode`` on
    ``replicas`` identical replicas behind ``router``. ``stop_slo=(ttft_s, tpot_s)``
    stops the run once the p99 of either cannot be met (``RunResult.stopped``); the
    requests not finished by then keep first_token/finish -1."""
    if mode not in MODES:
        raise InputError(f"mode {mode!r} not in {MODES}")
    if router not in ROUTERS:
        raise InputError(f"router {router!r} not in {ROUTERS}")
    if replicas < 1:
        raise InputError(f"replicas must be >= 1, got {replicas}")
    needed = {"tp", "ep"} if mode == "switch" else {mode}
    missing = needed - set(coster.layouts)
    if missing:
        raise InputError(f"mode {mode!r} needs layout(s) {sorted(missing)}")
    thresholds: tuple[int | None, int | None] = (None, None)
    if mode == "switch":
        up = (switch.up if switch.up is not None
              else crossover(coster, policy, config.max_batched_tokens))
        down = switch.down if switch.down is not None else (None if up is None else up // 2)
        thresholds = (up, down)
    layouts = {name: coster.layouts[name] for name in needed}
    reqs = [_Req(i, a) for i, a in enumerate(sorted(arrivals, key=lambda a: a.time))]
    env = simpy.Environment()
    watch = None if stop_slo is None else _Watch(env, *stop_slo, len(reqs))
    engines = [_Engine(env, coster, layouts, policy, config, mode, switch, thresholds, watch)
               for _ in range(replicas)]
    bar = tqdm(total=int(reqs[-1].arrival) + 1 if reqs else 0, unit="sim-s",
               desc=f"{policy}/{mode}", leave=False) if progress else None
    env.process(_route(env, reqs, engines, router))
    for i, eng in enumerate(engines):
        env.process(eng.engine(env, bar if i == 0 else None))
    env.run(until=None if watch is None or not reqs else watch.stop)
    if bar is not None:
        bar.close()
    stopped = watch is not None and watch.failed
    if stopped:  # unfinished requests are not results
        for req in reqs:
            if req.finish < 0:
                req.first_token = -1.0
    log = np.array([row for eng in engines for row in eng.log],
                   dtype=np.float64).reshape(-1, 10).T
    offsets = np.cumsum([0] + [len(eng.log) for eng in engines[:-1]])
    eng = engines[0]
    return RunResult(
        policy=policy, mode=mode, kv_capacity=eng.capacity,
        arrival=np.array([r.arrival for r in reqs]),
        prompt=np.array([r.prompt for r in reqs], dtype=np.int64),
        output=np.array([r.output for r in reqs], dtype=np.int64),
        first_token=np.array([r.first_token for r in reqs]),
        finish=np.array([r.finish for r in reqs]),
        preemptions=np.array([r.preemptions for r in reqs], dtype=np.int64),
        step_start=log[0], step_time=log[1], step_tokens=log[2].astype(np.int64),
        step_decode=log[3].astype(np.int64), step_moe=log[4],
        step_pairs=log[6], step_context=log[7], step_waiting=log[8].astype(np.int64),
        step_kv_used=log[9].astype(np.int64),
        preempt_steps=np.array([o + s for o, e in zip(offsets, engines) for s in e.preempted_at],
                               dtype=np.int64),
        step_layout=log[5].astype(np.int64),
        switches=[sw for e in engines for sw in e.switches], thresholds=thresholds,
        replicas=replicas, stopped=stopped,
    )
