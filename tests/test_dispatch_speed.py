"""Host cost of the RampDispatcher on the hot path (E=256, >= 200 configurations).

Run with ``pytest tests/test_dispatch_speed.py --benchmark-enable`` to measure; in CI the
benchmarks run once each as ordinary tests (timings belong in docs/perf/dispatcher.md).
"""

import numpy as np
import pytest

from ramp.costmodel import WaveCostModel
from ramp.dispatch import RampDispatcher
from ramp.kernels.triton.configs import triton_bank
from ramp.problem import MoEProblem


@pytest.fixture(scope="module")
def dispatcher():
    bank = triton_bank()
    assert len(bank) >= 190
    problem = MoEProblem(256, 4096, 7168, 8)  # DeepSeek-V3 w13 on one GPU
    params = np.random.default_rng(0).uniform(0.1, 10.0, (len(bank), 4))
    return RampDispatcher(WaveCostModel(bank, problem, 132, params))


@pytest.fixture(scope="module")
def hists():
    rng = np.random.default_rng(1)
    return [rng.multinomial(64 * 8, rng.dirichlet(np.full(256, 0.5))) for _ in range(512)]


def test_uncached_choice(benchmark, dispatcher, hists):
    it = iter(range(10**9))

    def choose_fresh():
        dispatcher._cache.clear()
        return dispatcher.choose(hists[next(it) % len(hists)])

    choice = benchmark(choose_fresh)
    assert 0 <= choice < len(dispatcher.model.bank)


def test_cached_choice(benchmark, dispatcher, hists):
    dispatcher.choose(hists[0])
    assert benchmark(dispatcher.choose, hists[0]) == dispatcher.choose(hists[0])
