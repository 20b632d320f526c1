import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.geometry import FEATURE_NAMES, grid_geometry, max_class_row_tiles
from ramp.problem import MoEProblem


def test_hand_computed_case():
    # E=4, N=256, block 64x128 -> 2 column tiles; h = [0, 1, 64, 65]
    # row tiles = 0 + 1 + 1 + 2 = 4; tiles = 8; 3 SMs x occupancy 2 = 6 slots
    problem = MoEProblem(4, 256, 128, 1)
    bank = KernelBank.build([KernelConfig("t", 64, 128, 32)], occupancy=2)
    geo = grid_geometry(bank, problem, num_sms=3, hists=np.array([0, 1, 64, 65]))
    assert geo.tiles.tolist() == [[8]]
    assert geo.slots.tolist() == [6]
    assert geo.waves.tolist() == [[2]]
    assert np.allclose(geo.tile_waves, 8 / 6)
    assert np.allclose(geo.last_wave_fill, 2 / 6)
    assert geo.padded_rows.tolist() == [[256]]
    assert geo.active_experts.tolist() == [3]
    assert geo.rows.tolist() == [130]
    # Routed rows alone: 130 / 64 row tiles x 2 column tiles over 6 slots (no padding).
    assert np.allclose(geo.feature("row_waves"), 130 / 64 * 2 / 6)


MIXED = [KernelConfig("t", 64, 128, 64, small_block_m=16, small_rows=16),
         KernelConfig("t", 128, 64, 64, small_block_m=16, small_rows=32, persistent=True)]


def test_two_row_tile_classes_hand_computed():
    # h = [0, 1, 64, 65], small tile 16 for <= 16 rows, else 64: row tiles 0 + 1 + 1 + 2,
    # x 2 column tiles; rows computed 16 + 64 + 128 (the one-class m64 tile: 256).
    problem = MoEProblem(4, 256, 128, 1)
    bank = KernelBank.build([MIXED[0], dataclasses.replace(MIXED[0], small_block_m=0,
                                                           small_rows=0)], occupancy=2)
    geo = grid_geometry(bank, problem, num_sms=3, hists=np.array([0, 1, 64, 65]))
    assert geo.tiles.tolist() == [[8, 8]]
    assert geo.padded_rows.tolist() == [[208, 256]]
    assert np.allclose(geo.feature("padded_rows"), [[208 / 6, 256 / 6]])


@settings(max_examples=60, deadline=None)
@given(hist=st.lists(st.integers(0, 300), min_size=1, max_size=12),
       small=st.sampled_from([(16, 16), (16, 40), (32, 32)]), large=st.sampled_from([64, 128]))
def test_class_tiles_match_per_expert_definition(hist, small, large):
    """Each expert takes the tile of its class (KernelConfig.row_tile); the T-only bound
    the launcher sizes its grid with never falls short of the tiles."""
    cfg = KernelConfig("t", large, 64, 64, small_block_m=small[0], small_rows=small[1])
    problem = MoEProblem(len(hist), 64, 64, 1)
    geo = grid_geometry(KernelBank.build([cfg]), problem, 4, np.array(hist))
    per_expert = [-(-h // cfg.row_tile(h)) for h in hist]
    assert geo.tiles[0, 0] == sum(per_expert)
    assert geo.padded_rows[0, 0] == sum(t * cfg.row_tile(h) for t, h in zip(per_expert, hist))
    assert max_class_row_tiles(sum(hist), len(hist), cfg) >= sum(per_expert)


def test_split_k_multiplies_tiles():
    problem = MoEProblem(2, 128, 1024, 1)
    bank = KernelBank.build([KernelConfig("t", 16, 128, 64, split_k=4)])
    geo = grid_geometry(bank, problem, num_sms=132, hists=np.array([[3, 0]]))
    assert geo.tiles.tolist() == [[4]]


def test_empty_histogram_has_no_waves(bank, problem):
    geo = grid_geometry(bank, problem, 132, np.zeros((1, problem.num_experts), dtype=int))
    assert np.all(geo.tiles == 0) and np.all(geo.waves == 0)
    assert np.all(geo.last_wave_fill == 0)


def test_features_shape(bank, problem, rng):
    hists = rng.integers(0, 30, size=(5, problem.num_experts))
    feats = grid_geometry(bank, problem, 132, hists).features(FEATURE_NAMES)
    assert feats.shape == (5, len(bank), len(FEATURE_NAMES))
    assert np.all(np.isfinite(feats))


@settings(max_examples=60, deadline=None)
@given(
    hist=st.lists(st.integers(0, 5000), min_size=6, max_size=6),
    bm=st.sampled_from([16, 32, 64, 128]),
    bn=st.sampled_from([32, 64, 128, 256]),
    occ=st.integers(1, 4),
    sms=st.integers(1, 200),
)
def test_geometry_invariants(hist, bm, bn, occ, sms):
    problem = MoEProblem(6, 1000, 512, 2)
    bank = KernelBank.build([KernelConfig("t", bm, bn, 64)], occupancy=occ)
    geo = grid_geometry(bank, problem, sms, np.array(hist))
    tiles, slots, waves = int(geo.tiles[0, 0]), int(geo.slots[0]), int(geo.waves[0, 0])
    rows = sum(hist)
    # Padding never loses rows and wastes less than one tile per active expert.
    assert rows <= geo.padded_rows[0, 0] < rows + bm * max(1, geo.active_experts[0])
    # Waves are the ceiling of tile waves; the last wave is partially or fully filled.
    assert (waves - 1) * slots < tiles <= waves * slots or tiles == waves == 0
    assert 0 <= geo.last_wave_fill[0, 0] <= 1
    assert geo.tile_waves[0, 0] <= waves


def test_every_feature_folds_to_its_geometry(bank, problem, rng):
    """The feature table is the one definition: each linear feature equals its scale
    times its basis, and RampDispatcher's folded single-call path predicts what the model
    predicts for every feature of the table (the non-linear one through geometry)."""
    from ramp.costmodel import WaveCostModel
    from ramp.dispatch import RampDispatcher
    from ramp.geometry import BASES, FEATURES, GeometryPlan

    bank = KernelBank.build([*bank.configs, *MIXED], [*bank.occupancy, 1, 2])
    hists = np.stack([rng.multinomial(rng.integers(1, 400), np.ones(8) / 8) for _ in range(6)])
    hists[0, :3] = 0  # empty and cold experts beside hot ones
    plan = GeometryPlan(bank, problem, 132)
    geo = plan.geometry(hists)
    one = [i for i, c in enumerate(bank.configs) if not c.small_rows]
    assert geo.padded_rows[:, one].tolist() == (plan.row_tiles(hists)[:, plan.tiling_index]
                                                * plan.block_m)[:, one].tolist()
    for f in FEATURES:
        one = np.zeros((len(bank), 1)) + 1.0
        coef, other = plan.fold((f.name,), one)
        if f.basis is None:
            assert other and not coef.any()
        else:
            assert np.allclose(geo.feature(f.name), geo.basis(f.basis) * coef[:, BASES.index(
                f.basis)])
        for names in ((f.name,), ("launch", f.name) if f.name != "launch" else ("launch",)):
            model = WaveCostModel(bank, problem, 132, rng.uniform(0, 3, (len(bank), len(names))),
                                  names)
            ramp = RampDispatcher(model)
            assert np.allclose([ramp.predict_one(h) for h in hists], model.predict(hists))
