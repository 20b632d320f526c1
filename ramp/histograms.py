"""Seeded synthetic expert histograms for profiling, tests and the region analysis.

Every sampler routes each token to ``top_k`` *distinct* experts, as a real router does,
so rows sum to ``tokens * top_k`` and no expert receives more than ``tokens`` rows. Skew
comes from an expert popularity vector: a token's experts are drawn without replacement
with probability proportional to popularity (Gumbel-top-k, vectorised over tokens).

Kinds and their parameters:
    uniform    every expert equally popular
    zipf       s (default 1.0): popularity of the expert of rank r is 1 / r**s; ranks are
               shuffled per sample so no expert id is special
    hot        hot_fraction (default 0.5), hot_experts (default 1): each hot expert is
               picked by exactly round(hot_fraction * tokens) tokens, the remaining picks
               are uniform over the other experts
    dirichlet  alpha (default 1.0): popularity ~ Dirichlet(alpha, ..., alpha) per sample
    realistic  no parameters: ``tokens`` consecutive tokens of the generator fitted to real
               routing (``ramp.realistic.DEFAULT``; passages route alike, skew persists at
               large T); each sample is another layer
    collapsed  no parameters: every token routed to experts ``0 .. top_k - 1``, what an
               engine's router does with dummy weights (all logits nearly equal, so top-k
               picks the first ids: the trace recorded inside vLLM); the seed is unused
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.problem import validate_histogram

KINDS = ("uniform", "zipf", "hot", "dirichlet", "realistic", "collapsed")
_PARAMS: dict[str, dict[str, float]] = {
    "uniform": {},
    "realistic": {},
    "collapsed": {},
    "zipf": {"s": 1.0},
    "hot": {"hot_fraction": 0.5, "hot_experts": 1},
    "dirichlet": {"alpha": 1.0},
}
_CHUNK_ELEMENTS = 1 << 22  # tokens x experts keys generated at once (32 MiB of float64)
# Tokens of one sampled histogram: far above any engine's batch (vLLM's default is 8192),
# low enough that the 'hot' sampler's tokens x experts keys fit in memory.
MAX_TOKENS = 1 << 17
MAX_SAMPLES = 1 << 16
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,12}", re.ASCII)


def _positive_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise InputError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int or numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def zipf_popularity(num_experts: int, s: float) -> np.ndarray:
    """Normalised Zipf popularity ``1/rank**s`` in rank order (s=0 is uniform)."""
    ranks = np.arange(1, num_experts + 1, dtype=np.float64)
    p = ranks ** -float(s)
    return p / p.sum()


def inclusion_probabilities(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """Approximate probability that a token's top_k picks include each expert.

    For top-k sampling without replacement by popularity ``p`` the exact inclusion
    probabilities have no closed form; the exponential-race approximation
    ``pi_e = 1 - exp(-c * p_e)``, with ``c`` solved so that ``sum(pi) = top_k``, is exact
    for uniform popularity and within a few percent for Zipf skews. The region analysis
    uses it to get expected histograms without sampling tokens.
    """
    p = np.asarray(popularity, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
        raise InputError("popularity must be a non-empty vector of non-negative finite weights")
    p = p / p.sum()
    nonzero = p > 0
    nnz = int(nonzero.sum())
    if top_k >= nnz:  # every popular expert is always picked; the rest share what is left
        rest = p.size - nnz
        return np.where(nonzero, 1.0, (top_k - nnz) / rest if rest else 0.0)
    lo, hi = 0.0, 1.0
    while np.sum(-np.expm1(-hi * p)) < top_k:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.sum(-np.expm1(-mid * p)) < top_k:
            lo = mid
        else:
            hi = mid
    return -np.expm1(-0.5 * (lo + hi) * p)


def _topk_counts(popularity: np.ndarray, tokens: int, top_k: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Counts of tokens x distinct top_k picks drawn without replacement by popularity.

    Gumbel-top-k in its exponential-race form: each (token, expert) draws an Exp(1)
    arrival scaled by 1/popularity; the k earliest experts are the token's picks.
    """
    num_experts = popularity.size
    counts = np.zeros(num_experts, dtype=np.int64)
    # Floor zero popularity (Dirichlet underflow) so such experts lose every race but still
    # break ties at random when fewer than top_k experts are popular.
    inv = 1.0 / np.maximum(popularity, 1e-300)
    chunk = max(1, _CHUNK_ELEMENTS // num_experts)
    for start in range(0, tokens, chunk):
        rows = min(chunk, tokens - start)
        if top_k == num_experts:
            counts += rows
            continue
        arrival = rng.standard_exponential((rows, num_experts)) * inv
        picks = np.argpartition(arrival, top_k - 1, axis=1)[:, :top_k]
        counts += np.bincount(picks.ravel(), minlength=num_experts)
    return counts


def sample_topk(popularity: Any, tokens: int, top_k: int, n: int = 1,
                seed: int | np.random.Generator = 0) -> np.ndarray:
    """``n`` histograms of tokens picking top_k distinct experts by a fixed ``popularity``.

    The building block of the popularity-based kinds, exposed for callers that already
    have a popularity vector (the region analysis samples expected Zipf histograms with
    it). Returns int64 ``[n, len(popularity)]``.
    """
    p = np.asarray(popularity, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.isfinite(p).all() or np.any(p < 0) or p.sum() <= 0:
        raise InputError("popularity must be a non-empty vector of non-negative finite weights")
    tokens = _positive_int("tokens", tokens, minimum=0, maximum=MAX_TOKENS)
    top_k = _positive_int("top_k", top_k)
    n = _positive_int("n", n, maximum=MAX_SAMPLES)
    if top_k > p.size:
        raise InputError(f"top_k={top_k} exceeds num_experts={p.size}")
    rng = _rng(seed)
    return np.stack([_topk_counts(p / p.sum(), tokens, top_k, rng) for _ in range(n)])


def _hot_counts(num_experts: int, tokens: int, top_k: int, fraction: float, n_hot: int,
                rng: np.random.Generator) -> np.ndarray:
    """One 'hot' sample: hot experts get a fixed share of tokens, the rest is uniform."""
    counts = np.zeros(num_experts, dtype=np.int64)
    perm = rng.permutation(num_experts)
    hot, cold = perm[:n_hot], perm[n_hot:]
    picked = round(fraction * tokens)
    member = np.zeros((tokens, n_hot), dtype=bool)
    if picked:
        for j in range(n_hot):  # exactly `picked` tokens choose hot expert j
            member[rng.choice(tokens, size=picked, replace=False), j] = True
    if n_hot > top_k:  # a token can hold at most top_k picks: keep a random top_k of them
        keys = np.where(member, rng.random(member.shape), np.inf)
        keep = np.argsort(keys, axis=1)[:, :top_k]
        trimmed = np.zeros_like(member)
        np.put_along_axis(trimmed, keep, True, axis=1)
        member &= trimmed
    counts[hot] = member.sum(axis=0)
    remaining = top_k - member.sum(axis=1)  # cold picks still owed per token
    if remaining.any():
        width = int(remaining.max())
        keys = rng.random((tokens, cold.size))
        part = np.argpartition(keys, width - 1, axis=1)[:, :width]
        order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1)
        chosen = np.take_along_axis(part, order, axis=1)
        mask = np.arange(chosen.shape[1])[None, :] < remaining[:, None]
        counts[cold] += np.bincount(chosen[mask], minlength=cold.size)
    return counts


def _check_params(kind: str, params: dict[str, Any], num_experts: int, top_k: int) -> dict:
    if kind not in KINDS:
        raise InputError(f"histogram kind {kind!r} not in {KINDS}")
    unknown = set(params) - set(_PARAMS[kind])
    if unknown:
        raise InputError(
            f"histogram kind {kind!r}: unknown parameter(s) {sorted(unknown)};"
            f" allowed: {sorted(_PARAMS[kind]) or 'none'}"
        )
    merged = {**_PARAMS[kind], **params}
    for name, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"histogram parameter {name}={value!r} is not a number")
        if not math.isfinite(value):
            raise InputError(f"histogram parameter {name}={value!r} is not finite")
    if kind == "zipf" and merged["s"] < 0:
        raise InputError(f"histogram parameter s={merged['s']} must be >= 0")
    if kind == "dirichlet" and merged["alpha"] <= 0:
        raise InputError(f"histogram parameter alpha={merged['alpha']} must be > 0")
    if kind == "hot":
        if not 0 <= merged["hot_fraction"] <= 1:
            raise InputError(f"histogram parameter hot_fraction={merged['hot_fraction']} not in [0, 1]")
        n_hot = merged["hot_experts"]
        if n_hot != int(n_hot) or not 1 <= n_hot <= num_experts - top_k:
            raise InputError(
                f"histogram parameter hot_experts={n_hot} must be an int in"
                f" 1..num_experts-top_k={num_experts - top_k}"
            )
        merged["hot_experts"] = int(n_hot)
    return merged


def sample_histograms(
    kind: str,
    num_experts: int,
    tokens: int,
    top_k: int,
    n: int = 1,
    seed: int | np.random.Generator = 0,
    **params: float,
) -> np.ndarray:
    """``n`` seeded histograms of ``tokens`` tokens routed to ``top_k`` distinct experts.

    Returns int64 ``[n, num_experts]``; every row sums to ``tokens * top_k`` and no count
    exceeds ``tokens``. The same seed gives the same histograms on every machine.
    16384 tokens x 256 experts takes well under a second per sample; ``tokens`` is at
    most MAX_TOKENS.
    """
    num_experts = _positive_int("num_experts", num_experts)
    tokens = _positive_int("tokens", tokens, minimum=0, maximum=MAX_TOKENS)
    top_k = _positive_int("top_k", top_k)
    n = _positive_int("n", n, maximum=MAX_SAMPLES)
    if top_k > num_experts:
        raise InputError(f"top_k={top_k} exceeds num_experts={num_experts}")
    rng = _rng(seed)
    merged = _check_params(kind, params, num_experts, top_k)
    out = np.zeros((n, num_experts), dtype=np.int64)
    if kind == "realistic":
        from ramp.realistic import default_routing

        if tokens:
            out[:] = default_routing().histograms(num_experts, top_k, tokens, n, rng)
        return out
    for i in range(n):
        if kind == "collapsed":
            out[i, :top_k] = tokens
            continue
        if kind == "hot":
            out[i] = _hot_counts(num_experts, tokens, top_k, float(merged["hot_fraction"]),
                                 merged["hot_experts"], rng)
            continue
        if kind == "uniform":
            popularity = np.full(num_experts, 1.0 / num_experts)
        elif kind == "zipf":
            popularity = rng.permutation(zipf_popularity(num_experts, merged["s"]))
        else:
            popularity = rng.dirichlet(np.full(num_experts, float(merged["alpha"])))
        out[i] = _topk_counts(popularity, tokens, top_k, rng)
    return out


def skew_stats(hist: Any) -> dict[str, float]:
    """Summary of one histogram's skew, as a router dashboard would show it.

    ``active_experts``: experts with >= 1 row; ``max_mean_ratio``: hottest expert over the
    mean over all experts (1 = balanced); ``cv``: coefficient of variation over all
    experts; ``entropy``: Shannon entropy of the load normalised by log(E) (1 = uniform,
    0 = one expert takes everything).
    """
    arr = np.asarray(hist)
    if arr.ndim != 1:
        raise InputError(f"histogram: expected a 1-D vector of counts, got shape {arr.shape}")
    h = validate_histogram(arr, arr.shape[0])
    total = int(h.sum())
    num_experts = h.size
    if total == 0:
        return {"active_experts": 0.0, "max_mean_ratio": 0.0, "cv": 0.0, "entropy": 0.0}
    mean = total / num_experts
    p = h[h > 0] / total
    entropy = float(-(p * np.log(p)).sum() / math.log(num_experts)) if num_experts > 1 else 1.0
    return {
        "active_experts": float((h > 0).sum()),
        "max_mean_ratio": float(h.max() / mean),
        "cv": float(h.std() / mean),
        "entropy": entropy,
    }


def _parse_number(part: str, text: str) -> float:
    # ASCII only: float() also reads other scripts' digits ('٣'), which a spec never means
    if not _NUMBER.fullmatch(text):
        raise InputError(f"histogram spec: {part!r} has a non-numeric value") from None
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"histogram spec: {part!r} is not finite")
    return value


def parse_histogram_spec(spec: str, num_experts: int, top_k: int,
                         local: bool = False) -> np.ndarray:
    """Parse a CLI histogram spec into one int64 histogram of length ``num_experts``.

    Forms: ``KIND:tokens=T[,seed=S][,param=value...]`` (e.g. ``zipf:s=1.2,tokens=64,seed=3``,
    ``uniform:tokens=1``, ``hot:hot_fraction=0.9,tokens=256``) or an explicit count list
    ``3,0,5,...`` whose sum must be a multiple of top_k with no count above sum/top_k;
    with ``local`` (one EP rank's view, its tokens' other picks on other ranks) any
    counts.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"histogram spec: expected a non-empty string, got {spec!r}")
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep and kind not in KINDS:
        return _parse_counts(text, num_experts, top_k, local)
    if kind not in KINDS:
        raise InputError(f"histogram spec: unknown kind {kind!r} (use one of {KINDS} or a count list)")
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise InputError(f"histogram spec: {part!r} is not key=value")
        if key in values:
            raise InputError(f"histogram spec: {key!r} given twice")
        values[key] = _parse_number(part, value.strip())
    if "tokens" not in values:
        raise InputError(f"histogram spec {spec!r}: missing tokens=T")
    ints: dict[str, int] = {}
    for key in ("tokens", "seed"):
        if key in values:
            limit = MAX_TOKENS if key == "tokens" else 2 ** 63 - 1
            if values[key] != int(values[key]) or not 0 <= values[key] <= limit:
                raise InputError(f"histogram spec: {key}={values[key]:g} must be a whole number "
                                 f"in 0..{limit}")
            ints[key] = int(values.pop(key))
    hist = sample_histograms(kind, num_experts, ints["tokens"], top_k, n=1,
                             seed=ints.get("seed", 0), **values)
    return hist[0]


def _parse_counts(text: str, num_experts: int, top_k: int, local: bool) -> np.ndarray:
    counts = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not _COUNT.fullmatch(part):  # ASCII digits: str.isdigit() also passes '²'
            raise InputError(f"histogram spec: entry {i} {part!r} is not a whole number "
                             ">= 0 of at most 12 digits")
        counts.append(int(part))
    h = validate_histogram(counts, num_experts, where="histogram spec")
    total = int(h.sum())
    if total > MAX_TOKENS * top_k:
        raise InputError(f"histogram spec: counts sum to {total}, more than "
                         f"{MAX_TOKENS} tokens x top_k={top_k}")
    if local:
        return h
    if total % top_k:
        raise InputError(f"histogram spec: counts sum to {total}, not a multiple of top_k={top_k}")
    if h.max(initial=0) > total // top_k:
        raise InputError(
            f"histogram spec: expert {int(h.argmax())} has {int(h.max())} rows but only"
            f" {total // top_k} tokens (an expert gets at most one row per token)"
        )
    return h
