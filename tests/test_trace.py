"""Trace format: round trip, streaming, validation errors, torn lines, concurrent appends."""

import contextlib
import errno
import itertools
import json
import multiprocessing
import os
import random
import signal
import time
import warnings

import numpy as np
import pytest

from ramp.errors import InputError, RampError
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


def test_append_after_a_fragment_is_never_glued_to_it(tmp_path):
    """A writer opened before another one died mid-line: its next append cuts the
    fragment first; a fragment that is a whole step only lacks its newline and is kept."""
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0)])
    with TraceWriter(path, HEADER) as live:
        with path.open("a") as f:
            f.write(step(1).to_json()[:30])  # another writer died here
        with pytest.warns(TraceWarning, match="cut a torn last line"):
            live.append(step(2))
        with path.open("a") as f:
            f.write(step(3).to_json())  # died just before its newline
        live.append(step(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.step for s in read_steps(path)] == [0, 2, 3, 4]


def test_torn_line_over_one_mib_is_cut(tmp_path):
    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0)])
    with path.open("a") as f:
        f.write('{"step": 1, "layers": [' + "0," * (1 << 20))
    with pytest.warns(TraceWarning, match="cut a torn last line"), TraceWriter(path, HEADER) as w:
        w.append(step(2))
    assert [s.step for s in read_steps(path)] == [0, 2]


def test_write_failing_part_way_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """ENOSPC after part of a line: the writer cuts its own fragment and raises; if even
    that fails, the next append cuts it."""
    import ramp.trace as trace_module

    path = write_trace(tmp_path / "t.jsonl", HEADER, [step(0)])
    real_write, real_truncate = os.write, os.ftruncate
    with TraceWriter(path, HEADER) as writer:
        def half_then_full(fd, data):
            if fd == writer._fd and len(data) > 10:
                real_write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(trace_module.os, "write", half_then_full)
        before = path.read_bytes()
        with pytest.raises(RampError, match="No space left on device"):
            writer.append(step(1))
        assert path.read_bytes() == before
        monkeypatch.setattr(trace_module.os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(
            OSError(errno.EIO, "I/O error")))
        with pytest.raises(RampError):
            writer.append(step(2))
        assert path.read_bytes() != before  # the fragment is there
        monkeypatch.setattr(trace_module.os, "write", real_write)
        monkeypatch.setattr(trace_module.os, "ftruncate", real_truncate)
        with pytest.warns(TraceWarning, match="cut a torn last line"):
            writer.append(step(3))
    assert [s.step for s in read_steps(path)] == [0, 3]


# --- concurrent writers: some killed mid-line, some failing part-way --------------------

STEPS_PER_WRITER = 120


def _append_many(path, start, count=STEPS_PER_WRITER):
    with TraceWriter(path, HEADER) as writer:
        for i in range(start, start + count):
            writer.append(step(i, tokens=40))


def _live_writer(path, start, stop, appended, cuts):
    """Appends until ``stop``; reports how many steps it appended and how many
    fragments (left by killed or failing writers) it cut first."""
    with warnings.catch_warnings(record=True) as seen, TraceWriter(path, HEADER) as writer:
        warnings.simplefilter("always")
        for i in itertools.count(start):
            if stop.is_set():
                break
            writer.append(step(i, tokens=40))
            appended.value += 1
    cuts.value = sum("cut a torn last line" in str(w.message) for w in seen)


def _slow_writer(path, start, hold, mid_line):
    """Appends forever, each line in 64-byte writes; once ``hold`` is set it stops in the
    middle of its next line and sets ``mid_line``, so the test's kill lands there."""
    import ramp.trace as trace_module

    real_write = os.write

    def slow(fd, data):
        n = real_write(fd, data[:64])
        if n < len(data):
            if hold.value:
                mid_line.value = 1
                time.sleep(60)  # killed here
            time.sleep(0.002)
        return n

    trace_module.os.write = slow
    with TraceWriter(path, HEADER) as writer:
        for i in itertools.count(start):
            writer.append(step(i, tokens=40))


def _failing_writer(path, start):
    """Every third append fails part-way (ENOSPC); every sixth cannot even cut its own
    fragment (EIO), so the fragment stays for the next writer to cut."""
    import ramp.trace as trace_module

    real_write, real_truncate = os.write, os.ftruncate
    state = {"i": 0}

    def write(fd, data):
        if state["i"] % 3 == 0 and len(data) > 10:
            real_write(fd, data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def truncate(fd, size):
        if state["i"] % 6 == 0:
            raise OSError(errno.EIO, "I/O error")
        real_truncate(fd, size)

    trace_module.os.write, trace_module.os.ftruncate = write, truncate
    with TraceWriter(path, HEADER) as writer:
        for i in range(start, start + STEPS_PER_WRITER):
            state["i"] = i - start
            with contextlib.suppress(RampError):
                writer.append(step(i, tokens=40))
            time.sleep(0.001)  # spread over the kills


def test_concurrent_appenders_killed_or_failing_never_corrupt_a_line(tmp_path):
    """Three writers keep appending while others are SIGKILLed mid-line (eight times)
    and one fails part-way through a third of its writes; afterwards every line of the
    file is a whole step: all of the live writers' steps, the failing writer's
    successful ones, and of each killed writer a subset of its own."""
    seed = 20261201
    rng = random.Random(seed)
    path = tmp_path / "t.jsonl"
    write_trace(path, HEADER, [])
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counters = [(ctx.Value("i", 0), ctx.Value("i", 0)) for _ in range(3)]
    healthy = [ctx.Process(target=_live_writer, args=(path, k * 10_000, stop, *counters[k]))
               for k in range(3)]
    failing = ctx.Process(target=_failing_writer, args=(path, 90_000))
    for p in [*healthy, failing]:
        p.start()
    kills = 0
    for victim in range(8):
        hold, mid_line = ctx.Value("i", 0), ctx.Value("i", 0)
        proc = ctx.Process(target=_slow_writer,
                           args=(path, 100_000 * (victim + 1), hold, mid_line))
        proc.start()
        time.sleep(rng.uniform(0.0, 0.05))
        hold.value = 1
        deadline = time.monotonic() + 30
        while not mid_line.value and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        kills += bool(mid_line.value)
    failing.join()
    stop.set()
    for p in healthy:
        p.join()
    assert [p.exitcode for p in [*healthy, failing]] == [0] * 4, f"seed {seed}"
    assert kills == 8, f"seed {seed}: only {kills} kills landed mid-line"
    # the live writers, not a later one, cut the fragments (kills and EIO failures)
    assert sum(cuts.value for _, cuts in counters) >= 8, f"seed {seed}"
    _append_many(path, 50_000, count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = [s.step for s in read_steps(path)]
    assert len(got) == len(set(got)), f"seed {seed}"
    expected = {k * 10_000 + i for k, (appended, _) in enumerate(counters)
                for i in range(appended.value)}
    expected |= {90_000 + i for i in range(STEPS_PER_WRITER) if i % 3}
    expected.add(50_000)
    killed = {s for s in got if s >= 100_000}
    assert set(got) - killed == expected, f"seed {seed}"
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
