"""bench/layer_parts.py on the CPU: the remainder of each whole layer, the table, the
plot and bad input of ``--report`` (the timing needs a GPU and vLLM)."""

import importlib.util
import json
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "layer_parts", Path(__file__).resolve().parents[1] / "bench" / "layer_parts.py")
lp = importlib.util.module_from_spec(_SPEC)
sys.modules["layer_parts"] = lp
_SPEC.loader.exec_module(lp)


def _result():
    calls = [{"tokens": t, "ramp": {"route": 3.0, "w13": 10.0 * t, "w2": 6.0 * t,
                                    "top_k_sum": 2.0},
              "ramp_whole": 16.0 * t + 7.0, "vllm": {"assign": 4.0, "w13": 11.0 * t,
                                                     "w2": 6.5 * t},
              "vllm_whole": 17.5 * t + 4.0 + 6.0} for t in (1, 8)]
    return {"device": {"device": "test"}, "model": "m", "routing": "uniform", "calls": calls}


def test_rest_is_the_whole_minus_the_stages(tmp_path, capsys):
    result = _result()
    lp.with_rest(result["calls"])
    assert [c["ramp_rest"] for c in result["calls"]] == [2.0, 2.0]
    assert [c["vllm_rest"] for c in result["calls"]] == [6.0, 6.0]
    path = tmp_path / "parts.json"
    path.write_text(json.dumps(_result()))
    assert lp.main(["--report", str(path)]) == 0
    assert "T=    8  RaMP   135.0 = 3.0 + 80.0 + 48.0 + 2.0 + 2.0" in capsys.readouterr().out
    assert path.with_suffix(".png").stat().st_size > 10_000


def test_bad_report_and_options(tmp_path, capsys):
    data = _result()
    del data["calls"][1]["vllm_whole"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert lp.main(["--report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "calls[1]" in err and "'vllm_whole'" in err
    assert lp.main(["--model", "deepseek-v2-lite"]) == 2
    assert "--out" in capsys.readouterr().err


def test_grouped_mm_stages_are_reported_where_measured(tmp_path, capsys):
    """Files with the grouped_mm path's stages get its line and a third bar; its rest is
    its whole minus its stages."""
    data = _result()
    for c in data["calls"]:
        c["grouped_mm"] = {"route": 3.0, "gather": 1.0, "w13": 9.0 * c["tokens"],
                           "silu_mul": 1.0, "w2": 5.0 * c["tokens"], "top_k_sum": 2.0}
        c["grouped_mm_whole"] = 14.0 * c["tokens"] + 7.0 + 4.0
        c["grouped_mm_torch_glue_whole"] = 30.0 * c["tokens"]
    path = tmp_path / "gmm.json"
    path.write_text(json.dumps(data))
    assert lp.main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "grouped_mm   123.0 = 3.0 + 1.0 + 72.0 + 1.0 + 40.0 + 2.0 + 4.0   (torch glue 240.0)" \
        in out
    assert path.with_suffix(".png").stat().st_size > 10_000
