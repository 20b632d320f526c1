"""Catalog of MoE models: the shapes that turn into MoEProblems and roofline terms.

Values come from each model's Hugging Face ``config.json`` (the ``source`` field names
the repository). Only what RaMP needs is kept: the routed-expert GEMM shapes, and enough
of the attention/dense parts for an approximate roofline of the rest of a forward step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ramp.errors import InputError
from ramp.problem import DTYPE_BYTES, GEMMS, MoEProblem


@dataclass(frozen=True)
class MoEModel:
    """Shape of one MoE transformer.

    ``moe_layers`` of the ``layers`` have routed experts (DeepSeek keeps the first few
    dense); each MoE layer also runs ``shared_experts`` always-on experts of width
    ``moe_intermediate``. ``dense_intermediate`` is the FFN width of the dense layers.
    Attention is GQA with ``head_dim`` per head, or MLA when ``kv_lora_rank > 0``; for MLA
    ``head_dim`` is the query/key head width (nope + rope) and ``qk_rope_head_dim`` its
    rotary part.
    """

    name: str
    layers: int
    moe_layers: int
    num_experts: int
    top_k: int
    hidden: int
    moe_intermediate: int
    shared_experts: int
    dense_intermediate: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str = "bfloat16"
    source: str = ""
    v_head_dim: int = 0  # 0: same as head_dim
    q_lora_rank: int = 0  # MLA query low-rank projection (0: full-rank query)
    kv_lora_rank: int = 0  # MLA compressed KV width (0: not MLA)
    qk_rope_head_dim: int = 0  # MLA decoupled rotary key width

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value < 0):
                raise InputError(f"MoEModel.{f.name} must be a non-negative int, got {value!r}")
        for name in ("layers", "num_experts", "top_k", "hidden", "moe_intermediate",
                     "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size"):
            if getattr(self, name) <= 0:
                raise InputError(f"MoEModel.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.moe_layers <= self.layers:
            raise InputError(f"MoEModel.moe_layers={self.moe_layers} not in 1..{self.layers}")
        if self.top_k > self.num_experts:
            raise InputError(f"MoEModel.top_k={self.top_k} > num_experts={self.num_experts}")
        if self.dtype not in DTYPE_BYTES:
            raise InputError(f"MoEModel.dtype {self.dtype!r} not in {sorted(DTYPE_BYTES)}")

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    def problem(self, gemm: str = "w13", tp: int = 1, ep: int = 1,
                dtype: str | None = None) -> MoEProblem:
        """The routed-expert grouped GEMM that one GPU runs under TP x EP sharding.

        Expert parallelism places ``E/ep`` whole experts on each GPU; tensor parallelism
        splits every expert's intermediate dimension: w13 has N = 2*I/tp, K = hidden;
        w2 has N = hidden, K = I/tp. A GPU holding fewer experts than top_k sees at most
        ``E/ep`` of a token's picks, so its problem's top_k is ``min(top_k, E/ep)``.
        """
        if gemm not in GEMMS:
            raise InputError(f"gemm {gemm!r} not in {GEMMS}")
        for label, value in (("tp", tp), ("ep", ep)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{label} must be a positive int, got {value!r}")
        if self.num_experts % ep:
            raise InputError(
                f"ep={ep} does not divide num_experts={self.num_experts} of {self.name}"
            )
        if self.moe_intermediate % tp:
            raise InputError(
                f"tp={tp} does not divide moe_intermediate={self.moe_intermediate} of {self.name}"
            )
        experts = self.num_experts // ep
        inter = self.moe_intermediate // tp
        n, k = (2 * inter, self.hidden) if gemm == "w13" else (self.hidden, inter)
        return MoEProblem(num_experts=experts, n=n, k=k, top_k=min(self.top_k, experts),
                          dtype=dtype or self.dtype, gemm=gemm)

    # --- approximate non-MoE roofline terms -------------------------------------------

    def attention_params(self) -> int:
        """Weight elements of one layer's attention projections (q, k, v, o or MLA's)."""
        h, heads = self.hidden, self.num_attention_heads
        v_dim = self.v_head_dim or self.head_dim
        out = heads * v_dim * h
        if self.is_mla:
            q_out = heads * self.head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank * q_out) if self.q_lora_rank else h * q_out
            nope = self.head_dim - self.qk_rope_head_dim
            kv = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv += self.kv_lora_rank * heads * (nope + v_dim)
            return q + kv + out
        q = h * heads * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        return q + kv + out

    def dense_params(self) -> int:
        """Weight elements that every token multiplies by, outside the routed experts.

        Attention projections of every layer, router and shared experts of MoE layers,
        the gated FFN of dense layers, and the LM head. Embedding lookups, norms and
        biases are left out (no matmul, negligible bytes).
        """
        gated = 3 * self.hidden  # gate, up and down matrices of a SwiGLU FFN, per unit width
        per_moe = self.hidden * self.num_experts + gated * self.moe_intermediate * self.shared_experts
        return (
            self.layers * self.attention_params()
            + self.moe_layers * per_moe
            + self.dense_layers * gated * self.dense_intermediate
            + self.hidden * self.vocab_size
        )

    def dense_flops_per_token(self, context_len: int = 0) -> float:
        """Approximate FLOPs per token outside the routed experts (2 per weight element).

        ``context_len`` adds the attention score and value products
        (``4 * heads * head_dim * context`` per layer, MLA counted un-absorbed); 0 leaves
        them out. An approximation: no softmax/norm FLOPs, no sliding windows.
        """
        if not isinstance(context_len, int) or context_len < 0:
            raise InputError(f"context_len must be a non-negative int, got {context_len!r}")
        v_dim = self.v_head_dim or self.head_dim
        attn = 2.0 * self.num_attention_heads * (self.head_dim + v_dim) * context_len
        return 2.0 * self.dense_params() + self.layers * attn

    def dense_weight_bytes(self) -> int:
        """Approximate bytes of non-routed weights a forward step streams once (``dense_params``)."""
        return self.dense_params() * DTYPE_BYTES[self.dtype]

    def routed_expert_bytes(self) -> int:
        """Bytes of all routed experts' weights over all MoE layers (w13 + w2)."""
        per_expert = 3 * self.hidden * self.moe_intermediate
        return self.moe_layers * self.num_experts * per_expert * DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MODELS: dict[str, MoEModel] = {
    m.name: m
    for m in (
        MoEModel(
            name="mixtral-8x7b", layers=32, moe_layers=32, num_experts=8, top_k=2,
            hidden=4096, moe_intermediate=14336, shared_experts=0, dense_intermediate=0,
            num_attention_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
            source="mistralai/Mixtral-8x7B-v0.1",
        ),
        MoEModel(
            name="qwen3-30b-a3b", layers=48, moe_layers=48, num_experts=128, top_k=8,
            hidden=2048, moe_intermediate=768, shared_experts=0, dense_intermediate=6144,
            num_attention_heads=32, num_kv_heads=4, head_dim=128, vocab_size=151936,
            source="Qwen/Qwen3-30B-A3B",
        ),
        MoEModel(
            name="qwen3-235b-a22b", layers=94, moe_layers=94, num_experts=128, top_k=8,
            hidden=4096, moe_intermediate=1536, shared_experts=0, dense_intermediate=12288,
            num_attention_heads=64, num_kv_heads=4, head_dim=128, vocab_size=151936,
            source="Qwen/Qwen3-235B-A22B",
        ),
        MoEModel(
            name="deepseek-v2-lite", layers=27, moe_layers=26, num_experts=64, top_k=6,
            hidden=2048, moe_intermediate=1408, shared_experts=2, dense_intermediate=10944,
            num_attention_heads=16, num_kv_heads=16, head_dim=192, vocab_size=102400,
            v_head_dim=128, q_lora_rank=0, kv_lora_rank=512, qk_rope_head_dim=64,
            source="deepseek-ai/DeepSeek-V2-Lite",
        ),
        MoEModel(
            name="deepseek-v3", layers=61, moe_layers=58, num_experts=256, top_k=8,
            hidden=7168, moe_intermediate=2048, shared_experts=1, dense_intermediate=18432,
            num_attention_heads=128, num_kv_heads=128, head_dim=192, vocab_size=129280,
            v_head_dim=128, q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
            source="deepseek-ai/DeepSeek-V3",
        ),
        MoEModel(
            # Released with MXFP4 expert weights; modelled here in bf16 like the others.
            name="gpt-oss-120b", layers=36, moe_layers=36, num_experts=128, top_k=4,
            hidden=2880, moe_intermediate=2880, shared_experts=0, dense_intermediate=0,
            num_attention_heads=64, num_kv_heads=8, head_dim=64, vocab_size=201088,
            source="openai/gpt-oss-120b",
        ),
        MoEModel(
            name="olmoe-1b-7b", layers=16, moe_layers=16, num_experts=64, top_k=8,
            hidden=2048, moe_intermediate=1024, shared_experts=0, dense_intermediate=0,
            num_attention_heads=16, num_kv_heads=16, head_dim=128, vocab_size=50304,
            source="allenai/OLMoE-1B-7B-0924",
        ),
    )
}

# Other Hugging Face ids with the same MoE shapes (instruct/chat/later checkpoints).
_ALIASES: dict[str, str] = {
    "mistralai/mixtral-8x7b-instruct-v0.1": "mixtral-8x7b",
    "qwen/qwen3-30b-a3b-instruct-2507": "qwen3-30b-a3b",
    "qwen/qwen3-30b-a3b-thinking-2507": "qwen3-30b-a3b",
    "qwen/qwen3-235b-a22b-instruct-2507": "qwen3-235b-a22b",
    "qwen/qwen3-235b-a22b-thinking-2507": "qwen3-235b-a22b",
    "deepseek-ai/deepseek-v2-lite-chat": "deepseek-v2-lite",
    "deepseek-ai/deepseek-v3-0324": "deepseek-v3",
    "deepseek-ai/deepseek-r1": "deepseek-v3",
    "allenai/olmoe-1b-7b-0924-instruct": "olmoe-1b-7b",
}


def get_model(name: str) -> MoEModel:
    """The catalog model for a slug (``qwen3-30b-a3b``) or Hugging Face id (any case)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model: expected a model name, got {name!r}; known: {', '.join(MODELS)}")
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    if key in _ALIASES:
        return MODELS[_ALIASES[key]]
    for model in MODELS.values():
        if model.source.lower() == key:
            return model
    raise InputError(f"model: unknown model {name!r}; known: {', '.join(MODELS)}")
