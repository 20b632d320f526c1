"""Real routing recordings: ESFT and .npz converters, re-batching, statistics."""

import itertools
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ramp.errors import InputError
from ramp.models import get_model
from ramp.sim.cli import main as sim_main
from ramp.tokenrouting import TokenRouting, count_experts, routing_statistics, spearman_rows
from ramp.trace import read_steps
from ramp.traces.real import read_esft, read_recording, read_routing_npz, routing_steps

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routing" / "esft-dsv2lite"
needs_data = pytest.mark.skipif(not (DATA / "law.npz").exists(),
                                reason="real routing data (../shared/data) absent")


def _random_ids(layers, seq_lens, num_experts, top_k, seed):
    """Distinct top-k ids per token, seeded."""
    rng = np.random.default_rng(seed)
    tokens = int(sum(seq_lens))
    keys = rng.random((layers, tokens, num_experts))
    return np.argsort(keys, axis=2)[:, :, :top_k]


def _write_esft(directory: Path, ids: np.ndarray, seq_lens) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum([0, *seq_lens])
    for layer in range(ids.shape[0]):
        lines = []
        for a, b in itertools.pairwise(bounds):
            flat = ids[layer, a:b].ravel()
            weights = ["0.1"] * flat.size
            lines.append("\t".join(map(str, flat)) + "\t\t" + "\t".join(weights))
        (directory / f"expert_weights_{layer + 1}.txt").write_text("\n".join(lines) + "\n")


def test_esft_and_npz_read_the_same_routing(tmp_path):
    seq_lens = [5, 9, 2]
    ids = _random_ids(3, seq_lens, 16, 4, seed=1)
    _write_esft(tmp_path / "esft", ids, seq_lens)
    np.savez(tmp_path / "r.npz", topk_ids=ids.transpose(1, 0, 2).astype(np.int8),
             seq_lens=np.array(seq_lens))
    a = read_esft(tmp_path / "esft", 16, 4)
    b = read_routing_npz(tmp_path / "r.npz", 16)
    assert np.array_equal(a.topk_ids, ids) and np.array_equal(b.topk_ids, ids)
    assert list(a.seq_lens) == seq_lens == list(b.seq_lens)


def test_consecutive_and_shuffled_batches_count_the_right_tokens(tmp_path):
    ids = _random_ids(2, [7, 7, 7], 8, 2, seed=2)
    routing = TokenRouting(ids, np.array([7, 7, 7]), 8)
    hists, batch_ids = routing.batches(4, "consecutive", with_ids=True)
    assert hists.shape == (5, 2, 8)  # 21 tokens -> 5 whole steps of 4
    assert np.array_equal(hists[1, 0], np.bincount(ids[0, 4:8].ravel(), minlength=8))
    assert np.array_equal(batch_ids[1, 0], ids[0, 4:8])
    shuffled, sids = routing.batches(4, "shuffled", seed=3, with_ids=True)
    assert (shuffled.sum(axis=2) == 8).all()
    assert np.array_equal(shuffled, count_experts(sids, 8))
    order = routing.order("shuffled", seed=3)
    assert np.array_equal(sids[0, 1], ids[1, order[:4]])
    assert not np.array_equal(shuffled, hists)


def test_cli_converts_esft_to_a_valid_trace(tmp_path):
    model = get_model("deepseek-v2-lite")
    seq_lens = [40, 30, 58]
    ids = _random_ids(model.moe_layers, seq_lens, model.num_experts, model.top_k, seed=4)
    _write_esft(tmp_path / "esft", ids, seq_lens)
    out = tmp_path / "t.jsonl"
    result = CliRunner().invoke(sim_main, ["trace", "esft", str(tmp_path / "esft"), str(out),
                                           "--tokens", "32", "--batching", "shuffled"])
    assert result.exit_code == 0, result.output
    steps = list(read_steps(out))  # parse_step validates histograms against the ids
    assert len(steps) == 4 and all(s.phase == "decode" and s.tokens == 32 for s in steps)
    assert all(s.topk_ids is not None for s in steps)


def test_bad_esft_lines_name_file_line_and_field(tmp_path):
    directory = tmp_path / "esft"
    directory.mkdir()
    (directory / "expert_weights_1.txt").write_text("1\t2\t3\t4\t\t0.1\t0.2\t0.3\t0.4\n"
                                                    "1\t2\tx\t4\t\t0.1\t0.2\t0.3\t0.4\n")
    with pytest.raises(InputError, match=r"expert_weights_1.txt:2: field 'ids'"):
        read_esft(directory, 8, 2)
    (directory / "expert_weights_1.txt").write_text("1\t2\t3\t4\t\t0.1\t0.2\n")
    with pytest.raises(InputError, match=r":1: field 'weights': 2 gate weights for 4"):
        read_esft(directory, 8, 2)
    (directory / "expert_weights_1.txt").write_text("1\t2\t3\t9\t\t0.1\t0.2\t0.3\t0.4\n")
    with pytest.raises(InputError, match=r"expert_weights_1.txt:1: field 'ids': expert id 9 "
                                         r"is not in 0\.\.7"):
        read_esft(directory, 8, 2)
    (directory / "expert_weights_1.txt").write_bytes(b"1\t2\t\t0.1\t0.2\n1\t\xff\t\t0.1\t0.2\n")
    with pytest.raises(InputError, match=r"expert_weights_1.txt:2.*UTF-8"):
        read_esft(directory, 8, 2)
    (directory / "expert_weights_1.txt").write_text("1\t1\t3\t4\t\t0.1\t0.2\t0.3\t0.4\n")
    with pytest.raises(InputError, match=r"token 0 of layer 0 names an expert twice"):
        read_esft(directory, 8, 2)
    (directory / "expert_weights_1.txt").write_text("\t".join("123456") + "\t\t"
                                                    + "\t".join(["0.1"] * 6) + "\n")
    result = CliRunner().invoke(sim_main, ["trace", "esft", str(directory),
                                           str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "1 layers of top-6 routing, model deepseek-v2-lite has 26 MoE layers" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_npz_without_seq_lens_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", topk_ids=np.zeros((4, 2, 2), dtype=np.int8))
    with pytest.raises(InputError, match=r"bad.npz: missing array\(s\) \['seq_lens'\]"):
        read_routing_npz(tmp_path / "bad.npz", 8)
    ids = np.array([[[0, 1]], [[65563, 2]]])  # an int16 cast would wrap 65563 to 27
    np.savez(tmp_path / "big.npz", topk_ids=ids, seq_lens=np.array([2]))
    with pytest.raises(InputError, match=r"big.npz: field 'topk_ids' must be whole expert"):
        read_routing_npz(tmp_path / "big.npz", 64)
    np.savez(tmp_path / "frac.npz", topk_ids=ids * 0 + 0.5, seq_lens=np.array([2]))
    with pytest.raises(InputError, match=r"frac.npz: field 'topk_ids'.*dtype float64"):
        read_routing_npz(tmp_path / "frac.npz", 64)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "big.npz").read_bytes()[:100])
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("cut.npz", "empty.npz"):
        with pytest.raises(InputError, match=rf"{name}: not a readable \.npz"):
            read_routing_npz(tmp_path / name, 64)


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 5, (3, 20)), rng.integers(0, 5, (3, 20))
    ours = spearman_rows(a, b)
    assert np.allclose(ours, [spearmanr(x, y)[0] for x, y in zip(a, b)])


def test_statistics_tell_bursty_from_independent_routing():
    """Tokens of one sequence share experts: consecutive batches are more skewed than
    shuffled ones; independent tokens show no such gap."""
    rng = np.random.default_rng(6)
    seq = np.repeat(np.arange(64), 64)                 # 64 sequences of 64 tokens
    favourite = rng.integers(0, 32, size=64)[seq]      # each sequence's own expert
    ids = _random_ids(1, [4096], 32, 2, seed=7)
    ids[0, :, 0] = favourite
    ids[0, :, 1] = np.where(ids[0, :, 1] == favourite, (favourite + 1) % 32, ids[0, :, 1])
    bursty = routing_statistics(TokenRouting(ids, np.full(64, 64), 32), tokens=(64,))
    independent = routing_statistics(TokenRouting(_random_ids(1, [4096], 32, 2, 8),
                                                  np.full(64, 64), 32), tokens=(64,))
    assert bursty["maxmean_consecutive"][64] > 2 * bursty["maxmean_shuffled"][64]
    assert independent["maxmean_consecutive"][64] == pytest.approx(
        independent["maxmean_shuffled"][64], rel=0.2)


@needs_data
def test_real_recordings_load_and_are_skewed():
    model = get_model("deepseek-v2-lite")
    routing = read_recording(DATA / "law.npz", model)
    assert (routing.layers, routing.top_k, routing.tokens) == (26, 6, 8327)
    stats = routing_statistics(routing)
    # The data README: skew does not wash out with batch size (uniform: 1.1 at 4096).
    assert stats["maxmean_shuffled"][4096] > 2.5
    assert stats["active"][8] < 40 and stats["active"][4096] == 64
    steps = list(routing_steps(routing, 512))
    assert len(steps) == 16 and steps[0].hists.sum() == 26 * 512 * 6
