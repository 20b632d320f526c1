"""Type and range errors in YAML inputs name the file, the line and column of the
offending value, and the field, on one line with exit status 2: what-if scenarios,
calibrations (--calibration, --base, a scenario's calibration:) and price tables."""

import copy
import pickle

import pytest
from cli_errors import one_error_line

from ramp.errors import InputError
from ramp.plaindata import YamlList, YamlMap, from_mapping, locate, read_yaml
from ramp.sim.cli import main as sim_main
from ramp.sim.costs import Calibration

SCENARIO = """\
name: lines
seed: 1
routing: {trace: qwen3-30b-a3b}
workload:
  rate: 10
  requests: 20
  prompt: {dist: lognormal, mean: 64}
base:
  gpu: H200
  gpus: 2
  engine:
    max_seqs: 8
  policies:
    - static
    - ramp
"""


def error_line(args, at):
    """Run ``ramp-sim args``: exit 2, no traceback, one error line, which starts with
    the place ``at`` (``file:line:``); returns that line."""
    line = one_error_line(sim_main, args)
    assert line.startswith(f"error: {at}"), line
    return line


# (what replaces which text of SCENARIO, the line:column of the bad value, the message)
@pytest.mark.parametrize("old, new, place, needle", [
    ("gpus: 2", "gpus: '8'", "10:9", "base: field 'gpus' must be an int, got the string '8'"),
    ("gpus: 2", "gpus: 2000", "10:9", "base: gpus must be in 1..1024"),
    ("gpu: H200", "gpu: H999", "9:8", "base: gpu: unknown GPU 'H999'"),
    ("max_seqs: 8", "max_seqs: -1", "12:15", "base.engine: engine: max_seqs and block_size"),
    ("max_seqs: 8", "max_seqs: 8\n    speed: 1", "13:12", "unknown field(s) ['speed']"),
    ("    - ramp", "    - 5", "15:7", "field 'policies'[1] must be a string, got 5"),
    ("mean: 64", "mean: abc", "7:35", "workload.prompt: field 'mean' must be a number"),
    ("requests: 20", "requests: 30.5", "6:13", "field 'requests' must be an int, got 30.5"),
    ("requests: 20", "requests: 1e12", "6:13", "the string '1e12'"),
    ("rate: 10", "rate: .nan", "5:9", "field 'rate' must be a finite number"),
    ("{trace: qwen3-30b-a3b}", "{trace: 5}", "3:18", "field 'trace' must be a file path"),
    ("seed: 1", "seed: -3", "2:7", "field 'seed' must be an int >= 0"),
    ("name: lines", "name: lines\nsweeps: {}", "2:9", "unknown section(s) ['sweeps']"),
    ("  gpu: H200\n", "  gpu: H200\n  slo: {ttft_s: -1}\n", "10:17", "base.slo: SLO: ttft_s"),
    ("  gpu: H200\n", "  gpu: H200\n  calibration:\n    moe_scale: 0\n", "11:16",
     "base.calibration: calibration.moe_scale must be finite and > 0"),
])
def test_scenario_errors_name_the_line(tmp_path, old, new, place, needle):
    path = tmp_path / "s.yaml"
    assert old in SCENARIO
    path.write_text(SCENARIO.replace(old, new, 1))
    line = error_line(["whatif", path, "--jobs", "1"], f"{path}:{place}: ")
    assert needle in line


@pytest.mark.parametrize("sweep, place, needle", [
    # the bad value's line in the sweep, also for a section the base does not have
    ("sweep:\n  gpus: [1,\n    0]\n", "18:5", "point {'gpus': 0} base: gpus must be in"),
    ("sweep:\n  gpus: [2, x]\n", "17:13", "field 'gpus' must be an int, got 'x'"),
    ("sweep:\n  switch.cost_s:\n    - 0.1\n    - -1\n", "19:7",
     "point {'switch.cost_s': -1} base.switch: switch: cost_s must be finite and >= 0"),
    ("sweep:\n  workload.rate: [1, .inf]\n", "17:22", "field 'rate' must be a finite"),
    ("sweep:\n  workload: [1]\n", "17:13", "sweep key 'workload' must name a field"),
    ("sweep:\n  mode: []\n", "17:9", "'sweep' maps keys to non-empty lists"),
])
def test_sweep_errors_name_the_line_of_the_value(tmp_path, sweep, place, needle):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO + sweep)
    line = error_line(["whatif", path, "--jobs", "1"], f"{path}:{place}: ")
    assert needle in line


CALIBRATION = "# fitted\nflops_efficiency: 0.7\nmoe_scale: {}\nstep_overhead_us: 1200.0\n"


@pytest.mark.parametrize("value, needle", [
    ("0", "calibration.moe_scale must be finite and > 0, got 0"),
    (".nan", "field 'moe_scale' must be a finite number, got nan"),
    ("'1.0'", "field 'moe_scale' must be a number, got the string '1.0'"),
    ("[1]", "field 'moe_scale' must be a number, got [1]"),
])
@pytest.mark.parametrize("command", [
    ["replay", "qwen3-30b-a3b", "--requests", "5", "--calibration"],
    ["capacity", "qwen3-30b-a3b", "--gpu-counts", "1", "--calibration"],
    ["calibrate", "SOURCE", "--out", "OUT", "--base"],
    ["whatif"],  # the same fields in a scenario's base.calibration
])
def test_calibration_errors_name_the_line(tmp_path, command, value, needle):
    if command == ["whatif"]:
        path = tmp_path / "s.yaml"
        path.write_text(SCENARIO.replace("base:\n", "base:\n  calibration:\n    "
                                         "flops_efficiency: 0.7\n    moe_scale: "
                                         f"{value}\n", 1))
        args, place = ["whatif", path, "--jobs", "1"], f"{path}:11:16"
    else:
        path = tmp_path / "c.yaml"
        path.write_text(CALIBRATION.format(value))
        (tmp_path / "src.json").write_text("{}")
        args = [{"SOURCE": tmp_path / "src.json", "OUT": tmp_path / "out.yaml"}.get(c, c)
                for c in command] + [path]
        place = f"{path}:3:12"
    assert needle in error_line(args, f"{place}: ")
    assert not (tmp_path / "out.yaml").exists()


@pytest.mark.parametrize("text, place, needle", [
    ("currency: EUR\nper_gpu_hour:\n  H200: 3.8\n  H100-SXM: -1\n", "4:13",
     "per_gpu_hour.H100-SXM must be a finite number >= 0, got -1"),
    ("currency: EUR\nper_gpu_hour:\n  H200: .inf\n", "3:9", "per_gpu_hour.H200 must be a finite"),
    ("currency: EUR\nper_gpu_hour:\n  H200: 3.8\n  H999: 1\n", "4:9",
     "per_gpu_hour: gpu: unknown GPU 'H999'"),
    ("currency: [EUR]\nper_gpu_hour: {H200: 3.8}\n", "1:11", "field 'currency' must be a string"),
    ("currency: EUR\nper_gpu_hour: [H200]\n", "2:15", "expected a mapping 'per_gpu_hour"),
])
def test_price_table_errors_name_the_line(tmp_path, text, place, needle):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    line = error_line(["capacity", "qwen3-30b-a3b", "--gpu-counts", "1", "--prices", path],
                      f"{path}:{place}: ")
    assert needle in line


def test_control_character_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("moe_scale: 1.0\nstep_overhead_us: 1\x1f\n")
    error_line(["replay", "qwen3-30b-a3b", "--requests", "5", "--calibration", path],
               f"{path}:2: not valid YAML (character '\\x1f'")


def test_read_yaml_remembers_places_through_copies_and_pickles(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  - 1\n  - {b: x}\n")
    data = read_yaml(path, "test")
    assert isinstance(data, YamlMap) and isinstance(data["a"], YamlList)
    assert data == {"a": [1, {"b": "x"}]}
    for again in (copy.deepcopy(data), pickle.loads(pickle.dumps(data))):  # spawn workers
        assert str(again["a"].marks[1]) == f"{path}:3:5"
        assert str(again["a"][1].marks["b"]) == f"{path}:3:9"
    assert locate(f"{path}: bad", data["a"], 0) == f"{path}:2:5: bad"
    assert locate(f"{path}:2:5: bad", data["a"][1], "b") == f"{path}:3:9: bad"
    assert locate(f"{path}x: bad", data, "a") == f"{path}x: bad"  # another file
    assert locate(f"{path}: bad", {"a": 1}, "a") == f"{path}: bad"  # not from YAML
    path.write_text("- 1\n")
    with pytest.raises(InputError, match=rf"^{path}:1:1: expected a mapping, got list$"):
        from_mapping(Calibration, read_yaml(path, "calibration"), str(path))
    path.write_text("# nothing\n\n")
    assert read_yaml(path, "calibration", mapping=True) == {}


@pytest.mark.parametrize("text, place, got", [
    ("- 1\n", "1:1", "list"), ("# the value:\n\n  5\n", "3:3", "int"),
    ("'abc'\n", "1:1", "str")])
def test_a_document_that_is_no_mapping_names_its_line(tmp_path, text, place, got):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    for args, what in ((["whatif", path], "scenario"),
                       (["replay", "qwen3-30b-a3b", "--calibration", path], "calibration"),
                       (["capacity", "qwen3-30b-a3b", "--prices", path], "price table")):
        error_line(args, f"{path}:{place}: {what} must be a mapping, got {got}")
