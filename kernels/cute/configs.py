"""The CuTe family's configuration space (pure data: no cutlass import, so CI enumerates it).

A configuration fixes the CTA tile (``block_m`` rows of one expert, ``block_n`` weight
rows: for w13 half gate, half up; ``block_k`` 64, one 128-byte swizzle atom), the TMA
pipeline depth, the consumer schedule and the raster order of tiles inside an expert:

* ``1wg``: one producer warp(group) + one consumer warpgroup (64 or 128 rows);
* ``coop``: one producer + two cooperative consumer warpgroups of 64 rows each;
* ``pingpong``: one producer + two consumer warpgroups that take alternate tiles, each
  a whole tile, so one's epilogue overlaps the other's mainloop (each has its own
  epilogue staging buffer);
* ``swap``: the thin-expert tiles (``block_m`` 16/32 token rows) for decode: the
  GEMM runs transposed (weights on wgmma's 64-row M side, tokens on its N side), so a
  one-token expert costs neither 64 rows of MMA nor 64 rows of activation traffic; one
  consumer warpgroup, raster ``m``;
* raster ``m`` / ``n`` / ``g4``: row blocks fastest, column blocks fastest, or row blocks
  fastest within bands of 4 (see ``moe_gemm.MoEGemmSm90``).

Every kernel is persistent (one wave of CTAs, occupancy 1: the pipeline takes most of
shared memory). The 128-row tiles with raster ``m`` also come as 2x1 thread-block
clusters (``cluster_m=2``): the two CTAs take consecutive row blocks of one expert and
TMA-multicast the shared weight tile, halving its L2 traffic. That pays for prefill; at
decode (one row block per expert) the second CTA of a cluster only pads, which is why
both forms stay in the bank and RaMP chooses per call.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.geometry import max_row_tiles
from ramp.hardware import GPUS

FAMILY = "cute"
# Bump when the kernel changes in a way that invalidates measured profiles.
FAMILY_VERSION = "2"  # 2: pingpong and swap-AB thin tiles

BLOCK_M = (64, 128)
# Swap-AB tiles (token rows on wgmma's N side). N=8 is valid PTX, but nvidia-cutlass-dsl
# 4.3.5 rejects its accumulator layout in cute.gemm ("invalid layout of A/B/D"); 4.6.0
# compiles it (not run on a GPU yet, so not in the space).
THIN_BLOCK_M = (16, 32)
BLOCK_N = (64, 128, 256)
BLOCK_K = 64
STAGES = (3, 4, 5, 6, 8)  # 2 was never within 1% of the best on any H100 call; 8: decode
THIN_STAGES = (4, 6, 8, 12)  # thin tiles are small: deep pipelines keep HBM busy
SCHEDULES = {"1wg": 1, "coop": 2, "pingpong": 2}  # consumer warpgroups
SWAP = "swap"
RASTERS = ("m", "n", "g4")
H100_SMEM_PER_BLOCK = GPUS["H100-SXM"].smem_per_block  # what the default space is sized for
EPI_PAD = 8          # bf16 elements of padding per staged row: conflict-free stmatrix
EPI_COLS = 32        # output columns the epilogue stages at a time
MAX_EXPERTS = 256    # experts per GPU: the kernel's tile tables live in shared memory
TABLES_AND_BARRIERS = 2 * (MAX_EXPERTS + 1) * 4 + 1024
MAX_ACC_REGS = 128   # fp32 accumulator registers per consumer thread (232 allotted)


@dataclass(frozen=True)
class CuteVariant:
    """The family's own configuration fields, typed: the consumer ``schedule`` (a key of
    SCHEDULES, or SWAP) and the ``raster`` order (RASTERS). A configuration carries them
    as its ``variant`` tag ``"<schedule>-<raster>"`` (what its name and every profile
    hold, unchanged); ``of`` is the one place the tag is read back."""

    schedule: str
    raster: str

    def __post_init__(self) -> None:
        if self.schedule not in (*SCHEDULES, SWAP) or self.raster not in RASTERS:
            raise InputError(f"CuTe variant {self.tag!r}: schedule must be one of "
                             f"{[*SCHEDULES, SWAP]}, raster one of {list(RASTERS)}")

    @classmethod
    def of(cls, cfg: KernelConfig) -> CuteVariant:
        schedule, sep, raster = cfg.variant.partition("-")
        if not sep:
            raise InputError(f"{cfg.name}: variant {cfg.variant!r} is not "
                             "'<schedule>-<raster>'")
        return cls(schedule, raster)

    @property
    def tag(self) -> str:
        return f"{self.schedule}-{self.raster}"

    @property
    def swap_ab(self) -> bool:
        """Thin tiles run transposed (tokens on wgmma's N side)."""
        return self.schedule == SWAP

    @property
    def pingpong(self) -> bool:
        return self.schedule == "pingpong"

    @property
    def cooperative(self) -> bool:
        return self.schedule == "coop"

    @property
    def consumer_warpgroups(self) -> int:
        return 1 if self.swap_ab else SCHEDULES[self.schedule]


def schedule(cfg: KernelConfig) -> str:
    """``1wg``, ``coop``, ``pingpong`` or ``swap``."""
    return CuteVariant.of(cfg).schedule


def raster(cfg: KernelConfig) -> str:
    return CuteVariant.of(cfg).raster


def consumer_warpgroups(cfg: KernelConfig) -> int:
    return cfg.num_warps // 4 - 1


def tile_warpgroups(cfg: KernelConfig) -> int:
    """Consumer warpgroups that share one tile's accumulator (two only when cooperative)."""
    return consumer_warpgroups(cfg) if CuteVariant.of(cfg).cooperative else 1


def staging_buffers(cfg: KernelConfig) -> int:
    """Epilogue staging buffers: one per pingpong warpgroup, else one."""
    return consumer_warpgroups(cfg) if CuteVariant.of(cfg).pingpong else 1


def accumulator_regs(cfg: KernelConfig) -> int:
    """fp32 accumulator registers per consumer thread."""
    return cfg.block_m * cfg.block_n // (128 * tile_warpgroups(cfg))


def _smem(cfg: KernelConfig, staged_cols: int, dtype_bytes: int) -> int:
    staging = cfg.block_m * (staged_cols + EPI_PAD) * dtype_bytes * staging_buffers(cfg)
    return cfg.smem_bytes(dtype_bytes) + staging + TABLES_AND_BARRIERS


def epilogue_cols(cfg: KernelConfig, gemm: str, smem_limit: int = H100_SMEM_PER_BLOCK,
                  dtype_bytes: int = 2) -> int:
    """Output columns the epilogue stages per step: the whole tile (one staging step, two
    barriers) when it fits beside the pipeline, else 2 * EPI_COLS staged columns at a
    time (w13: EPI_COLS outputs and their up columns), which frees shared memory for a
    deeper pipeline. Thin (swap) tiles always stage the whole tile: it is small."""
    halves = 2 if gemm == "w13" else 1
    if CuteVariant.of(cfg).swap_ab or _smem(cfg, cfg.block_n, dtype_bytes) <= smem_limit:
        return cfg.block_n // halves
    return min(2 * EPI_COLS, cfg.block_n) // halves


def smem_bytes(cfg: KernelConfig, dtype_bytes: int = 2) -> int:
    """Operand pipeline + epilogue staging (as ``epilogue_cols`` sizes it for w13, the
    larger of the two GEMMs) + tile tables and barriers."""
    staged = 2 * epilogue_cols(cfg, "w13", dtype_bytes=dtype_bytes)
    return _smem(cfg, min(staged, cfg.block_n), dtype_bytes)


def check_shapes(cfg: KernelConfig, gemm: str, n: int, k: int, num_experts: int = 1) -> None:
    """Raise if ``cfg`` cannot run a GEMM with weights [E, n, k] (tiles must divide)."""
    if num_experts > MAX_EXPERTS:
        raise InputError(f"the CuTe kernels take at most {MAX_EXPERTS} experts per GPU, "
                         f"got {num_experts}")
    out_cols, out_n = cfg.output_tiling(gemm, n)
    if out_cols % out_n or k % cfg.block_k:
        raise InputError(f"{cfg.name} needs output columns divisible by {out_n} and K by "
                         f"{cfg.block_k}; got {out_cols} and {k}")


def launch_grid(cfg: KernelConfig, gemm: str, n: int, rows: int, num_experts: int,
                slots: int) -> int:
    """CTAs a call launches: one persistent wave of ``slots`` CTAs at most, no more than
    the call can have tiles (bounded from T alone: no histogram on the host), and a
    whole number of clusters. A cluster pads each expert to whole row units."""
    out_cols, out_n = cfg.output_tiling(gemm, n)
    units = max_row_tiles(rows, num_experts, cfg.block_m * cfg.cluster_m)
    tiles = units * cfg.cluster_m * (out_cols // out_n)
    return min(tiles, slots) // cfg.cluster_m * cfg.cluster_m


def _config(bm: int, bn: int, stages: int, sched: str, wgs: int, rast: str) -> KernelConfig:
    return KernelConfig(FAMILY, bm, bn, BLOCK_K, num_warps=4 * (1 + wgs), num_stages=stages,
                        persistent=True, variant=CuteVariant(sched, rast).tag)


def cute_configs(smem_limit: int = H100_SMEM_PER_BLOCK, dtype_bytes: int = 2
                 ) -> list[KernelConfig]:
    """Every configuration whose shared memory and accumulator registers fit."""
    def fits(cfg: KernelConfig) -> bool:
        return (accumulator_regs(cfg) <= MAX_ACC_REGS
                and smem_bytes(cfg, dtype_bytes) <= smem_limit)

    out = []
    for bm, bn, stages, (sched, wgs), rast in itertools.product(
        BLOCK_M, BLOCK_N, STAGES, SCHEDULES.items(), RASTERS
    ):
        if sched == "coop" and bm // 64 < wgs:  # a coop warpgroup owns 64 rows or more
            continue
        if sched == "pingpong" and (bn < 128 or rast == "g4"):  # compute-bound tiles only
            continue
        cfg = _config(bm, bn, stages, sched, wgs, rast)
        if fits(cfg):
            out.append(cfg)
            if bm == 128 and rast == "m" and sched != "pingpong":  # prefill: 2-CTA clusters
                out.append(dataclasses.replace(cfg, cluster_m=2))
    for bm, bn, stages in itertools.product(THIN_BLOCK_M, BLOCK_N, THIN_STAGES):
        cfg = _config(bm, bn, stages, SWAP, 1, "m")
        if fits(cfg):
            out.append(cfg)
    return out


def cute_bank(dtype_bytes: int = 2) -> KernelBank:
    """The default bank: every configuration at occupancy 1 (one persistent wave)."""
    configs = cute_configs(dtype_bytes=dtype_bytes)
    return KernelBank.build(configs, [1] * len(configs))
