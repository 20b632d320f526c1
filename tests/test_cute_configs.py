"""The CuTe family's configuration space (pure data, no GPU or cutlass needed)."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.kernels.cute.configs import (
    EPI_PAD,
    FAMILY_VERSION,
    H100_SMEM_PER_BLOCK,
    MAX_ACC_REGS,
    TABLES_AND_BARRIERS,
    THIN_BLOCK_M,
    CuteVariant,
    accumulator_regs,
    check_shapes,
    consumer_warpgroups,
    cute_bank,
    cute_configs,
    epilogue_cols,
    launch_grid,
    raster,
    schedule,
    smem_bytes,
    staging_buffers,
)
from ramp.models import get_model
from ramp.profile import load_profile


def test_at_least_100_valid_configurations_with_unique_names():
    configs = cute_configs()
    assert len(configs) >= 100
    assert len({c.name for c in configs}) == len(configs)
    assert len(cute_bank()) == len(configs)


def test_every_configuration_fits_shared_memory_and_registers():
    for cfg in cute_configs():
        wgs = consumer_warpgroups(cfg)
        assert smem_bytes(cfg) <= H100_SMEM_PER_BLOCK
        if schedule(cfg) == "coop":  # each warpgroup owns 64 rows of the tile
            assert cfg.block_m == 64 * wgs
        # a pingpong warpgroup holds a whole tile: twice a cooperative one's registers
        per_thread = cfg.block_m * cfg.block_n // (128 * (wgs if schedule(cfg) == "coop" else 1))
        assert accumulator_regs(cfg) == per_thread <= MAX_ACC_REGS
        assert staging_buffers(cfg) == (2 if schedule(cfg) == "pingpong" else 1)
        assert cfg.persistent and cfg.block_k == 64


def test_space_covers_each_dimension():
    configs = cute_configs()
    assert {c.block_m for c in configs} == {64, 128, *THIN_BLOCK_M}
    assert {c.block_n for c in configs} == {64, 128, 256}
    assert {schedule(c) for c in configs} == {"1wg", "coop", "pingpong", "swap"}
    assert {raster(c) for c in configs} == {"m", "n", "g4"}
    assert len({c.num_stages for c in configs}) >= 4
    clustered = [c for c in configs if c.cluster_m == 2]
    assert clustered and all(c.block_m == 128 for c in clustered)
    thin = [c for c in configs if c.block_m < 64]
    assert thin and all(schedule(c) == "swap" and consumer_warpgroups(c) == 1 for c in thin)
    assert {c.block_m for c in thin} == set(THIN_BLOCK_M)
    pingpong = [c for c in configs if schedule(c) == "pingpong"]
    assert {(c.block_m, c.block_n) for c in pingpong} >= {(64, 128), (64, 256), (128, 128)}


@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "mixtral-8x7b"])
def test_every_configuration_runs_the_catalog_shapes(model):
    for gemm in ("w13", "w2"):
        p = get_model(model).problem(gemm)
        for cfg in cute_configs():
            check_shapes(cfg, gemm, p.n, p.k)


def test_shapes_that_do_not_tile_are_refused_with_the_reason():
    cfg = cute_configs()[0]
    with pytest.raises(InputError, match="divisible"):
        check_shapes(cfg, "w2", 100, 256)


def test_epilogue_stages_the_whole_tile_unless_that_costs_pipeline_stages():
    for cfg in cute_configs():
        whole_tile = (cfg.smem_bytes(2) + TABLES_AND_BARRIERS
                      + staging_buffers(cfg) * cfg.block_m * (cfg.block_n + EPI_PAD) * 2)
        for gemm, halves in (("w13", 2), ("w2", 1)):
            cols, out_n = epilogue_cols(cfg, gemm), cfg.block_n // halves
            assert out_n % cols == 0 and cols % 16 == 0
            assert (cols == out_n) == (whole_tile <= H100_SMEM_PER_BLOCK)
    deep = [c for c in cute_configs() if epilogue_cols(c, "w2") < c.block_n]
    assert deep and all(c.num_stages >= 4 for c in deep)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 256), st.integers(1, 8), st.integers(1, 300),
       st.sampled_from(["w13", "w2"]), st.integers(0, 10_000))
def test_launch_grid_covers_every_tile_in_whole_clusters(experts, tokens, top_k, slots,
                                                         gemm, seed):
    """The grid, sized from T alone, is at least min(slots, the histogram's tiles) for any
    routing (persistent CTAs loop over the rest) and a whole number of clusters."""
    top_k = min(top_k, experts)
    rng = np.random.default_rng(seed)
    hist = np.zeros(experts, int)
    for _ in range(tokens):
        hist[rng.choice(experts, top_k, replace=False)] += 1
    n = 1024
    for cfg in cute_configs()[::7]:
        grid = launch_grid(cfg, gemm, n, tokens * top_k, experts, slots)
        unit = cfg.block_m * cfg.cluster_m
        out_cols, out_n = cfg.output_tiling(gemm, n)
        tiles = int((-(-hist // unit)).sum()) * cfg.cluster_m * (out_cols // out_n)
        assert grid % cfg.cluster_m == 0
        assert grid <= slots
        assert grid >= min(tiles, slots // cfg.cluster_m * cfg.cluster_m)


def _cute_profiles():
    root = Path(__file__).resolve().parent.parent
    return sorted([*root.glob("ramp/data/profiles/*_cute.json"),
                   *root.glob("bench/results/raw/**/*_cute.profile.json")])


@pytest.mark.parametrize("path", _cute_profiles(), ids=lambda p: p.parent.name + "/" + p.name)
def test_profiles_configs_read_as_typed_variants(path):
    """Every CuTe profile ever shipped loads, each configuration's variant reads as typed
    fields and writes back to the same tag; the current version's banks are exactly the
    configuration space (so no name changed)."""
    profile = load_profile(path)
    for cfg in profile.model.bank.configs:
        variant = CuteVariant.of(cfg)
        assert variant.tag == cfg.variant
        assert variant.swap_ab == (cfg.block_m < 64)
    if profile.family_version == FAMILY_VERSION:
        assert set(profile.model.bank.configs) == set(cute_configs())


def test_bad_variant_is_an_input_error():
    with pytest.raises(InputError, match="schedule must be one of"):
        CuteVariant("pingpang", "m")
    with pytest.raises(InputError, match="is not '<schedule>-<raster>'"):
        CuteVariant.of(KernelConfig("cute", 64, 128, 64, variant="coop"))
