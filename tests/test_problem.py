import numpy as np
import pytest

from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.problem import MoEProblem, validate_histogram


def test_problem_key_and_round_trip():
    p = MoEProblem(128, 1536, 2048, 8)
    assert p.key == "w13-E128-N1536-K2048-top8-bfloat16"
    assert MoEProblem.from_dict(p.to_dict()) == p
    assert p.expert_weight_bytes == 1536 * 2048 * 2


@pytest.mark.parametrize("kwargs,match", [
    ({"num_experts": 0}, "num_experts"),
    ({"top_k": 9}, "exceeds"),
    ({"dtype": "int4"}, "dtype"),
    ({"gemm": "w3"}, "gemm"),
])
def test_problem_rejects_bad_fields(kwargs, match):
    base = {"num_experts": 8, "n": 64, "k": 64, "top_k": 2}
    with pytest.raises(InputError, match=match):
        MoEProblem(**{**base, **kwargs})


def test_problem_from_dict_names_unknown_and_missing():
    with pytest.raises(InputError, match="unknown field"):
        MoEProblem.from_dict({"num_experts": 8, "n": 1, "k": 1, "top_k": 1, "x": 1})
    with pytest.raises(InputError, match="missing"):
        MoEProblem.from_dict({"num_experts": 8})


def test_validate_histogram_accepts_and_converts():
    out = validate_histogram([1.0, 2, 3], 3, tokens=3, top_k=2)
    assert out.dtype == np.int64 and out.tolist() == [1, 2, 3]


@pytest.mark.parametrize("hist,match", [
    ([1, 2], "length 2"),
    ([[1, 2, 3]], "1-D"),
    ([1, -1, 6], "negative count -1 for expert 1"),
    ([1.5, 2, 2.5], "whole numbers"),
    ([1, 2, 4], "sum to 7"),
    (["a", "b", "c"], "whole numbers"),
])
def test_validate_histogram_errors_name_the_problem(hist, match):
    with pytest.raises(InputError, match=match) as info:
        validate_histogram(hist, 3, tokens=3, top_k=2, where="trace.jsonl:7 layers[2]")
    assert "trace.jsonl:7 layers[2]" in str(info.value)


def test_config_name_is_stable_and_round_trips():
    c = KernelConfig("triton", 64, 128, 64, 4, 3, split_k=2, persistent=True, group_m=8)
    assert c.name == "triton-m64n128k64-w4s3-sk2-g8-p"
    assert KernelConfig.from_dict(c.to_dict()) == c
    assert hash(c) == hash(KernelConfig.from_dict(c.to_dict()))
    tiles = KernelConfig("triton-tiles", 64, 128, 64, group_m=8, small_block_m=16,
                         small_rows=16)
    assert tiles.name == "triton-tiles-m64n128k64-w4s3-g8-sm16r16"
    assert KernelConfig.from_dict(tiles.to_dict()) == tiles
    assert [tiles.row_tile(h) for h in (1, 16, 17)] == [16, 16, 64]
    old = {k: v for k, v in c.to_dict().items() if not k.startswith("small")}
    assert KernelConfig.from_dict(old) == c  # profiles written before the fields existed


def test_config_rejects_bad_fields():
    with pytest.raises(InputError, match="block_m"):
        KernelConfig("t", 0, 64, 64)
    for small_m, rows in ((16, 0), (0, 16), (64, 16), (-1, 0)):
        with pytest.raises(InputError, match="small_"):
            KernelConfig("t", 64, 64, 64, small_block_m=small_m, small_rows=rows)
    with pytest.raises(InputError, match="unknown field"):
        KernelConfig.from_dict({"family": "t", "block_m": 1, "block_n": 1, "block_k": 1,
                                "tile": 3})
