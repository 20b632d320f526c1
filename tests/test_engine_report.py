"""bench/engine/report.py on the CPU: the paired comparison of online runs (both modes
serve the same requests at the same arrival times) and the overload verdict of runs that
predate the field."""

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "engine_report", Path(__file__).resolve().parents[1] / "bench" / "engine" / "report.py")
er = importlib.util.module_from_spec(_SPEC)
sys.modules["engine_report"] = er
_SPEC.loader.exec_module(er)


def _run(mode: str, repeat: int, tpot_s: list[float]) -> dict:
    reqs = [{"arrival": 0.1 * i, "sent": 0.1 * i, "first": 0.1 * i + 0.05,
             "done": 0.1 * i + 0.05 + 9 * t, "prompt": 100, "output": 10}
            for i, t in enumerate(tpot_s)]
    return {"ramp_mode": mode, "repeat": repeat, "requests": reqs}


def test_paired_tpot_compares_the_same_requests_slice_by_slice():
    off = [0.010] * 5 + [0.020] * 5
    on = [0.010] * 5 + [0.022] * 5       # RaMP 10% slower on the later half only
    data = {"modes": ["off", "dispatch"],
            "runs": [_run("off", 0, off), _run("dispatch", 0, on), _run("off", 1, off)]}
    rows = er.paired_tpot(data, parts=2)
    assert len(rows) == 1                # repeat 1 has no dispatch run to pair with
    assert rows[0]["ratio"] == pytest.approx([1.0, 1.1])
    assert rows[0]["tpot_ms_p50"]["off"] == pytest.approx([10.0, 20.0])
    moved = _run("dispatch", 0, on)
    moved["requests"][0]["arrival"] = 5.0  # other arrival times: not the same requests
    assert er.paired_tpot({"modes": ["off", "dispatch"],
                           "runs": [_run("off", 0, off), moved]}) == []


def test_old_runs_get_the_overload_verdict_from_their_requests():
    grown = _run("off", 0, [0.01] * 100)
    for i, r in enumerate(grown["requests"]):
        r["first"] = r["arrival"] + 0.05 + 0.05 * i   # TTFT 50 ms -> 5 s
    assert er.overloaded(grown)
    assert not er.overloaded(_run("off", 0, [0.01] * 100))
    assert er.overloaded({"overloaded": True}) and not er.overloaded({})


def test_eager_rows_take_the_shipped_plans_host_times_of_the_same_gpu_times():
    """The layer details of a full measurement carry no host times once ``--host-times``
    added them to the shipped plan: the eager check takes the shipped ones, and only for
    the GPU times they were measured beside (the sizes re-measured since get none)."""
    import json
    from dataclasses import replace

    from ramp.layerplan import ENGINE, LayerPlan

    details = Path(__file__).resolve().parents[1] / "bench/results/engine/layer"
    plan = LayerPlan.from_dict(
        json.loads((details / "H200_qwen3-30b-a3b_layer.json").read_text())["plan"], "test")
    shipped = er.with_shipped_host_times(plan)
    assert shipped.host_us and set(shipped.eager_choices) != {ENGINE}
    embedded = er.find_layer_plan(plan.gpu, plan.problem, "vllm")
    for i, t in enumerate(plan.tokens):
        kept = all(embedded.times_us[p][i] == plan.times_us[p][i] for p in plan.times_us)
        assert (shipped.host_us[ENGINE][i] is not None) == kept, t
    other = replace(plan, times_us={n: tuple(t * 1.01 if t else t for t in v)
                                    for n, v in plan.times_us.items()})
    assert er.with_shipped_host_times(other).host_us == {}
    assert set(er.with_shipped_host_times(other).eager_choices) == {ENGINE}


def test_the_table_shows_every_labels_paired_ratio():
    """A file of ``--modes off,dispatch,dispatch:launch``: each label's paired ratio."""
    runs = [{"ramp_mode": m, "repeat": 0, "total_tok_per_s": t}
            for m, t in (("off", 100.0), ("dispatch", 105.0), ("dispatch:launch", 97.0))]
    d = {"modes": ["off", "dispatch", "dispatch:launch"], "runs": runs,
         "median_total_tok_per_s": {r["ramp_mode"]: r["total_tok_per_s"] for r in runs},
         "range_total_tok_per_s": {r["ramp_mode"]: [r["total_tok_per_s"]] * 2 for r in runs},
         "ratio": 1.05, "paired_ratio_median": 1.05, "tokens_match": True,
         "paired_ratios": {"dispatch": 1.05, "dispatch:launch": 0.97}}
    row = er.table([("f.json", d)]).splitlines()[-1]
    assert "paired per mode dispatch 1.050x, dispatch:launch 0.970x" in row


def test_memory_table_shows_kv_per_mode_and_the_warm_up_rise():
    """Files that record the KV cache get a row; RaMP's plans entries (a pooled file's
    lists too) give the warm-up's first call and peak rise; files without them none."""
    with_kv = {"kv_cache_tokens": {"off": 308720, "dispatch": 300640},
               "ramp_plans": {"H200/w13": [{"plan": "p", "warm_up_tokens": 2048,
                                            "warm_up_peak_rise_mib": 12.5}]}}
    older = {"kv_cache_tokens": {"off": 1000, "dispatch": None}, "ramp_plans": None}
    text = er.memory_table([("a.json", with_kv), ("b.json", older), ("c.json", {})])
    assert "| `a.json` | off 308,720, dispatch 300,640 | T=2048, 12.5 MiB |" in text
    assert "| `b.json` | off 1,000 | - |" in text and "c.json" not in text
    assert er.memory_table([("c.json", {})]) == ""
