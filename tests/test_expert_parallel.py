"""Expert-parallel views: placements, local histograms and rows, dispatch and simulation."""

import numpy as np
import pytest

from ramp.dispatch import StaticDispatcher
from ramp.errors import InputError
from ramp.expert_parallel import ExpertPlacement
from ramp.hardware import get_gpu
from ramp.histograms import sample_histograms
from ramp.models import get_model
from ramp.sim import Calibration, StepCoster, build_layout, synthetic_pool
from ramp.sim.routing import PREFILL


def test_contiguous_view_is_blocks_of_expert_ids():
    hists = sample_histograms("zipf", 16, 64, 4, n=3, seed=1).reshape(3, 1, 16)
    view = ExpertPlacement.contiguous(16, 4).view(hists)
    assert view.hists.shape == (3, 1, 4, 4)
    assert np.array_equal(view.hists.reshape(3, 1, 16), hists)
    assert np.array_equal(view.rows[:, 0], hists[:, 0].reshape(3, 4, 4).sum(axis=2))
    assert (view.rows.sum(axis=-1) == 64 * 4).all()


@pytest.mark.parametrize("ep", [2, 4, 8])
def test_balanced_placement_evens_out_a_skewed_load(ep):
    rng = np.random.default_rng(ep)
    load = np.sort(rng.pareto(1.5, size=(3, 64)), axis=1)  # hot experts share one block
    balanced = ExpertPlacement.balanced(load, ep)
    contiguous = ExpertPlacement.contiguous(64, ep, layers=3)
    for p in (balanced, contiguous):  # every expert exactly once per layer (validated)
        assert p.experts.shape == (3, ep, 64 // ep)
    hb = balanced.view(load[None]).rows[0].max(axis=-1)
    hc = contiguous.view(load[None]).rows[0].max(axis=-1)
    assert (hb <= hc).all() and (hb < hc).any()
    # Greedy bound: the busiest rank exceeds the mean by at most one expert's load.
    assert (hb <= load.sum(axis=1) / ep + load.max(axis=1) + 1e-9).all()


def test_placement_errors():
    with pytest.raises(InputError, match="do not split evenly"):
        ExpertPlacement.contiguous(10, 4)
    with pytest.raises(InputError, match="every expert exactly once"):
        ExpertPlacement(np.zeros((1, 2, 2), dtype=np.int64))
    with pytest.raises(InputError, match="needs the experts' load"):
        ExpertPlacement.make("balanced", 8, 2)
    with pytest.raises(InputError, match="placement has 2 layers"):
        ExpertPlacement.contiguous(8, 2, layers=2).view(np.zeros((3, 8), dtype=np.int64))


def test_dispatcher_chooses_per_rank_from_local_rows():
    """Static dispatch on a rank keys on the rank's own T*k: an idle-ish rank and a busy
    rank of one step land in different buckets."""
    hist = np.zeros((1, 8), dtype=np.int64)
    hist[0, :4] = [64, 64, 64, 64]   # rank 0: 256 rows; rank 1: 8 rows
    hist[0, 4:] = [2, 2, 2, 2]
    view = ExpertPlacement.contiguous(8, 2).view(hist)
    static = StaticDispatcher({1: 0, 128: 1}, top_k=2, num_configs=2)
    assert view.rows.tolist() == [[256, 8]]
    assert static.choose_view(view).tolist() == [[1, 0]]


def test_simulator_ep_costs_follow_the_placement():
    model = get_model("olmoe-1b-7b")
    gpu = get_gpu("H100-SXM")
    layouts = {"ep": build_layout("ep", gpu, model, 4, ("static", "ramp"), Calibration())}
    pool = synthetic_pool(model, preset="hot", steps=12, prefill_tokens=256)
    costs = {}
    for name in ("contiguous", "balanced"):
        coster = StepCoster(gpu, model, pool, Calibration(), layouts, ep_placement=name)
        costs[name] = coster.moe_seconds(layouts["ep"], 2048, PREFILL, 0)["ramp"]
    # Same routing, same model: only the slowest rank differs, and balancing helps it.
    assert costs["balanced"] < costs["contiguous"]


def test_trace_info_shows_ep_views(tmp_path):
    from click.testing import CliRunner

    from ramp.sim.cli import main

    out = tmp_path / "t.jsonl"
    runner = CliRunner()
    made = runner.invoke(main, ["trace", "generate", "olmoe-1b-7b", str(out), "--preset", "hot",
                                "--decode-steps", "4", "--prefill-steps", "2"])
    assert made.exit_code == 0, made.output
    res = runner.invoke(main, ["trace", "info", str(out), "--ep", "4"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("ep=4")]
    assert [line.split()[1] for line in lines] == ["contiguous", "balanced"]
    imbalance = [float(line.split("rows ")[1].split()[0]) for line in lines]
    assert imbalance[1] <= imbalance[0]  # balanced on the trace's own load


def test_busiest_rank_and_its_local_histogram():
    hists = np.array([[[0, 1, 5, 0, 2, 2, 1, 1]], [[3, 3, 0, 0, 0, 0, 1, 0]]])  # [2, 1, 8]
    view = ExpertPlacement.contiguous(8, 4).view(hists)
    assert view.busiest_rank.tolist() == [[1], [0]]
    assert view.busiest().tolist() == [[[5, 0]], [[3, 3]]]


def test_local_tokens_key_a_layer_call_on_a_ranks_share():
    """A local profile's tables are keyed on the rank's rows / top_k (the plan's samples
    of the layer): a layer call of T tokens looks them up at about T / ep."""
    from ramp.expert_parallel import local_tokens
    from ramp.profiler import SamplePlan

    layer = get_model("deepseek-v2-lite").problem("w13")
    hists, labels = SamplePlan(tokens=(64, 1024, 8192), routings=("uniform",)).histograms(
        layer, ep=4)
    for label, h in zip(labels, hists):
        t = int(label.split("tokens=")[1].split(",")[0])
        key = h.sum() // layer.top_k
        assert abs(local_tokens(t, 4) / key - 1) < 0.2
    assert local_tokens(1, 8) == 1 and local_tokens(512, 1) == 512
    with pytest.raises(InputError, match="ep must be a positive int"):
        local_tokens(64, 0)
