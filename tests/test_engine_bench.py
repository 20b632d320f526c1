"""bench/engine/bench.py on the CPU: a run's summary (throughput, TTFT/TPOT, the
per-request times online runs keep) and the machine state recorded around every run.
Driving vLLM needs the GPU machine."""

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "engine_bench", Path(__file__).resolve().parents[1] / "bench" / "engine" / "bench.py")
eb = importlib.util.module_from_spec(_SPEC)
sys.modules["engine_bench"] = eb  # dataclasses look their module up while the class is made
_SPEC.loader.exec_module(eb)

RAW = {"elapsed_s": 2.0, "requests": [
    {"arrival": 0.0, "sent": 0.01, "first": 0.11, "done": 1.01, "prompt": 10, "output": 10},
    {"arrival": 0.5, "sent": 0.52, "first": 0.82, "done": 1.92, "prompt": 30, "output": 12}]}


def test_online_summary_keeps_every_request():
    s = eb.summarize(RAW, online=True)
    assert s["total_tok_per_s"] == pytest.approx((40 + 22) / 2.0)
    assert s["ttft_ms_p50"] == pytest.approx(215.0)          # from arrival: 110 and 320 ms
    assert s["tpot_ms_p50"] == pytest.approx(100.0)          # 900/9 and 1100/11 ms
    assert [r["sent"] - r["arrival"] for r in s["requests"]] == pytest.approx([0.01, 0.02])
    assert s["offered_tok_per_s"] == pytest.approx((40 + 22) / 0.5)  # arrivals span 0.5 s
    assert s["ttft_ms_p50_by_quarter"] == pytest.approx([110.0, 320.0])  # in arrival order
    closed = eb.summarize(RAW, online=True, closed_loop=True)
    assert closed["ttft_ms_p50"] == pytest.approx(200.0)     # from sent: 100 and 300 ms
    assert "requests" not in eb.summarize(RAW, online=False)


def test_machine_state_around_a_run():
    host = eb.host_state()
    assert host["load_1min"] >= 0 and host.get("cpu_mhz_mean", 1.0) > 0
    gpu = eb.gpu_state()  # None where nvidia-smi is missing or fails (CI)
    assert gpu is None or set(gpu) == {"sm_mhz", "mem_mhz", "temp_c", "power_w"}
