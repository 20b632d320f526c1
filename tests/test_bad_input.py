"""Every bad input of issue 15: one line naming the file, line and field (or the option),
exit status 2, no traceback, and nothing already written lost."""

import gzip
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from ramp.cli import main as ramp_main
from ramp.errors import CapacityError, InputError
from ramp.models import get_model
from ramp.profile import embedded_profile_paths
from ramp.sim.cli import main as sim_main
from ramp.sim.runner import SimConfig, build_layouts
from ramp.trace import TraceStep, TraceWriter, read_header, read_steps, write_trace
from ramp.traces import generate_steps, synthetic_header
from ramp.traces.generators import PRESETS

QWEN_W13 = next(p for p in embedded_profile_paths()
                if "w13-E128" in p.name and p.name.endswith("_triton.json"))


def fails(main, *args, needles=()):
    """Run a command that must fail on bad input; returns its one error line."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], res.output
    return errors[0]


def replay(*args, needles=()):
    return fails(sim_main, "replay", *args, needles=needles)


def profile_file(tmp_path, edit, name="p.json"):
    data = json.loads(QWEN_W13.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def scenario(tmp_path, **changes):
    data = {"name": "t", "seed": 1, "routing": {"trace": "qwen3-30b-a3b"},
            "workload": {"rate": 10, "requests": 20},
            "base": {"gpu": "H200", "gpus": 2, "policies": ["static", "ramp"]}}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def whatif(path, needles=()):
    return fails(sim_main, "whatif", path, "--jobs", "1", needles=needles)


# --- 1. replay changes nothing silently ------------------------------------------------

def test_replay_reports_profile_and_policy_errors_not_capacity(tmp_path):
    empty = profile_file(tmp_path, lambda d: d.update(static_table={}))
    replay("qwen3-30b-a3b", "--profile", empty, "--requests", 5,
           needles=(str(empty), "'static_table' must be a non-empty"))
    replay("qwen3-30b-a3b", "--profile", tmp_path / "absent.json", "--requests", 5,
           needles=("absent.json: cannot read profile",))
    for policy in ("oracle", "RAMP"):
        replay("qwen3-30b-a3b", "--policy", policy, "--requests", 5,
               needles=(f"policy {policy!r}",))
    whatif(scenario(tmp_path, base__mode="pp"), needles=("base", "mode 'pp' not in"))


def test_only_a_capacity_failure_tries_more_gpus_and_the_report_says_so():
    model = get_model("mixtral-8x7b")
    gpus, _, chosen = build_layouts(SimConfig(), model)
    assert gpus == 2 and chosen.startswith("2, the fewest that fit")
    assert "does not fit on 1 x H100-SXM" in chosen
    with pytest.raises(CapacityError, match="does not fit on 1 x"):
        build_layouts(SimConfig(gpus=1), model)
    with pytest.raises(InputError, match="cannot read profile") as info:
        build_layouts(SimConfig(profiles=("/absent.json",)), model)
    assert not isinstance(info.value, CapacityError)
    res = CliRunner().invoke(sim_main, ["replay", "mixtral-8x7b", "--rate", "5",
                                        "--requests", "10"])
    assert res.exit_code == 0, res.output
    assert "GPUs: 2, the fewest that fit (--gpus not given); fewer do not" in res.output


# --- 2. profile fields are range-checked -------------------------------------------------

@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["model"].update(num_sms=0), "field 'num_sms' must be an int in 1..4096"),
    (lambda d: d["model"].update(num_sms=-132), "field 'num_sms'"),
    (lambda d: d["model"].update(num_sms=True), "field 'num_sms'"),
    (lambda d: d.update(provenance=[1]), "field 'provenance' must be an object"),
    (lambda d: d["problem"].update(top_k=True), "problem: field 'top_k' must be an int"),
    (lambda d: d["problem"].update(num_experts=10 ** 9), "MoEProblem.num_experts"),
    (lambda d: d.update(static_table={"-1": 0}), "'static_table' key '-1'"),
    (lambda d: d.update(family_version=2), "field 'family_version'"),
])
def test_profile_fields_are_checked(tmp_path, edit, needle):
    path = profile_file(tmp_path, edit)
    fails(ramp_main, "explain", "--profile", path, "--hist", "uniform:tokens=8",
          needles=(str(path), needle))
    replay("qwen3-30b-a3b", "--profile", path, "--requests", 5, needles=(needle,))


# --- 4, 5. trace info streams; gzip and non-UTF-8 ---------------------------------------

def _trace(tmp_path, steps, name="t.jsonl"):
    out = tmp_path / name
    res = CliRunner().invoke(sim_main, ["trace", "generate", "olmoe-1b-7b", str(out),
                                        "--decode-steps", str(steps), "--prefill-steps", "0",
                                        "--decode-tokens", "8", "--force"])
    assert res.exit_code == 0, res.output
    return out


def test_trace_info_memory_does_not_grow_with_the_trace(tmp_path):
    def peak(path):
        tracemalloc.start()
        res = CliRunner().invoke(sim_main, ["trace", "info", str(path)])
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert res.exit_code == 0, res.output
        return top

    small, large = _trace(tmp_path, 20, "s.jsonl"), _trace(tmp_path, 400, "l.jsonl")
    peak(small)  # first call: imports and caches
    # 20x the steps: the old list(reader) held every step (peak ~20x)
    assert peak(large) < 2 * peak(small)


def test_gzip_trace_is_read_and_corrupt_gzip_named(tmp_path):
    plain = _trace(tmp_path, 6)
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    res = CliRunner().invoke(sim_main, ["trace", "info", str(packed)])
    assert res.exit_code == 0 and "steps: 6" in res.output and "gzip" in res.output
    assert [s.step for s in read_steps(packed)] == [s.step for s in read_steps(plain)]
    packed.write_bytes(gzip.compress(plain.read_bytes())[:-30])
    fails(sim_main, "trace", "info", packed, needles=("t.jsonl.gz:", "gzip stream"))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(InputError, match="gzip-compressed; not appending"):
        TraceWriter(packed, read_header(plain))


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = _trace(tmp_path, 4)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"decode"', b'"d\xffcode"')
    path.write_bytes(b"\n".join(lines))
    fails(sim_main, "trace", "info", path, needles=("t.jsonl:3: trace line is not UTF-8",))
    res = CliRunner().invoke(sim_main, ["trace", "info", str(path), "--lenient"])
    assert res.exit_code == 0 and "steps: 3" in res.output and "skipped 1" in res.output
    path.write_bytes(b"\n".join([*lines[:2], lines[3]]) + b"\n" + lines[4][:9] + b"\xe2\x82")
    res = CliRunner().invoke(sim_main, ["trace", "info", str(path)])  # torn mid-character
    assert res.exit_code == 0 and "torn True" in res.output
    bad = tmp_path / "bad.json"
    bad.write_bytes(QWEN_W13.read_bytes().replace(b'"triton"', b'"tr\xefton"', 1))
    fails(ramp_main, "profile-info", bad, needles=("bad.json:", "not UTF-8"))
    arrivals = tmp_path / "a.jsonl"
    arrivals.write_bytes(b'{"format": "ramp-arrivals/1"}\n{"time": 0, "prompt": 1, '
                         b'"output": 1}\n\xff\n')
    replay("qwen3-30b-a3b", "--arrivals", arrivals, needles=("a.jsonl:3", "UTF-8"))
    cal = tmp_path / "c.yaml"
    cal.write_bytes(b"moe_scale: 1.0\n# caf\xe9\n")
    replay("qwen3-30b-a3b", "--calibration", cal, "--requests", 5,
           needles=("c.yaml:2", "not UTF-8"))
    scen = scenario(tmp_path)
    scen.write_bytes(scen.read_bytes() + b"# \xff\n")
    whatif(scen, needles=("s.yaml:", "not UTF-8"))
    csv = tmp_path / "azure.csv"
    csv.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3\xff,4\n")
    fails(sim_main, "trace", "azure", csv, tmp_path / "out.jsonl",
          needles=("azure.csv", "not UTF-8"))


# --- 7, 11. sizes and histogram specs ----------------------------------------------------

@pytest.mark.parametrize("spec, needle", [
    ("uniform:tokens=1e9", "tokens=1e+09 must be a whole number in 0..131072"),
    ("uniform:tokens=1e12", "tokens=1e+12"),
    ("hot:tokens=1e8", "tokens=1e+08"),
    ("hot:tokens=1e80", "tokens=1e+80"),
    ("²", "entry 0 '²' is not a whole number"),
    ("٣," * 127 + "٣", "entry 0 '٣'"),
    ("uniform:tokens=٣", "non-numeric"),
    ("1" * 30 + ",0" * 127, "at most 12 digits"),
    ("100000000000" + ",0" * 127, "more than 131072 tokens"),
])
def test_histogram_specs_are_bounded_and_ascii(spec, needle):
    fails(ramp_main, "explain", "--profile", QWEN_W13, "--hist", spec, needles=(needle,))


def test_absurd_workload_sizes(tmp_path):
    whatif(scenario(tmp_path, workload__requests=10 ** 12),
           needles=("workload", "requests must be in 1..1000000"))
    whatif(scenario(tmp_path, base__engine={"max_batched_tokens": 10 ** 12}),
           needles=("base.engine", "max_batched_tokens"))


# --- 8, 9, 10, 12. options: ranges, NaN, outputs ------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--rate", "nan"], "--rate"), (["--rate", "5", "--requests", "0"], "--requests"),
    (["--time-scale", "nan"], "--time-scale"), (["--time-scale", "inf"], "--time-scale"),
    (["--slo-tpot", "nan"], "--slo-tpot"), (["--prompt-mean", "nan"], "--prompt-mean"),
    (["--seed", "-1"], "--seed"), (["--gpus", "0"], "--gpus"),
    (["--samples", "0"], "--samples"), (["--switch-cost", "-inf"], "--switch-cost"),
])
def test_replay_options_are_checked(args, option):
    replay("qwen3-30b-a3b", *args, needles=(f"'{option}'",))


@pytest.mark.parametrize("args, option", [
    (["--decode-tokens", "0"], "--decode-tokens"), (["--decode-steps", "-1"], "--decode-steps"),
    (["--seed", "-1"], "--seed"), (["--prefill-tokens", "10000000"], "--prefill-tokens"),
    (["--decode-steps", "0", "--prefill-steps", "0"], "--decode-steps"),
])
def test_trace_generate_options_are_checked(tmp_path, args, option):
    out = tmp_path / "g.jsonl"
    fails(sim_main, "trace", "generate", "olmoe-1b-7b", out, *args, needles=(f"'{option}'",))
    assert not out.exists()


def test_explain_top_must_be_positive():
    fails(ramp_main, "explain", "--profile", QWEN_W13, "--hist", "uniform:tokens=8",
          "--top", "-3", needles=("'--top'",))


def test_writer_checks_steps_with_the_readers_rules(tmp_path):
    header = synthetic_header(get_model("olmoe-1b-7b"), PRESETS["uniform"], 0)
    path = tmp_path / "w.jsonl"
    with TraceWriter(path, header) as writer:
        empty = np.zeros((header.moe_layers, header.num_experts), dtype=np.int64)
        with pytest.raises(InputError, match=r"w\.jsonl: step 0: field 'tokens'"):
            writer.append(TraceStep(0, "decode", 0, empty))
    assert path.read_text().count("\n") == 1  # the header only: nothing half-written


def test_nan_and_inf_in_files(tmp_path):
    cal = tmp_path / "c.yaml"
    for text, needle in (("moe_scale: .nan", "field 'moe_scale' must be a finite"),
                         ("step_overhead_us: .inf", "field 'step_overhead_us'"),
                         ("moe_scale: [1\n", "not valid YAML")):
        cal.write_text(text + "\n")
        replay("qwen3-30b-a3b", "--calibration", cal, "--requests", 5,
               needles=(str(cal), needle))
    whatif(scenario(tmp_path, workload__rate=float("nan")), needles=("field 'rate'",))
    path = _trace(tmp_path, 3)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"step":1,', '"step":1,"time":Infinity,')
    path.write_text("\n".join(lines) + "\n")
    fails(sim_main, "trace", "info", path, needles=("t.jsonl:3: field 'time' must be a finite",))


def test_deeply_nested_trace_line(tmp_path):
    path = _trace(tmp_path, 3)
    lines = path.read_text().splitlines()
    lines[2] = '{"step": ' + "[" * 100000 + "]" * 100000 + "}"
    path.write_text("\n".join(lines) + "\n")
    fails(sim_main, "trace", "info", path, needles=("t.jsonl:3: JSON nested too deeply",))
    res = CliRunner().invoke(sim_main, ["trace", "info", str(path), "--lenient"])
    assert res.exit_code == 0 and "skipped 1" in res.output


@pytest.mark.parametrize("changes, needles", [
    ({"base": [1]}, ("section 'base' must be a mapping",)),
    ({"base__gpus": "8"}, ("field 'gpus' must be an int, got the string '8'",)),
    ({"base__policies": 5}, ("field 'policies' must be a list",)),
    ({"base__policies": "ramp"}, ("field 'policies' must be a list",)),
    ({"workload__requests": 30.5}, ("field 'requests' must be an int, got 30.5",)),
    ({"workload__requests": "1e12"}, ("the string '1e12'", "1.0e+12")),
    ({"seed": "abc"}, ("field 'seed' must be an int >= 0",)),
    ({"workload": {"arrivals": "azure-conv-2023", "time_scale": "abc"}},
     ("field 'time_scale' must be a finite number",)),
    ({"sweep": {"workload": [1]}}, ("sweep key 'workload' must name a field",)),
    ({"routing": {"trace": 5}}, ("field 'trace' must be a file path",)),
])
def test_scenario_values_are_typed(tmp_path, changes, needles):
    whatif(scenario(tmp_path, **changes), needles=("s.yaml", *needles))


def test_yaml_1e12_is_reported_as_a_string(tmp_path):
    path = scenario(tmp_path)
    path.write_text(path.read_text().replace("requests: 20", "requests: 1e12"))
    whatif(path, needles=("field 'requests'", "the string '1e12'"))


def test_outputs_are_checked_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for option in ("--json", "--plot-dir"):
        # a path under a regular file cannot be created, even by root
        replay("qwen3-30b-a3b", option, blocker / "x", needles=(f"'{option}'", f"{blocker} is not a directory"))
    raw = "bench/results/raw/H100-SXM_w13-E128-N1536-K2048-top8-bfloat16"
    fails(ramp_main, "evaluate", "--profile", f"{raw}_triton.profile.json", "--holdout",
          f"{raw}_triton.holdout.json", "--out", tmp_path / "e.json", "--plot",
          blocker / "p.png", needles=("'--plot'",))
    for content, needle in (("[1]", "baselines are a JSON object"),
                            ('{"grouped_mm_us": [1]}', "field 'grouped_mm_us' must list 35")):
        (tmp_path / "b.json").write_text(content)
        fails(ramp_main, "evaluate", "--profile", f"{raw}_triton.profile.json", "--holdout",
              f"{raw}_triton.holdout.json", "--out", tmp_path / "e.json", "--baselines",
              tmp_path / "b.json", needles=("b.json", needle))
    fails(ramp_main, "evaluate", "--profile", f"{raw}_triton.profile.json", "--holdout",
          f"{raw}_triton.holdout.json", "--out", tmp_path / "e.json", "--baselines",
          tmp_path / "absent.json", needles=("absent.json: cannot read baselines",))


# --- 13. profiles are never quietly ignored ----------------------------------------------

def test_profiles_for_other_shapes_or_versions_are_errors(tmp_path):
    other = next(p for p in embedded_profile_paths() if "w13-E8-" in p.name
                 and p.name.endswith("_triton.json"))
    replay("qwen3-30b-a3b", "--profile", other, "--requests", 5,
           needles=(str(other), "matches none of the simulated GEMMs"))
    stale = profile_file(tmp_path, lambda d: d.update(family_version="0"))
    replay("qwen3-30b-a3b", "--profile", stale, "--requests", 5,
           needles=(str(stale), "field 'family_version' is '0'"))


# --- 14. edge cases --------------------------------------------------------------------

def test_bad_last_line_with_newline_is_an_error_not_torn(tmp_path):
    path = _trace(tmp_path, 3)
    text = path.read_text().splitlines()
    for tail in ("\n", "\n\n"):
        path.write_text("\n".join([*text, '{"step": 9}']) + tail)
        fails(sim_main, "trace", "info", path, needles=("t.jsonl:5: missing field",))
    path.write_text("\n".join([*text, '{"step": 9}']))  # no newline: torn
    res = CliRunner().invoke(sim_main, ["trace", "info", str(path)])
    assert res.exit_code == 0 and "torn True" in res.output


def test_header_only_trace_names_the_file(tmp_path):
    path = _trace(tmp_path, 2)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    replay(path, "--requests", 5, needles=(f"{path}: the routing trace has no steps",))


def test_generate_does_not_overwrite_without_force(tmp_path):
    path = _trace(tmp_path, 2)
    before = path.read_bytes()
    fails(sim_main, "trace", "generate", "olmoe-1b-7b", path,
          needles=(str(path), "exists; pass --force"))
    assert path.read_bytes() == before


def test_whatif_bad_point_named_before_running_and_failed_point_keeps_others(tmp_path):
    path = scenario(tmp_path, sweep={"engine.max_seqs": [4, -1]})
    whatif(path, needles=("point {'engine.max_seqs': -1}", "max_seqs"))
    # 1 x H100 holds qwen3 (a 1-GPU point runs) but not mixtral: only that point fails
    path = scenario(tmp_path, routing={"synthetic": None},
                    base={"gpu": "H100-SXM", "gpus": 1, "policies": ["static"]},
                    sweep={"model": ["qwen3-30b-a3b", "mixtral-8x7b"]})
    out = tmp_path / "w.json"
    res = CliRunner().invoke(sim_main, ["whatif", str(path), "--jobs", "1", "--json",
                                        str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "model=qwen3-30b-a3b" in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "point {'model': 'mixtral-8x7b'}" in errors[0]
    assert "does not fit on 1 x H100-SXM" in errors[0]
    points = json.loads(out.read_text())["points"]
    assert "runs" in points[0] and "error" in points[1]


def test_write_trace_failure_keeps_the_existing_file(tmp_path):
    model = get_model("olmoe-1b-7b")
    header = synthetic_header(model, PRESETS["uniform"], 0)
    path = write_trace(tmp_path / "t.jsonl", header,
                       generate_steps(model, PRESETS["uniform"], [8], ["decode"], 0))
    before = path.read_bytes()
    with pytest.raises(InputError, match="field 'tokens'"):
        write_trace(path, header, generate_steps(model, PRESETS["uniform"], [8, 0],
                                                 ["decode"] * 2, 0))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "t.jsonl"]


@pytest.mark.parametrize("args,needles", [
    (("--tolerance", "0"), ("--tolerance", "must be > 0")),   # used to search forever
    (("--tolerance", "5"), ("--tolerance", "below 1")),
    (("--rate", "-5"), ("--rate",)),
    (("--max-gpus", "0"), ("--max-gpus",)),
    (("--gpu-counts", "1,x"), ("--gpu-counts", "'1,x'")),
    (("--seed", "-1"), ("--seed",)),
    (("--plot", "cap.txt"), ("--plot", "cap.txt", ".png")),
])
def test_capacity_refuses_nonsense_numbers_before_running(tmp_path, args, needles):
    fails(sim_main, "capacity", "qwen3-30b-a3b", "--gpu", "H200", "--duration", "5",
          "--json", tmp_path / "c.json", *args, needles=needles)
    assert not (tmp_path / "c.json").exists()


def test_a_failed_write_keeps_the_old_file_whole(tmp_path):
    """Outputs go through a temporary file renamed at the end: a write that fails (a
    full disk, here a figure that cannot render) leaves the existing file as it was and
    no half file, and is one error naming the file."""
    from ramp.plaindata import write_atomically

    out = tmp_path / "r.json"
    out.write_text('{"kept": true}\n')

    def half_then_full(tmp):
        tmp.write_text('{"half')
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match=r"r\.json: cannot write JSON .*No space left"):
        write_atomically(out, half_then_full, "JSON")
    assert json.loads(out.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


MEASURED = (Path(__file__).parents[1] / "bench/results/raw"
            / "H100-SXM_w13-E8-N28672-K4096-top2-bfloat16_grouped_mm.train.json")


@pytest.mark.parametrize("edit,needles", [
    (lambda d: d["times_us"][1].__setitem__(0, "fast"), ("times_us[1]",)),
    (lambda d: d["times_us"][2].__setitem__(1, -3.0), ("times_us[2]", "> 0")),
    (lambda d: d["times_us"].pop(), ("'hists'", "rows")),
    (lambda d: d["times_us"][0].pop(), ("times_us[0]", "2 times")),
    (lambda d: d["hists"][3].__setitem__(0, -1), ("hists[3]", ">= 0")),
    (lambda d: d["hists"][0].pop(), ("hists[0]", "8 counts")),
    (lambda d: d["labels"].pop(), ("'labels'",)),
    (lambda d: d.__setitem__("times_us", {}), ("'times_us'",)),
])
def test_fit_names_the_bad_field_of_a_measurements_file(tmp_path, edit, needles):
    """`ramp fit` on malformed timings: one line naming the file, line and field (it
    used to crash in numpy, or fit a profile on negative times)."""
    if not MEASURED.exists():
        pytest.skip("shipped measurements not in this checkout")
    data = json.loads(MEASURED.read_text())
    edit(data)
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps(data, indent=1))
    line = fails(ramp_main, "fit", bad, "--out", tmp_path / "p.json", needles=needles)
    assert f"{bad}:" in line and not (tmp_path / "p.json").exists()


def test_converters_keep_an_existing_out_and_never_write_over_their_input(tmp_path):
    """Like `trace generate`, every converter replaces an existing OUT only with --force,
    and none takes one of its inputs as OUT (`trace azure a.csv a.csv` destroyed it)."""
    csv = tmp_path / "azure.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:15:46.0000000,3,4\n2023-11-16 18:15:47.0000000,5,6\n")
    out = tmp_path / "a.jsonl"
    out.write_text("kept\n")
    fails(sim_main, "trace", "azure", csv, out, needles=("a.jsonl: exists", "--force"))
    assert out.read_text() == "kept\n"
    fails(sim_main, "trace", "azure", csv, csv, needles=("azure.csv: is also an input",))
    assert csv.read_text().startswith("TIMESTAMP")
    res = CliRunner().invoke(sim_main, ["trace", "azure", str(csv), str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith('{"format"')
    results = tmp_path / "r.json"
    results.write_text("{}")
    fails(sim_main, "calibrate", results, "--out", results,
          needles=("--out is also a source",))
    assert results.read_text() == "{}"


def test_a_trace_naming_an_unknown_model_is_named_with_its_file(tmp_path):
    good = tmp_path / "g.jsonl"
    res = CliRunner().invoke(sim_main, ["trace", "generate", "qwen3-30b-a3b", str(good),
                                        "--decode-steps", "2", "--prefill-steps", "1"])
    assert res.exit_code == 0, res.output
    header, *steps = good.read_text().splitlines()
    data = json.loads(header)
    data["model"]["name"] = "gpt-moe-9000"
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([json.dumps(data), *steps]) + "\n")
    replay(trace, "--requests", 5, needles=("t.jsonl:1: header field 'model'",
                                            "'gpt-moe-9000'", "--model"))


def test_empty_lists_unknown_price_fields_and_repeated_yaml_keys_are_named(tmp_path):
    prices = tmp_path / "p.yaml"
    prices.write_text("currency: USD\nper_gpu_hours:\n  H200: 3\nper_gpu_hour:\n  H200: 3.8\n")
    cap = ("capacity", "qwen3-30b-a3b", "--gpu", "H200", "--prices", prices)
    fails(sim_main, *cap, needles=("p.yaml:3", "unknown field 'per_gpu_hours'"))
    prices.write_text("currency: USD\nper_gpu_hour:\n  H200: 3\n  H200: 3.8\n")
    fails(sim_main, *cap, needles=("p.yaml:4", "'H200' is given twice"))
    profile = profile_file(tmp_path, lambda d: d["model"].__setitem__("configs", []))
    fails(ramp_main, "profile-info", profile,
          needles=("p.json", "model.configs", "non-empty list"))
    results = tmp_path / "r.json"
    engine_results = Path(__file__).parents[1] / "bench/results/engine"
    source = engine_results / "H200_deepseek-v2-lite_online.json"
    if not source.exists():
        return
    results.write_text(json.dumps({**json.loads(source.read_text()), "runs": []}))
    fails(sim_main, "calibrate", results, "--out", tmp_path / "c.yaml",
          needles=("r.json:1:", "field 'runs' is empty"))
