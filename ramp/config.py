"""Kernel configuration descriptors: one polymorphic variant of an MoE grouped GEMM.

A configuration is plain, hashable data. The core never runs it; it only needs what
determines the CTA grid a configuration launches for a histogram (tile sizes, split-K,
persistence, occupancy), so the same cost model serves any kernel family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ramp.errors import InputError
from ramp.plaindata import from_mapping


@dataclass(frozen=True, order=True)
class KernelConfig:
    """One configuration of a kernel family.

    ``block_m`` rows of one expert, ``block_n`` output columns and ``block_k`` reduction
    steps per tile. ``persistent`` kernels launch at most one wave of CTAs that loop over
    tiles; others launch one CTA per tile. ``split_k`` splits the reduction over that many
    CTAs. ``group_m`` is the raster swizzle width; ``cluster_m x cluster_n`` the thread-block
    cluster (Hopper). ``num_warps`` counts warps per CTA (4 per warpgroup).
    """

    family: str
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1
    persistent: bool = False
    group_m: int = 1
    cluster_m: int = 1
    cluster_n: int = 1
    variant: str = ""
    small_block_m: int = 0
    small_rows: int = 0

    def __post_init__(self) -> None:
        if not self.family or not isinstance(self.family, str):
            raise InputError("KernelConfig.family must be a non-empty string")
        for name in ("block_m", "block_n", "block_k", "num_warps", "num_stages", "split_k",
                     "group_m", "cluster_m", "cluster_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"KernelConfig.{name} must be a positive int, got {value!r}")
        for name in ("small_block_m", "small_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"KernelConfig.{name} must be an int >= 0, got {value!r}")
        if (self.small_rows > 0) != (self.small_block_m > 0) or (
                self.small_block_m and self.small_block_m >= self.block_m):
            raise InputError("KernelConfig.small_block_m and small_rows: both 0 (one row-tile "
                             "class) or both positive with small_block_m < block_m, got "
                             f"{self.small_block_m} and {self.small_rows} (block_m "
                             f"{self.block_m})")

    @property
    def name(self) -> str:
        """Stable, human-readable identifier, e.g. ``triton-m64n128k64-w4s3-p``."""
        parts = [
            f"{self.family}-m{self.block_m}n{self.block_n}k{self.block_k}",
            f"w{self.num_warps}s{self.num_stages}",
        ]
        if self.split_k > 1:
            parts.append(f"sk{self.split_k}")
        if self.group_m > 1:
            parts.append(f"g{self.group_m}")
        if self.cluster_m * self.cluster_n > 1:
            parts.append(f"c{self.cluster_m}x{self.cluster_n}")
        if self.small_rows:
            parts.append(f"sm{self.small_block_m}r{self.small_rows}")
        if self.persistent:
            parts.append("p")
        if self.variant:
            parts.append(self.variant)
        return "-".join(parts)

    def row_tile(self, rows: int) -> int:
        """Rows per tile of an expert with ``rows`` rows (its row-tile class)."""
        return self.small_block_m if 0 < rows <= self.small_rows else self.block_m

    def output_tiling(self, gemm: str, n: int) -> tuple[int, int]:
        """(output columns, output columns per tile) of a GEMM with N = ``n``: w13's
        fused SiLU(gate)*up halves both (a tile holds gate and up columns)."""
        return (n // 2, self.block_n // 2) if gemm == "w13" else (n, self.block_n)

    def smem_bytes(self, dtype_bytes: int) -> int:
        """Shared memory of the operand pipeline: ``stages * (A tile + B tile)``."""
        return self.num_stages * (self.block_m + self.block_n) * self.block_k * dtype_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> KernelConfig:
        return from_mapping(cls, data, where)
