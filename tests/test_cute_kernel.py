"""CuTe family correctness on the GPU (sm90 + nvidia-cutlass-dsl; skipped elsewhere).

Every case draws fresh random inputs through the profiler's own workload builder,
poisons the output with NaN, compares with a float32 reference and checks every row
was written: ragged, empty and hot experts, T=1, both GEMMs, every tile, schedule
(1wg, cooperative, pingpong, swap-AB thin tiles), cluster and raster.
"""

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
    pytest.skip("the CuTe family needs an sm90 GPU", allow_module_level=True)
pytest.importorskip("cutlass")

from ramp.config import KernelConfig  # noqa: E402
from ramp.kernels.bank_timer import reference_gemm  # noqa: E402
from ramp.kernels.cute.configs import (  # noqa: E402
    cute_configs,
    epilogue_cols,
    raster,
    schedule,
)
from ramp.kernels.cute.launch import moe_gemm  # noqa: E402
from ramp.kernels.workload import make_call, make_weights  # noqa: E402
from ramp.problem import MoEProblem  # noqa: E402

pytestmark = pytest.mark.gpu
E, HIDDEN, INTER, TOP_K = 16, 512, 256, 2
NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count


def hist_of(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "t1":                      # one token: top_k experts with one row each
        h = np.zeros(E, int)
        h[rng.choice(E, TOP_K, replace=False)] = 1
        return h
    if kind == "empty":                   # most experts get nothing
        h = np.zeros(E, int)
        h[[3, 11]] = 77
        return h
    if kind == "hot":                     # every token on expert 0, the rest spread
        tokens = 300
        h = np.zeros(E, int)
        h[0] = tokens
        h[1:] = np.bincount(rng.integers(1, E, tokens), minlength=E)[1:]
        return h
    tokens = {"ragged": 77, "large": 1000}[kind]
    p = rng.dirichlet(np.ones(E) * 0.5)
    h = np.zeros(E, int)
    for _ in range(tokens):   # top_k distinct experts per token
        h[rng.choice(E, TOP_K, replace=False, p=p)] += 1
    return h


def check(cfg: KernelConfig, gemm: str, kind: str, seed: int) -> float:
    n, k = (2 * INTER, HIDDEN) if gemm == "w13" else (HIDDEN, INTER)
    problem = MoEProblem(E, n, k, TOP_K, gemm=gemm)
    hist = hist_of(kind, seed)
    call = make_call(problem, make_weights(problem, 1, seed=seed), hist, seed=seed)
    routing = call.routing()
    call.out.fill_(float("nan"))
    moe_gemm(call.activations, call.weights[0], routing, cfg, call.out, gemm=gemm,
             num_sms=NUM_SMS)
    torch.cuda.synchronize()
    assert not torch.isnan(call.out).any(), "rows left unwritten"
    ref = reference_gemm(problem, call, routing)
    return float((call.out.float() - ref).norm() / ref.norm())


def representatives() -> list[KernelConfig]:
    """One configuration per (tile, schedule, cluster), every (schedule, raster) and
    every schedule with a chunked epilogue once."""
    seen, out = set(), []
    for cfg in cute_configs():
        keys = [(cfg.block_m, cfg.block_n, schedule(cfg), cfg.cluster_m),
                ("raster", schedule(cfg), raster(cfg))]
        if epilogue_cols(cfg, "w2") < cfg.block_n:
            keys.append(("chunked", schedule(cfg)))
        for k in keys:
            if k not in seen:
                seen.add(k)
                out.append(cfg)
                break
    return out


@pytest.mark.parametrize("cfg", representatives(), ids=lambda c: c.name)
@pytest.mark.parametrize("gemm", ["w13", "w2"])
@pytest.mark.parametrize("kind", ["t1", "empty", "hot", "ragged", "large"])
def test_matches_float32(cfg, gemm, kind):
    assert check(cfg, gemm, kind, seed=len(kind) + zlib.crc32(cfg.name.encode()) % 97) < 1e-2


def test_same_compiled_kernel_serves_any_routing():
    """No recompilation when routing or T changes: one cache entry per (config, GEMM)."""
    from ramp.kernels.cute import launch

    cfg = cute_configs()[0]
    for kind in ("t1", "ragged", "large"):
        check(cfg, "w2", kind, seed=5)
    assert sum(1 for key in launch._CACHE if key[0] == cfg and key[1] == "w2") == 1
