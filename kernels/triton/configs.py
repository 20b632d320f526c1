"""The Triton family's configuration space: what the bank may contain.

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
H100 = GPUS["H100-SXM"]  # the GPU the default space and occupancy estimates are sized for


def triton_configs(smem_limit: int = H100.smem_per_block, dtype_bytes: int = 2
                   ) -> list[KernelConfig]:
    """Every configuration of the family whose operand pipeline fits in shared memory."""
    out = []
    for bm, bn, bk, (warps, stages), persistent in itertools.product(
        BLOCK_M, BLOCK_N, BLOCK_K, WARPS_STAGES, (False, True)
    ):
        cfg = KernelConfig(FAMILY, bm, bn, bk, warps, stages, persistent=persistent,
                           group_m=GROUP_M)
        if bn == 32 and bm > 32:
            continue
        if cfg.smem_bytes(dtype_bytes) <= smem_limit:
            out.append(cfg)
    return out


def estimated_occupancy(cfg: KernelConfig, dtype_bytes: int = 2, gpu: GPUSpec = H100) -> int:
    """CTAs per SM allowed by shared memory and warp slots (registers not counted)."""
    return gpu.occupancy(cfg.num_warps, cfg.smem_bytes(dtype_bytes))


def triton_bank(dtype_bytes: int = 2) -> KernelBank:
    """The default bank with estimated occupancy (before profiling measures it)."""
    configs = triton_configs(dtype_bytes=dtype_bytes)
    return KernelBank.build(configs, [estimated_occupancy(c, dtype_bytes) for c in configs])
