"""The Triton family's configuration space: what the bank may contain.

Two families share the kernels: ``triton`` (one row tile per configuration) and
``triton-tiles`` (two row-tile classes in one launch: ``KernelConfig.small_block_m``
rows for an expert with at most ``small_rows`` rows, ``block_m`` for the others). The
second is a family of its own with its own version so that adding it leaves every
measured ``triton`` profile valid; cross-family dispatch chooses between the two.

Pure data (no Triton import) so the core, the simulator and CI can enumerate it.
Occupancy here is an estimate from the operand pipeline's shared memory; the profiler
replaces it with the value read from the compiled kernel (registers and shared memory).
"""

from __future__ import annotations

import itertools

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.hardware import GPUS, GPUSpec

FAMILY = "triton"
# Bump when the kernel changes in a way that invalidates measured profiles.
FAMILY_VERSION = "1"

BLOCK_M = (16, 32, 64, 128)
BLOCK_N = (32, 64, 128, 256)  # 32 only with thin row tiles: many CTAs for decode
BLOCK_K = (64, 128)
WARPS_STAGES = ((4, 3), (4, 4), (8, 3), (8, 4))
GROUP_M = 8
TMA = "tma"  # variant: operand tiles through TMA tensor descriptors (sm90 and later)
TILES_FAMILY = "triton-tiles"
TILES_FAMILY_VERSION = "1"
LARGE_BLOCK_M = (64, 128)           # the hot experts' tile
SMALL_TILES = ((16, 16), (32, 32))  # (small_block_m, small_rows): a cold expert, one tile
H100 = GPUS["H100-SXM"]  # the GPU the default space and occupancy estimates are sized for


def triton_configs(smem_limit: int = H100.smem_per_block, dtype_bytes: int = 2
                   ) -> list[KernelConfig]:
    """Every configuration of the family whose operand pipeline fits in shared memory."""
    return _fitting(FAMILY, [(bm, 0, 0) for bm in BLOCK_M], smem_limit, dtype_bytes)


def triton_tiles_configs(smem_limit: int = H100.smem_per_block, dtype_bytes: int = 2
                         ) -> list[KernelConfig]:
    """The two-class configurations: each large tile with each small tile class."""
    tilings = [(bm, small, rows) for bm in LARGE_BLOCK_M for small, rows in SMALL_TILES]
    return _fitting(TILES_FAMILY, tilings, smem_limit, dtype_bytes)


def _fitting(family: str, tilings: list[tuple[int, int, int]], smem_limit: int,
             dtype_bytes: int) -> list[KernelConfig]:
    """Row tilings (block_m, small_block_m, small_rows) x the shared column, reduction
    and launch choices, where the operand pipeline (the large tile's) fits."""
    out = []
    for (bm, small, rows), bn, bk, (warps, stages), persistent in itertools.product(
        tilings, BLOCK_N, BLOCK_K, WARPS_STAGES, (False, True)
    ):
        if bn == 32 and bm > 32:
            continue
        cfg = KernelConfig(family, bm, bn, bk, warps, stages, persistent=persistent,
                           group_m=GROUP_M, small_block_m=small, small_rows=rows)
        if cfg.smem_bytes(dtype_bytes) <= smem_limit:
            out.append(cfg)
    return out


def estimated_occupancy(cfg: KernelConfig, dtype_bytes: int = 2, gpu: GPUSpec = H100) -> int:
    """CTAs per SM allowed by shared memory and warp slots (registers not counted)."""
    return gpu.occupancy(cfg.num_warps, cfg.smem_bytes(dtype_bytes))


def triton_bank(dtype_bytes: int = 2) -> KernelBank:
    """The default bank with estimated occupancy (before profiling measures it)."""
    return _estimated(triton_configs(dtype_bytes=dtype_bytes), dtype_bytes)


def triton_tiles_bank(dtype_bytes: int = 2) -> KernelBank:
    """The two-class family's default bank with estimated occupancy."""
    return _estimated(triton_tiles_configs(dtype_bytes=dtype_bytes), dtype_bytes)


def _estimated(configs: list[KernelConfig], dtype_bytes: int) -> KernelBank:
    return KernelBank.build(configs, [estimated_occupancy(c, dtype_bytes) for c in configs])
