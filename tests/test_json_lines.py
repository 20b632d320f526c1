"""Type and range errors in JSON inputs name the file, the line and column of the
offending value, and the field, on one line (exit status 2 from the CLIs): profiles
(``ramp profile-info``, ``ramp-sim replay --profile``), layer plans, measurements and
``ramp evaluate --baselines``. ``read_json`` finds where each value starts on demand."""

import copy
import gc
import json
import pickle

import pytest
from cli_errors import one_error_line
from hypothesis import given
from hypothesis import strategies as st

from ramp.cli import main as ramp_main
from ramp.errors import InputError
from ramp.layerplan import embedded_layer_plans, load_layer_plan
from ramp.plaindata import JsonList, JsonMap, YamlList, YamlMap, mark_of, read_json, type_name
from ramp.profile import embedded_profile_paths
from ramp.sim.cli import main as sim_main

QWEN_W13 = next(p for p in embedded_profile_paths()
                if "w13-E128" in p.name and p.name.endswith("_triton.json"))
RAW = "bench/results/raw/H100-SXM_w13-E128-N1536-K2048-top8-bfloat16"


def place(text, before, value=""):
    """``line:column`` of the value after ``before``; ``before + value`` occurs once in
    ``text``."""
    assert text.count(before + value) == 1, before + value
    at = text.index(before + value) + len(before)
    return f"{text.count(chr(10), 0, at) + 1}:{at - text.rfind(chr(10), 0, at)}"


def error_line(main, args, at):
    """Run a CLI: exit 2, no traceback, one error line starting with ``at``."""
    line = one_error_line(main, args)
    assert line.startswith(f"error: {at}: "), line
    return line


# (an edit of the shipped profile, text just before the bad value, the message)
@pytest.mark.parametrize("edit, needle, message", [
    (lambda d: d["model"].update(num_sms=0), '"num_sms": ',
     "model: field 'num_sms' must be an int in 1..4096, got 0"),
    (lambda d: d.update(provenance=[1]), '"provenance": ',
     "field 'provenance' must be an object, got list"),
    (lambda d: d["problem"].update(top_k=True), '"top_k": ',
     "problem: field 'top_k' must be an int"),
    (lambda d: d.update(static_table={"-1": 0}), '"-1": ',
     "field 'static_table' key '-1' is not a token count >= 1"),
    (lambda d: d.update(static_table={"3": 999}), '"3": ',
     "static_table names config 999 for 3 tokens"),
    (lambda d: d.update(static_table=[]), '"static_table": ',
     "field 'static_table' must be a non-empty object"),
    (lambda d: d.update(family_version=2), '"family_version": ',
     "field 'family_version' must be a non-empty string, got 2"),
    (lambda d: d.update(schema="ramp-profile/0"), '"schema": ', "field 'schema' is"),
    (lambda d: d["model"]["configs"][2].update(block_m="64"), ('"block_m": ', '"64"'),
     "model.configs[2]: field 'block_m' must be an int, got the string '64'"),
    (lambda d: d["model"]["configs"][1].update(speed=1), '"speed": ',
     "model.configs[1]: unknown field(s) ['speed']"),
    (lambda d: d["model_error"].update(error=[0.1] * (len(d["model_error"]["tokens"]) - 1)
                                       + [1.5]), '"error": ',
     "model_error: model error: errors must lie in [0, 1)"),
])
def test_profile_errors_name_the_line(tmp_path, edit, needle, message):
    data = json.loads(QWEN_W13.read_text())
    edit(data)
    path = tmp_path / "p.json"
    text = json.dumps(data, indent=1)
    path.write_text(text)
    at = f"{path}:{place(text, *(needle if isinstance(needle, tuple) else (needle,)))}"
    for main, args in ((ramp_main, ["profile-info", path]),
                       (sim_main, ["replay", "qwen3-30b-a3b", "--profile", path,
                                   "--requests", 5])):
        assert message in error_line(main, args, at)


@pytest.mark.parametrize("key, value, message", [
    ("margin", 2, "layer plan: margin 2.0 must be in [0, 1)"),
    ("ep", 0, "layer plan: ep 0 must be an int in 1..1024"),
    ("gpu", 5, "field 'gpu' must be a string, got 5"),
    ("bogus", 1, "unknown field(s) ['bogus']"),
    ("schema", "x", "field 'schema' is 'x'"),
])
def test_layer_plan_errors_name_the_line(tmp_path, key, value, message):
    data = json.loads(embedded_layer_plans()[0].read_text())
    data[key] = value
    path = tmp_path / "plan.json"
    text = json.dumps(data, indent=1)
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_layer_plan(path)
    assert str(exc.value).startswith(f"{path}:{place(text, f'{json.dumps(key)}: ')}: ")
    assert message in str(exc.value) and "\n" not in str(exc.value), exc.value


def test_layer_plan_times_name_a_line(tmp_path):
    """A message naming two fields (times_us and the path 'engine') is placed at the
    object that holds both."""
    data = json.loads(embedded_layer_plans()[0].read_text())
    path = next(iter(data["times_us"]))
    data["times_us"][path][1] = -1.0
    file = tmp_path / "plan.json"
    text = json.dumps(data, indent=1)
    file.write_text(text)
    with pytest.raises(InputError) as exc:
        load_layer_plan(file)
    assert str(exc.value).startswith(f"{file}:1:1: "), exc.value
    assert f"times_us[{path!r}] must be positive or null" in str(exc.value)


def test_baselines_and_measurements_name_the_line(tmp_path):
    base = tmp_path / "b.json"
    base.write_text('{\n "ramp_us": null,\n "grouped_mm_us": [1]\n}\n')
    common = ["evaluate", "--profile", f"{RAW}_triton.profile.json", "--holdout",
              f"{RAW}_triton.holdout.json", "--out", tmp_path / "e.json"]
    line = error_line(ramp_main, [*common, "--baselines", base], f"{base}:3:19")
    assert "field 'grouped_mm_us' must list 35 numbers" in line
    with open(f"{RAW}_triton.holdout.json") as f:
        held = json.load(f)
    held["problem"]["num_experts"] = "128"
    bad = tmp_path / "h.json"
    text = json.dumps(held, indent=1)
    bad.write_text(text)
    common[4] = bad
    at = place(text, '"num_experts": ')
    line = error_line(ramp_main, common, f"{bad}:{at}")
    assert "problem: field 'num_experts' must be an int, got the string '128'" in line


def test_read_json_marks(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"a": 1,\r\n\t"b": [1, {"c}":\n  ["\\"]", 3]}, []],\n'
                    '"é": {"x" : "y"}, "a": {}}\n')
    data = read_json(path, "test")
    assert isinstance(data, JsonMap) and isinstance(data["b"], JsonList)
    assert isinstance(data, YamlMap) and isinstance(data["b"], YamlList)
    assert type_name(data) == "dict" and type_name(data["b"]) == "list"
    assert str(data.mark) == f"{path}:1:1"
    assert str(mark_of(data, "a")) == f"{path}:4:24"  # a repeated key: the last value
    assert str(mark_of(data, "b")) == f"{path}:2:7"
    assert [str(m) for m in data["b"].marks] == [f"{path}:2:8", f"{path}:2:11", f"{path}:3:16"]
    assert [str(m) for m in data["b"][1]["c}"].marks] == [f"{path}:3:4", f"{path}:3:11"]
    assert str(mark_of(data["é"], "x")) == f"{path}:4:13"  # columns count characters
    # copies keep the marks; pickles and deep copies are YAML containers with them found
    for clone in (copy.copy(data["é"]), copy.deepcopy(data)["é"],
                  pickle.loads(pickle.dumps(data))["é"]):
        assert clone == {"x": "y"} and str(mark_of(clone, "x")) == f"{path}:4:13"
    kept = read_json(path, "test")["é"]
    gc.collect()  # what outlives its document keeps its data, not the document
    assert kept == {"x": "y"} and mark_of(kept, "x") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
    max_leaves=20)


@given(value=json_values, indent=st.sampled_from([None, 0, 1, 3, "\t"]),
       ascii_only=st.booleans())
def test_every_mark_is_where_its_value_starts(tmp_path_factory, value, indent, ascii_only):
    path = tmp_path_factory.mktemp("j") / "v.json"
    text = json.dumps({"v": value}, indent=indent, ensure_ascii=ascii_only)
    path.write_text(text, encoding="utf-8")
    lines = text.split("\n")
    decoder = json.JSONDecoder()

    def check(data):
        if not isinstance(data, (dict, list)):
            return
        keys = list(data) if isinstance(data, dict) else range(len(data))
        for key in keys:
            mark = mark_of(data, key)
            offset = sum(len(line) + 1 for line in lines[:mark.line - 1]) + mark.column - 1
            assert decoder.raw_decode(text, offset)[0] == data[key]
            check(data[key])

    check(read_json(path, "test"))
