import dataclasses
import warnings

import numpy as np
import pytest

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.costmodel import DEFAULT_FEATURES, ModelError, WaveCostModel, loo_predictions
from ramp.dispatch import (
    CrossFamilyDispatcher,
    GuardedDispatcher,
    OracleDispatcher,
    RampDispatcher,
    StaticDispatcher,
)
from ramp.errors import InputError
from ramp.geometry import GeometryPlan
from ramp.problem import MoEProblem
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


def test_guard_never_leaves_static_for_a_gain_inside_the_margin(bank, problem):
    """Whatever the model and error: a choice other than static's is predicted to win by
    more than the margin, and the argmin is taken whenever it does."""
    moved_calls = kept_calls = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        # Configurations tens of percent apart, as in a real bank: gains near the margin.
        params = rng.uniform(0.5, 5, (1, 4)) * rng.uniform(0.5, 1.5, (len(bank), 4))
        model = WaveCostModel(bank, problem, 4, params)
        tokens = rng.integers(1, 300, size=100)
        hists = np.stack([rng.multinomial(t * problem.top_k, rng.dirichlet(np.full(8, 0.3)))
                          for t in tokens])
        uniform = {t: model.predict(rng.multinomial(t * problem.top_k, np.full(8, 1 / 8), 4))
                   for t in (1, 16, 128)}
        static = StaticDispatcher.tune(uniform, problem.top_k)  # as profiling tunes it
        guard = GuardedDispatcher(model, static, ModelError((1, 16, 128),
                                                            tuple(rng.uniform(0, 0.1, 3))))
        choice, fixed = guard.choose_batch(hists), static.choose_batch(hists)
        pred = model.predict(hists)
        gain = pred[np.arange(len(hists)), fixed] / pred.min(axis=1) - 1
        margin = guard.margin(tokens)
        moved = choice != fixed
        assert (gain[moved] > margin[moved]).all()
        assert (choice[moved] == pred.argmin(axis=1)[moved]).all()
        assert moved[gain > margin + 1e-9].all()
        assert [guard.choose(h) for h in hists] == choice.tolist()
        # from the caller's own prediction of the same model: the same choice; of
        # another model's, ignored
        assert guard.choose_predicted(hists, model, pred).tolist() == choice.tolist()
        assert guard.ramp.choose_predicted(hists, model, pred).tolist() == (
            pred.argmin(axis=1).tolist())
        other = WaveCostModel(bank, problem, 4, params[::-1].copy())
        assert guard.choose_predicted(hists, other, other.predict(hists)).tolist() == (
            choice.tolist())
        assert static.choose_predicted(hists, model, pred).tolist() == fixed.tolist()
        moved_calls += int(moved.sum())
        kept_calls += int(((gain > 0) & ~moved).sum())
    assert moved_calls > 20 and kept_calls > 20  # both sides of the margin were exercised


def test_another_family_takes_over_only_beyond_both_errors(bank, problem):
    """Across two families: the primary family's guarded choice, unless the other
    family's best stays ahead with both predictions read pessimistically; taken whenever
    it does."""
    other_bank = KernelBank.build([dataclasses.replace(c, family="u") for c in bank.configs],
                                  occupancy=[1, 2] * 4)
    switched = kept = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        base = rng.uniform(0.5, 5, (1, 4))
        primary, other = (WaveCostModel(b, problem, 4,
                                        base * rng.uniform(0.5, 1.5, (len(bank), 4)))
                          for b in (bank, other_bank))
        tokens = rng.integers(1, 300, size=100)
        hists = np.stack([rng.multinomial(t * problem.top_k, rng.dirichlet(np.full(8, 0.3)))
                          for t in tokens])
        uniform = {t: primary.predict(rng.multinomial(t * problem.top_k, np.full(8, 1 / 8), 4))
                   for t in (1, 16, 128)}
        static = StaticDispatcher.tune(uniform, problem.top_k)
        e_p, e_o = (ModelError((1, 16, 128), tuple(rng.uniform(0, 0.1, 3))) for _ in range(2))
        cross = CrossFamilyDispatcher(WaveCostModel.concat([primary, other]), static,
                                      [e_p, e_o], [len(bank), len(bank)])
        alone = GuardedDispatcher(primary, static, e_p).choose_batch(hists)
        choice = cross.choose_batch(hists)
        pred_p, pred_o = primary.predict(hists), other.predict(hists)
        rows = np.arange(len(hists))
        ahead = (pred_o.min(axis=1) * (1 + e_o.at(tokens))
                 < pred_p[rows, alone] * (1 - e_p.at(tokens)))
        assert (choice[~ahead] == alone[~ahead]).all()
        assert (choice[ahead] == len(bank) + pred_o.argmin(axis=1)[ahead]).all()
        assert [cross.choose(h) for h in hists] == choice.tolist()
        switched += int(ahead.sum())
        kept += int((~ahead & (pred_o.min(axis=1) < pred_p[rows, alone])).sum())
    assert switched > 20 and kept > 20  # both sides of the bar were exercised
    with pytest.raises(InputError, match="family sizes"):
        CrossFamilyDispatcher(WaveCostModel.concat([primary, other]), static, [e_p, e_o],
                              [len(bank), 1])


def test_of_several_families_clearing_the_bar_the_fastest_wins_in_any_order():
    """Primary 100 us (exact model), family A 80 us at 10% error, family B 75 us exact:
    both clear the primary's bar and B, the faster, is chosen whichever comes first; a
    family that does not clear it is never chosen, however fast it claims to be."""
    problem = MoEProblem(8, 64, 64, 2)

    def one(family: str, us: float) -> WaveCostModel:
        bank = KernelBank.build([KernelConfig(family, 16, 64, 64)], occupancy=[1])
        return WaveCostModel(bank, problem, 4, np.array([[us, 0.0, 0.0, 0.0]]))

    hist = np.array([2, 0, 0, 0, 0, 0, 0, 0])
    exact, loose = ModelError((1,), (0.0,)), ModelError((1,), (0.1,))
    static = StaticDispatcher({1: 0}, 2, 1)
    for order in ((("a", 80.0, loose), ("b", 75.0, exact)),
                  (("b", 75.0, exact), ("a", 80.0, loose))):
        models = [one("p", 100.0), *(one(f, us) for f, us, _ in order)]
        cross = CrossFamilyDispatcher(WaveCostModel.concat(models), static,
                                      [exact, *(e for *_, e in order)], [1, 1, 1])
        assert cross.ramp.model.bank.configs[cross.choose(hist)].family == "b"
    claims = CrossFamilyDispatcher(WaveCostModel.concat([one("p", 100.0), one("c", 95.0)]),
                                   static, [exact, ModelError((1,), (0.1,))], [1, 1])
    assert claims.choose(hist) == 0  # 95 * 1.1 > 100: not beyond both errors


def test_guard_margin_and_error_buckets():
    error = ModelError((1, 64, 1024), (0.1, 0.02, 0.05))
    assert error.at(np.array([1, 6, 9, 100, 5000])).tolist() == [0.1, 0.1, 0.02, 0.02, 0.05]
    model = WaveCostModel(_bank_of_two(), MoEProblem(8, 64, 64, 2), 4, np.ones((2, 4)))
    guard = GuardedDispatcher(model, StaticDispatcher({1: 0}, 2, 2), error)
    assert guard.margin(64) == pytest.approx(2 * 0.02 / 0.98)
    with pytest.raises(InputError, match="increasing"):
        ModelError((64, 1), (0.1, 0.1))
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        ModelError((1,), (1.5,))


def _bank_of_two() -> KernelBank:
    return KernelBank.build([KernelConfig("t", 16, 64, 64), KernelConfig("t", 64, 64, 64)],
                            occupancy=[1, 1])


def test_model_error_is_out_of_sample(bank, problem, rng):
    """On exact, noise-free times the held-out error is ~0; with noise it exceeds the
    in-sample fit error (four parameters absorb part of the noise they were fitted to)."""
    model = WaveCostModel(bank, problem, 4, rng.uniform(0.1, 10, (len(bank), 4)))
    tokens = np.repeat([1, 8, 64, 256], 12)
    hists = np.stack([rng.multinomial(t * problem.top_k, rng.dirichlet(np.full(8, 0.5)))
                      for t in tokens])
    exact = model.predict(hists)
    assert max(ModelError.measure(bank, problem, 4, hists, exact).error) < 1e-6
    noisy = exact * rng.lognormal(0, 0.05, exact.shape)
    error = ModelError.measure(bank, problem, 4, hists, noisy)
    fitted = WaveCostModel.fit(bank, problem, 4, hists, noisy)
    in_sample = np.mean([s.mape for s in fitted.fit_stats])
    assert error.tokens == (1, 8, 64, 256)
    assert np.mean(error.error) > in_sample > 0.01


def test_model_error_is_measured_at_the_pick(bank, problem, rng):
    """One configuration is the fastest on every call but by an amount its features
    cannot see (20% more on every other call): the model picks it everywhere and errs on
    it by ~10%, while its error over all configurations stays near 1%. The guard must
    read the former, or it lets such picks past (docs/routing.md)."""
    model = WaveCostModel(bank, problem, 4, rng.uniform(0.1, 10, (len(bank), 4)))
    tokens = np.repeat([1, 8, 64, 256], 12)
    hists = np.stack([rng.multinomial(t * problem.top_k, rng.dirichlet(np.full(8, 0.5)))
                      for t in tokens])
    times = model.predict(hists)
    times[:, 0] = times.min(axis=1) * 0.8 * np.where(np.arange(len(hists)) % 2, 1.2, 1.0)
    error = ModelError.measure(bank, problem, 4, hists, times)
    feats = GeometryPlan(bank, problem, 4).geometry(hists).features(DEFAULT_FEATURES)
    over_all = np.nanmean(np.abs(loo_predictions(feats, times) / times - 1.0))
    assert min(error.error) > 0.05 > 0.02 > over_all
    assert error.statistic == "loo_pick_relative_error"


def test_model_error_skips_calls_and_buckets_with_nothing_held_out(bank, problem, rng):
    """Unmeasured configurations (NaN) and a bucket no configuration could be predicted
    on neither warn nor fail: that bucket is left out (calls there take the nearest
    kept one), and with nothing held out anywhere the error is refused."""
    model = WaveCostModel(bank, problem, 4, rng.uniform(0.1, 10, (len(bank), 4)))
    tokens = np.repeat([1, 8, 64, 256], 6)
    hists = np.stack([rng.multinomial(t * problem.top_k, rng.dirichlet(np.full(8, 0.5)))
                      for t in tokens])
    times = model.predict(hists) * rng.lognormal(0, 0.05, (len(hists), len(bank)))
    times[::5, 3] = np.nan  # some calls did not time one configuration
    times[tokens == 256] = np.nan  # nor any on the largest bucket
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = ModelError.measure(bank, problem, 4, hists, times)
    assert error.tokens == (1, 8, 64)
    assert all(0.0 < e < 0.2 for e in error.error)
    with pytest.raises(InputError, match="no configuration has enough samples"):
        ModelError.measure(bank, problem, 4, hists, np.full_like(times, np.nan))
