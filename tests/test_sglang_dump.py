"""SGLang expert-distribution dumps (stat, per_pass, per_token) converted to traces."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ramp.errors import InputError  # noqa: E402
from ramp.trace import read_steps  # noqa: E402
from ramp.traces.sglang_dump import convert_sglang_dump  # noqa: E402


def qwen_counts(rng, tokens: int, dense_rows: int = 0) -> np.ndarray:
    """[layers, 128] counts of a Qwen3-30B-A3B step (48 MoE layers, top-8)."""
    ids = np.stack([rng.permuted(np.tile(np.arange(128), (tokens, 1)), axis=1)[:, :8]
                    for _ in range(48)])
    counts = np.stack([np.bincount(layer.ravel(), minlength=128) for layer in ids])
    return np.concatenate([np.zeros((dense_rows, 128), np.int64), counts]), ids


def test_sglang_stat_dump(tmp_path, rng):
    """stat mode: ring slots never used are dropped, counts summed over 2 identical TP
    ranks are divided back, rows of dense layers are recognised."""
    steps = [qwen_counts(rng, t, dense_rows=1)[0] for t in (3, 17)]
    buffer = np.stack([steps[0], np.zeros_like(steps[0]), steps[1]]) * 2
    torch.save({"rank": 0, "logical_count": torch.tensor(buffer, dtype=torch.int32),
                "average_utilization_rate_over_window": None}, tmp_path / "stat.pt")
    summary = convert_sglang_dump([tmp_path / "stat.pt"], tmp_path / "t.jsonl",
                                  "qwen3-30b-a3b", replicas=2)
    assert (summary.mode, summary.steps, summary.empty) == ("stat", 2, 1)
    got = list(read_steps(tmp_path / "t.jsonl"))
    assert [s.tokens for s in got] == [3, 17] and {s.phase for s in got} == {"mixed"}
    assert np.array_equal(got[1].hists, steps[1][1:])
    with pytest.raises(InputError, match="replicas=3"):
        convert_sglang_dump([tmp_path / "stat.pt"], tmp_path / "u.jsonl", "qwen3-30b-a3b",
                            replicas=3)


def test_sglang_per_token_dumps_of_two_ranks(tmp_path, rng):
    """per_token mode, two ranks: physical ids of a redundant expert (physical 128 is a
    replica of logical 5) map back to logical experts; identical records of a pass are
    TP replicas taken once, different ones DP-attention shares summed."""
    mapping = np.tile(np.append(np.arange(128), 5), (48, 1))
    counts_a, ids_a = qwen_counts(rng, 4)
    counts_b, _ = qwen_counts(rng, 6)
    physical = np.append(counts_a, np.zeros((48, 1), np.int64), axis=1)
    moved = physical.copy()           # some of expert 5's rows went to its replica
    moved[:, 5], moved[:, 128] = 0, physical[:, 5]
    ids_phys = np.where(ids_a == 5, 128, ids_a)

    def record(pass_id, rank, count, mode, ids=ids_phys):
        return {"forward_pass_id": pass_id, "rank": rank, "gatherer_key": "primary",
                "global_physical_count": torch.tensor(count), "forward_mode": mode,
                "input_ids": [0] * ids.shape[1], "topk_ids_of_layer": torch.tensor(ids)}

    other = np.append(counts_b, np.zeros((48, 1), np.int64), axis=1)
    for rank in (0, 1):
        records = [record(7, rank, moved, 2), record(8, rank, physical if rank else other, 1)]
        torch.save({"records": records, "last_physical_to_logical_map": torch.tensor(mapping)},
                   tmp_path / f"r{rank}.pt")
    summary = convert_sglang_dump([tmp_path / "r0.pt", tmp_path / "r1.pt"],
                                  tmp_path / "t.jsonl", "Qwen/Qwen3-30B-A3B")
    assert (summary.mode, summary.steps) == ("per_token", 2)
    decode, prefill = read_steps(tmp_path / "t.jsonl")
    assert (decode.phase, decode.tokens, prefill.phase, prefill.tokens) == (
        "decode", 4, "prefill", 10)
    assert np.array_equal(decode.hists, counts_a)
    assert np.array_equal(decode.topk_ids, ids_a)
    assert np.array_equal(prefill.hists, counts_a + counts_b) and prefill.topk_ids is None
