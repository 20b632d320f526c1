"""Trace generators, converters and the shipped traces."""

from importlib import resources

import numpy as np
import pytest

from ramp.errors import InputError
from ramp.models import get_model
from ramp.trace import read_arrivals, read_header, read_steps, write_trace
from ramp.traces import (
    PRESETS,
    generate_steps,
    read_azure_csv,
    routing_summary,
    serving_schedule,
    synthetic_header,
)
from ramp.traces.generators import RoutingStats

OLMOE = get_model("olmoe-1b-7b")


def test_generated_steps_are_valid_seeded_and_round_trip(tmp_path):
    tokens, phases = serving_schedule(6, 16, 2, 128)
    assert phases.count("prefill") == 2 and len(tokens) == 8
    stats = PRESETS["skewed"]
    steps = list(generate_steps(OLMOE, stats, tokens, phases, seed=3))
    again = list(generate_steps(OLMOE, stats, tokens, phases, seed=3))
    assert all(np.array_equal(a.hists, b.hists) for a, b in zip(steps, again))
    path = write_trace(tmp_path / "g.jsonl", synthetic_header(OLMOE, stats, 3), steps)
    assert read_header(path).source == "synthetic:skewed"
    read = list(read_steps(path))  # validated on read: sums, caps, shapes
    assert [s.tokens for s in read] == tokens


def test_presets_order_skew_and_correlation():
    def summary(name):
        tokens = [512] * 6
        return routing_summary(list(generate_steps(OLMOE, PRESETS[name], tokens,
                                                   ["decode"] * 6, seed=0)))

    uniform, skewed, hot = summary("uniform"), summary("skewed"), summary("hot")
    assert uniform["max_mean_ratio"] < skewed["max_mean_ratio"] < hot["max_mean_ratio"]
    assert skewed["step_correlation"] > 0.8 > uniform["step_correlation"]


def test_routing_stats_validation():
    with pytest.raises(InputError, match="rho"):
        RoutingStats("x", (0.1, 0.2), 0, 1.0, 1.0, 0.1)


def test_azure_csv(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:50.9951690,396,109\n")
    got = list(read_azure_csv(path))
    assert [(a.prompt, a.output) for a in got] == [(374, 44), (396, 109)]
    assert got[0].time == 0 and got[1].time == pytest.approx(4.314579, abs=1e-5)
    path.write_text(path.read_text() + "2023-11-16 18:15:51.0,0,3\n")
    with pytest.raises(InputError, match=r"\.csv:4: field 'ContextTokens'"):
        list(read_azure_csv(path))
    path.write_text("time,prompt\n")
    with pytest.raises(InputError, match="missing column"):
        list(read_azure_csv(path))


def test_shipped_traces_are_valid():
    root = resources.files("ramp") / "data" / "traces"
    for name in ("qwen3-30b-a3b", "mixtral-8x7b"):
        path = root / f"{name}.jsonl"
        header = read_header(path)
        model = get_model(header.model)
        assert (header.num_experts, header.top_k) == (model.num_experts, model.top_k)
        assert sum(1 for _ in read_steps(path)) == 56
    arrivals = list(read_arrivals(root / "azure-conv-2023.arrivals.jsonl"))
    assert len(arrivals) == 19366 and 3400 < arrivals[-1].time < 3600
