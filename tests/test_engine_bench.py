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


def test_gaps_between_tokens_are_pooled_into_quantiles():
    raw = {"elapsed_s": 1.0, "requests": [
        dict(RAW["requests"][0], gaps=[0.01] * 9),
        dict(RAW["requests"][1], gaps=[0.01] * 10 + [0.1])]}
    q = eb.summarize(raw, online=True)["itl_ms_quantiles"]
    assert q["50"] == pytest.approx(10.0) and q["99"] > 50.0   # one slow step of 20
    assert "gaps" not in eb.summarize(raw, online=True)["requests"][0]


def test_a_growing_queue_is_called_overloaded():
    n = 100  # TTFT grows from 50 ms to 5 s over the arrivals: the queue never drained
    reqs = [{"arrival": 0.1 * i, "sent": 0.1 * i, "first": 0.1 * i + 0.05 + 0.05 * i,
             "done": 0.1 * i + 6.0, "prompt": 100, "output": 10} for i in range(n)]
    grew = eb.summarize({"elapsed_s": 20.0, "requests": reqs}, online=True)
    assert grew["overloaded"] and grew["ttft_p50_last_tenth_s"] > 4.0
    flat = [dict(r, first=r["arrival"] + 0.05) for r in reqs]
    assert not eb.summarize({"elapsed_s": 20.0, "requests": flat}, online=True)["overloaded"]


def test_summarize_rebuilds_the_results_of_a_cut_run(tmp_path):
    """A raw log as a call cut at its limit leaves it: the header, both engines, the
    token check, two repeats of one workload and half of the next (no file for it)."""
    options = {"model": "deepseek-v2-lite", "modes": "off,dispatch",
               "workloads": "decode-heavy,prefill-heavy", "concurrent": True,
               "logprob_tol": 0.05}
    seq = [{"token_ids": [1, 2, 3], "logprobs": [-0.1, -0.2, -0.3]}]
    lines = [{"event": "start", "command": "python3 bench/engine/bench.py ...",
              "date": "2026-12-01T18:40:00Z", "options": options,
              "device": {"device": "NVIDIA H200"}, "engine": {"name": "vllm", "version": "0.26.0"}},
             {"event": "engine", "ramp_mode": "off",
              "info": {"max_num_seqs": 256, "kv_cache_tokens": 41_000}},
             {"event": "engine", "ramp_mode": "dispatch",
              "info": {"max_num_seqs": 256, "kv_cache_tokens": 40_500}},
             {"workload": "match", "ramp_mode": "off", "sequences": seq},
             {"workload": "match", "ramp_mode": "dispatch", "sequences": seq},
             {"workload": "decode-heavy", "warmup": True, "ramp_mode": "off",
              "total_tok_per_s": 1.0}]
    for rep, (off, on) in enumerate([(100.0, 110.0), (100.0, 90.0), (102.0, 108.0)]):
        lines += [{"workload": "decode-heavy", "warmup": False, "repeat": rep,
                   "ramp_mode": "off", "total_tok_per_s": off},
                  {"workload": "decode-heavy", "warmup": False, "repeat": rep,
                   "ramp_mode": "dispatch", "total_tok_per_s": on}]
    lines.append({"workload": "prefill-heavy", "warmup": False, "repeat": 0,
                  "ramp_mode": "off", "total_tok_per_s": 50.0})
    raw = tmp_path / "runs-deepseek-v2-lite.jsonl"
    raw.write_text("".join(eb.json.dumps(x) + "\n" for x in lines))
    eb.summarize_log([str(raw), "--out", str(tmp_path / "out")])
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["H200_deepseek-v2-lite_decode-heavy.json"]
    res = eb.json.loads((tmp_path / "out" / files[0]).read_text())
    assert res["ratio"] == pytest.approx(108.0 / 100.0) and len(res["runs"]) == 6
    assert res["paired_ratio_median"] == pytest.approx(108.0 / 102.0)  # the middle of 1.10, 0.90, 1.06
    assert res["tokens_match"] is True and res["ramp_calls"] is None
    assert res["engine"]["version"] == "0.26.0" and res["workload"]["input_len"] == 128
    assert res["kv_cache_tokens"] == {"off": 41_000, "dispatch": 40_500}  # each engine's


def test_kv_cache_tokens_read_from_the_engines_cache_config():
    """vLLM's own count where it has one, else blocks x block size, else None."""
    cache = eb.argparse.Namespace(kv_cache_size_tokens=None, num_gpu_blocks=100, block_size=16)
    assert eb.kv_cache_tokens(cache) == 1600
    cache.kv_cache_size_tokens = 1580
    assert eb.kv_cache_tokens(cache) == 1580
    assert eb.kv_cache_tokens(eb.argparse.Namespace()) is None


def test_summarize_names_a_bad_line(tmp_path, capsys):
    raw = tmp_path / "runs.jsonl"
    raw.write_text('{"event": "start"\n')
    with pytest.raises(SystemExit) as exit_:
        eb.summarize_log([str(raw), "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "runs.jsonl:1: not JSON" in capsys.readouterr().err
    start = {"event": "start", "command": "c", "date": "d", "device": {}, "engine": {},
             "options": {"workloads": "online", "modes": "off,dispatch"}}
    raw.write_text(eb.json.dumps(start) + "\n" + eb.json.dumps(
        {"workload": "online", "ramp_mode": "off", "repeat": 0}) + "\n")
    with pytest.raises(SystemExit):
        eb.summarize_log([str(raw), "--out", str(tmp_path)])
    assert "runs.jsonl:2: missing field 'total_tok_per_s'" in capsys.readouterr().err


def test_kernel_summary_of_a_profiled_run():
    ev = [{"ph": "X", "cat": "kernel", "name": "fused_moe_kernel", "ts": 0.0, "dur": 40.0},
          {"ph": "X", "cat": "kernel", "name": "attention", "ts": 20.0, "dur": 40.0},  # overlaps
          {"ph": "X", "cat": "kernel", "name": "fused_moe_kernel", "ts": 100.0, "dur": 20.0},
          {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 500.0}]
    s = eb.kernel_summary(ev)
    assert s["kernel_count"] == 3 and s["span_ms"] == pytest.approx(0.12)
    assert s["gpu_busy_ms"] == pytest.approx(0.08)     # [0, 60] and [100, 120]
    assert s["busy_fraction"] == pytest.approx(0.08 / 0.12)
    assert s["moe_fraction"] == pytest.approx(60.0 / 100.0)
    assert s["kernels"][0] == {"name": "fused_moe_kernel", "calls": 2, "total_ms": 0.06}
    assert eb.kernel_summary(ev[3:]) == {"kernel_count": 0}
    assert s["moe_op_ms"] == 0.0  # no MoE op in these events


def test_the_moe_ops_kernels_are_those_launched_inside_it_whatever_their_names():
    def launch(ts, corr, tid=1, cat="cuda_runtime"):
        return {"ph": "X", "cat": cat, "name": "cudaLaunchKernel", "ts": ts, "dur": 1.0,
                "pid": 0, "tid": tid, "args": {"correlation": corr}}

    def kernel(name, ts, dur, corr):
        return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur,
                "tid": 7, "args": {"correlation": corr}}

    def op(ts, dur):
        return {"ph": "X", "cat": "cpu_op", "name": "vllm::moe_forward_shared", "ts": ts,
                "dur": dur, "pid": 0, "tid": 1}

    ev = [op(10.0, 20.0), op(50.0, 5.0), op(52.0, 1.0),  # the last one nested in the second
          launch(12.0, 1), launch(15.0, 2, cat="cuda_driver"),  # Triton: cuLaunchKernel
          launch(40.0, 3), launch(16.0, 4, tid=2), launch(53.5, 6),
          kernel("moe_gemm_kernel", 100.0, 30.0, 1),
          kernel("reduce_kernel", 130.0, 10.0, 2),    # the top-k sum: no "moe" in its name
          kernel("attention", 140.0, 40.0, 3),        # launched between the ops
          kernel("other_thread", 180.0, 5.0, 4),      # another thread's launch
          kernel("graph_kernel", 185.0, 5.0, None),   # replayed in a CUDA graph
          kernel("moe_gemm_kernel", 190.0, 10.0, 6)]  # inside the second op
    s = eb.kernel_summary(ev)
    assert s["moe_op_ms"] == pytest.approx(0.050)
    assert s["moe_op_fraction"] == pytest.approx(50.0 / 100.0)
    assert s["moe_ms"] == pytest.approx(0.040)


def raw_log(path, options, throughputs, dispatch_first=False):
    """A raw log of one engine start: header, both engines, the token check and one
    alternating (off, dispatch) pair per entry of ``throughputs``."""
    seq = [{"token_ids": [1, 2, 3], "logprobs": [-0.1, -0.2, -0.3]}]
    lines = [{"event": "start", "command": f"bench.py {path.name}", "date": "2026-12-01",
              "options": options, "device": {"device": "NVIDIA H200"},
              "engine": {"name": "vllm", "version": "0.26.0"}},
             {"event": "engine", "ramp_mode": "off", "info": {"max_num_seqs": 256}},
             {"workload": "match", "ramp_mode": "off", "sequences": seq},
             {"workload": "match", "ramp_mode": "dispatch", "sequences": seq}]
    for rep, (off, on) in enumerate(throughputs):
        pair = [("off", off), ("dispatch", on)]
        lines += [{"workload": "decode-heavy", "repeat": rep, "ramp_mode": m,
                   "total_tok_per_s": v} for m, v in (pair[::-1] if dispatch_first else pair)]
    path.write_text("".join(eb.json.dumps(x) + "\n" for x in lines))
    return path


def test_summarize_pools_engine_starts(tmp_path, capsys):
    """Two calls of one configuration pool into one file whose ratio is over all the
    repeats, paired within each repeat whatever mode ran first, and whose ratio_by_call
    shows each call; logs of another configuration, a log named twice and a log with two
    start lines are refused, naming the field or line."""
    options = {"model": "deepseek-v2-lite", "modes": "off,dispatch", "concurrent": True,
               "workloads": "decode-heavy", "logprob_tol": 0.05, "repeats": 2,
               "max_cudagraph_capture_size": 2048}
    a = raw_log(tmp_path / "a.jsonl", options, [(100.0, 90.0), (100.0, 92.0)])
    b = raw_log(tmp_path / "b.jsonl", dict(options, repeats=1), [(100.0, 120.0)],
                dispatch_first=True)
    eb.summarize_log([str(a), str(b), "--out", str(tmp_path / "out"), "--tag", "capture2048"])
    res = eb.json.loads(
        (tmp_path / "out" / "H200_deepseek-v2-lite_decode-heavy_capture2048.json").read_text())
    assert len(res["runs"]) == 6 and res["calls"] == 2
    assert res["ratio"] == pytest.approx(92.0 / 100.0)
    assert res["ratio_by_call"] == pytest.approx([0.91, 1.2])
    assert res["paired_ratio_median"] == pytest.approx(0.92)  # the middle of 0.90, 0.92, 1.20
    assert res["command"] == ["bench.py a.jsonl", "bench.py b.jsonl"]
    assert res["tokens_match"] is True and res["token_checks_per_call"] == [True, True]
    assert "--tag capture2048" in res["summarize_command"]

    def refused(*logs, allow=()):
        with pytest.raises(SystemExit) as exit_:
            eb.summarize_log([*map(str, logs), "--out", str(tmp_path / "out"),
                              *[f"--allow-differing={o}" for o in allow]])
        assert exit_.value.code == 2
        return capsys.readouterr().err

    c = raw_log(tmp_path / "c.jsonl", dict(options, max_cudagraph_capture_size=None),
                [(100.0, 100.0)])
    assert "c.jsonl: field 'options.max_cudagraph_capture_size'" in refused(a, c)
    d = raw_log(tmp_path / "d.jsonl", dict(options, profile_workloads="decode-heavy"),
                [(100.0, 100.0)])  # an option only the later log has
    assert "d.jsonl: field 'options.profile_workloads'" in refused(a, d)
    eb.summarize_log([str(a), str(d), "--out", str(tmp_path / "ok"),
                      "--allow-differing", "profile_workloads"])
    assert "a log named twice" in refused(a, a)
    (tmp_path / "e.jsonl").write_text(a.read_text() + a.read_text())
    assert "e.jsonl:9: a second 'start' line" in refused(tmp_path / "e.jsonl")
    assert res["ramp_calls"] is None and res["ramp_calls_calls"] == 0  # no counts anywhere


def test_summarize_sums_the_calls_served_counts(tmp_path, capsys):
    """RaMP's served calls of pooled calls: a log's own stats line, plus calls' results
    files for logs written without one (each call counted once, however many of its
    workloads' files are named); the results file of a call whose log has its stats
    line is refused, as it would count twice."""
    options = {"model": "deepseek-v2-lite", "modes": "off,dispatch", "concurrent": True,
               "workloads": "decode-heavy", "logprob_tol": 0.05}
    shape = "H200/w13-E64-N2816-K2048-top6-bfloat16"
    a = raw_log(tmp_path / "a.jsonl", options, [(100.0, 90.0)])
    served = {"eager": {shape: {"engine": 3, "triton-tma": 5}}, "captured": {shape: {"triton": 2}},
              "fallbacks": {"why": 1}, "files": 1,
              "plans": {shape: {"plan": "H200_w13-E64-N2816-K2048-top6-bfloat16_layer",
                                "eager_graphs": True}},
              "eager_graphs": {shape: {"captures": 26, "replays": 900, "disabled": 0}}}
    with a.open("a") as f:
        f.write(eb.json.dumps({"event": "stats", "stats": {"dispatch": served}}) + "\n")
    b = raw_log(tmp_path / "b.jsonl", options, [(100.0, 110.0)])
    b_results = {"command": "bench.py b.jsonl", "date": "2026-12-01",
                 "ramp_calls": {"eager": {shape: {"triton-tma": 7}}, "captured": {}},
                 "ramp_fallbacks": {}}
    for wl in ("decode-heavy", "prefill-heavy"):  # one call's two files: counted once
        (tmp_path / f"b-{wl}.json").write_text(eb.json.dumps(b_results))
    eb.summarize_log([str(a), str(b), "--out", str(tmp_path / "out"), "--stats-from",
                      str(tmp_path / "b-decode-heavy.json"),
                      str(tmp_path / "b-prefill-heavy.json")])
    res = eb.json.loads((tmp_path / "out" / "H200_deepseek-v2-lite_decode-heavy.json")
                        .read_text())
    assert res["ramp_calls"] == {"eager": {shape: {"engine": 3, "triton-tma": 12}},
                                 "captured": {shape: {"triton": 2}}}
    assert res["ramp_fallbacks"] == {"why": 1} and res["ramp_calls_calls"] == 2
    assert res["ramp_plans"] == {shape: [served["plans"][shape]]}  # distinct plans, a list
    assert res["ramp_eager_graphs"] == {shape: {"captures": 26, "replays": 900, "disabled": 0}}
    a_results = tmp_path / "a-decode-heavy.json"
    a_results.write_text(eb.json.dumps(dict(b_results, command="bench.py a.jsonl")))
    with pytest.raises(SystemExit) as exit_:
        eb.summarize_log([str(a), str(b), "--out", str(tmp_path / "twice"),
                          "--stats-from", str(a_results)])
    assert exit_.value.code == 2
    assert "a-decode-heavy.json: field 'ramp_calls'" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()


def test_eager_variant_labels_share_the_dispatch_engine():
    """``--modes off,dispatch,dispatch:launch``: labels on one dispatch engine, each
    variant one the runtime knows, and only with both engines alive."""
    assert eb.check_modes(["off", "dispatch", "dispatch:launch", "dispatch:engine"], True) is None
    assert [eb.engine_mode(m) for m in ("off", "dispatch:launch")] == ["off", "dispatch"]
    assert [eb.eager_variant(m) for m in ("dispatch", "dispatch:engine")] == ["plan", "engine"]
    assert "dispatch:V" in eb.check_modes(["off", "dispatch:fastest"], True)
    assert "dispatch:V" in eb.check_modes(["off", "record:launch"], True)
    assert "--concurrent" in eb.check_modes(["off", "dispatch:launch"], False)
    assert "each once" in eb.check_modes(["off", "dispatch", "dispatch"], True)
    assert "dispatch:V" in eb.check_modes(["off", "dispatch:launch:x"], True)
    assert eb.engines_of(["off", "dispatch:launch", "dispatch:engine"]) == ["off", "dispatch"]


def test_a_variant_run_sets_the_engines_eager_variant_first(tmp_path, monkeypatch):
    """Each run of a label writes its variant where the engine's RaMP reads it, before
    the run, and comes back under its label."""
    monkeypatch.setattr(eb.variant_file, "REREAD_S", 0.0)

    class Engine:
        def __init__(self) -> None:
            self.variant_path = tmp_path / "eager-variant.dispatch"
            self.info = {"max_num_seqs": 256}

        def run(self, workload, seed, profile=False):
            return {"ramp_mode": "dispatch", "seen": self.variant_path.read_text().strip()}

    engine = Engine()
    runs = [eb.VariantRun(m, engine, eb.eager_variant(m))
            for m in ("dispatch", "dispatch:launch", "dispatch")]
    got = [r.run("prefill-heavy", seed=1) for r in runs]
    assert [(g["ramp_mode"], g["seen"]) for g in got] == [
        ("dispatch", "plan"), ("dispatch:launch", "launch"), ("dispatch", "plan")]
    assert runs[0].info is engine.info


def test_summarize_keeps_every_variant_paired_with_off(tmp_path):
    """A raw log of three labels: a results file named by them, and each label's median
    paired ratio to off."""
    options = {"model": "qwen3-30b-a3b", "modes": "off,dispatch,dispatch:launch",
               "workloads": "prefill-heavy", "concurrent": True, "logprob_tol": 0.05}
    lines = [{"event": "start", "command": "python3 bench/engine/bench.py ...",
              "date": "2026-12-02T18:40:00Z", "options": options,
              "device": {"device": "NVIDIA H200"}, "engine": {"name": "vllm", "version": "0.26.0"}}]
    lines += [{"event": "engine", "ramp_mode": m, "info": {"max_num_seqs": 256}}
              for m in ("off", "dispatch", "dispatch:launch")]
    for rep, tps in enumerate([(100.0, 110.0, 95.0), (90.0, 108.0, 90.0), (100.0, 100.0, 99.0)]):
        lines += [{"workload": "prefill-heavy", "warmup": False, "repeat": rep,
                   "ramp_mode": m, "total_tok_per_s": t}
                  for m, t in zip(("off", "dispatch", "dispatch:launch"), tps)]
    raw = tmp_path / "runs-qwen3-30b-a3b.jsonl"
    raw.write_text("".join(eb.json.dumps(x) + "\n" for x in lines))
    eb.summarize_log([str(raw), "--out", str(tmp_path / "out")])
    path, = (tmp_path / "out").iterdir()
    assert path.name == "H200_qwen3-30b-a3b_prefill-heavy_dispatch-dispatch-launch.json"
    res = eb.json.loads(path.read_text())
    assert res["paired_ratios"]["dispatch"] == pytest.approx(1.1)
    assert res["paired_ratios"]["dispatch:launch"] == pytest.approx(0.99)
    assert res["ratio"] == pytest.approx(108.0 / 100.0)


def test_pooled_starts_of_differing_labels_pair_each_label_with_its_own_starts(tmp_path, capsys):
    """An ``off,dispatch`` start pooled with an ``off,dispatch,dispatch:launch`` start
    (``--allow-differing modes``): the modes are both starts' labels; a label that only
    the second start ran is set against that start's ``off`` alone, and its token check
    is that start's (the first start has none for it)."""
    seq = [{"token_ids": [1, 2, 3], "logprobs": [-0.1, -0.2, -0.3]}]
    other = [{"token_ids": [1, 2, 4], "logprobs": [-0.1, -0.2, -0.3]}]

    def start(path, modes, tps, launch_seq=seq):
        options = {"model": "qwen3-30b-a3b", "modes": ",".join(modes), "concurrent": True,
                   "workloads": "prefill-heavy", "logprob_tol": 0.05}
        lines = [{"event": "start", "command": f"bench.py {path.name}", "date": "2026-12-02",
                  "options": options, "device": {"device": "NVIDIA H200"},
                  "engine": {"name": "vllm", "version": "0.26.0"}},
                 *({"event": "engine", "ramp_mode": m, "info": {"max_num_seqs": 256}}
                   for m in modes),
                 *({"workload": "match", "ramp_mode": m,
                    "sequences": launch_seq if m == "dispatch:launch" else seq} for m in modes),
                 *({"workload": "prefill-heavy", "repeat": 0, "ramp_mode": m,
                    "total_tok_per_s": t} for m, t in zip(modes, tps))]
        path.write_text("".join(eb.json.dumps(x) + "\n" for x in lines))
        return str(path)

    a = start(tmp_path / "a.jsonl", ["off", "dispatch"], [100.0, 110.0])
    b = start(tmp_path / "b.jsonl", ["off", "dispatch", "dispatch:launch"],
              [200.0, 210.0, 180.0], launch_seq=other)
    with pytest.raises(SystemExit):
        eb.summarize_log([a, b, "--out", str(tmp_path / "no")])
    assert "options.modes" in capsys.readouterr().err
    eb.summarize_log([a, b, "--out", str(tmp_path / "out"), "--allow-differing", "modes"])
    path, = (tmp_path / "out").iterdir()
    res = eb.json.loads(path.read_text())
    assert res["modes"] == ["off", "dispatch", "dispatch:launch"]
    assert res["ratios"]["dispatch:launch"] == pytest.approx(180.0 / 200.0)  # not / 150
    assert res["ratios"]["dispatch"] == pytest.approx(160.0 / 150.0)
    assert res["paired_ratios"]["dispatch:launch"] == pytest.approx(0.9)
    assert res["tokens_match_by_mode"] == {"dispatch": True, "dispatch:launch": False}


def test_calls_of_one_mode_pool_into_a_ratio(tmp_path, capsys):
    """Models of which two engines do not fit (Mixtral) run one mode per call: such a
    call writes its raw log and no results file, and two of them pool into a file whose
    ratio is of medians (no pairs: no repeat ran both) and whose token check compares
    the two calls' sequences; with --concurrent one mode is refused."""
    assert eb.check_modes(["off"], False) is None
    assert "at least two with --concurrent" in eb.check_modes(["off"], True)
    seq = [{"token_ids": [1, 2, 3], "logprobs": [-0.1, -0.2, -0.3]}]

    def call(mode, tps, name=""):
        options = {"model": "mixtral-8x7b", "modes": mode, "concurrent": False,
                   "workloads": "decode-heavy", "logprob_tol": 0.05}
        lines = [{"event": "start", "command": f"bench.py --modes {mode}",
                  "date": "2026-12-03", "options": options, "device": {"device": "NVIDIA H200"},
                  "engine": {"name": "vllm", "version": "0.26.0"}},
                 {"event": "engine", "ramp_mode": mode,
                  "info": {"max_num_seqs": 256, "kv_cache_tokens": len(mode)}},
                 {"workload": "match", "ramp_mode": mode, "sequences": seq},
                 *({"workload": "decode-heavy", "repeat": r, "ramp_mode": mode,
                    "total_tok_per_s": t} for r, t in enumerate(tps))]
        path = tmp_path / f"{mode}{name}.jsonl"
        path.write_text("".join(eb.json.dumps(x) + "\n" for x in lines))
        return str(path)

    off, on = call("off", [100.0, 104.0, 96.0]), call("dispatch", [110.0, 99.0, 103.0])
    eb.summarize_log([off, "--out", str(tmp_path / "alone")])
    assert "one mode (off): no ratio, no results file" in capsys.readouterr().out
    assert not list((tmp_path / "alone").iterdir())
    eb.summarize_log([off, on, "--out", str(tmp_path / "out"), "--allow-differing", "modes"])
    res = eb.json.loads((tmp_path / "out" / "H200_mixtral-8x7b_decode-heavy.json").read_text())
    assert res["modes"] == ["off", "dispatch"]
    assert res["ratio"] == pytest.approx(103.0 / 100.0)
    assert res["kv_cache_tokens"] == {"off": 3, "dispatch": 8}  # the later call's engine too
    assert res["paired_ratio_median"] is None and res["ratio_by_call"] == [None, None]
    assert res["tokens_match"] is True and res["token_check_across_calls"] is True
    assert res["ratio_across_calls"] is True and res["calls"] == 2
    # named in any order, off stays the baseline; every dispatch call's tokens checked
    seq[0]["token_ids"] = [1, 2, 4]
    again = call("dispatch", [120.0], name="-again")
    eb.summarize_log([on, off, again, "--out", str(tmp_path / "any"),
                      "--allow-differing", "modes"])
    res = eb.json.loads((tmp_path / "any" / "H200_mixtral-8x7b_decode-heavy.json").read_text())
    assert res["modes"] == ["off", "dispatch"] and res["calls"] == 3
    assert res["ratio"] == pytest.approx(106.5 / 100.0)
    assert res["token_checks_per_call"] == [True, False] and res["tokens_match"] is False
