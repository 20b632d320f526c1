"""Synthetic histogram samplers: invariants (property tests), skew stats, CLI specs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ramp.errors import InputError
from ramp.histograms import (
    inclusion_probabilities,
    parse_histogram_spec,
    sample_histograms,
    sample_topk,
    skew_stats,
    zipf_popularity,
)


@st.composite
def routing(draw: st.DrawFn) -> tuple[int, int, int]:
    experts = draw(st.integers(2, 64))
    top_k = draw(st.integers(1, min(8, experts - 1)))
    tokens = draw(st.integers(0, 300))
    return experts, tokens, top_k


KIND_PARAMS = st.sampled_from([
    ("uniform", {}),
    ("zipf", {"s": 0.0}),
    ("zipf", {"s": 1.2}),
    ("zipf", {"s": 3.0}),
    ("hot", {"hot_fraction": 0.9}),
    ("hot", {"hot_fraction": 0.3, "hot_experts": 1}),
    ("dirichlet", {"alpha": 0.05}),
    ("dirichlet", {"alpha": 2.0}),
    ("collapsed", {}),
])


@settings(max_examples=60, deadline=None)
@given(routing(), KIND_PARAMS, st.integers(0, 2**31), st.integers(1, 3))
def test_invariants(shape: tuple[int, int, int], kind_params: tuple[str, dict], seed: int,
                    n: int) -> None:
    experts, tokens, top_k = shape
    kind, params = kind_params
    h = sample_histograms(kind, experts, tokens, top_k, n=n, seed=seed, **params)
    assert h.shape == (n, experts) and h.dtype == np.int64
    assert np.all(h.sum(axis=1) == tokens * top_k)
    assert np.all(h >= 0) and np.all(h <= tokens)


def test_collapsed_routes_every_token_to_the_first_experts():
    assert parse_histogram_spec("collapsed:tokens=256,seed=3", 8, 2).tolist() == [
        256, 256, 0, 0, 0, 0, 0, 0]
    with pytest.raises(InputError, match="collapsed"):
        parse_histogram_spec("collapsed:tokens=4,s=1", 8, 2)


@settings(max_examples=30, deadline=None)
@given(routing(), st.integers(1, 6), st.floats(0, 1), st.integers(0, 1000))
def test_hot_many_experts_invariants(shape: tuple[int, int, int], hot: int, fraction: float,
                                     seed: int) -> None:
    experts, tokens, top_k = shape
    hot = min(hot, experts - top_k)
    h = sample_histograms("hot", experts, tokens, top_k, seed=seed, hot_fraction=fraction,
                          hot_experts=hot)[0]
    assert h.sum() == tokens * top_k and h.max(initial=0) <= tokens


def test_hot_expert_gets_its_fraction() -> None:
    h = sample_histograms("hot", 64, 1000, 8, seed=1, hot_fraction=0.9)[0]
    assert h.max() == 900


def test_seeded_and_generator() -> None:
    a = sample_histograms("zipf", 32, 100, 4, n=2, seed=7, s=1.0)
    b = sample_histograms("zipf", 32, 100, 4, n=2, seed=7, s=1.0)
    assert np.array_equal(a, b)
    rng = np.random.default_rng(7)
    c = sample_histograms("uniform", 32, 100, 4, seed=rng)
    d = sample_histograms("uniform", 32, 100, 4, seed=rng)
    assert not np.array_equal(c, d)  # the generator advances


def test_skew_orders_concentration() -> None:
    flat = sample_histograms("zipf", 128, 512, 8, seed=0, s=0.0)[0]
    steep = sample_histograms("zipf", 128, 512, 8, seed=0, s=2.0)[0]
    assert skew_stats(steep)["max_mean_ratio"] > 3 * skew_stats(flat)["max_mean_ratio"]
    assert skew_stats(steep)["entropy"] < skew_stats(flat)["entropy"]


def test_large_sampling(benchmark) -> None:
    """16384 tokens x 256 experts; its time is measured with --benchmark-enable (the
    default suite runs it once, asserting no wall-clock limit)."""
    h = benchmark(sample_histograms, "zipf", 256, 16384, 8, seed=0, s=1.2)
    assert h.shape == (1, 256) and h.sum() == 16384 * 8 and h.max() <= 16384


def test_inclusion_probabilities_match_sampling() -> None:
    p = zipf_popularity(64, 1.5)
    pi = inclusion_probabilities(p, 6)
    assert pi.sum() == pytest.approx(6)
    counts = sample_topk(p, 20000, 6, seed=0)[0] / 20000
    assert np.abs(counts - pi).max() < 0.03
    assert np.allclose(inclusion_probabilities(np.ones(10), 3), 0.3)
    assert np.allclose(inclusion_probabilities(np.array([1.0, 0, 0, 0]), 2), [1, 1 / 3, 1 / 3, 1 / 3])


def test_skew_stats_values() -> None:
    stats = skew_stats([4, 4, 0, 0])
    assert stats["active_experts"] == 2
    assert stats["max_mean_ratio"] == pytest.approx(2.0)
    assert stats["cv"] == pytest.approx(1.0)
    assert stats["entropy"] == pytest.approx(0.5)
    assert skew_stats([0, 0])["active_experts"] == 0
    with pytest.raises(InputError, match="1-D"):
        skew_stats([[1, 2]])


def test_parse_specs() -> None:
    h = parse_histogram_spec("zipf:s=1.2,tokens=64,seed=3", 16, 2)
    assert h.shape == (16,) and h.sum() == 128
    assert np.array_equal(h, sample_histograms("zipf", 16, 64, 2, seed=3, s=1.2)[0])
    assert parse_histogram_spec("uniform:tokens=1", 8, 2).sum() == 2
    assert list(parse_histogram_spec("3, 0, 5, 0", 4, 1)) == [3, 0, 5, 0]
    assert 5 in parse_histogram_spec("hot:hot_fraction=0.5,tokens=10", 8, 2)


@pytest.mark.parametrize(
    ("spec", "part"),
    [
        ("zipf:s=1.2", "tokens"),
        ("zipf:s=abc,tokens=4", "s=abc"),
        ("zipf:q=1,tokens=4", "q"),
        ("zipf:tokens=4.5", "tokens"),
        ("zipf:tokens", "tokens"),
        ("gauss:tokens=4", "gauss"),
        ("zipf:s=-1,tokens=4", "s=-1"),
        ("hot:hot_fraction=2,tokens=4", "hot_fraction"),
        ("dirichlet:alpha=0,tokens=4", "alpha"),
        ("3,0,x,0", "entry 2"),
        ("3,0,5", "length"),
        ("3,0,4,0", "multiple of top_k"),
        ("6,0,0,0", "expert 0"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_name_the_part(spec: str, part: str) -> None:
    with pytest.raises(InputError, match=part):
        parse_histogram_spec(spec, 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "zipf", "num_experts": 0}, "num_experts"),
        ({"kind": "zipf", "tokens": -1}, "tokens"),
        ({"kind": "zipf", "top_k": 9}, "top_k"),
        ({"kind": "zipf", "n": 0}, "n "),
        ({"kind": "zipf", "seed": -3}, "seed"),
        ({"kind": "uniform", "s": 1.0}, "unknown parameter"),
        ({"kind": "hot", "hot_experts": 8}, "hot_experts"),
        ({"kind": "zipf", "s": float("nan")}, "finite"),
    ],
)
def test_bad_sampler_inputs(kwargs: dict, field: str) -> None:
    args = {"num_experts": 8, "tokens": 4, "top_k": 2, **kwargs}
    kind = args.pop("kind")
    with pytest.raises(InputError, match=field):
        sample_histograms(kind, **args)
