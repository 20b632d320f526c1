"""Shared fixtures: small banks and problems that tests can reason about by hand."""

import os
import random
import sys
import zlib

import numpy as np
import pytest
from hypothesis import settings

from ramp.bank import KernelBank
from ramp.config import KernelConfig
from ramp.problem import MoEProblem


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a GPU, Triton kernels run in its CPU interpreter; it must be chosen before
# Triton is first imported by any test module.
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Property tests draw the same examples on every run (a failure reproduces as it is).
settings.register_profile("ramp", derandomize=True)
settings.load_profile("ramp")


def _test_seed(nodeid: str) -> int:
    return zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def _seed_global_rngs(request):
    """Every test starts the global RNGs (random, numpy, torch when loaded) from a seed
    fixed by its id, so a test that draws from them is repeatable; the seed is printed
    with a failure (see pytest_runtest_makereport)."""
    seed = _test_seed(request.node.nodeid)
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        report.sections.append(("random seed", f"global RNGs seeded with "
                                               f"{_test_seed(item.nodeid)} for {item.nodeid}"))
    return report


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def problem() -> MoEProblem:
    return MoEProblem(num_experts=8, n=512, k=256, top_k=2)


@pytest.fixture
def bank() -> KernelBank:
    configs = [
        KernelConfig("t", bm, bn, 64, persistent=p)
        for bm in (16, 64) for bn in (64, 128) for p in (False, True)
    ]
    return KernelBank.build(configs, occupancy=[1, 2] * 4)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
