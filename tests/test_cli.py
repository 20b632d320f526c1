"""The ``ramp`` command as a user runs it: outputs, files, and one-line errors."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ramp.cli import main
from ramp.profile import embedded_profile_paths

PROFILE = str(next(p for p in embedded_profile_paths() if "w13-E128" in p.name
                   and p.name.endswith("_triton.json")))


RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_regions_table_plot_and_json(tmp_path):
    res = run("regions", "--gpu", "H100-SXM", "--model", "qwen3-30b-a3b",
              "--plot", str(tmp_path / "r.png"), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert "H100-SXM" in res.output and "Legend" in res.output
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert json.loads((tmp_path / "r.json").read_text())["cells"]


def test_profile_info_and_explain():
    res = run("profile-info", PROFILE)
    assert res.exit_code == 0, res.output
    assert "196 (triton)" in res.output and "NVIDIA H100" in res.output
    res = run("explain", "--profile", PROFILE, "--hist", "zipf:s=1.2,tokens=64,seed=3")
    assert res.exit_code == 0, res.output
    assert "<- ramp" in res.output and "why:" in res.output


def test_explain_takes_one_ep_ranks_view_with_local():
    """Three rows of a top-8 layer on one rank: not whole tokens, refused unless
    ``--local``, then explained at the T = 1 bucket."""
    counts = ",".join(["1", "0", "1", "1"] + ["0"] * 124)
    res = run("explain", "--profile", PROFILE, "--hist", counts)
    assert res.exit_code == 2 and "not a multiple of top_k=8" in res.output
    res = run("explain", "--profile", PROFILE, "--hist", counts, "--local")
    assert res.exit_code == 0, res.output
    assert "T=1 (3 rows)" in res.output and "active experts 3" in res.output


@pytest.mark.parametrize("args,match", [
    (["regions", "--gpu", "Z80"], "unknown GPU"),
    (["explain", "--profile", PROFILE, "--hist", "zipf:s=1.2"], "missing tokens"),
    (["explain", "--profile", PROFILE, "--hist", "1,2,3"], "length 3"),
    (["profile-info", "/nonexistent.json"], "cannot read profile"),
])
def test_bad_input_is_one_line_no_traceback(args, match):
    res = run(*args)
    assert res.exit_code == 2
    assert match in res.output
    assert "Traceback" not in res.output


def test_evaluate_and_fit_reproduce_results(tmp_path):
    raw = RESULTS / "raw" / "H100-SXM_w13-E128-N1536-K2048-top8-bfloat16"
    out = tmp_path / "e.json"
    res = run("evaluate", "--profile", f"{raw}_triton.profile.json",
              "--holdout", f"{raw}_triton.holdout.json",
              "--baselines", f"{raw}_baselines.json", "--out", str(out))
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    shipped = json.loads(
        (RESULTS / "H100-SXM_w13-E128-N1536-K2048-top8-bfloat16.json").read_text())
    assert result["regret"] == shipped["regret"]
    res = run("fit", f"{raw}_grouped_mm.train.json", "--out", str(tmp_path / "g.json"))
    assert res.exit_code == 0, res.output
    assert "2 configs" in res.output
    measured = json.loads(Path(f"{raw}_grouped_mm.train.json").read_text())["provenance"]
    fitted = json.loads((tmp_path / "g.json").read_text())["provenance"]
    assert fitted["measured_by"] == measured["command"]  # the GPU command survives the refit


def test_model_error_remeasures_the_error_and_keeps_the_fit(tmp_path):
    """`ramp model-error` gives a shipped profile the error its training file measures
    (the shipped ones were re-measured so: the same numbers), parameters untouched; a
    training file of another problem is refused with one line."""
    name = "H200_w13-E64-N2816-K2048-top6-bfloat16_triton-tiles"
    shipped = RESULTS.parents[1] / "ramp" / "data" / "profiles" / f"{name}.json"
    train = RESULTS / "raw" / "H200" / f"{name}.train.json"
    stale = json.loads(shipped.read_text())
    stale["model_error"]["error"] = [0.5] * len(stale["model_error"]["error"])
    (tmp_path / "p.json").write_text(json.dumps(stale))
    res = run("model-error", str(tmp_path / "p.json"), str(train), "--out",
              str(tmp_path / "q.json"))
    assert res.exit_code == 0, res.output
    got, want = (json.loads(p.read_text()) for p in (tmp_path / "q.json", shipped))
    assert got["model_error"] == want["model_error"]
    assert got["model"] == want["model"] and got["static_table"] == want["static_table"]
    other = RESULTS / "raw" / "H200" / "H200_w2-E64-N2048-K1408-top6-bfloat16_triton-tiles.train.json"
    res = run("model-error", str(tmp_path / "p.json"), str(other), "--out",
              str(tmp_path / "r.json"))
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0
    assert "the profile is" in res.output
