import numpy as np
import pytest

from ramp.costmodel import WaveCostModel
from ramp.dispatch import OracleDispatcher, RampDispatcher, StaticDispatcher
from ramp.errors import InputError
from ramp.regret import evaluate


@pytest.fixture
def model(bank, problem, rng):
    return WaveCostModel(bank, problem, 4, rng.uniform(0.1, 10, (len(bank), 4)))


@pytest.fixture
def hists(problem, rng):
    tokens = rng.integers(1, 300, size=64)
    return np.stack([rng.multinomial(t * problem.top_k, rng.dirichlet(np.full(8, 0.3)))
                     for t in tokens])


def test_ramp_regret_is_zero_when_model_is_exact(model, hists):
    times = model.predict(hists)
    report = evaluate(RampDispatcher(model), hists, times)
    assert report.mean_regret == pytest.approx(0.0, abs=1e-12)
    assert report.top1_accuracy == 1.0


def test_oracle_matches_argmin_and_rejects_unknown(model, hists, problem):
    times = model.predict(hists)
    oracle = OracleDispatcher(hists, times)
    assert oracle.choose_batch(hists).tolist() == np.argmin(times, axis=1).tolist()
    with pytest.raises(InputError, match="never measured"):
        oracle.choose(np.full(problem.num_experts, 999))


def test_single_call_path_matches_batch(model, hists):
    ramp = RampDispatcher(model, cache_size=8)
    singles = [ramp.choose(h) for h in hists]
    assert singles == ramp.choose_batch(hists).tolist()
    # Second pass hits the cache (bounded) and answers the same.
    assert [ramp.choose(h) for h in hists] == singles
    assert len(ramp._cache) == 8


def test_static_uses_nearest_bucket(problem):
    static = StaticDispatcher({1: 0, 64: 1, 1024: 2}, top_k=problem.top_k, num_configs=3)
    assert static.choose_tokens(1) == 0
    assert static.choose_tokens(40) == 1       # |40-64| < |40-1|
    assert static.choose_tokens(5000) == 2
    hist = np.zeros(problem.num_experts, dtype=int)
    hist[:2] = 60                              # T = 120 / top_k 2 = 60
    assert static.choose(hist) == 1


def test_static_tune_and_speedup(model, hists, problem):
    times = model.predict(hists)
    tokens = hists.sum(1) // problem.top_k
    static = StaticDispatcher.tune({int(t): times[tokens == t] for t in set(tokens)},
                                   problem.top_k)
    report = evaluate(RampDispatcher(model), hists, times, baseline=static)
    assert report.speedup_geomean >= 1.0
    assert report.baseline == "static"


def test_static_table_is_validated(problem):
    with pytest.raises(InputError, match="outside the bank"):
        StaticDispatcher({1: 5}, top_k=2, num_configs=3)
    with pytest.raises(InputError, match="non-empty"):
        StaticDispatcher({}, top_k=2, num_configs=3)


def test_evaluate_rejects_unmeasured_choice(model, hists):
    times = model.predict(hists)
    times[:, :] = np.nan
    times[:, 0] = 1.0
    with pytest.raises(InputError, match="not measured"):
        evaluate(StaticDispatcher({1: 1}, 2, times.shape[1]), hists, times)


def test_black_box_windows_are_respected(problem, rng):
    """A black-box family runs one documented tile per mean-rows window: the model gives
    inf outside it and no dispatcher may pick it there."""
    from ramp.bank import KernelBank
    from ramp.config import KernelConfig

    small = KernelConfig("bb", 64, 128, 128, variant="small")
    large = KernelConfig("bb", 128, 256, 64, variant="large")
    bank = KernelBank.build([small, large], applies=[(0, 4), (4, np.inf)])
    assert KernelBank.from_list(bank.to_list()) == bank
    # The large tile is made very cheap: it must still lose where it cannot run.
    model = WaveCostModel(bank, problem, 4, np.array([[10.0, 1, 1, 1], [0.0, 0, 0, 0]]))
    few = np.array([2, 2, 0, 0, 0, 0, 0, 0])          # mean rows 0.5 -> small only
    many = np.full(problem.num_experts, 40)           # mean rows 40 -> large only
    assert np.isinf(model.predict(few)[1]) and np.isinf(model.predict(many)[0])
    ramp = RampDispatcher(model)
    assert ramp.choose(few) == 0 and ramp.choose(many) == 1
    assert ramp.choose_batch(np.stack([few, many])).tolist() == [0, 1]


def test_static_tune_never_picks_unmeasured():
    times = np.array([[np.nan, 5.0], [np.nan, 6.0]])
    assert StaticDispatcher.tune({8: times}, top_k=2).table == {8: 1}
