"""Routing source for the simulator: trace steps re-batched to the simulated token count.

A simulated step with ``T`` tokens rarely has the token count of any recorded step, so
the pool *re-batches*: it takes a window of consecutive recorded steps of the same phase
class (prefill/mixed vs decode), starting at one of ``samples`` evenly spaced
positions, just long enough to hold ``>= T`` tokens. Then per MoE layer:

- ``T`` equal to the window's tokens: the recorded histogram as is (exact replay);
- top-k ids recorded and ``T`` below the step's tokens: ``T`` of its tokens drawn
  without replacement, their expert picks counted (an exact sub-batch);
- ``T <= STREAM_TOKENS``: the first ``T`` tokens of a synthetic token stream of the
  sample (below), their expert picks counted;
- otherwise: each expert's inclusion frequency ``pi_e = counts_e / tokens`` in the
  window, and ``h_e ~ Binomial(T, pi_e)`` independently (the exact marginal of ``T``
  independent tokens), then the total is corrected to ``T * top_k`` by adding rows in
  proportion to ``pi`` (never above ``T`` per expert) or removing rows at random.

The token stream of a sample: ``STREAM_TOKENS`` independent tokens, as many per
recorded step of the window at the sample's start as that step has, each picking
``top_k`` distinct experts per layer by systematic sampling (Madow) over a random
per-layer order of the experts with that step's inclusion frequencies ``pi``. Each
expert's count over the first ``T <=`` (first step's tokens) is then exactly
``Binomial(T, pi_e)``, every layer sums to ``T * top_k`` without correction, and a small
step costs one ``bincount`` instead of ``L * E`` binomial draws (most cache misses of a
long replay are such steps).

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
STREAM_TOKENS = 256  # small steps come from a token stream per sample (module docstring)


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
        self.where = where  # the trace file, for messages about its header
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
        self._streams: dict[tuple[int, int], np.ndarray] = {}

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
        ids = group.ids[start]
        if tokens < group.tokens[start] and ids is not None:
            rng = np.random.default_rng([self.seed, tokens, phase_class, sample])
            return _sub_batch(ids, tokens, self.header.num_experts, rng)
        window, window_tokens = self._window(group, start, tokens)
        if window_tokens == tokens:
            return group.counts[window].sum(axis=0, dtype=np.int64)
        if tokens <= STREAM_TOKENS:
            stream = self._streams.get((phase_class, sample))
            if stream is None:
                stream = self._streams[(phase_class, sample)] = self._stream(
                    group, start, phase_class, sample)
            return _count(stream[:, :tokens], self.header.num_experts)
        rng = np.random.default_rng([self.seed, tokens, phase_class, sample])
        counts = group.counts[window].sum(axis=0, dtype=np.int64)
        return rebatch(counts, window_tokens, tokens, self.top_k, rng)

    @staticmethod
    def _window(group: _Group, start: int, tokens: int) -> tuple[np.ndarray, int]:
        """Consecutive recorded steps from ``start`` (wrapping) holding >= ``tokens``."""
        n = len(group.tokens)
        cum = np.cumsum(np.roll(group.tokens, -start))
        width = min(int(np.searchsorted(cum, tokens)) + 1, n)
        window = (start + np.arange(width)) % n
        return window, int(cum[width - 1])

    def _stream(self, group: _Group, start: int, phase_class: int,
                sample: int) -> np.ndarray:
        """``[moe_layers, STREAM_TOKENS, top_k]`` expert ids of the sample's token stream."""
        window, _ = self._window(group, start, STREAM_TOKENS)
        layers, experts = group.counts.shape[1:]
        rng = np.random.default_rng([self.seed, phase_class, sample, STREAM_TOKENS])
        order = rng.permuted(np.tile(np.arange(experts), (layers, 1)), axis=1)
        parts, have = [], 0
        while have < STREAM_TOKENS:  # goes round the window only when the group is small
            step = window[len(parts) % len(window)]
            n = min(int(group.tokens[step]), STREAM_TOKENS - have)
            parts.append(_systematic(group.counts[step] / group.tokens[step], order, n,
                                     self.top_k, rng))
            have += n
        return np.concatenate(parts, axis=1)

def _systematic(pi: np.ndarray, order: np.ndarray, tokens: int, top_k: int,
                rng: np.random.Generator) -> np.ndarray:
    """Expert ids [L, tokens, top_k] of independent tokens, each picking ``top_k``
    distinct experts per layer, expert e with probability ``pi[l, e]`` (rows sum to
    top_k): systematic sampling, points u, u+s, ..., u+(k-1)s on the cumulative ``pi``
    in the layer's ``order`` (s = the row's sum / k, 1 up to rounding)."""
    layers, experts = pi.shape
    cum = np.cumsum(np.take_along_axis(np.minimum(pi, 1.0), order, axis=1), axis=1)
    spacing = cum[:, -1:, None] / top_k
    points = (rng.random((layers, tokens, 1)) + np.arange(top_k)) * spacing
    ids = np.empty((layers, tokens, top_k), dtype=np.int64)
    for layer in range(layers):
        pos = np.searchsorted(cum[layer], points[layer], side="right")
        ids[layer] = order[layer, np.minimum(pos, experts - 1)]
    return ids


def _count(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Histograms [L, E] of expert ids [L, tokens, top_k]."""
    layers = ids.shape[0]
    flat = ids + (np.arange(layers) * num_experts)[:, None, None]
    return np.bincount(flat.ravel(), minlength=layers * num_experts).reshape(layers, -1)


def _sub_batch(ids: np.ndarray, tokens: int, num_experts: int,
               rng: np.random.Generator) -> np.ndarray:
    """Histograms of ``tokens`` recorded tokens drawn without replacement."""
    rows = rng.choice(ids.shape[1], size=tokens, replace=False)
    return _count(ids[:, rows, :], num_experts)


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
