"""bench/hook_overhead.py runs on the CPU: the wrapped vLLM hook hands every call of an
engine-only plan to the engine and the file has its fields (the times are not judged:
timings belong in benchmarks)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
_SPEC = importlib.util.spec_from_file_location(
    "hook_overhead", Path(__file__).resolve().parents[1] / "bench" / "hook_overhead.py")
ho = importlib.util.module_from_spec(_SPEC)
sys.modules["hook_overhead"] = ho
_SPEC.loader.exec_module(ho)


def test_hook_overhead_writes_its_fields(tmp_path):
    out = tmp_path / "h.json"
    assert ho.main(["--model", "qwen3-30b-a3b", "--tokens", "64", "--calls", "50",
                    "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"] == "qwen3-30b-a3b" and doc["tokens"] == 64
    assert doc["hook_keywords_us"] > doc["bare_us"] > 0
    assert doc["added_per_eager_step_us"] == pytest.approx(doc["added_per_call_us"] * 48)
