"""The engine model against closed forms: single request, fixed batch, chunked prefill,
a saturated queue (Little's law), preemption, and layout switching."""

from types import SimpleNamespace

import numpy as np
import pytest

from ramp.errors import InputError
from ramp.sim.engine import EngineConfig, SwitchConfig, simulate
from ramp.sim.metrics import request_latencies, summarize
from ramp.trace import Arrival

A, B = 2e-3, 1e-5  # stub step time: A + B * tokens seconds


class LinearCosts:
    """Step time A + B*tokens (EP: half the per-token cost, twice the fixed cost)."""

    samples = 1

    def __init__(self, kv: int = 10**9) -> None:
        self.layouts = {n: SimpleNamespace(name=n, kv_capacity=kv) for n in ("tp", "ep")}
        self.calls = []

    def step_seconds(self, layout, policy, tokens, pairs, context, phase_class, sample):
        self.calls.append((tokens, pairs, context))
        if layout.name == "ep":
            return 2 * A + B / 2 * tokens, 0.0
        return A + B * tokens, 0.0


def step(tokens: int) -> float:
    return A + B * tokens


def test_single_request_ttft_is_prefill_step_and_tpot_is_decode_step():
    costs = LinearCosts()
    run = simulate([Arrival(1.0, 100, 5)], costs, "static")
    lat = request_latencies(run)
    assert lat["ttft"][0] == pytest.approx(step(100))
    assert lat["tpot"][0] == pytest.approx(step(1))
    assert run.finish[0] == pytest.approx(1.0 + step(100) + 4 * step(1))
    # attention inputs: prefill pairs 100*101/2; decode contexts 100, 101, 102, 103
    assert costs.calls[0] == (100, 5050.0, 0.0)
    assert [c[2] for c in costs.calls[1:]] == [100.0, 101.0, 102.0, 103.0]


def test_async_scheduling_admits_an_arrival_during_a_busy_step_a_step_later():
    """vLLM plans step N+1 while step N runs: request B, arriving halfway through A's
    first decode step, misses the step planned at that step's start and prefills in the
    one after; without async scheduling it prefills in the next step. At an idle engine
    both admit at once (the single-request test)."""
    arrivals = [Arrival(0.0, 100, 50), Arrival(step(100) + step(1) / 2, 100, 5)]
    for planned_ahead, waits in ((True, [step(1)]), (False, [])):
        run = simulate(arrivals, LinearCosts(), "static",
                       EngineConfig(async_scheduling=planned_ahead))
        ttft = request_latencies(run)["ttft"]
        assert ttft[0] == pytest.approx(step(100))
        assert ttft[1] == pytest.approx(step(1) / 2 + sum(waits) + step(101))
        assert run.step_tokens.tolist()[:4] == [100, 1] + ([1, 101] if planned_ahead else [101, 2])


def test_fixed_batch():
    n, prompt, output = 8, 64, 10
    run = simulate([Arrival(0.0, prompt, output)] * n, LinearCosts(), "static")
    lat = request_latencies(run)
    np.testing.assert_allclose(lat["ttft"], step(n * prompt))
    np.testing.assert_allclose(lat["tpot"], step(n))
    assert run.step_tokens.tolist() == [n * prompt] + [n] * (output - 1)


def test_chunked_prefill_splits_long_prompt():
    cfg = EngineConfig(max_batched_tokens=256, max_seqs=4)
    run = simulate([Arrival(0.0, 600, 2)], LinearCosts(), "static", cfg)
    assert run.step_tokens.tolist() == [256, 256, 88, 1]
    assert request_latencies(run)["ttft"][0] == pytest.approx(2 * step(256) + step(88))
    unchunked = EngineConfig(max_batched_tokens=256, max_seqs=4, chunked_prefill=False)
    run = simulate([Arrival(0.0, 600, 2)], LinearCosts(), "static", unchunked)
    assert summarize(run)["rejected"] == 1


def test_chunked_prefill_mixes_decodes_first_then_chunks():
    """vLLM V1's order: every decoding request's token, then running prefills' next
    chunks, then new requests, a chunk filling the budget exactly. 8 x 1024-token
    prompts with 4 output tokens under a 2048-token budget, worked out by hand: two
    prompts per step, each step's decodes taken from the budget (the chunk of the last
    admitted prompt shrinks by them), then the drain."""
    run = simulate([Arrival(0.0, 1024, 4)] * 8, LinearCosts(), "static",
                   EngineConfig(max_batched_tokens=2048, max_seqs=256))
    assert run.step_tokens.tolist() == [2048, 2048, 2048, 2048, 15, 5, 3, 1]
    assert run.step_decode.tolist() == [0, 2, 3, 5, 5, 5, 3, 1]
    ttft_steps = [1, 1, 2, 3, 3, 4, 4, 5]  # steps up to and including the first token
    assert request_latencies(run)["ttft"].tolist() == pytest.approx(
        [sum(step(t) for t in run.step_tokens[:k]) for k in ttft_steps])


def test_saturated_queue_closed_form_and_littles_law():
    """One-token prompts, S slots: every step serves S sequences, each sequence holds
    its slot for exactly `output` steps, so the makespan is N*O*step(S)/S."""
    n, s, output = 64, 8, 12
    cfg = EngineConfig(max_batched_tokens=64, max_seqs=s)
    run = simulate([Arrival(0.0, 1, output)] * n, LinearCosts(), "static", cfg)
    summary = summarize(run)
    assert summary["makespan_s"] == pytest.approx(n * output * step(s) / s)
    assert set(run.step_tokens.tolist()) == {s}
    np.testing.assert_allclose(request_latencies(run)["tpot"], step(s))
    # Little's law: time-average number in system == throughput * mean time in system
    e2e = run.finish - run.arrival
    grid = np.linspace(0, summary["makespan_s"], 20001)[:-1]
    in_system = ((run.arrival[None, :] <= grid[:, None])
                 & (grid[:, None] < run.finish[None, :])).sum(axis=1)
    assert in_system.mean() == pytest.approx(summary["throughput_req_s"] * e2e.mean(), rel=1e-3)
    # ... and for the S service slots alone: S == throughput * time in a slot
    assert s == pytest.approx(summary["throughput_req_s"] * output * step(s))


def test_poisson_saturation_littles_law():
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(0.01, 400))
    arrivals = [Arrival(float(t), int(p), int(o)) for t, p, o in
                zip(times, rng.integers(10, 200, 400), rng.integers(2, 60, 400))]
    run = simulate(arrivals, LinearCosts(), "static", EngineConfig(512, 16))
    summary = summarize(run)
    start, end = run.arrival.min(), run.finish.max()
    grid = np.linspace(start, end, 50001)[:-1]
    in_system = ((run.arrival[None, :] <= grid[:, None])
                 & (grid[:, None] < run.finish[None, :])).sum(axis=1)
    assert summary["served"] == 400
    assert in_system.mean() == pytest.approx(summary["throughput_req_s"]
                                             * summary["e2e_mean_s"], rel=2e-3)
    assert run.step_decode.max() <= 16


def test_kv_pressure_preempts_and_recomputes():
    cap = 600
    arrivals = [Arrival(0.0, 100, 150)] * 4
    run = simulate(arrivals, LinearCosts(kv=cap), "static", EngineConfig(1024, 8))
    summary = summarize(run)
    assert summary["served"] == 4 and summary["preemptions"] > 0
    # a request's output is complete: first token then output-1 further steps
    assert np.all(run.finish > run.first_token)
    too_big = simulate([Arrival(0.0, 500, 200)], LinearCosts(kv=cap), "static")
    assert summarize(too_big)["rejected"] == 1


def test_switch_mode_moves_with_load():
    arrivals = ([Arrival(0.0, 10, 200)] * 40) + [Arrival(30.0, 10, 50)]
    switch = SwitchConfig(cost_s=0.25, up=20, down=5)
    run = simulate(arrivals, LinearCosts(), "static", EngineConfig(1024, 64), "switch", switch)
    targets = [to for _, to, _, _ in run.switches]
    assert targets[:2] == ["ep", "tp"]
    assert run.step_layout[0] == 1  # started loaded: EP from the first step
    summary = summarize(run)
    assert summary["switches"] == len(targets)


def test_an_arrival_during_a_layout_switch_is_planned_right_after_it():
    """A switch drains the steps planned ahead: the first step after the stall sees
    every request that arrived during it (async scheduling or not)."""
    # two requests decode on TP; a burst arriving mid-step moves the replica to EP
    arrivals = [Arrival(0.0, 10, 200)] * 2 + [Arrival(0.05, 10, 200)] * 25
    switch = SwitchConfig(cost_s=0.25, up=20, down=5)
    cfg = EngineConfig(1024, 64)
    when, to, _, stall = simulate(arrivals, LinearCosts(), "static", cfg, "switch",
                                  switch).switches[0]
    assert to == "ep" and when > 0.05
    late = Arrival(when + stall / 2, 10, 3)
    run = simulate([*arrivals, late], LinearCosts(), "static", cfg, "switch", switch)
    j = int(np.searchsorted(run.step_start, when + stall - 1e-12))
    k = int(np.flatnonzero(run.arrival == late.time)[0])
    assert run.first_token[k] == pytest.approx(run.step_start[j] + run.step_time[j])


def test_switch_auto_threshold_is_the_crossover():
    # EP step (2A + B/2 T) beats TP (A + B T) from T > 2A/B = 400
    run = simulate([Arrival(0.0, 1, 2)], LinearCosts(), "static", EngineConfig(1024, 1024),
                   "switch")
    up, down = run.thresholds
    assert 400 < up <= 500 and down == up // 2


def test_config_validation():
    with pytest.raises(InputError, match="max_batched_tokens"):
        EngineConfig(max_batched_tokens=8, max_seqs=16)
    with pytest.raises(InputError, match="mode"):
        simulate([Arrival(0.0, 1, 1)], LinearCosts(), "static", mode="pp")
    with pytest.raises(InputError, match="hysteresis"):
        SwitchConfig(up=4, down=4)
