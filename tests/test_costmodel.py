import numpy as np
import pytest

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.costmodel import DEFAULT_FEATURES, WaveCostModel
from ramp.dispatch import RampDispatcher
from ramp.errors import InputError


def _random_hists(rng, n, num_experts, top_k):
    tokens = rng.integers(1, 400, size=n)
    return np.stack([rng.multinomial(t * top_k, rng.dirichlet(np.ones(num_experts)))
                     for t in tokens])


def test_fit_recovers_known_parameters(bank, problem, rng):
    true = rng.uniform(0.5, 20.0, size=(len(bank), 4))
    hists = _random_hists(rng, 300, problem.num_experts, problem.top_k)
    truth = WaveCostModel(bank, problem, 4, true)
    times = truth.predict(hists) * rng.normal(1.0, 0.01, size=(300, len(bank)))
    fitted = WaveCostModel.fit(bank, problem, 4, hists, times)
    pred = fitted.predict(hists)
    assert np.median(np.abs(pred / truth.predict(hists) - 1)) < 0.01
    assert all(s.r2 > 0.95 and s.mape < 0.03 for s in fitted.fit_stats)


def test_fit_parameters_are_non_negative(bank, problem, rng):
    hists = _random_hists(rng, 50, problem.num_experts, problem.top_k)
    # Times that fall with the number of tiles would need a negative slope: NNLS clips at 0.
    times = np.tile(1000.0 / (1 + hists.sum(1, keepdims=True)), (1, len(bank)))
    fitted = WaveCostModel.fit(bank, problem, 4, hists, times)
    assert np.all(fitted.params >= 0)


def test_fit_ignores_missing_samples(bank, problem, rng):
    hists = _random_hists(rng, 40, problem.num_experts, problem.top_k)
    truth = WaveCostModel(bank, problem, 4, np.full((len(bank), 4), 2.0))
    times = truth.predict(hists)
    times[::3, 0] = np.nan
    fitted = WaveCostModel.fit(bank, problem, 4, hists, times)
    assert fitted.fit_stats[0].samples == 40 - len(range(0, 40, 3))
    # Exact data: predictions reproduce the truth (parameters may trade off when two
    # features coincide on these samples, e.g. waves == tile_waves).
    assert np.allclose(fitted.predict(hists), truth.predict(hists), rtol=1e-6)


def test_fit_with_too_few_samples_is_an_error(bank, problem):
    hists = np.ones((2, problem.num_experts), dtype=int)
    with pytest.raises(InputError, match="need >= 4"):
        WaveCostModel.fit(bank, problem, 4, hists, np.ones((2, len(bank))))


def test_model_rejects_bad_parameters(bank, problem):
    with pytest.raises(InputError, match="non-negative"):
        WaveCostModel(bank, problem, 4, -np.ones((len(bank), 4)))
    with pytest.raises(InputError, match="more than 4 non-zero"):
        WaveCostModel(bank, problem, 4, np.ones((len(bank), 5)),
                      features=(*DEFAULT_FEATURES, "padded_rows"))
    with pytest.raises(InputError, match="at most 4 features"):
        WaveCostModel.fit(bank, problem, 4, np.ones((8, 8), dtype=int),
                          np.ones((8, len(bank))), features=(*DEFAULT_FEATURES, "row_waves"))
    with pytest.raises(InputError, match="unknown feature"):
        WaveCostModel(bank, problem, 4, np.ones((len(bank), 1)), features=("bogus",))


def test_predict_one_and_batch_agree(bank, problem, rng):
    model = WaveCostModel(bank, problem, 4, rng.uniform(0, 3, (len(bank), 4)))
    hists = _random_hists(rng, 3, problem.num_experts, problem.top_k)
    assert np.allclose(model.predict(hists)[1], model.predict(hists[1]))


def test_concat_keeps_each_bank_parameters(bank, problem):
    a = WaveCostModel(bank, problem, 4, np.ones((len(bank), 4)))
    other = KernelBank.build([KernelConfig("other", 128, 128, 64)])
    b = WaveCostModel(other, problem, 4, np.full((1, 4), 7.0))
    both = WaveCostModel.concat([a, b])
    assert len(both.bank) == len(bank) + 1
    assert both.params[-1].tolist() == [7.0] * 4
    assert both.bank.families == ["other", "t"]


def test_concat_of_different_feature_sets_keeps_each_model(bank, problem, rng):
    """Families fitted with their own features (CuTe: row_waves) still combine: the union
    of features, each configuration keeping its own four, predictions unchanged."""
    a = WaveCostModel(bank, problem, 4, rng.uniform(0, 3, (len(bank), 4)))
    other = KernelBank.build([KernelConfig("other", 16, 128, 64)])
    cute = ("launch", "waves", "active_experts", "row_waves")
    b = WaveCostModel(other, problem, 4, rng.uniform(0, 3, (1, 4)), features=cute)
    both = WaveCostModel.concat([a, b])
    assert both.features == (*DEFAULT_FEATURES, "row_waves")
    hists = _random_hists(rng, 5, problem.num_experts, problem.top_k)
    assert np.allclose(both.predict(hists), np.hstack([a.predict(hists), b.predict(hists)]))
    ramp = RampDispatcher(both)  # the single-call path folds row_waves like tile_waves
    assert np.allclose([ramp.predict_one(h) for h in hists], both.predict(hists))
