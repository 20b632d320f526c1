"""MoE GEMM problem shapes and expert-routing histograms.

A *problem* is one grouped GEMM of an MoE layer on one GPU: ``E`` experts, each
multiplying its routed rows ``[h[e], K]`` by its weight ``[N, K]^T``. A *histogram*
``h`` says how many token-expert rows each expert received in one call; it is the
runtime input RaMP dispatches on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ramp.errors import InputError
from ramp.plaindata import from_mapping

GEMMS = ("w13", "w2")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float32": 4}
MAX_EXPERTS = 1 << 16  # bounds on a problem read from a file: far above any real model
MAX_DIM = 1 << 20


@dataclass(frozen=True)
class MoEProblem:
    """One grouped GEMM of an MoE layer, as one GPU sees it.

    ``gemm="w13"`` is the gate/up projection (N = 2 * intermediate, K = hidden, fused
    SiLU*mul); ``gemm="w2"`` the down projection (N = hidden, K = intermediate).
    """

    num_experts: int
    n: int
    k: int
    top_k: int
    dtype: str = "bfloat16"
    gemm: str = "w13"

    def __post_init__(self) -> None:
        for name, limit in (("num_experts", MAX_EXPERTS), ("n", MAX_DIM), ("k", MAX_DIM),
                            ("top_k", MAX_EXPERTS)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                    or not 0 < value <= limit):
                raise InputError(f"MoEProblem.{name} must be an int in 1..{limit}, "
                                 f"got {value!r}")
        if self.top_k > self.num_experts:
            raise InputError(
                f"MoEProblem.top_k={self.top_k} exceeds num_experts={self.num_experts}"
            )
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_BYTES:
            raise InputError(f"MoEProblem.dtype {self.dtype!r} not in {sorted(DTYPE_BYTES)}")
        if not isinstance(self.gemm, str) or self.gemm not in GEMMS:
            raise InputError(f"MoEProblem.gemm {self.gemm!r} not in {GEMMS}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def expert_weight_bytes(self) -> int:
        """Bytes of one expert's weight matrix: what decode must stream per active expert."""
        return self.n * self.k * self.dtype_bytes

    @property
    def key(self) -> str:
        """Stable identifier used to key profiles: ``w13-E128-N1536-K2048-top8-bfloat16``."""
        return (
            f"{self.gemm}-E{self.num_experts}-N{self.n}-K{self.k}-top{self.top_k}-{self.dtype}"
        )

    def flops(self, rows: int) -> float:
        """Useful multiply-add FLOPs for ``rows`` token-expert rows (no padding)."""
        return 2.0 * rows * self.n * self.k

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "problem") -> MoEProblem:
        return from_mapping(cls, data, where)


def validate_histogram(
    hist: Any,
    num_experts: int,
    tokens: int | None = None,
    top_k: int | None = None,
    where: str = "histogram",
) -> np.ndarray:
    """Return ``hist`` as an int64 vector after checking it is a valid expert histogram.

    Checks: one dimension, length ``num_experts``, whole non-negative counts, and when
    ``tokens`` and ``top_k`` are given, ``sum(h) == tokens * top_k`` (every token routed to
    exactly top_k experts). ``where`` names the source (file, line, field) in errors.
    """
    try:
        arr = np.asarray(hist)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: not a numeric vector ({exc})") from None
    if arr.ndim != 1:
        raise InputError(f"{where}: expected a 1-D vector of counts, got shape {arr.shape}")
    if arr.shape[0] != num_experts:
        raise InputError(f"{where}: length {arr.shape[0]} != num_experts {num_experts}")
    if arr.dtype.kind not in "iuf" or (
        arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr)))
    ):
        raise InputError(f"{where}: counts must be whole numbers")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        bad = int(np.flatnonzero(arr < 0)[0])
        raise InputError(f"{where}: negative count {arr[bad]} for expert {bad}")
    if tokens is not None and top_k is not None and int(arr.sum()) != tokens * top_k:
        raise InputError(
            f"{where}: counts sum to {int(arr.sum())} but tokens*top_k = {tokens}*{top_k}"
            f" = {tokens * top_k}"
        )
    return arr
