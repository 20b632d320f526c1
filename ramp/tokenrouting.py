"""Token-level routing (each token's top-k expert ids), re-batched into steps, and the
statistics that tell real routing from synthetic.

A recording of a real model's router (``ramp.traces.real`` reads ESFT's files and their
``.npz`` repack) is a stream of tokens grouped into sequences. An engine step sees a
*batch* of them, and how the batch is drawn decides how skewed its histogram is:

- ``consecutive``: T consecutive tokens of the stream (prefill-like: one long prompt,
  or chunked prefill of a few), so tokens of one passage route alike;
- ``shuffled``: T tokens drawn at random across all sequences (decode-like: each running
  sequence contributes its next token), which averages passages out.

``routing_statistics`` measures what the issue-14 comparison needs per batch size: active
experts, max/mean expert load for both batchings (their ratio is the burstiness), and the
hot-set stability (Spearman correlation of consecutive 512-token batches). Every
statistic is the median over MoE layers of the mean over batches, as the data README
reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ramp.errors import InputError

BATCHINGS = ("consecutive", "shuffled")
STAT_TOKENS = (8, 64, 512, 4096)
STABILITY_TOKENS = 512


@dataclass(frozen=True)
class TokenRouting:
    """Every token's experts: ``topk_ids[l, t]`` are token ``t``'s ``top_k`` distinct
    experts in MoE layer ``l``; tokens are in stream order, ``seq_lens`` split them into
    sequences (they sum to the token count)."""

    topk_ids: np.ndarray   # [layers, tokens, top_k] int
    seq_lens: np.ndarray   # [sequences] int64
    num_experts: int

    def __post_init__(self) -> None:
        ids = self.topk_ids
        if ids.ndim != 3 or ids.shape[1] == 0:
            raise InputError(f"topk_ids must be [layers, tokens, top_k], got shape "
                             f"{list(ids.shape)}")
        if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= self.num_experts:
            raise InputError(f"topk_ids must be expert ids in 0..{self.num_experts - 1}")
        repeated = np.argwhere(np.diff(np.sort(ids, axis=2), axis=2) == 0)
        if repeated.size:
            layer, token = (int(v) for v in repeated[0][:2])
            raise InputError(f"topk_ids: token {token} of layer {layer} names an expert "
                             "twice (a top-k has distinct experts)")
        if int(np.sum(self.seq_lens)) != ids.shape[1] or np.any(self.seq_lens <= 0):
            raise InputError(f"seq_lens must be positive and sum to the {ids.shape[1]} "
                             f"tokens, they sum to {int(np.sum(self.seq_lens))}")

    @property
    def layers(self) -> int:
        return self.topk_ids.shape[0]

    @property
    def tokens(self) -> int:
        return self.topk_ids.shape[1]

    @property
    def top_k(self) -> int:
        return self.topk_ids.shape[2]

    def order(self, batching: str, seed: int = 0) -> np.ndarray:
        """Token order of a batching: the stream itself, or a seeded permutation."""
        if batching == "consecutive":
            return np.arange(self.tokens)
        if batching == "shuffled":
            return np.random.default_rng(seed).permutation(self.tokens)
        raise InputError(f"batching {batching!r} not in {BATCHINGS}")

    def batches(self, tokens: int, batching: str = "consecutive", seed: int = 0,
                with_ids: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Histograms ``[B, layers, E]`` of the ``B = tokens_total // tokens`` whole
        batches of ``tokens`` tokens (the remainder is dropped), and with ``with_ids``
        the batches' token ids ``[B, layers, tokens, top_k]``."""
        if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 1:
            raise InputError(f"tokens per step must be an int >= 1, got {tokens!r}")
        count = self.tokens // tokens
        if count == 0:
            raise InputError(f"{tokens} tokens per step but the recording has only "
                             f"{self.tokens}")
        order = self.order(batching, seed)[:count * tokens]
        ids = self.topk_ids[:, order].reshape(self.layers, count, tokens, self.top_k)
        ids = ids.transpose(1, 0, 2, 3)
        return count_experts(ids, self.num_experts), (ids if with_ids else None)


def count_experts(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Histograms ``[..., E]`` of expert ids ``[..., tokens, top_k]`` (one bincount)."""
    lead = ids.shape[:-2]
    groups = int(np.prod(lead, dtype=np.int64))
    flat = ids.reshape(groups, -1).astype(np.int64) + (np.arange(groups) * num_experts)[:, None]
    return np.bincount(flat.ravel(), minlength=groups * num_experts).reshape(*lead, num_experts)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of matching rows of ``a`` and ``b`` [N, E] (average
    ranks for ties); NaN where a row is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / den, np.nan)


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=1).astype(np.float64)


def routing_statistics(routing: TokenRouting, tokens: Sequence[int] = STAT_TOKENS,
                       seed: int = 0) -> dict[str, dict[int, float] | float]:
    """Per batch size T: ``active`` (experts with a row), ``maxmean_consecutive`` and
    ``maxmean_shuffled`` (hottest expert over the mean load), and ``stability`` (Spearman
    of consecutive 512-token batches, when the recording holds two). Medians over layers
    of means over batches; sizes larger than the recording are left out."""
    out: dict[str, dict[int, float] | float] = {
        "active": {}, "maxmean_consecutive": {}, "maxmean_shuffled": {}}
    mean_load = {}
    for t in tokens:
        if t > routing.tokens:
            continue
        mean_load[t] = t * routing.top_k / routing.num_experts
        for batching in BATCHINGS:
            hists, _ = routing.batches(t, batching, seed)
            ratio = hists.max(axis=2) / mean_load[t]       # [B, L]
            out[f"maxmean_{batching}"][t] = float(np.median(ratio.mean(axis=0)))
            if batching == "consecutive":
                active = np.count_nonzero(hists, axis=2).mean(axis=0)
                out["active"][t] = float(np.median(active))
    if routing.tokens >= 2 * STABILITY_TOKENS:
        hists, _ = routing.batches(STABILITY_TOKENS, "consecutive", seed)
        pairs = [np.nanmean(spearman_rows(hists[:-1, layer], hists[1:, layer]))
                 for layer in range(routing.layers)]
        out["stability"] = float(np.median(pairs))
    return out


def mean_statistics(stats: Sequence[dict]) -> dict[str, dict[int, float] | float]:
    """Average of several recordings' statistics (e.g. one per task), key by key, over
    the recordings that have each entry."""
    out: dict[str, dict[int, float] | float] = {}
    for key in {k for s in stats for k in s}:
        values = [s[key] for s in stats if key in s]
        if isinstance(values[0], dict):
            sizes = sorted({t for v in values for t in v})
            out[key] = {t: float(np.mean([v[t] for v in values if t in v])) for t in sizes}
        else:
            out[key] = float(np.mean(values))
    return out
