"""Routing source for the simulator: trace steps re-batched to the simulated token count.

A simulated step with ``T`` tokens rarely has the token count of any recorded step, so
the pool *re-batches*: it takes a window of consecutive recorded steps of the same phase
class (prefill/mixed vs decode), starting at one of ``samples`` evenly spaced
positions, just long enough to hold ``>= T`` tokens. Then per MoE layer:

- ``T`` equal to the window's tokens: the recorded histogram as is (exact replay);
- top-k ids recorded and ``T`` below the step's tokens: ``T`` of its tokens drawn
  without replacement, their expert picks counted (an exact sub-batch);
- otherwise: each expert's inclusion frequency ``pi_e = counts_e / tokens`` in the
  window, and ``h_e ~ Binomial(T, pi_e)`` independently (the exact marginal of ``T``
  independent tokens), then the total is corrected to ``T * top_k`` by adding rows in
  proportion to ``pi`` (never above ``T`` per expert) or removing rows at random.

Histograms are a pure function of ``(seed, T, phase class, sample)``, so every policy
and parallel mode of a run sees the same routing for the same step (common random
numbers), and cost caches keyed that way stay valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ramp.errors import InputError
from ramp.trace import TraceHeader, TraceStep

PREFILL, DECODE = 0, 1  # phase classes
MAX_SAMPLES = 1024  # routing samples per token count


@dataclass
class _Group:
    counts: np.ndarray          # [N, L, E] int32
    tokens: np.ndarray          # [N]
    ids: list[np.ndarray | None]


class RoutingPool:
    """Recorded (or generated) steps held in memory, re-batched on demand. Only the first
    ``max_steps`` steps of a trace are read: routing statistics, not the trace's length,
    are what the simulator needs, and memory stays bounded (steps x layers x experts)."""

    def __init__(self, header: TraceHeader, steps: Iterable[TraceStep], seed: int = 0,
                 samples: int = 16, max_steps: int = 1024, where: str = "routing") -> None:
        if not 1 <= samples <= MAX_SAMPLES:
            raise InputError(f"routing samples must be in 1..{MAX_SAMPLES}, got {samples}")
        self.header = header
        self.top_k = header.top_k
        self.seed = seed
        by_class: dict[int, list[TraceStep]] = {PREFILL: [], DECODE: []}
        total = 0
        for step in steps:
            by_class[DECODE if step.phase == "decode" else PREFILL].append(step)
            total += 1
            if total >= max_steps:
                break
        if total == 0:
            raise InputError(f"{where}: the routing trace has no steps")
        everything = by_class[PREFILL] + by_class[DECODE]
        self._groups = {
            cls: self._group(members or everything) for cls, members in by_class.items()
        }
        self.samples = samples
        self.steps = total

    @staticmethod
    def _group(steps: list[TraceStep]) -> _Group:
        return _Group(np.stack([s.hists for s in steps]).astype(np.int32),
                      np.array([s.tokens for s in steps], dtype=np.int64),
                      [s.topk_ids for s in steps])

    def mean_load(self) -> np.ndarray:
        """``[moe_layers, num_experts]`` rows per token of every held step: the load an
        expert placement is balanced on."""
        groups = self._groups.values()
        counts = sum(g.counts.sum(axis=0, dtype=np.int64) for g in groups)
        return counts / sum(int(g.tokens.sum()) for g in groups)

    def hists(self, tokens: int, phase_class: int, sample: int) -> np.ndarray:
        """``[moe_layers, num_experts]`` int64 histograms for a step of ``tokens`` tokens."""
        group = self._groups[phase_class]
        n = len(group.tokens)
        sample %= min(self.samples, n)
        start = sample * n // min(self.samples, n)
        rng = np.random.default_rng([self.seed, tokens, phase_class, sample])
        ids = group.ids[start]
        if tokens < group.tokens[start] and ids is not None:
            return _sub_batch(ids, tokens, self.header.num_experts, rng)
        cum = np.cumsum(np.roll(group.tokens, -start))
        width = min(int(np.searchsorted(cum, tokens)) + 1, n)
        window = (start + np.arange(width)) % n
        window_tokens = int(group.tokens[window].sum())
        counts = group.counts[window].sum(axis=0, dtype=np.int64)
        if window_tokens == tokens:
            return counts
        return rebatch(counts, window_tokens, tokens, self.top_k, rng)


def _sub_batch(ids: np.ndarray, tokens: int, num_experts: int,
               rng: np.random.Generator) -> np.ndarray:
    """Histograms of ``tokens`` recorded tokens drawn without replacement."""
    layers = ids.shape[0]
    rows = rng.choice(ids.shape[1], size=tokens, replace=False)
    flat = ids[:, rows, :] + (np.arange(layers) * num_experts)[:, None, None]
    return np.bincount(flat.ravel(), minlength=layers * num_experts).reshape(layers, -1)


def rebatch(counts: np.ndarray, source_tokens: int, tokens: int, top_k: int,
            rng: np.random.Generator) -> np.ndarray:
    """Histograms [L, E] for ``tokens`` tokens with the per-expert inclusion frequencies
    of ``counts`` [L, E] over ``source_tokens`` tokens (see the module docstring)."""
    pi = np.minimum(counts / source_tokens, 1.0)
    hists = rng.binomial(tokens, pi)
    short = tokens * top_k - hists.sum(axis=1)
    while short.any():  # all layers at once; a second round only after clipping
        room = tokens - hists
        add = np.where(room > 0, pi, 0.0)
        add[add.sum(axis=1) <= 0] = (room > 0)[add.sum(axis=1) <= 0]  # popular ones full
        weight = np.where(short[:, None] > 0, add, hists)  # remove in proportion to load
        weight = weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
        delta = rng.multinomial(np.abs(short), weight)
        delta = np.where(short[:, None] > 0, np.minimum(delta, room), -np.minimum(delta, hists))
        hists += delta
        short -= delta.sum(axis=1)
    return hists
