import json

import numpy as np
import pytest

from ramp.costmodel import WaveCostModel
from ramp.errors import InputError, ProfileMismatchError
from ramp.models import get_model
from ramp.problem import MoEProblem
from ramp.profile import Profile, embedded_profile_paths, find_profile, load_profile


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
