"""Property-based fuzzing of every reader of user input: the trace line parser and
reader, the histogram spec parser, the profile and layer-plan loaders, the scenario,
calibration and price-table loaders and the CLIs' options. Any input may be refused,
but only with RaMP's own errors (RampError, TraceWarning; from a YAML file, one line
naming the file and line); any other exception is a bug. Hypothesis runs derandomized (conftest.py),
a few hundred examples per target, well under a minute in all; RAMP_FUZZ_SCALE=N runs N
times as many examples, with fresh random draws."""

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramp.cli import main as ramp_main
from ramp.errors import RampError
from ramp.histograms import parse_histogram_spec
from ramp.layerplan import PATHS, embedded_layer_plans, load_layer_plan
from ramp.profile import Profile, embedded_profile_paths, load_profile
from ramp.sim.cli import main as sim_main
from ramp.sim.whatif import check_job, expand, load_scenario
from ramp.trace import TraceHeader, TraceReader, TraceStep, TraceWarning, parse_step

HEADER = TraceHeader(model="toy", layers=2, moe_layers=2, num_experts=4, top_k=2, hidden=8,
                     moe_intermediate=8)
STEP = json.loads(TraceStep(3, "decode", 2, np.array([[1, 1, 1, 1], [2, 2, 0, 0]]),
                            time=0.5).to_json())
PROFILE_PATH = next(p for p in embedded_profile_paths() if "w13-E8-" in p.name
                    and p.name.endswith("_grouped_mm.json"))  # a small bank: fast to load
PROFILE = json.loads(PROFILE_PATH.read_text())
PLAN = json.loads(embedded_layer_plans()[0].read_text())
PLAN = {**PLAN, "tokens": PLAN["tokens"][:3], "choices": PLAN["choices"][:3],  # mutations
        **{key: {p: v[:3] for p, v in PLAN[key].items()} for key in ("times_us", "configs")}}
SCENARIO = {"name": "f", "seed": 1, "routing": {"trace": "qwen3-30b-a3b"},
            "workload": {"rate": 10, "requests": 20, "prompt": {"dist": "fixed", "mean": 8}},
            "base": {"gpu": "H200", "gpus": 2, "policies": ["static", "ramp"],
                     "engine": {"max_seqs": 8}, "slo": {"ttft_s": 1.0}},
            "sweep": {"mode": ["tp", "ep"], "workload.rate": [1, 2]}}
SCALE = int(os.environ.get("RAMP_FUZZ_SCALE", "1"))


def bounded(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


FAST = bounded(150)

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)


@st.composite
def mutated(draw, base):
    """``base`` (a JSON-like mapping) with one value replaced by arbitrary JSON, or one
    key deleted or added, at a random depth."""
    data = json.loads(json.dumps(base))
    node = data
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and draw(st.booleans()):
            node = child
            continue
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            node[key] = draw(json_values)
        elif action == "delete":
            del node[key]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=8))] = draw(json_values)
        else:
            node.append(draw(json_values))
        break
    return data


def agrees(given, loaded) -> bool:
    """Every value ``given`` is the value ``loaded`` (defaults may fill in the rest of a
    mapping): NaN is NaN, true is not 1, 2 is 2.0."""
    if isinstance(given, (list, tuple)) and isinstance(loaded, (list, tuple)):
        return len(given) == len(loaded) and all(map(agrees, given, loaded))
    if isinstance(given, dict) and isinstance(loaded, dict):
        return all(k in loaded and agrees(v, loaded[k]) for k, v in given.items())
    if isinstance(given, float) and isinstance(loaded, float) and given != given:
        return loaded != loaded
    return isinstance(given, bool) == isinstance(loaded, bool) and given == loaded


def only_ramp_errors(fn, *args):
    """Call ``fn``; RampError and TraceWarning are the allowed refusals."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceWarning)
        try:
            return fn(*args)
        except RampError:
            return None


# --- trace lines and files ----------------------------------------------------------

@FAST
@given(st.one_of(st.text(max_size=200), mutated(STEP), json_values))
def test_trace_line_parser(value):
    text = value if isinstance(value, str) else json.dumps(value)
    only_ramp_errors(parse_step, text, HEADER, "t.jsonl:2")


@FAST
@given(lines=st.lists(st.one_of(st.binary(max_size=60), mutated(STEP).map(
    lambda d: json.dumps(d).encode())), max_size=5), gz=st.booleans(), tail=st.booleans())
def test_trace_reader_on_arbitrary_bytes(tmp_path, lines, gz, tail):
    import gzip

    header = json.dumps(HEADER.to_dict()).encode()
    data = b"\n".join([header, *lines]) + (b"\n" if tail else b"")
    path = tmp_path / "t.jsonl"
    path.write_bytes(gzip.compress(data) if gz else data)
    for strict in (True, False):
        only_ramp_errors(lambda s=strict: list(TraceReader(path, strict=s)))


# --- histogram specs ---------------------------------------------------------------

numbers = st.one_of(st.integers(-10**6, 10**30).map(str), st.floats().map(repr),
                    st.text(alphabet="0123456789.eE+-٣²", max_size=8))
specs = st.one_of(
    st.text(max_size=40),
    st.builds(lambda kind, pairs: kind + ":" + ",".join(f"{k}={v}" for k, v in pairs),
              st.sampled_from(["uniform", "zipf", "hot", "dirichlet", "Zipf", "x"]),
              st.lists(st.tuples(st.sampled_from(["tokens", "seed", "s", "alpha",
                                                  "hot_fraction", "hot_experts", "q"]),
                                 numbers), max_size=4)),
    st.lists(numbers, min_size=1, max_size=10).map(",".join),
)


@FAST
@given(spec=specs, experts=st.integers(1, 16), top_k=st.integers(1, 4))
def test_histogram_spec_parser(spec, experts, top_k):
    top_k = min(top_k, experts)
    hist = only_ramp_errors(parse_histogram_spec, spec, experts, top_k)
    if hist is not None:
        assert hist.shape == (experts,) and int(hist.sum()) % top_k == 0


# --- profiles ----------------------------------------------------------------------

@bounded(100)
@given(data=mutated(PROFILE))
def test_profile_loader(data):
    profile = only_ramp_errors(Profile.from_dict, data, "p.json")
    if profile is not None:  # what loads must round-trip and dispatch
        again = Profile.from_dict(profile.to_dict(), "again")
        assert again.key == profile.key
        profile.dispatcher("static").choose(np.full(profile.problem.num_experts, 0))


@pytest.mark.parametrize("loader", [load_profile, load_layer_plan],
                         ids=["profile", "layer_plan"])
@bounded(50)
@given(data=st.binary(max_size=200))
def test_json_loaders_on_arbitrary_bytes(tmp_path, loader, data):
    path = tmp_path / "input.json"
    path.write_bytes(data)
    only_ramp_errors(loader, path)


# --- layer plans -------------------------------------------------------------------

@bounded(100)
@given(data=mutated(PLAN))
def test_layer_plan_loader(tmp_path, data):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    plan = only_ramp_errors(load_layer_plan, path)
    if plan is not None:  # what loads is what the file says, and chooses for any size
        assert agrees({k: v for k, v in data.items() if k != "choices"}, plan.to_dict()), data
        assert {plan.choose(t) for t in (1, plan.tokens[-1], plan.tokens[-1] + 1)} <= set(PATHS)


# --- scenarios ---------------------------------------------------------------------

@bounded(150)
@given(data=mutated(SCENARIO), raw=st.text(max_size=80), use_raw=st.booleans())
def test_scenario_loader(tmp_path, data, raw, use_raw):
    path = tmp_path / "s.yaml"
    path.write_text(raw if use_raw else yaml.safe_dump(data))
    try:
        for job in expand(load_scenario(path)):
            check_job(job)
    except RampError as exc:  # one line that names the file and the line
        assert re.match(rf"{re.escape(str(path))}:\d+[: ]", str(exc)), str(exc)
        assert "\n" not in str(exc), str(exc)


@bounded(100)
@given(prices=mutated({"currency": "USD", "per_gpu_hour": {"H200": 3.8, "H100-SXM": 3}}),
       calibration=mutated({"moe_scale": 1.0, "step_overhead_us": 1500}),
       raw=st.text(max_size=60), use_raw=st.booleans())
def test_price_and_calibration_loaders(tmp_path, prices, calibration, raw, use_raw):
    from ramp.plaindata import from_mapping, read_yaml
    from ramp.sim.capacity import load_prices
    from ramp.sim.costs import Calibration

    path = tmp_path / "x.yaml"
    for data in (prices, calibration):
        path.write_text(raw if use_raw else yaml.safe_dump(data))
        for load in (load_prices, lambda p: from_mapping(
                Calibration, read_yaml(p, "calibration", mapping=True), str(p))):
            try:
                load(path)
            except RampError as exc:  # one line that names the file and the line
                assert re.match(rf"{re.escape(str(path))}:\d+[: ]", str(exc)), str(exc)
                assert "\n" not in str(exc), str(exc)


# --- the CLIs' options -------------------------------------------------------------

option_values = st.one_of(st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e12",
                                           "3.5", "", "abc", "²", "H200", "ep"]),
                          st.integers(-5, 10**13).map(str), st.text(max_size=6))


def cli_is_clean(main, args):
    res = CliRunner().invoke(main, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        args, repr(res.exception))
    assert res.exit_code in (0, 2), (args, res.exit_code, res.output)
    assert "Traceback" not in res.output, args


REPLAY_OPTIONS = ["--time-scale", "--rate", "--prompt-mean", "--output-mean", "--gpu",
                  "--gpus", "--mode", "--policy", "--max-batched-tokens", "--max-seqs",
                  "--kv-capacity", "--switch-cost", "--slo-ttft", "--slo-tpot", "--samples",
                  "--seed", "--arrivals", "--profile", "--model"]


@bounded(40)
@given(st.lists(st.tuples(st.sampled_from(REPLAY_OPTIONS), option_values), max_size=3))
def test_replay_options(options):
    args = ["replay", "qwen3-30b-a3b", *[x for pair in options for x in pair],
            "--requests", "2", "--no-progress"]  # a valid run stays tiny
    cli_is_clean(sim_main, args)


@bounded(40)
@given(options=st.lists(st.tuples(st.sampled_from(["--decode-steps", "--decode-tokens",
                                                   "--prefill-steps", "--prefill-tokens",
                                                   "--seed", "--preset"]), option_values),
                        max_size=3),
       model=st.sampled_from(["olmoe-1b-7b", "nope", ""]))
def test_trace_generate_options(tmp_path, options, model):
    args = ["trace", "generate", model, str(tmp_path / "g.jsonl"), "--force",
            *[x for pair in options for x in pair], "--decode-steps", "2", "--prefill-steps",
            "1", "--prefill-tokens", "64"]  # a valid run stays tiny
    cli_is_clean(sim_main, args)


@bounded(60)
@given(options=st.lists(st.tuples(st.sampled_from(["--hist", "--top", "--profile"]),
                                  option_values), max_size=3), spec=specs)
def test_explain_options(options, spec):
    args = ["explain", "--profile", str(PROFILE_PATH), "--hist", spec,
            *[x for pair in options for x in pair]]
    cli_is_clean(ramp_main, args)


@pytest.mark.parametrize("command", [["profile-info"], ["trace", "info"]])
@bounded(25)
@given(data=st.binary(max_size=120))
def test_file_commands_on_arbitrary_bytes(tmp_path, command, data):
    path = Path(tmp_path) / "x.json"
    path.write_bytes(data)
    main = ramp_main if command == ["profile-info"] else sim_main
    cli_is_clean(main, [*command, str(path)])
