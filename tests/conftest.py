"""Shared fixtures: small banks and problems that tests can reason about by hand."""

import os

import numpy as np
import pytest

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
