import json

import numpy as np
import pytest

from ramp.costmodel import ModelError, WaveCostModel
from ramp.dispatch import RampDispatcher
from ramp.errors import InputError, ProfileMismatchError
from ramp.models import get_model
from ramp.problem import MoEProblem
from ramp.profile import (
    DEFAULT_MODEL_ERROR,
    Profile,
    embedded_profile_paths,
    find_profile,
    load_profile,
)


@pytest.fixture
def profile(bank, problem, rng):
    model = WaveCostModel.fit(bank, problem, 4, rng.integers(0, 50, (30, 8)),
                              rng.uniform(5, 50, (30, len(bank))))
    return Profile("H100-SXM", problem, "t", "1", model, {1: 0, 64: 3},
                   {"device": "NVIDIA H100 80GB HBM3"})


def test_round_trip(profile, tmp_path, rng):
    path = profile.save(tmp_path / "p.json")
    back = load_profile(path, expect_gpu="H100-SXM", expect_problem=profile.problem,
                        expect_family_version="1")
    hists = rng.integers(0, 40, (5, 8))
    assert np.allclose(back.model.predict(hists), profile.model.predict(hists))
    assert back.static_table == profile.static_table
    assert back.model.fit_stats == profile.model.fit_stats
    assert back.key == profile.key


def test_mismatches_are_refused_naming_both_sides(profile, tmp_path):
    path = profile.save(tmp_path / "p.json")
    with pytest.raises(ProfileMismatchError, match=r"measured on H100-SXM.*A100-80GB"):
        load_profile(path, expect_gpu="A100-80GB")
    other = MoEProblem(8, 1024, 256, 2)
    with pytest.raises(ProfileMismatchError, match=r"w13-E8-N512.*w13-E8-N1024"):
        load_profile(path, expect_problem=other)
    with pytest.raises(ProfileMismatchError, match="family version 1"):
        load_profile(path, expect_family_version="2")


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("gpu"), "missing field 'gpu'"),
    (lambda d: d.update(schema="ramp-profile/0"), "field 'schema'"),
    (lambda d: d["problem"].update(top_k=0), "problem: MoEProblem.top_k"),
    (lambda d: d["model"]["configs"][0].update(params=[-1, 0, 0, 0]), "non-negative"),
    (lambda d: d["model"]["configs"][0].update(block_m="x"), r"configs\[0\]"),
    (lambda d: d.update(static_table={"1": 99}), "static_table names config 99"),
])
def test_bad_profiles_name_the_field(profile, tmp_path, mutate, match):
    data = profile.to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=match) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n "schema": "ramp-profile/1",\n "gpu": \n}')
    with pytest.raises(InputError, match=r"broken.json:4:\d+: not valid JSON"):
        load_profile(path)
    with pytest.raises(InputError, match="cannot read profile"):
        load_profile(tmp_path / "absent.json")


def test_embedded_profiles_load_and_are_found():
    paths = embedded_profile_paths()
    assert paths, "measured profiles ship with the package"
    for path in paths:
        p = load_profile(path)
        assert p.provenance.get("device", "").startswith("NVIDIA")
    problem = get_model("qwen3-30b-a3b").problem("w13")
    assert find_profile("H100-SXM", problem).family == "triton"
    assert find_profile("H100-SXM", problem, family="grouped_mm").family == "grouped_mm"
    assert find_profile("H100-SXM", problem, family="cute").family == "cute"
    assert find_profile("B200", problem) is None


def test_model_error_round_trips_and_old_profiles_get_the_default(profile, tmp_path):
    """A profile written before the error was stored loads with the conservative default
    (and its guarded policy needs a larger predicted gain than a measured small error)."""
    old = load_profile(profile.save(tmp_path / "old.json"))
    assert "model_error" not in json.loads((tmp_path / "old.json").read_text())
    assert old.model_error is None and old.error.error == (DEFAULT_MODEL_ERROR,)
    profile.model_error = ModelError((1, 64), (0.01, 0.02))
    new = load_profile(profile.save(tmp_path / "new.json"))
    assert new.model_error == profile.model_error
    assert new.dispatcher("ramp").margin(1) < old.dispatcher("ramp").margin(1)
    assert isinstance(new.dispatcher("ramp-unguarded"), RampDispatcher)
    data = json.loads((tmp_path / "new.json").read_text())
    data["model_error"]["error"] = [0.01]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"bad\.json:1:\d+: model_error: model error: one error per"):
        load_profile(tmp_path / "bad.json")


def test_fit_profile_stores_the_measured_error(bank, problem, rng):
    from ramp.profiler import Measurements, fit_profile

    tokens = np.repeat([1, 64], 10)
    hists = np.stack([rng.multinomial(t * problem.top_k, np.full(8, 1 / 8)) for t in tokens])
    meas = Measurements("H100-SXM", problem, bank, "t", "1", hists,
                        [f"uniform:tokens={t},seed={i}" for i, t in enumerate(tokens)],
                        rng.uniform(5, 50, (len(tokens), len(bank))))
    prof = fit_profile(meas, 4)
    assert prof.model_error is not None and prof.model_error.tokens == (1, 64)
    assert all(0 < e < 1 for e in prof.model_error.error)


def test_ep_sample_plan_trains_on_the_busiest_ranks_share(problem, bank, rng):
    """Under EP a rank receives its share of every token's picks: at T = 1 fewer rows
    than top_k, over as many experts. The plan's samples are the busiest rank's view of
    the whole layer's histograms, and fitting on them works (buckets of < top_k rows
    count as T = 1, as the dispatchers read them)."""
    from ramp.expert_parallel import ExpertPlacement
    from ramp.profiler import Measurements, SamplePlan, fit_profile

    layer = MoEProblem(num_experts=32, n=512, k=256, top_k=4)
    plan = SamplePlan(tokens=(1, 2, 16, 256), routings=("uniform", "zipf:s=1.2"))
    full, full_labels = plan.histograms(layer)
    local, labels = plan.histograms(layer, ep=4)
    assert local.shape == (len(full), 8)
    assert labels == [f"{label}@ep4" for label in full_labels]
    views = ExpertPlacement.contiguous(32, 4).view(full[:, None, :]).hists[:, 0]  # [H, 4, 8]
    for h, v in zip(local, views):
        assert h.sum() == v.sum(axis=1).max() and any((h == r).all() for r in v)
    t1 = [i for i, label in enumerate(labels) if "tokens=1," in label]
    assert all(local[i].sum() <= layer.top_k for i in t1)   # 4 picks over 4 ranks
    assert any(local[i].sum() < layer.top_k for i in t1)
    local_problem = MoEProblem(num_experts=8, n=512, k=256, top_k=4)
    meas = Measurements("H100-SXM", local_problem, bank, "t", "1", local, labels,
                        rng.uniform(5, 50, (len(labels), len(bank))))
    assert meas.tokens.min() == 1 and meas.is_uniform().sum() == 4
    prof = fit_profile(meas, 4)
    assert prof.model_error.tokens[0] == 1 and min(prof.static_table) == 1
