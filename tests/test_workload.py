"""The profiler's GPU inputs for a histogram: whole tokens, and one EP rank's local view
(fewer rows than top_k per token), checked through the Triton interpreter on CPU."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ramp.errors import InputError  # noqa: E402
from ramp.kernels.workload import topk_ids_for_histogram  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("hist, top_k, tokens", [
    ([3, 0, 2, 1], 2, 3),           # whole tokens: no spare slots
    ([1, 0, 1, 0], 6, 1),           # a rank's share of one token's 6 picks
    ([5, 1, 0, 0], 2, 5),           # an expert with more rows than sum/top_k tokens
])
def test_ids_realise_the_histogram_with_spare_slots(hist, top_k, tokens):
    ids = topk_ids_for_histogram(np.array(hist), top_k, seed=3)
    assert ids.shape == (tokens, top_k)
    assert np.bincount(ids.ravel(), minlength=len(hist) + 1)[:len(hist)].tolist() == hist
    for row in ids:                 # a token names a local expert at most once
        local = row[row < len(hist)]
        assert len(set(local.tolist())) == len(local)
    with pytest.raises(InputError, match="negative"):
        topk_ids_for_histogram(np.array([2, -1]), 1)


def test_local_view_call_routes_and_computes_only_its_rows():
    """A 3-row local view of a top-6 layer: the call's map sends the spare slots away,
    the routing counts the histogram, and w13 writes SiLU(gate) * up of each local row."""
    from ramp.config import KernelConfig
    from ramp.kernels.triton.fused_moe import moe_gemm
    from ramp.kernels.workload import make_call, make_weights
    from ramp.problem import MoEProblem

    problem = MoEProblem(num_experts=8, n=64, k=64, top_k=6, dtype="float16", gemm="w13")
    hist = np.array([0, 2, 0, 1, 0, 0, 0, 0])
    weights = make_weights(problem, 1, device=DEVICE, seed=1)
    call = make_call(problem, weights, hist, device=DEVICE, seed=2)
    assert call.expert_map is not None and call.topk_ids.shape == (2, 6)
    routing = call.routing()
    assert routing.counts.cpu().tolist() == hist.tolist()
    call.out.fill_(float("nan"))
    moe_gemm(call.activations, weights[0], routing, KernelConfig("triton", 16, 32, 32),
             call.out, gemm="w13", num_sms=2)
    ids = call.topk_ids.cpu().ravel()
    slots = routing.sorted_slots.cpu().long()[: int(hist.sum())]
    x, w = call.activations.float().cpu(), weights[0].float().cpu()
    for pos, slot in enumerate(slots.tolist()):
        e = int(ids[slot])
        assert e < 8
        gate, up = w[e, :32] @ x[slot // 6], w[e, 32:] @ x[slot // 6]
        expected = torch.nn.functional.silu(gate) * up
        assert float((call.out[pos].float().cpu() - expected).norm() / expected.norm()) < 1e-2


@pytest.mark.parametrize("gemm", ["w13", "w2"])
def test_local_view_matches_the_float32_reference_on_its_rows(gemm):
    """Both GEMMs on a local view (4 rows of a top-6 layer over 8 local experts) against
    the profiler's own float32 reference, on the local experts' rows only."""
    from ramp.config import KernelConfig
    from ramp.kernels.bank_timer import reference_gemm
    from ramp.kernels.triton.fused_moe import moe_gemm
    from ramp.kernels.workload import make_call, make_weights
    from ramp.problem import MoEProblem

    n = 64 if gemm == "w13" else 32
    problem = MoEProblem(num_experts=8, n=n, k=64, top_k=6, dtype="float16", gemm=gemm)
    hist = np.array([1, 0, 2, 0, 0, 1, 0, 0])
    weights = make_weights(problem, 1, device=DEVICE, seed=4)
    call = make_call(problem, weights, hist, device=DEVICE, seed=5)
    routing = call.routing()
    call.out.fill_(float("nan"))
    moe_gemm(call.activations, weights[0], routing, KernelConfig("triton", 16, 32, 32),
             call.out, gemm=gemm, num_sms=2)
    ref = reference_gemm(problem, call, routing)
    rows = int(hist.sum())
    if gemm == "w13":   # expert-sorted: the local rows come first
        got, want = call.out[:rows].float(), ref[:rows]
    else:               # slot order: the slots that name a local expert
        local = (call.topk_ids.reshape(-1) < problem.num_experts).nonzero().flatten()
        got, want = call.out[local].float(), ref[local]
    assert not torch.isnan(got).any()
    assert float((got - want).norm() / want.norm()) < 1e-2


def test_a_histogram_of_another_expert_count_is_refused():
    from ramp.kernels.workload import make_call, make_weights
    from ramp.problem import MoEProblem

    problem = MoEProblem(num_experts=8, n=64, k=64, top_k=6, dtype="float16", gemm="w13")
    with pytest.raises(InputError, match="histogram of 4 experts for a problem of 8"):
        make_call(problem, make_weights(problem, 1, device=DEVICE), np.array([2, 1, 0, 1]),
                  device=DEVICE)
