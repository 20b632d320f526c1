"""Trace format: round trip, streaming, validation errors, torn lines, concurrent appends."""

import json
import multiprocessing
import warnings

import numpy as np
import pytest

from ramp.errors import InputError
from ramp.trace import (
    Arrival,
    TraceHeader,
    TraceReader,
    TraceStep,
    TraceWarning,
    TraceWriter,
    read_arrivals,
    read_header,
    read_steps,
    write_arrivals,
    write_trace,
)

HEADER = TraceHeader(model="toy", layers=3, moe_layers=2, num_experts=4, top_k=2, hidden=64,
                     moe_intermediate=32, source="test", engine="pytest", tp=1, ep=2)


def step(i: int, tokens: int = 3, ids: bool = False) -> TraceStep:
    rng = np.random.default_rng(i)
    picks = np.stack([np.stack([rng.choice(4, 2, replace=False) for _ in range(tokens)])
                      for _ in range(2)])
    hists = np.stack([np.bincount(p.ravel(), minlength=4) for p in picks])
    return TraceStep(i, "decode", tokens, hists, time=0.5 * i, topk_ids=picks if ids else None)


def lines(path):
    return path.read_text().splitlines()


def test_round_trip_streams_steps(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0), step(1, ids=True), step(2, 5)])
    assert read_header(path) == HEADER
    got = list(read_steps(path))
    assert [s.step for s in got] == [0, 1, 2]
    assert got[2].tokens == 5 and got[1].time == 0.5
    np.testing.assert_array_equal(got[1].hists, step(1).hists)
    np.testing.assert_array_equal(got[1].topk_ids, step(1, ids=True).topk_ids)
    assert got[0].topk_ids is None


def test_reader_is_lazy(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(i) for i in range(3)])
    with path.open("a") as f:
        f.write("garbage\n" + lines(path)[1] + "\n")
    it = iter(TraceReader(path))
    assert next(it).step == 0  # the bad line 5 is not read yet
    next(it), next(it)
    with pytest.raises(InputError, match=r"t\.jsonl:5: not valid JSON"):
        next(it)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("tokens"), "missing field 'tokens'"),
    (lambda d: d.update(phase="generate"), "field 'phase'"),
    (lambda d: d.update(tokens=0), "field 'tokens'"),
    (lambda d: d["layers"].pop(), "field 'layers' must list 2"),
    (lambda d: d["layers"][1].append(0), r"layers\[1\]: length 5 != num_experts 4"),
    (lambda d: d["layers"][0].__setitem__(0, d["layers"][0][0] + 1), r"layers\[0\]: counts sum"),
    (lambda d: d["layers"][1].__setitem__(0, -1), r"layers\[1\]"),
    (lambda d: d.update(time=-1), "field 'time'"),
    (lambda d: d.update(topk_ids=[[[0, 1]]]), "field 'topk_ids'"),
])
def test_malformed_middle_line_names_file_line_field(tmp_path, edit, message):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0), step(1), step(2)])
    text = lines(path)
    data = json.loads(text[2])
    edit(data)
    text[2] = json.dumps(data)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=rf"t\.jsonl:3.*{message}"):
        list(read_steps(path))


def test_lenient_reader_skips_and_counts(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0), step(1), step(2)])
    text = lines(path)
    text[2] = "{not json"
    path.write_text("\n".join(text) + "\n")
    reader = TraceReader(path, strict=False)
    with pytest.warns(TraceWarning, match="skipped 1 malformed"):
        got = [s.step for s in reader]
    assert got == [0, 2] and reader.skipped == 1


def test_torn_last_line_is_reported_and_skipped(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0), step(1)])
    with path.open("a") as f:
        f.write(step(2).to_json()[:25])  # a writer died mid-line
    reader = TraceReader(path)
    with pytest.warns(TraceWarning, match=r"t\.jsonl:4.*torn last line skipped"):
        assert [s.step for s in reader] == [0, 1]
    assert reader.torn


def test_bad_header(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"format": "ramp-trace/0"}\n')
    with pytest.raises(InputError, match=r"t\.jsonl:1: field 'format'"):
        read_header(path)
    data = HEADER.to_dict()
    data["model"]["top_k"] = 9
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(InputError, match=r"t\.jsonl:1: field 'top_k'=9 exceeds"):
        read_header(path)
    path.write_text("")
    with pytest.raises(InputError, match="empty trace"):
        read_header(path)


def test_writer_appends_to_existing_and_cuts_torn_tail(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0)])
    with path.open("a") as f:
        f.write('{"step": 1, "pha')
    with pytest.warns(TraceWarning, match="cut a torn last line"), TraceWriter(path, HEADER) as w:
        w.append(step(2))
    assert [s.step for s in read_steps(path)] == [0, 2]
    other = TraceHeader(**{**HEADER.__dict__, "num_experts": 8})
    with pytest.raises(InputError, match="shape differs"):
        TraceWriter(path, other)


def _append_many(path, start):
    with TraceWriter(path, HEADER) as writer:
        for i in range(start, start + 200):
            writer.append(step(i, tokens=40))


def test_concurrent_appenders_never_interleave(tmp_path):
    path = tmp_path / "t.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, k * 1000)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steps = list(read_steps(path))
    assert sorted(s.step for s in steps) == sorted(k * 1000 + i for k in range(4)
                                                   for i in range(200))
    assert lines(path)[0] == json.dumps(HEADER.to_dict(), separators=(",", ":"))


def test_arrivals_round_trip_and_validation(tmp_path):
    arrivals = [Arrival(0.0, 10, 5), Arrival(1.25, 3, 1)]
    path = write_arrivals(tmp_path / "a.jsonl", arrivals, source="test")
    assert list(read_arrivals(path)) == arrivals
    path.write_text(path.read_text() + '{"time": 1.0, "prompt": 1, "output": 1}\n')
    with pytest.raises(InputError, match=r"a\.jsonl:4: field 'time' goes backwards"):
        list(read_arrivals(path))
    path.write_text(lines(path)[0] + '\n{"time": 0, "prompt": 0, "output": 1}\n')
    with pytest.raises(InputError, match=r"a\.jsonl:2: field 'prompt'"):
        list(read_arrivals(path))
