"""Model catalog: HF config values, TP/EP sharding into MoEProblems, dense roofline terms."""

from __future__ import annotations

import pytest

from ramp.errors import InputError
from ramp.models import MODELS, MoEModel, get_model


def test_catalog_slugs() -> None:
    assert set(MODELS) >= {"mixtral-8x7b", "qwen3-30b-a3b", "qwen3-235b-a22b",
                           "deepseek-v2-lite", "deepseek-v3", "gpt-oss-120b", "olmoe-1b-7b"}


@pytest.mark.parametrize(
    ("slug", "layers", "moe_layers", "experts", "top_k", "hidden", "inter", "shared"),
    [
        ("mixtral-8x7b", 32, 32, 8, 2, 4096, 14336, 0),
        ("qwen3-30b-a3b", 48, 48, 128, 8, 2048, 768, 0),
        ("qwen3-235b-a22b", 94, 94, 128, 8, 4096, 1536, 0),
        ("deepseek-v2-lite", 27, 26, 64, 6, 2048, 1408, 2),
        ("deepseek-v3", 61, 58, 256, 8, 7168, 2048, 1),
        ("gpt-oss-120b", 36, 36, 128, 4, 2880, 2880, 0),
        ("olmoe-1b-7b", 16, 16, 64, 8, 2048, 1024, 0),
    ],
)
def test_hf_config_values(slug: str, layers: int, moe_layers: int, experts: int, top_k: int,
                          hidden: int, inter: int, shared: int) -> None:
    m = get_model(slug)
    assert (m.layers, m.moe_layers, m.num_experts, m.top_k, m.hidden, m.moe_intermediate,
            m.shared_experts) == (layers, moe_layers, experts, top_k, hidden, inter, shared)


def test_problem_shapes_qwen3() -> None:
    m = get_model("qwen3-30b-a3b")
    w13, w2 = m.problem("w13"), m.problem("w2")
    assert (w13.num_experts, w13.n, w13.k, w13.top_k) == (128, 1536, 2048, 8)
    assert (w2.n, w2.k) == (2048, 768)
    assert w13.key == "w13-E128-N1536-K2048-top8-bfloat16"


def test_tensor_and_expert_parallel() -> None:
    m = get_model("mixtral-8x7b")
    p = m.problem("w13", tp=2)
    assert (p.num_experts, p.n, p.k) == (8, 14336, 4096)
    p = m.problem("w2", tp=4, ep=2)
    assert (p.num_experts, p.n, p.k, p.top_k) == (4, 4096, 3584, 2)
    v3 = get_model("deepseek-v3").problem("w13", ep=64)
    assert v3.num_experts == 4 and v3.top_k == 4  # a GPU sees at most its 4 experts per token


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"ep": 3}, "ep=3"), ({"tp": 5}, "tp=5"), ({"tp": 0}, "tp"), ({"gemm": "w4"}, "gemm"),
     ({"ep": True}, "ep")],
)
def test_bad_sharding_raises(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        get_model("qwen3-30b-a3b").problem(**kwargs)


def test_get_model_by_hf_id_and_unknown() -> None:
    assert get_model("Qwen/Qwen3-30B-A3B").name == "qwen3-30b-a3b"
    assert get_model("deepseek-ai/DeepSeek-V3").name == "deepseek-v3"
    assert get_model("Mixtral-8x7B").name == "mixtral-8x7b"
    with pytest.raises(InputError, match=r"known: .*qwen3-30b-a3b"):
        get_model("llama-3-8b")


def test_dense_terms_are_plausible() -> None:
    # Mixtral: ~1.6B non-expert params (attention 32 x 41.9M, router, lm head 131M).
    mix = get_model("mixtral-8x7b")
    assert mix.attention_params() == 4096 * 4096 * 2 + 2 * 4096 * 1024
    assert 1.4e9 < mix.dense_params() < 1.8e9
    assert mix.dense_weight_bytes() == 2 * mix.dense_params()
    assert mix.dense_flops_per_token(context_len=1024) > mix.dense_flops_per_token()
    # DeepSeek-V3: ~37B active params, of which routed experts 58 x 8 x 3 x 7168 x 2048.
    v3 = get_model("deepseek-v3")
    active = v3.dense_params() + 58 * 8 * 3 * 7168 * 2048
    assert 34e9 < active < 40e9
    # Total params ~ 671B.
    total = v3.dense_params() + v3.routed_expert_bytes() / 2 + 129280 * 7168
    assert 650e9 < total < 700e9
    with pytest.raises(InputError, match="context_len"):
        mix.dense_flops_per_token(context_len=-1)


def test_bad_model_fields() -> None:
    with pytest.raises(InputError, match="moe_layers"):
        MoEModel(name="x", layers=2, moe_layers=3, num_experts=4, top_k=2, hidden=8,
                 moe_intermediate=8, shared_experts=0, dense_intermediate=0,
                 num_attention_heads=1, num_kv_heads=1, head_dim=8, vocab_size=10)
    with pytest.raises(InputError, match="top_k"):
        MoEModel(name="x", layers=2, moe_layers=2, num_experts=4, top_k=5, hidden=8,
                 moe_intermediate=8, shared_experts=0, dense_intermediate=0,
                 num_attention_heads=1, num_kv_heads=1, head_dim=8, vocab_size=10)
